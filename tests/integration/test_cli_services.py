"""`corral create|get|describe|delete service`, `get endpoints`, `expose deployment` and
`apply -f` of Kubernetes Service manifests, through a real nats-server, against a
stand-in for netmgr's cluster part (netmgr_responder) and the real scheduler."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.network_specs import Service
from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket, write_record
from tests.integration.scheduler_harness import running_scheduler
from tests.integration.test_cli_networks import corral, keys, netmgr


async def stored_service(buckets: dict[str, NatsBucket], name: str) -> Service | None:
    entry = await buckets[names.SERVICES_BUCKET].get(names.object_key("default", name))
    return None if entry is None or not entry.value else decode(entry.value, Service)


async def test_services_are_created_listed_with_their_ports_described_and_deleted(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with netmgr(nats_url, buckets):
        web = await corral(
            nats_url, "create", "service", "web", "--selector", "app=my-app", "--port", "80:8080",
            "--type", "NodePort", "--node-port", "30080",
        )  # fmt: skip
        assert web.exit_code == 0 and web.stdout.strip() == "service/web created", web.output
        dns = await corral(
            nats_url, "create", "service", "dns", "--selector", "app=dns,tier=infra",
            "--port", "53", "--port", "metrics=9153:metrics", "--protocol", "udp",
        )  # fmt: skip
        assert dns.exit_code == 0, dns.output
        headless = await corral(
            nats_url, "create", "service", "peers", "--selector", "app=db", "--cluster-ip", "None"
        )
        assert headless.exit_code == 0, headless.output
        again = await corral(
            nats_url, "create", "service", "web", "--selector", "a=b", "--port", "1"
        )
        assert again.exit_code == 1 and "service 'web' already exists" in again.stderr

        stored = await stored_service(buckets, "dns")
        assert stored is not None
        assert [(p.name, p.port, p.target, p.protocol) for p in stored.spec.ports] == [
            ("udp-53", 53, 53, "UDP"),
            ("metrics", 9153, "metrics", "UDP"),
        ]
        assert stored.spec.selector == {"app": "dns", "tier": "infra"}

        listed = await corral(nats_url, "get", "services")
        rows = [line.split() for line in listed.stdout.strip().splitlines()]
        assert rows[0] == ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"]
        assert [row[:4] for row in rows[1:]] == [
            ["dns", "ClusterIP", "10.96.0.11", "53/UDP,9153/UDP"],
            ["peers", "ClusterIP", "None", "<none>"],
            ["web", "NodePort", "10.96.0.10", "80:30080/TCP"],
        ]
        wide = await corral(nats_url, "get", "svc", "web", "-o", "wide")
        assert wide.stdout.splitlines()[1].split()[5:] == ["app=my-app", "default"], wide.output

        now = time.time()
        endpoints = Endpoints(
            service="web",
            cluster_ip="10.96.0.10",
            type="NodePort",
            network="default",
            ports=[EndpointPort(port=80, target_port=8080, node_port=30080)],
            addresses=[
                EndpointAddress(ip=f"10.128.{i}.2", replica=f"my-app-{i}", node=f"n{i}")
                for i in range(1, 5)
            ]
            + [EndpointAddress(ip="10.128.9.9", replica="my-app-9", node="n9", ready=False)],
            updated_at=now,
        )
        await write_record(buckets[names.ENDPOINTS_BUCKET], "default.web", endpoints, None)
        got = await corral(nats_url, "get", "endpoints")
        rows = [line.split(None, 2) for line in got.stdout.strip().splitlines()]
        assert rows[0][:2] == ["NAME", "ENDPOINTS"]
        assert rows[1][:2] == ["dns", "<none>"]
        assert rows[3][0] == "web"
        assert rows[3][1] + " " + rows[3][2] == (
            "10.128.1.2:8080,10.128.2.2:8080,10.128.3.2:8080 + 1 more..."
            + rows[3][2].rsplit("more...", 1)[1]
        )
        every = await corral(nats_url, "get", "ep", "web", "-o", "wide")
        assert "10.128.4.2:8080" in every.stdout and "10.128.9.9" not in every.stdout
        as_json = json.loads((await corral(nats_url, "get", "ep", "web", "-o", "json")).stdout)
        assert len(as_json["addresses"]) == 5

        described = await corral(nats_url, "describe", "service", "web")
        assert described.exit_code == 0, described.output
        text = described.stdout
        for line in (
            "Selector:     app=my-app",
            "Type:         NodePort",
            "IP:           10.96.0.10",
            "Port:         <unset>  80/TCP",
            "TargetPort:   8080/TCP",
            "NodePort:     <unset>  30080/TCP",
            "Endpoints:    10.128.1.2:8080,10.128.2.2:8080,10.128.3.2:8080,10.128.4.2:8080",
            "NotReady:     10.128.9.9",
            "Events:  <none>",
        ):
            assert line in text, text
        data = json.loads((await corral(nats_url, "describe", "svc", "web", "-o", "json")).stdout)
        assert data["spec"]["clusterIP"] == "10.96.0.10" and data["endpoints"]["service"] == "web"

        deleted = await corral(nats_url, "delete", "service", "web", "dns", "peers")
        assert deleted.exit_code == 0, deleted.output
        assert deleted.stdout.split("\n")[:3] == [
            "service/web deleted",
            "service/dns deleted",
            "service/peers deleted",
        ]
        assert await keys(buckets[names.SERVICES_BUCKET]) == set()
        assert (await corral(nats_url, "get", "services")).stdout.strip() == "No services."
        missing = await corral(nats_url, "describe", "service", "web")
        assert missing.exit_code == 1 and "service 'web' not found" in missing.stderr


BAD_SERVICES = [
    pytest.param(["--selector", "app=x"], "missing --port", id="no-port"),
    pytest.param(["--port", "80"], "--selector", id="no-selector"),
    pytest.param(["--selector", "app", "--port", "80"], "--selector", id="selector-no-value"),
    pytest.param(["--selector", "app=x", "--port", "0"], "--port", id="port-zero"),
    pytest.param(["--selector", "app=x", "--port", "70000"], "--port", id="port-high"),
    pytest.param(["--selector", "app=x", "--port", "80:"], "--port", id="no-target"),
    pytest.param(["--selector", "app=x", "--port", "80:Bad_Name"], "--port", id="bad-target"),
    pytest.param(
        ["--selector", "app=x", "--port", "80", "--node-port", "30001"],
        "--node-port",
        id="node-port-without-type",
    ),
    pytest.param(
        ["--selector", "app=x", "--port", "80", "--type", "LoadBalancer"], "--type", id="type"
    ),
    pytest.param(
        ["--selector", "app=x", "--port", "80", "--cluster-ip", "banana"],
        "--cluster-ip",
        id="cluster-ip",
    ),
    pytest.param(
        ["--selector", "app=x", "--port", "80", "--protocol", "sctp"], "--protocol", id="sctp"
    ),
]


@pytest.mark.parametrize(("flags", "flag"), BAD_SERVICES)
async def test_a_bad_service_flag_is_refused_naming_it_and_nothing_is_sent(
    nats_url: str, buckets: dict[str, NatsBucket], flags: list[str], flag: str
) -> None:
    async with netmgr(nats_url, buckets) as responder:
        result = await corral(nats_url, "create", "service", "web", *flags)
        assert result.exit_code == 2, result.output
        assert flag in result.stderr, result.stderr
        assert "Traceback" not in result.output
        assert responder.requests == []
    assert await keys(buckets[names.SERVICES_BUCKET]) == set()


# --- expose ---------------------------------------------------------------------------


async def seed_deployment(
    buckets: dict[str, NatsBucket], name: str, template: dict[str, object]
) -> Deployment:
    deployment = Deployment(
        metadata=ObjectMeta(name=name, generation=1),
        spec=DeploymentSpec(
            replicas=2,
            template=msgspec.convert(template, ContainerTemplate, from_attributes=False),
        ),
    )
    await write_record(buckets[names.DEPLOYMENTS_BUCKET], f"default.{name}", deployment, None)
    return deployment


async def seed_status(
    buckets: dict[str, NatsBucket], deployment: Deployment, replica: str, ports: list[str]
) -> None:
    status = ReplicaStatus(
        replica=replica,
        deployment=deployment.metadata.name,
        node="n1",
        state=ReplicaState.RUNNING,
        template_hash=deployment.spec.template.template_hash(),
        image_ports=ports,
    )
    await write_record(buckets[names.REPLICA_STATUS_BUCKET], status.key, status, None)


async def test_expose_takes_the_templates_one_port_and_its_labels_and_first_network(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await seed_deployment(
        buckets,
        "my-app",
        {
            "image": "corral-test/web:1",
            "ports": [{"containerPort": 8080, "name": "http"}],
            "labels": {"app": "shop", "tier": "web"},
            "networks": ["backend", "default"],
        },
    )
    async with netmgr(nats_url, buckets):
        exposed = await corral(nats_url, "expose", "deployment", "my-app", "--type=NodePort")
        assert exposed.exit_code == 0, exposed.output
        assert exposed.stdout.strip() == "service/my-app created"
        service = await stored_service(buckets, "my-app")
        assert service is not None
        assert service.spec.type == "NodePort"
        assert service.spec.selector == {"app": "shop", "tier": "web"}
        assert service.spec.network == "backend"
        [port] = service.spec.ports
        assert (port.port, port.target, port.protocol, port.node_port) == (8080, 8080, "TCP", 30000)

        # --port alone: the Service's port; the target stays the container's.
        named = await corral(
            nats_url, "expose", "deploy/my-app", "--port", "80", "--name", "front",
            "--type", "nodeport", "--node-port", "31000",
        )  # fmt: skip
        assert named.exit_code == 0, named.output
        front = await stored_service(buckets, "front")
        assert front is not None
        [port] = front.spec.ports
        assert (port.port, port.target, port.node_port) == (80, 8080, 31000)

        again = await corral(nats_url, "expose", "deployment", "my-app")
        assert again.exit_code == 1 and "service 'my-app' already exists" in again.stderr


async def test_expose_falls_back_on_the_images_one_exposed_port_reported_by_replicas(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    deployment = await seed_deployment(buckets, "cache", {"image": "corral-test/redis:7"})
    async with netmgr(nats_url, buckets) as responder:
        early = await corral(nats_url, "expose", "deployment", "cache")
        assert early.exit_code == 1
        assert "none of its replicas has reported its image's exposed ports yet" in early.stderr
        assert "give --port" in early.stderr and "--target-port" in early.stderr
        assert responder.requests == []

        await seed_status(buckets, deployment, "cache-a", ["6379/tcp"])
        await seed_status(buckets, deployment, "cache-b", ["6379/tcp"])
        exposed = await corral(nats_url, "expose", "deployment", "cache")
        assert exposed.exit_code == 0, exposed.output
        service = await stored_service(buckets, "cache")
        assert service is not None
        assert service.spec.selector == {"app": "cache"} and service.spec.network == "default"
        [port] = service.spec.ports
        assert (port.port, port.target, port.protocol) == (6379, 6379, "TCP")
        assert service.spec.type == "ClusterIP"


async def test_expose_without_one_port_to_take_asks_for_port_and_target_port(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    several = await seed_deployment(buckets, "multi", {"image": "corral-test/multi:1"})
    await seed_status(buckets, several, "multi-a", ["80/tcp", "443/tcp"])
    none = await seed_deployment(buckets, "quiet", {"image": "corral-test/quiet:1"})
    await seed_status(buckets, none, "quiet-a", [])
    declared = await seed_deployment(
        buckets,
        "two",
        {
            "image": "x:1",
            "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
        },
    )
    del declared
    async with netmgr(nats_url, buckets) as responder:
        for name, why in (
            ("multi", "its image exposes several (443/tcp, 80/tcp)"),
            ("quiet", "its image exposes none"),
            ("two", "declares several container ports (80/TCP, 53/UDP)"),
        ):
            result = await corral(nats_url, "expose", "deployment", name)
            assert result.exit_code == 1, result.output
            assert why in result.stderr and "give --port" in result.stderr, result.stderr
        missing = await corral(nats_url, "expose", "deployment", "nowhere")
        assert missing.exit_code == 1 and "deployment 'nowhere' not found" in missing.stderr
        wrong_kind = await corral(nats_url, "expose", "node", "n1")
        assert wrong_kind.exit_code == 2 and "KIND" in wrong_kind.stderr
        no_type = await corral(nats_url, "expose", "deployment", "quiet", "--node-port", "30001")
        assert no_type.exit_code == 2 and "--node-port" in no_type.stderr
        bad_target = await corral(nats_url, "expose", "deployment", "quiet", "--target-port", "0")
        assert bad_target.exit_code == 2 and "--target-port" in bad_target.stderr
        assert responder.requests == []

        given = await corral(
            nats_url, "expose", "deployment", "quiet", "--port", "80", "--target-port", "8080",
            "--protocol", "UDP",
        )  # fmt: skip
        assert given.exit_code == 0, given.output
        service = await stored_service(buckets, "quiet")
        assert service is not None
        [port] = service.spec.ports
        assert (port.port, port.target, port.protocol) == (80, 8080, "UDP")


# --- apply -f and create deployment (the real scheduler) ----------------------------

MIXED = """\
apiVersion: corral/v1
kind: Deployment
metadata:
  name: my-app
