"""`corral service ...`: Docker Swarm's service commands with Docker's syntax (docs/swarm.md).

A Swarm service is a corral Deployment of the same name, plus (with --publish) a
NodePort Service of that name whose node ports are exactly the published ports, on
every node, as Swarm's routing mesh. Flags are parsed and mapped in swarm_flags.py;
without --detach, create, update, scale and rollback wait for the rollout and exit 1
when it fails (its progress deadline passed, or it was rolled back), as Docker does."""

from __future__ import annotations

import datetime
import io
import json
import secrets
import string
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import click
import msgspec

from corral.client.api import CorralClient, CorralError, RequestRejected, find_kind, to_builtins
from corral.client.cli.logs_commands import log_options, run_logs
from corral.client.cli.net_requests import create_only, validated
from corral.client.cli.progress import follow_rollout
from corral.client.cli.rollout_commands import read_deployment, read_history, undo_target
from corral.client.cli.runner import run_with_client, settings_of
from corral.client.cli.service_commands import service_manifest
from corral.client.cli.swarm_flags import (
    DEPLOYMENT_FLAGS,
    DOCKER_UPDATE_PARALLELISM,
    SERVICE_FLAGS,
    Published,
    deployment_manifest,
    env_pairs,
    health_probe,
    order_of,
    parse_constraints,
    parse_cpu,
    parse_memory,
    parse_mount,
    parse_publish,
    parse_stop_signal,
    refuse_unsupported,
    update_strategy,
    whole_seconds,
)
from corral.client.cli.tables import age_since, render_table
from corral.contract import names
from corral.contract.events import REASON_CONFLICT, REASON_NOT_FOUND, Reply
from corral.contract.network_specs import Service
from corral.contract.specs import (
    CHANGE_CAUSE_ANNOTATION,
    DEFAULT_NETWORK,
    DeleteRequest,
    Deployment,
    ScaleRequest,
    labels_match,
    replica_labels,
    replica_networks,
)
from corral.contract.state import (
    DeploymentStatus,
    Placement,
    ReplicaStatus,
)

ATTEMPTS = 5


class _DockerCommand(click.Command):
    """Refuses Docker's flags corral does not take with an error naming the flag and
    why (swarm_flags.UNSUPPORTED), before click would only say "no such option"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        valued = {
            opt
            for param in self.params
            if isinstance(param, click.Option) and not param.is_flag
            for opt in param.opts
        }
        refuse_unsupported(args, valued)
        return super().parse_args(ctx, args)


@click.group("service")
def service() -> None:
    """Docker Swarm's service commands (create, ls, ps, inspect, scale, update, rollback,
    rm). A service is a Deployment, plus a NodePort Service when it publishes ports."""


# --- waiting: the rollout's progress (corral.client.cli.progress) ------------------------


async def _wait(client: CorralClient, name: str, quiet: bool) -> str | None:
    """Follow the rollout of service `name`'s current spec, its progress on stderr (none
    when `quiet`): None once complete, else why it failed (its progress deadline passed,
    or it was rolled back automatically)."""
    out: TextIO = io.StringIO() if quiet else sys.stderr
    outcome = await follow_rollout(client, name, client.namespace, out=out)
    return None if outcome.ok else outcome.message


def _stderr(line: str) -> None:
    click.echo(line, err=True)


def _failed(name: str, why: str | None) -> None:
    if why is not None:
        raise click.ClickException(f"service {name}: {why}")


# --- create -----------------------------------------------------------------------------


def default_name(image: str) -> str:
    """Docker names an unnamed service at random; corral: the image's name and 5 letters."""
    base = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    base = "".join(c if c.isalnum() else "-" for c in base.lower()).strip("-")[:50] or "service"
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return f"{base}-{suffix}"


