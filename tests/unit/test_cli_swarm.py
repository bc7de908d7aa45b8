"""`corral service ...` (Docker Swarm's words): flag parsing, the mapping to a Deployment
and a NodePort Service, the refusals (each naming the flag), and the tables."""

from __future__ import annotations

from typing import Any

import click
import msgspec
import pytest
from click.testing import CliRunner

from corral.client.cli.main import cli
from corral.client.cli.swarm_commands import (
    TemplateFlags,
    UpdateFlags,
    container_template,
    ls_table,
    parse_scale,
    ps_table,
    swarm_service_manifest,
    updated_manifest,
)
from corral.client.cli.swarm_flags import (
    UNSUPPORTED,
    Published,
    deployment_manifest,
    health_probe,
    order_of,
    parse_constraints,
    parse_duration,
    parse_memory,
    parse_mount,
    parse_publish,
    parse_stop_signal,
    update_strategy,
)
from corral.contract.network_specs import Service
from corral.contract.specs import Deployment
from corral.contract.state import (
    DeploymentStatus,
    Placement,
    ReplicaState,
    ReplicaStatus,
)

# An unreachable NATS: every refusal below must come before any connection is tried.
NATS = "nats://127.0.0.1:1"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, ["--nats", NATS, "--timeout", "0.2", *args])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1m30s", 90), ("1.5h", 5400), ("300ms", 0.3), ("0", 0), ("2h45m", 9900)],
)
def test_docker_durations_are_read_as_go_does(text: str, seconds: float) -> None:
    assert parse_duration(text, "--update-delay") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "abc", "", "1x", "s", "-5s"])
def test_a_duration_without_a_unit_or_with_junk_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(click.BadParameter) as error:
        parse_duration(text, "--update-delay")
    assert error.value.param_hint == "--update-delay"


@pytest.mark.parametrize(
    ("text", "quantity"),
    [("64M", "64Mi"), ("1g", "1Gi"), ("512k", "512Ki"), ("1.5G", "1536Mi"), ("100", 100)],
)
def test_docker_memory_sizes_are_1024_based(text: str, quantity: object) -> None:
    assert parse_memory(text, "--limit-memory") == quantity


@pytest.mark.parametrize(
    ("text", "published"),
    [
        ("8080:80", Published(80, 8080, "TCP")),
        ("30053:53/udp", Published(53, 30053, "UDP")),
        ("published=8080,target=80", Published(80, 8080, "TCP")),
        ("target=53,published=30053,protocol=udp,mode=ingress", Published(53, 30053, "UDP")),
        ("80", Published(80, 0, "TCP")),
    ],
)
def test_publish_takes_both_of_dockers_forms(text: str, published: Published) -> None:
    assert parse_publish(text) == published


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("published=8080", "no target"),
        ("8080:", "no target"),
        (":80", "no published port"),
        ("published=8080,target=80,mode=host", "ingress mode only"),
        ("127.0.0.1:8080:80", "an IP before the port"),
        ("70000:80", "not a port number"),
        ("8080:80/sctp", "tcp or udp"),
        ("published=1,tgt=2", "expected published="),
    ],
)
def test_a_publish_without_a_target_or_of_another_mode_is_refused(text: str, words: str) -> None:
    with pytest.raises(click.BadParameter) as error:
        parse_publish(text)
    assert error.value.param_hint == "--publish" and words in error.value.message


def test_mounts_are_claims_or_the_replicas_own_directories() -> None:
    claim = parse_mount("type=volume,source=notes,target=/data,readonly")
    assert claim.volume == {
        "name": "notes",
        "persistentVolumeClaim": {"claimName": "notes", "readOnly": True},
    }
    assert claim.mount == {"name": "notes", "mountPath": "/data", "readOnly": True}
    anonymous = parse_mount("type=volume,dst=/var/cache")
    assert anonymous.volume == {"name": "var-cache", "emptyDir": {}}
    tmpfs = parse_mount("type=tmpfs,target=/run,tmpfs-size=64m")
    assert tmpfs.volume == {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}


