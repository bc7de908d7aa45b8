"""The client side of networking without NATS: Kubernetes Service manifests, the port
flags, which port `corral expose` takes, and the kubectl-style columns."""

from __future__ import annotations

import click
import msgspec
import pytest

from corral.client.api import CorralError, find_kind
from corral.client.cli.manifests import load_manifests
from corral.client.cli.net_views import NetView, describe_service, endpoints_text, service_ports
from corral.client.cli.options import parse_container_port, parse_service_port
from corral.client.cli.service_commands import (
    declared_port,
    exposed_ports,
    parse_selector,
    service_manifest,
)
from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.network_specs import Network, Service, ServicePort
from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints
from corral.contract.specs import (
    ContainerPort,
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
)
from corral.contract.state import ReplicaState, ReplicaStatus

KUBERNETES_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  uid: 0b1c
  resourceVersion: "1234"
  creationTimestamp: "2024-05-01T10:00:00Z"
  annotations: {a: b}
spec:
  type: NodePort
  selector: {app: web}
  clusterIPs: [10.96.0.7]
  ipFamilies: [IPv4]
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
    - {name: admin, port: 81, targetPort: admin, appProtocol: http}
"""


def test_a_kubernetes_service_keeps_what_corral_supports_and_lists_what_it_drops() -> None:
    [manifest] = load_manifests(KUBERNETES_SERVICE, "web.yaml")
    assert manifest.kind is find_kind("svc")
    assert isinstance(manifest.spec, Service)
    assert [(p.port, p.target, p.node_port) for p in manifest.spec.spec.ports] == [
        (80, 8080, 30080),
        (81, "admin", 0),
    ]
    # What the server sets (uid, resourceVersion, creationTimestamp) is read-only, not a
    # warning; annotations are kept.
    assert manifest.spec.metadata.annotations == {"a": "b"}
    assert manifest.dropped == (
        "spec.clusterIPs",
        "spec.ipFamilies",
        "spec.ports[1].appProtocol",
    )


def test_corrals_own_service_documents_stay_strict() -> None:
    own = KUBERNETES_SERVICE.replace("apiVersion: v1", "apiVersion: corral/v1")
    own = own.replace('  resourceVersion: "1234"\n', "").replace("  creationTimestamp", "  x")
    with pytest.raises(CorralError, match="unknown field `x`"):
        load_manifests(own, "web.yaml")


def test_a_network_document_decodes_and_drops_nothing() -> None:
    text = (
        "apiVersion: corral/v1\nkind: Network\nmetadata: {name: backend}\n"
        "spec: {subnet: 10.50.0.0/16}\n"
    )
    [manifest] = load_manifests(text, "n.yaml")
    assert isinstance(manifest.spec, Network) and manifest.dropped == ()
    with pytest.raises(CorralError, match="apiVersion"):
        load_manifests(text.replace("corral/v1", "v1") + "status: {}\n", "n.yaml")


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("80", {"port": 80}),
        ("80:8080", {"port": 80, "targetPort": 8080}),
        ("web=80:http", {"port": 80, "targetPort": "http", "name": "web"}),
    ],
)
def test_service_port_flags(text: str, port: dict[str, object]) -> None:
    assert parse_service_port(text) == port


@pytest.mark.parametrize("text", ["", "x", "0", "65536", "80:", "=80", "80:0", "80:99999"])
def test_bad_service_port_flags_name_the_flag(text: str) -> None:
    with pytest.raises(click.BadParameter) as raised:
        parse_service_port(text)
    assert raised.value.param_hint == "--port"


def test_container_port_flags() -> None:
    assert parse_container_port("8080") == {"containerPort": 8080}
    assert parse_container_port("53/udp") == {"containerPort": 53, "protocol": "UDP"}
    for bad in ("http", "80/sctp", "0"):
        with pytest.raises(click.BadParameter):
            parse_container_port(bad)


def test_selectors_are_comma_separated_and_repeatable() -> None:
    assert parse_selector(["app=web,tier=front", "env=prod"]) == {
        "app": "web",
        "tier": "front",
        "env": "prod",
    }
    with pytest.raises(click.BadParameter, match="not NAME=VALUE"):
        parse_selector(["app"])


def deployment(**template: object) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="app"),
        spec=DeploymentSpec(
            template=msgspec.convert({"image": "x:1", **template}, ContainerTemplate)
        ),
    )


def status(dep: Deployment, ports: list[str], *, current: bool = True) -> ReplicaStatus:
    return ReplicaStatus(
        replica=f"app-{len(ports)}-{current}",
        deployment="app",
        node="n1",
        state=ReplicaState.RUNNING,
        template_hash=dep.spec.template.template_hash() if current else "old",
        image_ports=ports,
    )


def test_the_templates_one_port_comes_first() -> None:
    dep = deployment(ports=[{"containerPort": 53, "protocol": "UDP"}])
    assert declared_port(dep, [status(dep, ["80/tcp"])]) == (53, "UDP")
    assert exposed_ports(dep, [], None, None) == (53, 53, "UDP")
    assert exposed_ports(dep, [], 5353, None) == (5353, 53, "UDP")


def test_the_images_exposed_port_of_the_current_template_comes_next() -> None:
    dep = deployment()
    statuses = [status(dep, ["6379/tcp"]), status(dep, ["80/tcp", "443/tcp"], current=False)]
    assert declared_port(dep, statuses) == (6379, "TCP")
    # Only replicas of an older template reported: theirs is what is known.
    assert declared_port(dep, statuses[1:]) == (
        "deployment 'app' declares no container port and its image exposes several "
        "(443/tcp, 80/tcp)"
    )
    assert declared_port(dep, [status(dep, ["5000/sctp"])]) == (
        "deployment 'app' declares no container port and its image exposes none"
    )


def test_without_a_port_to_take_the_flags_are_needed() -> None:
    dep = deployment()
    with pytest.raises(CorralError, match=r"give --port .* and --target-port"):
        exposed_ports(dep, [], None, None)
    assert exposed_ports(dep, [], 80, None) == (80, 80, None)
    assert exposed_ports(dep, [], None, 8080) == (8080, 8080, None)
    assert exposed_ports(dep, [], 80, "http") == (80, "http", None)
    with pytest.raises(CorralError, match="is a name: give --port"):
        exposed_ports(dep, [], None, "http")


def test_port_columns_read_as_kubectls() -> None:
    service = msgspec.convert(
        {
            "metadata": {"name": "web"},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "port": 80, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ],
            },
        },
        Service,
    )
    assert service_ports(service) == "80:30080/TCP,53/UDP"
    endpoints = Endpoints(
        service="web",
        ports=[EndpointPort(port=80, target_port=8080)],
        addresses=[
            EndpointAddress(ip=f"10.0.0.{i}", replica=f"r{i}", node="n1", ready=i != 2)
            for i in range(1, 6)
        ],
    )
    assert endpoints_text(endpoints) == "10.0.0.1:8080,10.0.0.3:8080,10.0.0.4:8080 + 1 more..."
    assert endpoints_text(endpoints, every=True).count(",") == 3
    headless = Endpoints(
        service="peers", addresses=[EndpointAddress(ip="10.0.0.1", replica="r", node="n")]
    )
    assert endpoints_text(headless) == "10.0.0.1"
    assert endpoints_text(None) == "<none>"


def test_describe_shows_a_named_target_port_netmgr_could_not_resolve_yet_by_its_name() -> None:
    service = msgspec.convert(
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
        Service,
    )
    unresolved = Endpoints(service="web", ports=[EndpointPort(port=80, target_port=0)])
    view = NetView(services={"web": service}, endpoints={"web": unresolved})
    text = describe_service(view, "web", [], 0.0)
    assert "TargetPort:   http/TCP" in text and "Endpoints:    <none>" in text, text
    resolved = Endpoints(
        service="web",
        ports=[EndpointPort(port=80, target_port=8080)],
        addresses=[EndpointAddress(ip="10.0.0.2", replica="r", node="n1")],
    )
    view.endpoints["web"] = resolved
    text = describe_service(view, "web", [], 0.0)
    assert "TargetPort:   8080 (http)/TCP" in text and "Endpoints:    10.0.0.2:8080" in text


def test_the_same_port_given_twice_is_named_as_given_not_by_a_made_up_port_name() -> None:
    """`--port 80:8080 --port 80:8081`: the CLI names unnamed ports (tcp-80), so two
    ports 80 would be two names 'tcp-80'; the refusal names the port the user gave."""
    document = service_manifest(
        "multi",
        selector={"app": "web"},
        ports=[parse_service_port("80:8080"), parse_service_port("80:8081")],
        type_="ClusterIP",
        node_port=None,
        protocol=None,
    )
    with pytest.raises(InvalidPayload, match=r"`ports` names '80/TCP' twice"):
        decode_payload(encode(document), Service)


def test_describe_says_why_a_service_has_no_endpoints_when_the_deployments_tell() -> None:
    """A Service on a network its selected replicas are not on showed `<none>` and no
    more; it now names the Deployments and the networks they join."""
    service = msgspec.convert(
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], "network": "backend"},
        },
        Service,
    )
    web = Deployment(
        metadata=ObjectMeta(name="web"),
        spec=DeploymentSpec(template=ContainerTemplate(image="app:1")),
    )
    view = NetView(services={"web": service}, deployments={"web": web})
    text = describe_service(view, "web", [], 0.0)
    assert (
        "Why none:     the replicas the selector matches are not on network backend "
        "(deployment/web joins default)"
    ) in text, text
    view.deployments = {"api": msgspec.structs.replace(web, metadata=ObjectMeta(name="api"))}
    text = describe_service(view, "web", [], 0.0)
    assert "Why none:     no Deployment in namespace default has replicas the selector" in text
    on_backend = ContainerTemplate(image="app:1", networks=["backend"])
    view.deployments = {
        "web": msgspec.structs.replace(web, spec=DeploymentSpec(template=on_backend))
    }
    assert "Why none" not in describe_service(view, "web", [], 0.0)  # not ready yet: no guess
    # a named targetPort no replica names (a typo): said, with the names they have
    named = ContainerTemplate(
        image="app:1", networks=["backend"], ports=[ContainerPort(container_port=80, name="http")]
    )
    view.deployments = {"web": msgspec.structs.replace(web, spec=DeploymentSpec(template=named))}
    typo = msgspec.structs.replace(
        service,
        spec=msgspec.structs.replace(
            service.spec, ports=[msgspec.convert({"port": 80, "targetPort": "htpp"}, ServicePort)]
        ),
    )
    view.services = {"web": typo}
    assert (
        "Why none:     `ports[0].targetPort` 'htpp' is no port name of the replicas the "
        "selector matches (deployment/web names http)"
    ) in describe_service(view, "web", [], 0.0)
    view.services = {
        "web": msgspec.structs.replace(
            typo,
            spec=msgspec.structs.replace(
                typo.spec,
                ports=[msgspec.convert({"port": 80, "targetPort": "http"}, ServicePort)],
            ),
        )
    }
    assert "Why none" not in describe_service(view, "web", [], 0.0)