@dataclass
class TemplateFlags:
    """The flags of `service create` that make the container template."""

    image: str
    command: Sequence[str] = ()
    env: Sequence[str] = ()
    networks: Sequence[str] = ()
    mounts: Sequence[str] = ()
    constraints: Sequence[str] = ()
    limit_cpu: str | None = None
    limit_memory: str | None = None
    reserve_cpu: str | None = None
    reserve_memory: str | None = None
    health_cmd: str | None = None
    health_interval: str | None = None
    health_timeout: str | None = None
    health_retries: int | None = None
    health_start_period: str | None = None
    stop_signal: str | None = None
    stop_grace_period: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def resources_of(
    limit_cpu: str | None,
    limit_memory: str | None,
    reserve_cpu: str | None,
    reserve_memory: str | None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """--limit-* are the engine's limits, --reserve-* what the scheduler reserves (requests)."""
    resources: dict[str, Any] = {k: dict(v) for k, v in (base or {}).items()}
    for section, key, value in (
        ("limits", "cpu", limit_cpu and parse_cpu(limit_cpu, "--limit-cpu")),
        ("limits", "memory", limit_memory and parse_memory(limit_memory, "--limit-memory")),
        ("requests", "cpu", reserve_cpu and parse_cpu(reserve_cpu, "--reserve-cpu")),
        ("requests", "memory", reserve_memory and parse_memory(reserve_memory, "--reserve-memory")),
    ):
        if value:
            resources.setdefault(section, {})[key] = value
    return resources


def container_template(flags: TemplateFlags) -> dict[str, Any]:
    """The template `service create` makes. COMMAND [ARG...] replaces the image's CMD
    (Docker's meaning: the entrypoint stays), so it goes to `args`."""
    template: dict[str, Any] = {"image": flags.image}
    if flags.command:
        template["args"] = list(flags.command)
    if flags.env:
        template["env"] = env_pairs(flags.env, "--env")
    if flags.networks:
        template["networks"] = list(flags.networks)
    if flags.mounts:
        mounts = [parse_mount(text) for text in flags.mounts]
        template["volumes"] = [m.volume for m in mounts]
        template["volumeMounts"] = [m.mount for m in mounts]
    if flags.constraints:
        template["nodeSelector"] = parse_constraints(flags.constraints)
    resources = resources_of(
        flags.limit_cpu, flags.limit_memory, flags.reserve_cpu, flags.reserve_memory
    )
    if resources:
        template["resources"] = resources
    timings = (
        flags.health_interval,
        flags.health_timeout,
        flags.health_retries,
        flags.health_start_period,
    )
    if flags.health_cmd:
        probe = health_probe(
            flags.health_cmd,
            interval=flags.health_interval,
            timeout=flags.health_timeout,
            retries=flags.health_retries,
            start_period=flags.health_start_period,
        )
        template["readinessProbe"] = probe
        template["livenessProbe"] = probe
    elif any(value is not None for value in timings):
        raise click.BadParameter(
            "the --health-* timings need --health-cmd (the check to run)",
            param_hint="--health-cmd",
        )
    if flags.stop_signal:
        template["stopSignal"] = parse_stop_signal(flags.stop_signal)
    if flags.stop_grace_period:
        template["terminationGracePeriodSeconds"] = whole_seconds(
            flags.stop_grace_period, "--stop-grace-period"
        )
    return template


def published_ports(items: Iterable[str], flag: str = "--publish") -> list[Published]:
    ports = [parse_publish(text, flag) for text in items]
    seen: set[tuple[int, str]] = set()
    for port in ports:
        if (port.target, port.protocol) in seen:
            raise click.BadParameter(
                f"target port {port.target}/{port.protocol.lower()} is published twice",
                param_hint=flag,
            )
        seen.add((port.target, port.protocol))
    return ports


def swarm_service_manifest(
    name: str, template: dict[str, Any], ports: Sequence[Published]
) -> dict[str, Any]:
    """The NodePort Service of a published service: each target port on the Service's
    virtual IP, and on every node at exactly the published port (0: netmgr picks one)."""
    networks = template.get("networks") or []
    labels = template.get("labels") or {"app": name}
    return service_manifest(
        name,
        selector=dict(labels),
        ports=[port.service_port() for port in ports],
        type_="NodePort",
        node_port=None,
        protocol=None,
        network=networks[0] if networks else None,
    )


_update_options = [
    click.option(
        "--update-parallelism",
        type=click.IntRange(min=0),
        help="Replicas replaced at a time (0: all at once). Default 1.",
    ),
    click.option(
        "--update-delay",
        metavar="DURATION",
        help="A new replica counts as available only after running this long (10s, 1m30s).",
    ),
    click.option(
        "--update-order",
        type=click.Choice(["stop-first", "start-first"]),
        help="stop-first (default): stop old replicas, then start new ones; start-first: "
        "start new ones first.",
    ),
    click.option(
        "--update-failure-action",
        type=click.Choice(["pause", "rollback"]),
        help="pause (default): a failed rollout stays as it is; rollback: go back to the "
        "last fully available template.",
    ),
]

_wait_options = [
    click.option("--detach", "-d", is_flag=True, help="Do not wait for the rollout; exit at once."),
    click.option("--quiet", "-q", is_flag=True, help="Print no progress."),
]


def _with(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@service.command("create", cls=_DockerCommand, context_settings={"allow_interspersed_args": False})
@click.option("--name", help="The service's name (default: the image's name and 5 letters).")
@click.option("--replicas", type=click.IntRange(min=0), default=1, show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["replicated"]),
    default="replicated",
    help="replicated only (corral has no global services or jobs).",
)
@click.option(
    "--publish",
    "-p",
    "publish",
    multiple=True,
    metavar="PUBLISHED:TARGET[/udp]",
    help="TARGET (the container's port) on every node at port PUBLISHED (a NodePort "
    "Service); or published=P,target=T[,protocol=udp]. Repeatable.",
)
@click.option("--network", "networks", multiple=True, help="A corral network. Repeatable.")
@click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    metavar="type=volume,source=CLAIM,target=/PATH[,readonly]",
    help="A PersistentVolumeClaim (type=volume with a source), a directory of the "
    "replica's own (type=volume without one) or a tmpfs (type=tmpfs). Repeatable.",
)
@click.option(
    "--constraint",
    "constraints",
    multiple=True,
    metavar="node.labels.KEY==VALUE",
    help="Only nodes with this label (a nodeSelector). Repeatable: every one must hold.",
)
@click.option("--limit-cpu", metavar="CPUS", help="e.g. 0.5: the engine's CPU limit.")
@click.option("--limit-memory", metavar="BYTES", help="e.g. 64M: the engine's memory limit.")
@click.option("--reserve-cpu", metavar="CPUS", help="CPU the scheduler reserves on a node.")
@click.option("--reserve-memory", metavar="BYTES", help="Memory the scheduler reserves.")
@click.option("--health-cmd", metavar="CMD", help="A shell command: 0 is healthy (a probe).")
@click.option("--health-interval", metavar="DURATION", help="Default 30s.")
@click.option("--health-timeout", metavar="DURATION", help="Default 30s.")
@click.option("--health-retries", type=click.IntRange(1, 100), help="Default 3.")
@click.option("--health-start-period", metavar="DURATION", help="Checks start after this.")
@_with(_update_options)
@click.option("--stop-signal", metavar="SIGNAL", help="e.g. SIGINT (default: the image's).")
@click.option(
    "--stop-grace-period", metavar="DURATION", help="Before SIGKILL (default: corral's 30s)."
)
@_with(_wait_options)
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create(
    ctx: click.Context,
    name: str | None,
    replicas: int,
    mode: str,
    publish: tuple[str, ...],
    networks: tuple[str, ...],
    env: tuple[str, ...],
    labels: tuple[str, ...],
    mounts: tuple[str, ...],
    constraints: tuple[str, ...],
    limit_cpu: str | None,
    limit_memory: str | None,
    reserve_cpu: str | None,
    reserve_memory: str | None,
    health_cmd: str | None,
    health_interval: str | None,
    health_timeout: str | None,
    health_retries: int | None,
    health_start_period: str | None,
    update_parallelism: int | None,
    update_delay: str | None,
    update_order: str | None,
    update_failure_action: str | None,
    stop_signal: str | None,
    stop_grace_period: str | None,
    detach: bool,
    quiet: bool,
    image: str,
    command: tuple[str, ...],
) -> None:
    """Create a service: corral service create [OPTIONS] IMAGE [COMMAND [ARG...]].

    Prints its name; without --detach, waits until every replica runs and is ready
    (exit 1 if the rollout fails)."""
    service_name = name or default_name(image)
    template = container_template(
        TemplateFlags(
            image=image,
            command=command,
            env=env,
            networks=networks,
            mounts=mounts,
            constraints=constraints,
            limit_cpu=limit_cpu,
            limit_memory=limit_memory,
            reserve_cpu=reserve_cpu,
            reserve_memory=reserve_memory,
            health_cmd=health_cmd,
            health_interval=health_interval,
            health_timeout=health_timeout,
            health_retries=health_retries,
            health_start_period=health_start_period,
            stop_signal=stop_signal,
            stop_grace_period=stop_grace_period,
        )
    )
    manifest = deployment_manifest(
        service_name,
        template=template,
        replicas=replicas,
        strategy=update_strategy(
            DOCKER_UPDATE_PARALLELISM if update_parallelism is None else update_parallelism,
            update_order or "stop-first",
        ),
        min_ready_seconds=whole_seconds(update_delay, "--update-delay") if update_delay else 0,
        auto_rollback=update_failure_action == "rollback",
        labels=env_pairs(labels, "--label"),
    )
    # createOnly (docs/api.md): a Deployment or Service of this name made by someone else
    # between the checks below and the applies is refused, never replaced.
    manifest["metadata"]["createOnly"] = True
    raw = validated(manifest, Deployment, DEPLOYMENT_FLAGS)
    ports = published_ports(publish)
    raw_service = (
        create_only(
            validated(swarm_service_manifest(service_name, template, ports), Service, SERVICE_FLAGS)
        )
        if ports
        else None
    )
    settings = settings_of(ctx)

    async def send(client: CorralClient) -> str | None:
        if await client.deployment(service_name) is not None:
            raise CorralError(f"service {service_name!r} already exists")
        if raw_service is not None:
            if service_name in await client.services():
                raise CorralError(
                    f"a Service named {service_name!r} already exists: the published "
                    "ports would replace it (choose another --name, or corral delete "
                    f"service {service_name})"
                )
            # The Service first: a node port taken is the likely refusal, and then
            # nothing is left behind.
            made = await _checked(client, "Service", "apply", raw_service)
        try:
            await _checked(client, "Deployment", "apply", raw)
        except CorralError:
            if raw_service is not None:
                # Only the Service this command made, as it made it (its revision).
                await client.request(
                    find_kind("Service"), "delete", _delete(service_name, made.revision)
                )
            raise
        click.echo(service_name)
        if detach:
            return None
        return await _wait(client, service_name, quiet)

    _failed(service_name, run_with_client(settings, send))