@pytest.mark.parametrize(
    "text", ["type=bind,source=/etc,target=/etc", "source=x", "type=volume,source=x,target=/d,z=1"]
)
def test_a_bind_mount_or_a_mount_without_target_is_refused(text: str) -> None:
    with pytest.raises(click.BadParameter) as error:
        parse_mount(text)
    assert error.value.param_hint == "--mount"


def test_constraints_on_node_labels_are_a_node_selector_and_others_are_refused() -> None:
    assert parse_constraints(["node.labels.disk==ssd", "node.labels.zone == 2"]) == {
        "disk": "ssd",
        "zone": "2",
    }
    for text in ("node.labels.disk!=ssd", "node.hostname==a", "node.role==manager"):
        with pytest.raises(click.BadParameter) as error:
            parse_constraints([text])
        assert error.value.param_hint == "--constraint"
    with pytest.raises(click.BadParameter, match="both"):
        parse_constraints(["node.labels.disk==ssd", "node.labels.disk==hdd"])


def test_stop_signals_take_dockers_spellings() -> None:
    assert [parse_stop_signal(s) for s in ("SIGINT", "term", "15", "sigquit")] == [
        "SIGINT",
        "SIGTERM",
        "SIGTERM",
        "SIGQUIT",
    ]
    with pytest.raises(click.BadParameter):
        parse_stop_signal("SIGSTOP")


@pytest.mark.parametrize(
    ("parallelism", "order", "rolling"),
    [
        (1, "stop-first", {"maxSurge": 0, "maxUnavailable": 1}),
        (2, "start-first", {"maxSurge": 2, "maxUnavailable": 0}),
        (0, "stop-first", {"maxSurge": 0, "maxUnavailable": "100%"}),
        (0, "start-first", {"maxSurge": "100%", "maxUnavailable": 0}),
    ],
)
def test_update_parallelism_and_order_are_the_rolling_update_bounds(
    parallelism: int, order: str, rolling: dict[str, Any]
) -> None:
    strategy = update_strategy(parallelism, order)
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": rolling}
    assert order_of(strategy) == (parallelism, order)


def test_health_cmd_is_a_shell_exec_probe_with_dockers_timings_and_defaults() -> None:
    assert health_probe(
        "wget -qO- localhost", interval="5s", timeout="1500ms", retries=2, start_period="1m"
    ) == {
        "exec": {"command": ["/bin/sh", "-c", "wget -qO- localhost"]},
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 2,
        "initialDelaySeconds": 60,
    }
    defaults = health_probe("true", interval=None, timeout=None, retries=None, start_period=None)
    assert (defaults["periodSeconds"], defaults["timeoutSeconds"]) == (30, 30)
    assert defaults["failureThreshold"] == 3


def test_create_maps_every_flag_onto_one_valid_deployment() -> None:
    template = container_template(
        TemplateFlags(
            image="corral-test/busybox:1",
            command=("httpd", "-f", "-p", "80"),
            env=("A=1",),
            networks=("backend",),
            mounts=("type=volume,source=notes,target=/data",),
            constraints=("node.labels.disk==ssd",),
            limit_cpu="0.5",
            limit_memory="64M",
            reserve_cpu="0.25",
            reserve_memory="32M",
            health_cmd="true",
            health_interval="2s",
            stop_signal="SIGINT",
            stop_grace_period="1m",
        )
    )
    manifest = deployment_manifest(
        "web",
        template=template,
        replicas=3,
        strategy=update_strategy(2, "start-first"),
        min_ready_seconds=10,
        auto_rollback=True,
        labels={},
    )
    deployment = msgspec.convert(manifest, Deployment)
    spec, made = deployment.spec, deployment.spec.template
    assert made.args == ["httpd", "-f", "-p", "80"] and made.command is None
    assert made.env == {"A": "1"} and made.networks == ["backend"]
    assert made.node_selector == {"disk": "ssd"}
    assert made.volume_mounts[0].mount_path == "/data"
    assert made.resources.limits.cpu_millis == 500
    assert made.resources.limits.memory_bytes == 64 * 2**20
    assert made.resources.requests.memory_bytes == 32 * 2**20
    assert made.readiness_probe == made.liveness_probe and made.readiness_probe is not None
    assert made.stop_signal == "SIGINT" and made.termination_grace_period_seconds == 60
    assert spec.replicas == 3 and spec.min_ready_seconds == 10
    assert spec.auto_rollback is not None
    assert spec.strategy.rolling_update is not None
    assert spec.strategy.rolling_update.max_surge == 2


