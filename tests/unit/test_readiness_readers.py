"""Every reader of readiness uses ReplicaStatus.is_ready (docs/rollouts.md, Probes): a
replica Running but failing its readiness probe (ready False) is not ready for the
scheduler's counts and rollout steps, is no Service endpoint, and shows 0/1 in
`corral get replicas`; without a readiness probe (ready None) Running means ready."""

from __future__ import annotations

import msgspec

from corral.client.cli.describe import describe_deployment, describe_replica
from corral.client.cli.read_commands import render_get
from corral.client.cli.views import ClusterView
from corral.contract.codec import decode
from corral.contract.network_specs import Service
from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ExecAction,
    HTTPGetAction,
    ObjectMeta,
    Probe,
    TCPSocketAction,
)
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral_netmgr.endpoints import Candidate, compute_endpoints
from corral_scheduler.snapshot import Snapshot
from tests.unit.netmgr_helpers import node as net_node
from tests.unit.netmgr_helpers import placement as net_placement
from tests.unit.netmgr_helpers import service, status, template
from tests.unit.test_scheduler_decide import as_placed, cluster, decide, deployment, node

NOW = 1_000_000.0


def with_ready(snapshot: Snapshot, ready: dict[str, bool | None]) -> Snapshot:
    """The snapshot with each named replica's ReplicaStatus.ready set."""
    statuses = {
        key: msgspec.structs.replace(s, ready=ready[s.replica]) if s.replica in ready else s
        for key, s in snapshot.replica_statuses.items()
    }
    return Snapshot(**{**snapshot.__dict__, "replica_statuses": statuses})


def test_a_running_replica_failing_readiness_is_not_ready_and_holds_the_rollout() -> None:
    old = deployment("web", 2, image="app:1")
    new = deployment("web", 2, image="app:2")
    placed = [as_placed(old, "a", "web-1"), as_placed(old, "b", "web-2")]
    first = decide(cluster([new], [node("a"), node("b")], placed, running={"web-1", "web-2"}))
    surge = first.place[0]
    placed.append(surge)
    running = cluster(
        [new], [node("a"), node("b")], placed, running={"web-1", "web-2", surge.replica}
    )
    # Running, but its readiness probe has not passed: no old replica stops yet.
    waiting = decide(with_ready(running, {surge.replica: False}))
    assert not waiting.stop and not waiting.place
    ((summary, _),) = waiting.statuses
    assert (summary.ready, summary.updated) == (2, 1)
    # Ready: one old replica goes, as when Running meant ready.
    passed = decide(with_ready(running, {surge.replica: True}))
    assert len(passed.stop) == 1 and passed.stop[0].reason == "replaced by a new template"
    assert passed.statuses[0][0].ready == 2  # 3 ready, less the one stopping
    # No readiness probe (ready None): Running is ready.
    assert len(decide(with_ready(running, {surge.replica: None})).stop) == 1


def test_old_replicas_failing_readiness_count_as_unavailable() -> None:
    web = deployment("web", 2)
    placed = [as_placed(web, "a", "web-1"), as_placed(web, "a", "web-2")]
    snapshot = with_ready(cluster([web], [node("a")], placed, {"web-1", "web-2"}), {"web-2": False})
    plan = decide(snapshot)
    assert plan.statuses[0][0].ready == 1
    # Scaling down stops the unready one first.
    one = deployment("web", 1)
    down = decide(Snapshot(**{**snapshot.__dict__, "deployments": {one.key: one}}))
    assert [s.key for s in down.stop] == [placed[1].key]


def endpoint_of(ready: bool | None) -> list[str]:
    p = net_placement("web-a", "web", "n1", template())
    s = msgspec.structs.replace(
        status(p, {"default": "10.128.0.5"}, ReplicaState.RUNNING), ready=ready
    )
    web = decode(service("web"), Service)
    endpoints = compute_endpoints(web, [Candidate(p, s, net_node("n1", ready=True))])
    return [a.replica for a in endpoints.addresses]


def test_endpoints_follow_readiness() -> None:
    assert endpoint_of(None) == ["web-a"]  # no readiness probe: Running serves
    assert endpoint_of(True) == ["web-a"]
    assert endpoint_of(False) == []  # Running, not ready: no endpoint