def _delete(name: str, revision: int = 0) -> bytes:
    return msgspec.json.encode(DeleteRequest(name=name, resource_version=revision))


async def _checked(client: CorralClient, kind: str, verb: str, raw: bytes) -> Reply:
    reply = await client.request(find_kind(kind), verb, raw)
    if not reply.ok:
        raise CorralError(_reply_error(reply))
    return reply


def _reply_error(reply: Reply) -> str:
    where = f" (field `{reply.field}`)" if reply.field and reply.field not in reply.error else ""
    return f"{reply.error}{where}"


# --- ls, ps, inspect ----------------------------------------------------------------------


def service_id(deployment: Deployment) -> str:
    """Docker's 12-character ID: the Deployment's uid without its dashes."""
    return deployment.metadata.uid.replace("-", "")[:12] or "-"


def selects(service: Service, deployment: Deployment) -> bool:
    """The Service balances over this Deployment's replicas (its selector matches their
    labels, on their first network)."""
    labels = replica_labels(deployment.metadata.name, deployment.spec.template)
    selector = service.spec.selector
    network = service.spec.network or DEFAULT_NETWORK
    return (
        bool(selector)
        and labels_match(selector, labels)
        and network == replica_networks(deployment.spec.template)[0]
    )


def swarm_shaped(service: Service, deployment: Deployment) -> bool:
    """The Service is what `service create --publish` makes for this Deployment: of its
    name, NodePort, selecting exactly its replicas' labels on their first network. Only
    such a Service is changed or deleted by `service update --publish-add/--publish-rm`."""
    return (
        service.metadata.name == deployment.metadata.name
        and service.spec.type == "NodePort"
        and dict(service.spec.selector)
        == replica_labels(deployment.metadata.name, deployment.spec.template)
        and selects(service, deployment)
    )