def test_publish_is_a_node_port_service_at_exactly_the_published_port() -> None:
    template = {"image": "x", "networks": ["backend"]}
    manifest = swarm_service_manifest(
        "web", template, [Published(80, 30080, "TCP"), Published(53, 0, "UDP")]
    )
    service = msgspec.convert(manifest, Service)
    assert service.spec.type == "NodePort" and service.spec.selector == {"app": "web"}
    assert service.spec.network == "backend"
    assert [(p.port, p.node_port, p.protocol) for p in service.spec.ports] == [
        (80, 30080, "TCP"),
        (53, 0, "UDP"),
    ]


@pytest.mark.parametrize("flag", sorted(UNSUPPORTED))
def test_each_unsupported_docker_flag_is_refused_naming_it(flag: str) -> None:
    takes_value, why = UNSUPPORTED[flag]
    args = [flag, "x"] if takes_value else [flag]
    for command in (["service", "create", "--name", "web"], ["service", "update"]):
        result = run(*command, *args, "busybox")
        assert result.exit_code == 2, result.output
        assert f"{flag} is not supported by corral: {why}" in result.output


def test_an_unsupported_flag_after_the_image_is_the_commands_argument() -> None:
    result = run("service", "create", "--name", "web", "bad_Image!", "--init")
    assert result.exit_code == 2 and "IMAGE" in result.output and "--init" not in result.output


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--name", "Bad_Name"], "--name"),
        (["--env", "1X=y"], "--env"),
        (["--env", "NOEQUALS"], "--env"),
        (["--network", "Bad!"], "--network"),
        (["--limit-memory", "1k"], "--limit-memory"),
        (["--limit-memory", "lots"], "--limit-memory"),
        (["--limit-cpu", "half"], "--limit-cpu"),
        (["--reserve-cpu", "2", "--limit-cpu", "1"], "--reserve-cpu"),
        (["--constraint", "node.labels.disk==s s d"], "--constraint"),
        (["--update-delay", "700s"], "--update-delay"),
        (["--update-delay", "10"], "--update-delay"),
        (["--update-order", "sideways"], "--update-order"),
        (["--update-failure-action", "continue"], "--update-failure-action"),
        (["--health-interval", "5s"], "--health-cmd"),
        (["--health-cmd", "true", "--health-timeout", "x"], "--health-timeout"),
        (["--stop-grace-period", "2h"], "--stop-grace-period"),
        (["--stop-signal", "SIGSTOP"], "--stop-signal"),
        (["--publish", "published=8080"], "--publish"),
        (["--publish", "8080:80", "--publish", "8081:80"], "--publish"),
        (["--mount", "type=bind,src=/,dst=/host"], "--mount"),
        (["--replicas", "-1"], "--replicas"),
        (["--mode", "global"], "--mode"),
    ],
)
def test_bad_create_flags_are_refused_naming_the_flag(args: list[str], flag: str) -> None:
    result = run("service", "create", "--name", "web", *args, "corral-test/busybox:1")
    assert result.exit_code != 0, result.output
    assert flag in result.output, result.output
    assert "NATS" not in result.output  # refused before anything is sent