PROBED = ContainerTemplate(
    image="app:2",
    readiness_probe=Probe(http_get=HTTPGetAction(port=8080, path="/healthz"), period_seconds=2),
    liveness_probe=Probe(exec=ExecAction(command=["cat", "/tmp/ok"]), failure_threshold=5),
    startup_probe=Probe(tcp_socket=TCPSocketAction(port=8080), initial_delay_seconds=3),
)


def probed_view(ready: bool | None) -> ClusterView:
    spec = Deployment(
        metadata=ObjectMeta(name="web", generation=1, creation_timestamp=NOW - 60),
        spec=DeploymentSpec(replicas=1, template=PROBED),
    )
    placement = Placement(
        replica="web-a",
        deployment="web",
        node="n1",
        template=PROBED,
        template_hash=PROBED.template_hash(),
        generation=1,
        created_at=NOW - 30,
    )
    replica = ReplicaStatus(
        replica="web-a",
        deployment="web",
        node="n1",
        state=ReplicaState.RUNNING,
        template_hash=PROBED.template_hash(),
        container_id="0123456789abcdef",
        started_at=NOW - 20,
        ready=ready,
        probes={"readiness": "HTTP 503", "liveness": "ok", "startup": "ok"},
        last_probe_failure="readiness probe failed: HTTP 503",
    )
    return ClusterView(
        deployments={"web": spec},
        placements={placement.key: placement},
        replica_statuses={placement.key: replica},
    )


def test_get_replicas_has_a_ready_column() -> None:
    lines = render_get(probed_view(False), "replicas", None, "table", NOW).splitlines()
    assert lines[0].split() == [
        "NAME", "DEPLOYMENT", "NODE", "CONTAINER", "READY", "STATE", "RESTARTS", "AGE"
    ]  # fmt: skip
    assert lines[1].split()[4:6] == ["0/1", "Running"]
    ready = render_get(probed_view(None), "replicas", None, "table", NOW).splitlines()
    assert ready[1].split()[4:6] == ["1/1", "Running"]


def test_describe_shows_the_templates_probes_and_each_replicas_results() -> None:
    text = describe_deployment(probed_view(False), "web", [], NOW)
    assert (
        "  Readiness:  http-get http://:8080/healthz delay=0s timeout=1s period=2s "
        "#success=1 #failure=3"
    ) in text
    assert "  Liveness:   exec [cat /tmp/ok] delay=0s timeout=1s period=10s" in text
    assert "  Startup:    tcp-socket :8080 delay=3s" in text
    probes = text[text.index("Probes:") :].splitlines()
    assert probes[1].split() == ["REPLICA", "READY", "PROBES", "LAST", "FAILURE"]
    assert "startup=ok, liveness=ok, readiness=HTTP 503" in probes[2]
    assert probes[2].split()[:2] == ["web-a", "0/1"]
    assert probes[2].endswith("readiness probe failed: HTTP 503")


def test_describe_replica_shows_readiness_probe_results_and_last_failure() -> None:
    text = describe_replica(probed_view(False), "web-a", [], NOW)
    assert "Ready:" in text and "no" in next(x for x in text.splitlines() if x.startswith("Ready"))
    readiness = next(x for x in text.splitlines() if x.startswith("Readiness:"))
    assert readiness.endswith("(last: HTTP 503)")
    assert text.splitlines()[-2].endswith("readiness probe failed: HTTP 503")


def restarted_view() -> ClusterView:
    """The replica's container was restarted after a liveness failure: the new container
    has no probe results yet, the last failure is kept."""
    view = probed_view(None)
    (key,) = view.replica_statuses
    status = view.replica_statuses[key]
    view.replica_statuses[key] = msgspec.structs.replace(
        status,
        container_id="fedcba9876543210",
        ready=False,
        restarts=1,
        probes={},
        last_probe_failure="liveness probe failed: exit code 1",
    )
    return view


def test_describe_shows_probes_not_yet_reported_by_a_restarted_container_as_pending() -> None:
    text = describe_deployment(restarted_view(), "web", [], NOW)
    row = text[text.index("Probes:") :].splitlines()[2]
    assert "startup=pending, liveness=pending, readiness=pending" in row
    assert row.endswith("liveness probe failed: exit code 1")
    replica = describe_replica(restarted_view(), "web-a", [], NOW).splitlines()
    assert next(x for x in replica if x.startswith("Liveness:")).endswith("(last: pending)")
    assert replica[-2].endswith("liveness probe failed: exit code 1")