def ports_column(services: Iterable[Service]) -> str:
    """Docker's PORTS: *:PUBLISHED->TARGET/tcp for each node port."""
    found = []
    for svc in services:
        if svc.spec.type != "NodePort":
            continue
        for port in svc.spec.ports:
            target = port.target_port or port.port
            published = port.node_port or "?"
            found.append(f"*:{published}->{target}/{port.protocol.lower()}")
    return ", ".join(found)


def ls_table(
    deployments: dict[str, Deployment],
    statuses: dict[str, DeploymentStatus],
    services: dict[str, Service],
) -> str:
    rows = []
    for name in sorted(deployments):
        deployment = deployments[name]
        status = statuses.get(name)
        ready = status.ready if status is not None else 0
        mine = [s for s in services.values() if selects(s, deployment)]
        rows.append(
            [
                service_id(deployment),
                name,
                "replicated",
                f"{ready}/{deployment.spec.replicas}",
                deployment.spec.template.image,
                ports_column(mine),
            ]
        )
    return render_table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows)


def _ago(timestamp: float | None, now: float) -> str:
    if not timestamp:
        return ""
    return f" {age_since(timestamp, now)} ago"


def ps_table(
    deployment: Deployment,
    status: DeploymentStatus | None,
    placements: dict[str, Placement],
    replica_statuses: dict[str, ReplicaStatus],
    services: Iterable[Service],
    now: float,
) -> str:
    """Docker's `service ps`: a row per replica (task) placed or still reported, with
    desired state Running while placed and Shutdown once not, and one per pending
    replica with why it is not placed (ERROR)."""
    name = deployment.metadata.name
    namespace = deployment.metadata.namespace
    ports = ports_column(services)
    rows = []
    keys = {
        key for key, p in placements.items() if p.deployment == name and p.namespace == namespace
    } | {
        key
        for key, s in replica_statuses.items()
        if s.deployment == name and s.namespace == namespace
    }
    for key in sorted(keys, key=lambda k: (k.rsplit(".", 1)[-1], k)):
        placement = placements.get(key)
        replica = replica_statuses.get(key)
        replica_name = placement.replica if placement else replica.replica if replica else key
        node = placement.node if placement else replica.node if replica else ""
        image = placement.template.image if placement else ""
        desired = "Running" if placement is not None else "Shutdown"
        if replica is None:
            current = f"Assigned{_ago(placement.created_at if placement else None, now)}"
            error = ""
        else:
            since = replica.started_at or replica.updated_at
            current = f"{replica.state}{_ago(since, now)}"
            error = replica.message if replica.state != "Running" else ""
            if replica.state == "Running" and replica.ready is False:
                current = f"Starting{_ago(since, now)}"
                error = replica.last_probe_failure
        row_id = replica.container_id[:12] if replica and replica.container_id else "-"
        rows.append([row_id, replica_name, image, node, desired, current, error, ports])
    pending = status.pending if status is not None else 0
    for index in range(pending):
        rows.append(
            [
                "-",
                f"{name}.pending-{index + 1}",
                deployment.spec.template.image,
                "",
                "Running",
                "Pending",
                status.pending_reason if status is not None else "",
                "",
            ]
        )
    headers = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]
    return render_table(headers, rows)


def inspect_object(
    deployment: Deployment, status: DeploymentStatus | None, services: Sequence[Service]
) -> dict[str, Any]:
    """One service for `inspect`: its ID, the Deployment, its Service(s) and status."""
    return {
        "ID": service_id(deployment),
        "Name": deployment.metadata.name,
        "Deployment": to_builtins(deployment),
        "Services": [to_builtins(s) for s in services],
        "Status": None if status is None else to_builtins(status),
    }