def test_scale_arguments_are_service_equals_count() -> None:
    assert parse_scale(["web=3", "api=0"]) == [("web", 3), ("api", 0)]
    result = run("service", "scale", "web")
    assert result.exit_code == 2 and "SERVICE=REPLICAS" in result.output


def stored(**template: Any) -> dict[str, Any]:
    return {
        "apiVersion": "corral/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "generation": 2},
        "spec": {
            "replicas": 2,
            "template": {"image": "app:1", "env": {"A": "1", "B": "2"}, **template},
            "strategy": update_strategy(2, "start-first"),
        },
    }


def test_update_changes_only_what_its_flags_say() -> None:
    flags = UpdateFlags(
        image="app:2",
        replicas=5,
        env_add=("C=3", "A=9"),
        env_rm=("B",),
        constraint_add=("node.labels.disk==ssd",),
        update_delay="5s",
        update_failure_action="rollback",
        force=True,
    )
    changed = updated_manifest(stored(), flags, "2026-01-01T00:00:00Z")
    template = changed["spec"]["template"]
    assert template["image"] == "app:2" and template["env"] == {"A": "9", "C": "3"}
    assert template["nodeSelector"] == {"disk": "ssd"}
    assert template["restartedAt"] == "2026-01-01T00:00:00Z"
    assert changed["spec"]["replicas"] == 5 and changed["spec"]["minReadySeconds"] == 5
    assert changed["spec"]["autoRollback"] == {}
    # the stored parallelism and order stay unless a flag changes one of them
    assert changed["spec"]["strategy"] == update_strategy(2, "start-first")
    order = updated_manifest(stored(), UpdateFlags(update_order="stop-first"), "")
    assert order["spec"]["strategy"] == update_strategy(2, "stop-first")
    assert updated_manifest(stored(), UpdateFlags(), "") == stored()
    removed = updated_manifest(
        stored(nodeSelector={"disk": "ssd", "zone": "1"}),
        UpdateFlags(constraint_rm=("node.labels.disk==ssd",)),
        "",
    )
    assert removed["spec"]["template"]["nodeSelector"] == {"zone": "1"}


def status(**fields: Any) -> DeploymentStatus:
    base: dict[str, Any] = {"name": "web", "observed_generation": 2, "replicas": 2}
    return DeploymentStatus(**{**base, **fields})


def test_ls_and_ps_tables_are_dockers() -> None:
    deployment = msgspec.convert(stored(), Deployment)
    service = msgspec.convert(
        swarm_service_manifest("web", {}, [Published(80, 30080, "TCP")]), Service
    )
    listed = ls_table({"web": deployment}, {"web": status(ready=1)}, {"web": service})
    header, row = listed.splitlines()
    assert header.split() == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    assert row.split()[1:] == ["web", "replicated", "1/2", "app:1", "*:30080->80/tcp"]

    template = deployment.spec.template
    placement = Placement(
        replica="web-abcde",
        deployment="web",
        node="n1",
        template=template,
        template_hash=template.template_hash(),
        generation=2,
        created_at=90.0,
    )
    running = ReplicaStatus(
        replica="web-abcde",
        deployment="web",
        node="n1",
        state=ReplicaState.RUNNING,
        container_id="0123456789abcdef",
        started_at=95.0,
    )
    table = ps_table(
        deployment,
        status(pending=1, pending_reason="no node has labels disk=ssd"),
        {placement.key: placement},
        {placement.key: running},
        [service],
        now=100.0,
    )
    lines = table.splitlines()
    assert [cell.strip() for cell in lines[0].split("   ") if cell.strip()] == [
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]
    assert lines[1].split() == [
        "0123456789ab",
        "web-abcde",
        "app:1",
        "n1",
        "Running",
        "Running",
        "5s",
        "ago",
        "*:30080->80/tcp",
    ]
    assert "Pending" in lines[2] and lines[2].endswith("no node has labels disk=ssd")
