"""A Service's Endpoints computed from placements, replica statuses and nodes
(corral_netmgr.endpoints.compute_endpoints)."""

from __future__ import annotations

from typing import Any

from corral.contract.codec import decode
from corral.contract.network_specs import Service
from corral.contract.state import ReplicaState
from corral_netmgr.endpoints import Candidate, compute_endpoints
from tests.unit.netmgr_helpers import node, placement, service, status, template


def svc(**spec: Any) -> Service:
    return decode(service("web", **spec), Service)


def replica(
    name: str,
    *,
    ips: dict[str, str] | None = None,
    state: ReplicaState = ReplicaState.RUNNING,
    ready: bool = True,
    ports: tuple[tuple[str, int], ...] = (),
    deployment: str = "web",
    labels: dict[str, str] | None = None,
) -> Candidate:
    p = placement(name, deployment, "n1", template(*ports, labels=labels))
    return Candidate(
        placement=p,
        status=status(p, {"default": f"10.128.0.{len(name)}"} if ips is None else ips, state),
        node=node("n1", ready=ready),
    )


def addresses(service: Service, *candidates: Candidate) -> list[str]:
    return [a.replica for a in compute_endpoints(service, candidates).addresses]


def test_running_replicas_that_match_the_selector_with_an_ip_are_the_endpoints() -> None:
    endpoints = compute_endpoints(svc(), [replica("web-a"), replica("other", deployment="db")])
    assert [(a.replica, a.ip, a.node) for a in endpoints.addresses] == [
        ("web-a", "10.128.0.5", "n1")
    ]
    assert endpoints.network == "default" and endpoints.service == "web"


def test_a_replica_not_running_or_on_a_node_not_ready_is_left_out() -> None:
    service = svc()
    assert addresses(service, replica("web-a", state=ReplicaState.CREATING)) == []
    assert addresses(service, replica("web-a", state=ReplicaState.CRASH_LOOP)) == []
    assert addresses(service, replica("web-a", ready=False)) == []
    lost = replica("web-a")
    assert addresses(service, Candidate(lost.placement, lost.status, None)) == []
    assert addresses(service, Candidate(lost.placement, None, node("n1"))) == []


def test_only_the_ip_on_the_services_network_counts() -> None:
    both = replica("web-a", ips={"default": "10.128.0.9", "blue": "10.129.0.9"})
    only_default = replica("web-b", ips={"default": "10.128.0.7"})
    blue = svc(network="blue")
    endpoints = compute_endpoints(blue, [both, only_default])
    assert [(a.replica, a.ip) for a in endpoints.addresses] == [("web-a", "10.129.0.9")]
    assert endpoints.network == "blue"


def test_the_selector_matches_the_templates_own_labels() -> None:
    labelled = replica("x-1", deployment="x", labels={"tier": "front", "app": "shop"})
    assert addresses(svc(), labelled) == []
    front = decode(service("web", selector={"tier": "front"}), Service)
    assert addresses(front, labelled) == ["x-1"]


def test_a_named_target_port_resolves_against_the_template_and_leaves_out_who_lacks_it() -> None:
    named = svc(ports=[{"port": 80, "targetPort": "http"}])
    with_name = replica("web-a", ports=(("http", 8080),))
    without = replica("web-b", ports=(("admin", 9000),))
    endpoints = compute_endpoints(named, [with_name, without])
    assert [a.replica for a in endpoints.addresses] == ["web-a"]
    assert endpoints.ports[0].target_port == 8080 and endpoints.ports[0].port == 80


def test_replicas_that_resolve_a_name_differently_follow_the_most_of_them() -> None:
    named = svc(ports=[{"port": 80, "targetPort": "http"}])
    old = replica("web-a", ports=(("http", 8080),))
    new = [replica(f"web-n{i}", ports=(("http", 9090),)) for i in range(2)]
    endpoints = compute_endpoints(named, [old, *new])
    assert endpoints.ports[0].target_port == 9090
    assert [a.replica for a in endpoints.addresses] == ["web-n0", "web-n1"]


def test_ports_carry_node_ports_and_numeric_targets_without_endpoints() -> None:
    service = svc(type="NodePort", ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}])
    endpoints = compute_endpoints(service, [])
    assert endpoints.addresses == []
    port = endpoints.ports[0]
    assert (port.port, port.target_port, port.node_port, port.protocol) == (80, 8080, 30080, "TCP")
    assert endpoints.type == "NodePort"