def pretty(
    deployment: Deployment, status: DeploymentStatus | None, services: Sequence[Service]
) -> str:
    """`inspect --pretty`: Docker's layout, in corral's terms."""
    spec = deployment.spec
    template = spec.template
    parallelism, order = order_of(to_builtins(spec.strategy))
    lines = [
        f"ID:\t\t{service_id(deployment)}",
        f"Name:\t\t{deployment.metadata.name}",
    ]
    if deployment.metadata.labels:
        lines.append("Labels:")
        lines += [f" {k}={v}" for k, v in sorted(deployment.metadata.labels.items())]
    lines += [
        "Service Mode:\tReplicated",
        f" Replicas:\t{spec.replicas}",
    ]
    if status is not None:
        lines.append(f" Running:\t{status.ready}")
        if status.pending:
            lines.append(f" Pending:\t{status.pending} ({status.pending_reason})")
    if template.node_selector:
        lines.append("Placement:")
        lines.append(
            " Constraints:\t["
            + " ".join(f"node.labels.{k}=={v}" for k, v in sorted(template.node_selector.items()))
            + "]"
        )
    lines += [
        "UpdateConfig:",
        f" Parallelism:\t{parallelism}" if spec.strategy.type == "RollingUpdate" else " Recreate",
        f" Delay:\t\t{spec.min_ready_seconds}s",
        f" On failure:\t{'rollback' if spec.auto_rollback is not None else 'pause'}",
        f" Update order:\t{order}",
        "ContainerSpec:",
        f" Image:\t\t{template.image}",
    ]
    if template.args:
        lines.append(f" Args:\t\t{' '.join(template.args)}")
    if template.env:
        lines.append(" Env:\t\t" + " ".join(f"{k}={v}" for k, v in sorted(template.env.items())))
    if template.stop_signal:
        lines.append(f" StopSignal:\t{template.stop_signal}")
    lines.append(f" StopGracePeriod: {template.termination_grace_period_seconds}s")
    probe = template.readiness_probe
    if probe is not None and probe.exec is not None:
        lines += [
            "Healthcheck:",
            f" Command:\t{' '.join(probe.exec.command)}",
            f" Interval:\t{probe.period_seconds}s",
            f" Timeout:\t{probe.timeout_seconds}s",
            f" Retries:\t{probe.failure_threshold}",
        ]
    if template.volume_mounts:
        lines.append("Mounts:")
        sources = {v.name: v for v in template.volumes}
        for mount in template.volume_mounts:
            volume = sources.get(mount.name)
            claim = volume.persistent_volume_claim if volume else None
            source = claim.claim_name if claim else "(replica's own)"
            lines.append(f" Target:\t{mount.mount_path}")
            lines.append(f"  Source:\t{source}")
            lines.append(f"  ReadOnly:\t{str(mount.read_only).lower()}")
    limits, requests = template.resources.limits, template.resources.requests
    if (
        limits.cpu is not None
        or limits.memory is not None
        or requests.cpu is not None
        or requests.memory is not None
    ):
        lines.append("Resources:")
        if requests.cpu is not None or requests.memory is not None:
            lines.append(" Reservations:")
            if requests.cpu is not None:
                lines.append(f"  CPU:\t\t{requests.cpu}")
            if requests.memory is not None:
                lines.append(f"  Memory:\t{requests.memory}")
        if limits.cpu is not None or limits.memory is not None:
            lines.append(" Limits:")
            if limits.cpu is not None:
                lines.append(f"  CPU:\t\t{limits.cpu}")
            if limits.memory is not None:
                lines.append(f"  Memory:\t{limits.memory}")
    lines.append("Networks:\t" + " ".join(replica_networks(template)))
    lines.append("Endpoint Mode:\tvip")
    published = [(s, p) for s in services if s.spec.type == "NodePort" for p in s.spec.ports]
    if published:
        lines.append("Ports:")
        for _, port in published:
            lines += [
                f" PublishedPort = {port.node_port}",
                f"  Protocol = {port.protocol.lower()}",
                f"  TargetPort = {port.target_port or port.port}",
                "  PublishMode = ingress",
            ]
    return "\n".join(lines)


@dataclass
class _Seen:
    deployments: dict[str, Deployment]
    statuses: dict[str, DeploymentStatus]
    services: dict[str, Service]


async def _read(client: CorralClient) -> _Seen:
    return _Seen(
        await client.deployments(), await client.deployment_statuses(), await client.services()
    )


@service.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="Only the names.")
@click.pass_context
def ls(ctx: click.Context, quiet: bool) -> None:
    """List services: ID NAME MODE REPLICAS IMAGE PORTS (REPLICAS: ready/desired)."""
    seen = run_with_client(settings_of(ctx), _read)
    if quiet:
        for name in sorted(seen.deployments):
            click.echo(name)
        return
    click.echo(ls_table(seen.deployments, seen.statuses, seen.services))


def _found(seen: _Seen, name: str) -> Deployment:
    deployment = seen.deployments.get(name)
    if deployment is None:
        raise CorralError(f"no such service: {name}")
    return deployment


@service.command("ps")
@click.argument("service_names", metavar="SERVICE...", nargs=-1, required=True)
@click.pass_context
def ps(ctx: click.Context, service_names: tuple[str, ...]) -> None:
    """List a service's tasks (its replicas): where each runs, its state and error."""

    async def read(client: CorralClient) -> str:
        seen = await _read(client)
        placements = await client.placements()
        replica_statuses = await client.replica_statuses()
        tables = []
        for name in service_names:
            deployment = _found(seen, name)
            mine = [s for s in seen.services.values() if selects(s, deployment)]
            tables.append(
                ps_table(
                    deployment,
                    seen.statuses.get(name),
                    placements,
                    replica_statuses,
                    mine,
                    time.time(),
                )
            )
        return "\n".join(tables)

    click.echo(run_with_client(settings_of(ctx), read))