spec:
  replicas: 1
  template:
    image: corral-test/web:1
    ports:
      - {containerPort: 8080, name: http}
    networks: [backend]
---
apiVersion: v1
kind: Service
metadata:
  name: my-app
  namespace: default
  annotations: {owner: team-a}
  labels: {app: my-app}
spec:
  type: NodePort
  selector: {app: my-app}
  sessionAffinity: None
  externalTrafficPolicy: Cluster
  network: backend
  ports:
    - name: http
      port: 80
      targetPort: http
      nodePort: 30080
      protocol: TCP
      appProtocol: http
status:
  loadBalancer: {}
---
apiVersion: v1
kind: Service
metadata: {name: peers}
spec:
  clusterIP: None
  selector: {app: my-app}
---
apiVersion: corral/v1
kind: Network
metadata: {name: backend}
spec: {subnet: 10.60.0.0/16}
"""


async def test_apply_of_kubernetes_services_mixed_with_deployments_warns_of_dropped_fields(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MIXED)
    async with running_scheduler(nats_url), netmgr(nats_url, buckets):
        applied = await corral(nats_url, "apply", "-f", str(path))
        assert applied.exit_code == 0, applied.output
        assert applied.stdout.strip().splitlines() == [
            "deployment/my-app created",
            "service/my-app created",
            "service/peers created",
            "network/backend created",
        ]
        assert applied.stderr.strip() == (
            f"warning: {path} (document 2) Service/my-app: dropped fields corral does not "
            "support: spec.sessionAffinity, spec.externalTrafficPolicy, "
            "spec.ports[0].appProtocol"
        )  # annotations are kept; the status is the server's, read-only
        service = await stored_service(buckets, "my-app")
        assert service is not None and service.api_version == "v1"
        [port] = service.spec.ports
        assert (port.name, port.port, port.target, port.node_port) == ("http", 80, "http", 30080)
        assert service.spec.network == "backend" and service.metadata.labels == {"app": "my-app"}
        peers = await stored_service(buckets, "peers")
        assert peers is not None and peers.spec.cluster_ip == "None" and peers.spec.ports == []
        assert await keys(buckets[names.NETWORKS_BUCKET]) == {"backend"}

        removed = await corral(nats_url, "delete", "-f", str(path))
        assert removed.exit_code == 0, removed.output
        assert await keys(buckets[names.SERVICES_BUCKET]) == set()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(("type: NodePort", "type: LoadBalancer"), "spec.type", id="load-balancer"),
        pytest.param(("port: 80", "port: 80000"), "spec.ports[0].port", id="port-range"),
        pytest.param(
            ("selector: {app: my-app}\n  sessionAffinity", "selector: {}\n  sessionAffinity"),
            "spec.selector",
            id="empty-selector",
        ),
        pytest.param(
            ("namespace: default", "namespace: Not_A_Label"), "metadata.namespace", id="namespace"
        ),
    ],
)
async def test_a_bad_kubernetes_service_in_a_file_stops_the_whole_file(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    change: tuple[str, str],
    expected: str,
) -> None:
    async with netmgr(nats_url, buckets) as responder:
        result = await corral(nats_url, "apply", "-f", "-", stdin=MIXED.replace(*change))
        assert result.exit_code == 1, result.output
        assert "(document 2)" in result.stderr and expected in result.stderr, result.stderr
        assert responder.requests == []
    assert await keys(buckets[names.DEPLOYMENTS_BUCKET]) == set()


async def test_create_deployment_takes_ports_and_networks_for_its_template(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_scheduler(nats_url):
        created = await corral(
            nats_url, "create", "deployment", "my-app", "--image", "corral-test/web:1",
            "--port", "8080", "--port", "53/udp", "--network", "backend", "--network", "default",
        )  # fmt: skip
        assert created.exit_code == 0, created.output
        stored = json.loads(
            (await corral(nats_url, "get", "deploy", "my-app", "-o", "json")).stdout
        )
        template = stored["spec"]["template"]  # apps/v1, as kubectl prints it
        assert template["spec"]["containers"][0]["ports"] == [
            {"containerPort": 8080},
            {"containerPort": 53, "protocol": "UDP"},
        ]
        assert template["metadata"]["annotations"]["corral/networks"] == "backend,default"
        for flags, flag in (
            (["--port", "http"], "--port"),
            (["--port", "80/sctp"], "--port"),
            (["--network", "Bad_Net"], "networks"),
            (["--port", "80", "--port", "80"], "ports"),
        ):
            bad = await corral(nats_url, "create", "deployment", "other", "--image", "x:1", *flags)
            assert bad.exit_code in (1, 2) and flag in bad.stderr, bad.output
        assert await keys(buckets[names.DEPLOYMENTS_BUCKET]) == {"default.my-app"}


async def test_scaling_a_service_or_network_is_refused_at_once_naming_the_kind(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with netmgr(nats_url, buckets) as responder:
        for kind in ("service", "network"):
            started = time.monotonic()
            result = await corral(nats_url, "scale", kind, "web", "--replicas", "2")
            assert result.exit_code == 2 and "KIND" in result.stderr, result.output
            assert "has no replicas" in result.stderr
            assert time.monotonic() - started < 3  # not a wait for an owner that never answers
        assert responder.requests == []
