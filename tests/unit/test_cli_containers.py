"""`corral create container` flags, checked on the payload it would send; refusals name
the flag; `get containers` shows a container on a lost node as NodeLost (not moved),
an exited one as Completed or Exited(N); `create service --container` needs ports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest
from click.testing import CliRunner

from corral.client.api import ApiKind, CorralError
from corral.client.cli import container_commands
from corral.client.cli.container_commands import container_service_parts, render_containers
from corral.client.cli.kube_apps import deployment_from_apps, deployment_to_apps
from corral.client.cli.kube_storage import RefusedField
from corral.client.cli.main import cli
from corral.client.cli.runner import Settings
from corral.client.cli.views import ClusterView
from corral.contract.codec import decode
from corral.contract.events import Reply
from corral.contract.specs import (
    CONTAINER_LABEL,
    ContainerPort,
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
)
from corral.contract.state import Node, NodeCapacity, Placement, ReplicaState, ReplicaStatus

NOW = 10_000.0


class FakeClient:
    """Stands in for CorralClient: records requests, knows the Deployments given."""

    def __init__(self, stored: dict[str, Deployment] | None = None) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.stored = stored or {}

    async def deployment(self, name: str) -> Deployment | None:
        return self.stored.get(name)

    async def request(self, kind: ApiKind, verb: str, payload: bytes) -> Reply:
        self.sent.append((kind.kind, verb, payload))
        return Reply(ok=True, kind=kind.kind, name="web", revision=1, generation=1)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()

    def run_with_client(_: Settings, command: Callable[[Any], Awaitable[Any]]) -> Any:
        return anyio.run(command, client)

    monkeypatch.setattr(container_commands, "run_with_client", run_with_client)
    return client


def test_create_container_sends_one_never_moved_replica_with_its_restart_policy(
    fake: FakeClient,
) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "create", "container", "web", "--image=corral-test/busybox:1", "--env", "A=1",
            "--port", "8080", "--port", "53/udp", "--restart", "onfailure",
            "--", "httpd", "-f", "-p", "8080",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "container/web created"
    [(kind, verb, payload)] = fake.sent
    assert (kind, verb) == ("Deployment", "apply")
    sent = decode(payload, Deployment)
    assert sent.metadata.labels == {CONTAINER_LABEL: "true"}
    assert (sent.spec.replicas, sent.spec.replacement) == (1, "Never")
    template = sent.spec.template
    assert template.restart_policy == "OnFailure"
    assert template.command == ["httpd", "-f", "-p", "8080"]
    assert template.env == {"A": "1"}
    assert [(p.container_port, p.protocol) for p in template.ports] == [(8080, "TCP"), (53, "UDP")]
    assert template.labels == {CONTAINER_LABEL: "web"}


def test_the_restart_policy_defaults_to_always(fake: FakeClient) -> None:
    result = CliRunner().invoke(cli, ["create", "container", "web", "--image=busybox"])
    assert result.exit_code == 0, result.output
    assert decode(fake.sent[0][2], Deployment).spec.template.restart_policy == "Always"


@pytest.mark.parametrize(
    ("args", "flag", "message"),
    [
        (["--image=UPPER::x"], "--image", "not a valid image reference"),
        (["--image=busybox", "--env", "novalue"], "--env", "not NAME=VALUE"),
        (["--image=busybox", "--env", "1BAD=x"], "--env", "environment variable name"),
        (["--image=busybox", "--port", "http"], "--port", "not a port number"),
        (["--image=busybox", "--port", "80/sctp"], "--port", "expected tcp or udp"),
        (["--image=busybox", "--restart", "Sometimes"], "--restart", "Sometimes"),
        (["--image=busybox", "--network", "Bad_Net"], "--network", "not a DNS label"),
        ([], "--image", "Missing option"),
    ],
)
def test_create_container_refuses_bad_flags_locally_naming_the_flag(
    fake: FakeClient, args: list[str], flag: str, message: str
) -> None:
    result = CliRunner().invoke(cli, ["create", "container", "web", *args])
    assert result.exit_code == 2, result.output
    assert flag in result.stderr and message in result.stderr, result.stderr
    assert fake.sent == []


def test_create_container_refuses_a_name_taken_by_a_deployment(fake: FakeClient) -> None:
    fake.stored["web"] = deployment("web", container=False)
    result = CliRunner().invoke(cli, ["create", "container", "web", "--image=busybox"])
    # (the real runner prints a CorralError as `Error: ...`, exit 1)
    assert isinstance(result.exception, CorralError)
    assert "deployment 'web' already exists" in str(result.exception)
    assert fake.sent == []


def test_delete_container_refuses_a_deployment_that_is_not_a_container(fake: FakeClient) -> None:
    fake.stored["app"] = deployment("app", container=False)
    fake.stored["web"] = deployment("web")
    result = CliRunner().invoke(cli, ["delete", "container", "app", "web"])
    assert result.exit_code == 1
    assert "container 'app' is a deployment, not a container" in result.stderr
    assert result.stdout.strip() == "container/web deleted"
    assert [(verb, payload) for _, verb, payload in fake.sent] == [("delete", b'{"name":"web"}')]


def deployment(name: str, *, container: bool = True, ports: list[int] = ()) -> Deployment:  # type: ignore[assignment]
    return Deployment(
        metadata=ObjectMeta(name=name, labels={CONTAINER_LABEL: "true"} if container else {}),
        spec=DeploymentSpec(
            replicas=1,
            replacement="Never" if container else "Fast",
            template=ContainerTemplate(
                image="busybox",
                labels={CONTAINER_LABEL: name} if container else {},
                ports=[ContainerPort(container_port=p) for p in ports],
            ),
        ),
    )


def test_a_service_for_a_container_selects_it_on_its_declared_ports() -> None:
    client = FakeClient({"web": deployment("web", ports=[8080, 9090])})
    selector, ports, network = anyio.run(container_service_parts, client, "web", ())
    assert selector == {CONTAINER_LABEL: "web"}
    assert ports == [{"port": 8080}, {"port": 9090}]
    assert network == "default"
    # --port wins over the declared ones
    _, given, _ = anyio.run(container_service_parts, client, "web", ("80:8080",))
    assert given == [{"port": 80, "targetPort": 8080}]


def test_a_service_for_a_container_without_ports_is_refused_naming_port() -> None:
    client = FakeClient({"web": deployment("web"), "app": deployment("app", container=False)})
    with pytest.raises(CorralError, match=r"declares no port .* give --port"):
        anyio.run(container_service_parts, client, "web", ())
    with pytest.raises(CorralError, match="--container 'app' is a deployment"):
        anyio.run(container_service_parts, client, "app", ())
    with pytest.raises(CorralError, match="container 'gone' not found"):
        anyio.run(container_service_parts, client, "gone", ())


def test_create_service_takes_either_selector_or_container() -> None:
    both = CliRunner().invoke(
        cli, ["create", "service", "s", "--selector", "a=b", "--container", "web"]
    )
    assert both.exit_code == 2 and "not both" in both.stderr
    neither = CliRunner().invoke(cli, ["create", "service", "s", "--port", "80"])
    assert neither.exit_code == 2 and "--selector" in neither.stderr


def view_with(
    state: ReplicaState, *, exit_code: int | None = None, ready: bool = True
) -> ClusterView:
    web = deployment("web", ports=[8080])
    template = web.spec.template
    placement = Placement(
        replica="web-abcde",
        deployment="web",
        node="n1",
        template=template,
        template_hash=template.template_hash(),
        generation=1,
        created_at=NOW - 30,
    )
    status = ReplicaStatus(
        replica="web-abcde",
        deployment="web",
        node="n1",
        state=state,
        exit_code=exit_code,
        restarts=2,
    )
    node = Node(
        name="n1",
        capacity=NodeCapacity(cpu_millis=1000, memory_bytes=2**30),
        ready=ready,
        heartbeat_at=NOW - 1,
    )
    return ClusterView(
        deployments={"web": web, "app": deployment("app", container=False)},
        nodes={"n1": node},
        placements={placement.key: placement},
        replica_statuses={placement.key: status},
    )


@pytest.mark.parametrize(
    ("state", "exit_code", "ready", "shown"),
    [
        (ReplicaState.RUNNING, None, True, "Running"),
        (ReplicaState.RUNNING, None, False, "NodeLost"),
        (ReplicaState.EXITED, 0, True, "Completed"),
        (ReplicaState.EXITED, 3, True, "Exited(3)"),
    ],
)
def test_get_containers_lists_only_containers_with_their_status(
    state: ReplicaState, exit_code: int | None, ready: bool, shown: str
) -> None:
    text = render_containers(view_with(state, exit_code=exit_code, ready=ready), None, "table", NOW)
    rows = [line.split() for line in text.splitlines()]
    assert rows == [
        ["NAME", "IMAGE", "NODE", "STATUS", "RESTARTS", "AGE", "PORTS"],
        ["web", "busybox", "n1", shown, "2", "30s", "8080/TCP"],
    ]


def test_a_container_whose_node_went_silent_shows_node_lost() -> None:
    silent = view_with(ReplicaState.RUNNING)
    text = render_containers(silent, "web", "table", NOW + 60)
    assert text.splitlines()[1].split()[3] == "NodeLost"
    with pytest.raises(CorralError, match="'app' is a deployment, not a container"):
        render_containers(silent, "app", "table", NOW)


def test_a_container_comes_back_unchanged_through_its_apps_v1_manifest_and_only_it() -> None:
    container = decode(
        msgspec.json.encode(
            container_commands.container_manifest(
                "job", image="busybox", restart="Never", ports=("8080",), command=("true",)
            )
        ),
        Deployment,
    )
    document = deployment_to_apps(container, server=False)
    assert document["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    back, dropped = deployment_from_apps(document)
    assert dropped == []
    assert decode(msgspec.json.encode(back), Deployment) == container
    # A Deployment that is no container still restarts Always (Kubernetes' rule).
    document = deployment_to_apps(deployment("app", container=False), server=False)
    document["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    with pytest.raises(RefusedField) as refused:
        deployment_from_apps(document)
    assert refused.value.field == "spec.template.spec.restartPolicy"