@service.command("inspect")
@click.argument("service_names", metavar="SERVICE...", nargs=-1, required=True)
@click.option("--pretty", "pretty_output", is_flag=True, help="Human-readable, as Docker's.")
@click.pass_context
def inspect(ctx: click.Context, service_names: tuple[str, ...], pretty_output: bool) -> None:
    """Show services as JSON (a list), or --pretty."""

    async def read(client: CorralClient) -> str:
        seen = await _read(client)
        found = []
        for name in service_names:
            deployment = _found(seen, name)
            mine = [s for s in seen.services.values() if selects(s, deployment)]
            found.append((deployment, seen.statuses.get(name), mine))
        if pretty_output:
            return "\n\n".join(pretty(d, s, m) for d, s, m in found)
        return json.dumps([inspect_object(d, s, m) for d, s, m in found], indent=4)

    click.echo(run_with_client(settings_of(ctx), read))


# --- scale, update, rollback, rm ----------------------------------------------------------


def parse_scale(items: Iterable[str]) -> list[tuple[str, int]]:
    """Docker's SERVICE=REPLICAS arguments."""
    pairs = []
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not name or not count.isdigit():
            raise click.BadParameter(
                f"{item!r} is not SERVICE=REPLICAS (e.g. web=3)", param_hint="SERVICE=REPLICAS"
            )
        pairs.append((name, int(count)))
    return pairs


@service.command("scale")
@click.argument("targets", metavar="SERVICE=REPLICAS...", nargs=-1, required=True)
@_with(_wait_options)
@click.pass_context
def scale(ctx: click.Context, targets: tuple[str, ...], detach: bool, quiet: bool) -> None:
    """Set services' replica counts: corral service scale web=3 api=2."""
    pairs = parse_scale(targets)
    requests = [
        (
            name,
            count,
            validated(
                {"name": name, "replicas": count},
                ScaleRequest,
                {"name": "SERVICE", "replicas": "REPLICAS"},
            ),
        )
        for name, count in pairs
    ]

    async def send(client: CorralClient) -> list[str]:
        failures = []
        waits = []
        for name, count, raw in requests:
            reply = await client.request(find_kind("Deployment"), "scale", raw)
            if not reply.ok:
                failures.append(f"{name}: {reply.error}")
                continue
            click.echo(f"{name} scaled to {count}")
            waits.append(name)
        if not detach:
            for name in waits:
                why = await _wait(client, name, quiet)
                if why is not None:
                    failures.append(f"{name}: {why}")
        return failures

    failures = run_with_client(settings_of(ctx), send)
    if failures:
        raise click.ClickException("; ".join(failures))


@dataclass
class UpdateFlags:
    image: str | None = None
    replicas: int | None = None
    env_add: Sequence[str] = ()
    env_rm: Sequence[str] = ()
    constraint_add: Sequence[str] = ()
    constraint_rm: Sequence[str] = ()
    limit_cpu: str | None = None
    limit_memory: str | None = None
    reserve_cpu: str | None = None
    reserve_memory: str | None = None
    update_parallelism: int | None = None
    update_delay: str | None = None
    update_order: str | None = None
    update_failure_action: str | None = None
    stop_signal: str | None = None
    stop_grace_period: str | None = None
    force: bool = False


def updated_manifest(stored: dict[str, Any], flags: UpdateFlags, now: str) -> dict[str, Any]:
    """The stored Deployment (as JSON-able data) with `service update`'s flags applied."""
    manifest: dict[str, Any] = json.loads(json.dumps(stored))
    spec = manifest["spec"]
    template = spec["template"]
    if flags.image:
        template["image"] = flags.image
    if flags.replicas is not None:
        spec["replicas"] = flags.replicas
    env = dict(template.get("env") or {})
    for key in flags.env_rm:
        env.pop(key.partition("=")[0], None)
    env.update(env_pairs(flags.env_add, "--env-add"))
    if env or "env" in template:
        template["env"] = env
    selector = dict(template.get("nodeSelector") or {})
    for label in parse_constraints(flags.constraint_rm, "--constraint-rm"):
        selector.pop(label, None)
    selector.update(parse_constraints(flags.constraint_add, "--constraint-add"))
    if selector or "nodeSelector" in template:
        template["nodeSelector"] = selector
    resources = resources_of(
        flags.limit_cpu,
        flags.limit_memory,
        flags.reserve_cpu,
        flags.reserve_memory,
        base=template.get("resources"),
    )
    if resources:
        template["resources"] = resources
    if flags.update_parallelism is not None or flags.update_order is not None:
        parallelism, order = order_of(spec.get("strategy") or {})
        spec["strategy"] = update_strategy(
            parallelism if flags.update_parallelism is None else flags.update_parallelism,
            flags.update_order or order,
        )
    if flags.update_delay is not None:
        spec["minReadySeconds"] = whole_seconds(flags.update_delay, "--update-delay")
    if flags.update_failure_action == "rollback":
        spec.setdefault("autoRollback", {})
    elif flags.update_failure_action == "pause":
        spec.pop("autoRollback", None)
    if flags.stop_signal:
        template["stopSignal"] = parse_stop_signal(flags.stop_signal)
    if flags.stop_grace_period:
        template["terminationGracePeriodSeconds"] = whole_seconds(
            flags.stop_grace_period, "--stop-grace-period"
        )
    if flags.force:
        template["restartedAt"] = now
    return manifest


def _published_service(
    existing: Service | None,
    name: str,
    template: dict[str, Any],
    added: Sequence[Published],
    removed: Sequence[int],
    revision: int = 0,
) -> dict[str, Any] | None:
    """The Service after --publish-add / --publish-rm (None: delete it): a new one is
    create-only, a changed one carries `revision` (the stored one's) as its
    resourceVersion, so a change made meanwhile is a Conflict rather than lost."""
    if existing is None:
        if not added:
            return None
        made = swarm_service_manifest(name, template, added)
        made["metadata"]["createOnly"] = True
        return made
    data: dict[str, Any] = to_builtins(existing)
    data["metadata"] = {
        "name": name,
        **{k: v for k, v in data["metadata"].items() if k in ("labels", "annotations")},
        "resourceVersion": revision,
    }
    ports: list[dict[str, Any]] = [
        p for p in data["spec"]["ports"] if (p.get("targetPort") or p["port"]) not in removed
    ]
    for port in added:
        ports = [p for p in ports if (p.get("targetPort") or p["port"]) != port.target]
        ports.append(port.service_port())
    if not ports:
        return None
    for entry in ports:
        if len(ports) > 1 and "name" not in entry:
            entry["name"] = f"{str(entry.get('protocol', 'TCP')).lower()}-{entry['port']}"
    data["spec"]["ports"] = ports
    data["spec"]["type"] = "NodePort"
    return data


async def publish_change(
    client: CorralClient,
    deployment: Deployment,
    template: dict[str, Any],
    added: Sequence[Published],
    removed: Sequence[int],
) -> None:
    """Apply --publish-add / --publish-rm to the Service of swarm service `deployment`
    (`template`: its template as updated). Only a Service of the swarm shape
    (swarm_shaped) is changed or deleted, at the revision read (a Conflict: read again);
    another Service of that name is left as it is: --publish-rm says so on stderr,
    --publish-add is refused."""
    name = deployment.metadata.name
    key = names.object_key(client.namespace, name)
    for _ in range(ATTEMPTS):
        found = (await client.read_bucket(names.SERVICES_BUCKET, Service, key)).get(key)
        existing, revision = found if found is not None else (None, 0)
        if existing is not None and not swarm_shaped(existing, deployment):
            why = (
                f"Service {name!r} is not the one service {name!r} publishes its ports "
                "with (not a NodePort Service selecting exactly its replicas), so it is "
                "left as it is"
            )
            if added:
                raise CorralError(
                    f"cannot publish ports: {why} (delete or rename it first: "
                    f"corral delete service {name})"
                )
            _stderr(f"service {name}: {why}; no port was unpublished")
            return
        wanted = _published_service(existing, name, template, added, removed, revision)
        if wanted is None:
            if existing is None:
                return
            reply = await client.request(find_kind("Service"), "delete", _delete(name, revision))
        else:
            raw = validated(wanted, Service, {**SERVICE_FLAGS, "spec.ports": "--publish-add"})
            reply = await client.request(find_kind("Service"), "apply", raw)
        if reply.ok:
            return
        if reply.reason != REASON_CONFLICT:
            raise CorralError(_reply_error(reply))
    raise CorralError(f"Service {name!r} kept changing; try again")


@service.command("update", cls=_DockerCommand, context_settings={"allow_interspersed_args": True})
@click.option("--image", help="A new image: the replicas are rolled over to it.")
@click.option("--replicas", type=click.IntRange(min=0))
@click.option("--env-add", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--env-rm", multiple=True, metavar="KEY", help="Repeatable.")
@click.option("--constraint-add", multiple=True, metavar="node.labels.KEY==VALUE")
@click.option("--constraint-rm", multiple=True, metavar="node.labels.KEY==VALUE")
@click.option("--limit-cpu", metavar="CPUS")
@click.option("--limit-memory", metavar="BYTES")
@click.option("--reserve-cpu", metavar="CPUS")
@click.option("--reserve-memory", metavar="BYTES")
@click.option("--publish-add", multiple=True, metavar="PUBLISHED:TARGET[/udp]")
@click.option("--publish-rm", multiple=True, metavar="TARGET", help="A target port to unpublish.")
@_with(_update_options)
@click.option("--stop-signal", metavar="SIGNAL")
@click.option("--stop-grace-period", metavar="DURATION")
@click.option("--force", is_flag=True, help="Replace every replica even with no change.")
@_with(_wait_options)
@click.argument("name", metavar="SERVICE")
@click.pass_context
def update(
    ctx: click.Context,
    /,
    name: str,
    publish_add: tuple[str, ...],
    publish_rm: tuple[str, ...],
    detach: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Change a service: corral service update [OPTIONS] SERVICE. A changed template is
    rolled out with the service's --update-* settings; without --detach, waits for it
    (exit 1 if it fails)."""
    flags = UpdateFlags(**options)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    added = published_ports(publish_add, "--publish-add")
    removed = []
    for text in publish_rm:
        target = text.partition("/")[0].rpartition(":")[2]
        if not target.isdigit():
            raise click.BadParameter(f"{text!r} is not a target port", param_hint="--publish-rm")
        removed.append(int(target))
    given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v not in (None, (), False)]
    cause = (
        f"corral service update {' '.join(given + ['--publish-add'] * bool(added))} {name}".replace(
            "  ", " "
        )
    )

    async def send(client: CorralClient) -> str | None:
        for _ in range(ATTEMPTS):
            deployment, revision = await read_deployment(client, name)
            stored = to_builtins(deployment)
            changed = updated_manifest(stored, flags, now)
            template = changed["spec"]["template"]
            if changed == stored:
                break
            changed["metadata"]["resourceVersion"] = revision
            annotations = dict(changed["metadata"].get("annotations") or {})
            annotations[CHANGE_CAUSE_ANNOTATION] = cause
            changed["metadata"]["annotations"] = annotations
            raw = validated(changed, Deployment, DEPLOYMENT_FLAGS)
            reply = await client.request(find_kind("Deployment"), "apply", raw)
            if not reply.ok and reply.reason == REASON_CONFLICT:
                continue
            if not reply.ok:
                raise RequestRejected(reply)
            break
        else:
            raise CorralError(f"service {name!r} kept changing; try again")
        if added or removed:
            await publish_change(client, deployment, template, added, removed)
        click.echo(name)
        if detach:
            return None
        return await _wait(client, name, quiet)

    _failed(name, run_with_client(settings_of(ctx), send))


@service.command("rollback")
@_with(_wait_options)
@click.argument("name", metavar="SERVICE")
@click.pass_context
def rollback(ctx: click.Context, name: str, detach: bool, quiet: bool) -> None:
    """Go back to the service's previous template (corral rollout undo): a new revision."""

    async def send(client: CorralClient) -> str | None:
        for _ in range(ATTEMPTS):
            deployment, revision = await read_deployment(client, name)
            current = deployment.spec.template.template_hash()
            entry = undo_target(await read_history(client, name), current, 0)
            data = to_builtins(deployment)
            data["spec"]["template"] = to_builtins(entry.template)
            data["metadata"]["resourceVersion"] = revision
            annotations = dict(data["metadata"].get("annotations") or {})
            annotations[CHANGE_CAUSE_ANNOTATION] = f"corral service rollback {name}"
            data["metadata"]["annotations"] = annotations
            reply = await client.request(
                find_kind("Deployment"), "apply", validated(data, Deployment, {})
            )
            if not reply.ok and reply.reason == REASON_CONFLICT:
                continue
            if not reply.ok:
                raise RequestRejected(reply)
            click.echo(name)
            if not quiet:
                _stderr(f"rollback: rolling back to revision {entry.revision}")
            if detach:
                return None
            return await _wait(client, name, quiet)
        raise CorralError(f"service {name!r} kept changing; try again")

    _failed(name, run_with_client(settings_of(ctx), send))


@service.command("rm")
@click.argument("service_names", metavar="SERVICE...", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, service_names: tuple[str, ...]) -> None:
    """Remove services: each Deployment and the Service publishing its ports (only one
    of the swarm shape, swarm_shaped, deleted at the revision read: a change made
    meanwhile is refused; another Service of that name is left, and said so)."""

    async def send(client: CorralClient) -> list[str]:
        refused = []
        for name in service_names:
            deployment = await client.deployment(name)
            if deployment is None:
                refused.append(f"no such service: {name}")
                continue
            key = names.object_key(client.namespace, name)
            found = (await client.read_bucket(names.SERVICES_BUCKET, Service, key)).get(key)
            reply = await client.request(find_kind("Deployment"), "delete", _delete(name))
            if not reply.ok:
                refused.append(reply.error)
                continue
            click.echo(name)
            if found is None:
                continue
            existing, revision = found
            if not swarm_shaped(existing, deployment):
                _stderr(
                    f"service {name}: Service {name!r} is not the one it publishes its ports "
                    "with (not a NodePort Service selecting exactly its replicas), so it is "
                    "left as it is"
                )
                continue
            reply = await client.request(find_kind("Service"), "delete", _delete(name, revision))
            if reply.ok or reply.reason == REASON_NOT_FOUND:
                continue
            if reply.reason == REASON_CONFLICT:
                refused.append(
                    f"Service {name!r} changed since it was read: not deleted "
                    f"(check it, then: corral delete service {name})"
                )
            else:
                refused.append(_reply_error(reply))
        return refused

    refused = run_with_client(settings_of(ctx), send)
    if refused:
        raise click.ClickException("; ".join(refused))


@service.command("logs")
@click.argument("name", metavar="SERVICE")
@log_options
@click.option("--raw", is_flag=True, help="No NAME@NODE | before each line.")
@click.pass_context
def logs(
    ctx: click.Context,
    name: str,
    follow: bool,
    tail: int | None,
    since_text: str | None,
    timestamps: bool,
    raw: bool,
) -> None:
    """The logs of a service's tasks (its Deployment's replicas), from whichever nodes
    run them, each line led by REPLICA@NODE | as Docker's (corral logs, docs/api.md)."""
    run_logs(
        ctx,
        f"deployment/{name}",
        follow=follow,
        tail=tail,
        since_text=since_text,
        timestamps=timestamps,
        prefix=not raw,
        style="docker",
    )
