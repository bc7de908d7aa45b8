"""Rancher's containers: `corral create container`, `get containers`, `describe container`,
`delete container`, and the Service of `corral create service --container`.

A container is a Deployment (docs/containers.md): one replica, `replacement: "Never"`
(the scheduler never moves it off a lost node), the template's `restartPolicy` (the node
agent restarts it on its own node, or not), and the label CONTAINER_LABEL on the
Deployment and on its replica (what `get containers` lists and a Service selects).
"""

from __future__ import annotations

from typing import Any

import click
import msgspec

from corral.client.api import (
    CorralClient,
    CorralError,
    NotFound,
    find_kind,
    node_is_ready,
    to_builtins,
)
from corral.client.cli.options import parse_container_port, parse_env, parse_service_port
from corral.client.cli.output import as_list, dump
from corral.client.cli.runner import run_with_client, settings_of
from corral.client.cli.tables import age_since, render_table
from corral.client.cli.views import ClusterView, ReplicaLine, replica_lines
from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.events import Reply
from corral.contract.specs import (
    API_VERSION,
    CONTAINER_LABEL,
    DeleteRequest,
    Deployment,
    replica_networks,
)
from corral.contract.state import ReplicaState

CONTAINER_HEADERS = ("NAME", "IMAGE", "NODE", "STATUS", "RESTARTS", "AGE", "PORTS")
# What `get containers` shows for a container whose node is lost (not ready, or silent):
# Kubernetes' reason for a Pod on an unreachable node. The container is not moved.
NODE_LOST = "NodeLost"
NONE = "<none>"
RESTART_POLICIES = ("Always", "OnFailure", "Never")

# Where a refused field of the Deployment came from: the flag to name.
_FLAGS = {
    "spec.template.image": "--image",
    "spec.template.env": "--env",
    "spec.template.ports": "--port",
    "spec.template.networks": "--network",
    "spec.template.command": "COMMAND",
    "spec.template.restartPolicy": "--restart",
    "metadata.name": "NAME",
}


def validated(manifest: dict[str, Any], kind: type[msgspec.Struct], flags: dict[str, str]) -> bytes:
    """The JSON the owner will get, decoded as the owner will; an error about a field
    that came from a flag (`flags`: field path prefix -> flag) names the flag first.
    Also corral.client.cli.net_requests.validated (this module is the lower one:
    write_commands, which net_requests imports, imports this one)."""
    raw = msgspec.json.encode(manifest)
    try:
        decode_payload(raw, kind)
    except InvalidPayload as error:
        for prefix, flag in flags.items():
            if error.field == prefix or error.field.startswith((f"{prefix}.", f"{prefix}[")):
                raise click.BadParameter(error.message, param_hint=flag) from None
        raise click.ClickException(error.message) from None
    return raw


def is_container(deployment: Deployment) -> bool:
    return CONTAINER_LABEL in deployment.metadata.labels


def container_manifest(
    name: str,
    *,
    image: str,
    env: tuple[str, ...] = (),
    ports: tuple[str, ...] = (),
    restart: str = "Always",
    networks: tuple[str, ...] = (),
    command: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The Deployment of container NAME as JSON-able data (flags parsed, not validated)."""
    labels = {CONTAINER_LABEL: name}
    template: dict[str, Any] = {"image": image, "labels": labels}
    if env:
        template["env"] = parse_env(env)
    if ports:
        template["ports"] = [parse_container_port(port) for port in ports]
    if networks:
        template["networks"] = list(networks)
    if command:
        template["command"] = list(command)
    policy = next((p for p in RESTART_POLICIES if p.lower() == restart.lower()), restart)
    if policy != "Always":
        template["restartPolicy"] = policy
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {CONTAINER_LABEL: "true"}},
        "spec": {"replicas": 1, "replacement": "Never", "template": template},
    }


@click.command("container")
@click.argument("name")
@click.option("--image", required=True, help="The container image, e.g. busybox:1.36.")
@click.option("--env", "-e", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="PORT[/PROTOCOL]",
    help="A port the container listens on, e.g. 8080 or 53/udp; `corral create service "
    "--container` uses them. Repeatable.",
)
@click.option(
    "--restart",
    type=click.Choice(RESTART_POLICIES, case_sensitive=False),
    metavar="Always|OnFailure|Never",
    default="Always",
    show_default=True,
    help="Start it again on its node after it exits: Always, OnFailure (after a non-zero "
    "exit only) or Never (it stays Exited), as a Pod's restartPolicy.",
)
@click.option(
    "--network",
    "networks",
    multiple=True,
    metavar="NETWORK",
    help="A corral network it joins (the first carries its default route). Repeatable.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create_container(
    ctx: click.Context,
    name: str,
    image: str,
    env: tuple[str, ...],
    ports: tuple[str, ...],
    restart: str,
    networks: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run one container NAME of IMAGE; `-- COMMAND ARGS...` replaces the image's
    entrypoint.

    A bare Pod's semantics: it is placed on a node once and restarted there per
    --restart, with the agent's back-off. It is NOT moved when its node is lost: it keeps
    its place and shows NodeLost in `corral get containers` until the node returns (or an
    operator releases the node: `corral node release`). Not scaled; for copies that move,
    use `corral create deployment`."""
    manifest = container_manifest(
        name,
        image=image,
        env=env,
        ports=ports,
        restart=restart,
        networks=networks,
        command=command,
    )
    # createOnly: one made after the check below is refused too, not replaced.
    manifest["metadata"]["createOnly"] = True
    raw = validated(manifest, Deployment, _FLAGS)
    kind = find_kind("Deployment")

    async def send(client: CorralClient) -> Reply:
        existing = await client.deployment(name)
        if existing is not None:
            what = "container" if is_container(existing) else "deployment"
            raise CorralError(
                f"{what} {name!r} already exists: delete it first (corral delete {what} {name})"
            )
        return await client.request(kind, "apply", raw)

    reply = run_with_client(settings_of(ctx), send)
    if not reply.ok:
        where = f" (field `{reply.field}`)" if reply.field else ""
        raise click.ClickException(f"{reply.error}{where}")
    click.echo(f"container/{name} created")


# --- reads ------------------------------------------------------------------------------


def container_status(view: ClusterView, line: ReplicaLine | None, now: float) -> str:
    """STATUS: NodeLost when its node is not ready or silent; Completed (exit code 0) or
    Exited(N) for an exited container; else the replica's state."""
    if line is None or line.placement is None:
        return ReplicaState.PENDING.value
    node = view.nodes.get(line.node)
    if node is None or not node_is_ready(node, now):
        return NODE_LOST
    status = line.status
    if status is not None and status.state == ReplicaState.EXITED:
        return "Completed" if status.exit_code == 0 else f"Exited({status.exit_code})"
    return line.state


def _ports(deployment: Deployment) -> str:
    ports = deployment.spec.template.ports
    return ",".join(f"{p.container_port}/{p.protocol}" for p in ports) or NONE


def _line_of(view: ClusterView, name: str) -> ReplicaLine | None:
    lines = [line for line in replica_lines(view, name) if line.placement is not None]
    return lines[0] if lines else None


def container_rows(view: ClusterView, now: float) -> list[list[str]]:
    rows = []
    for name in sorted(view.deployments):
        deployment = view.deployments[name]
        if not is_container(deployment):
            continue
        line = _line_of(view, name)
        placed = line is not None and line.placement is not None
        rows.append(
            [
                name,
                deployment.spec.template.image,
                line.node if line is not None and placed else NONE,
                container_status(view, line, now),
                str(line.restarts if line is not None else 0),
                age_since(line.since, now) if line is not None else NONE,
                _ports(deployment),
            ]
        )
    return rows


def container_object(view: ClusterView, name: str, now: float) -> dict[str, Any]:
    deployment = view.deployments[name]
    line = _line_of(view, name)
    return {
        "name": name,
        "namespace": deployment.metadata.namespace,
        "image": deployment.spec.template.image,
        "node": line.node if line is not None else None,
        "status": container_status(view, line, now),
        "restarts": line.restarts if line is not None else 0,
        "restartPolicy": deployment.spec.template.restart_policy,
        "ports": [to_builtins(p) for p in deployment.spec.template.ports],
        "replica": line.name if line is not None else None,
        "message": line.message if line is not None else "",
    }


def _checked_name(view: ClusterView, name: str) -> None:
    deployment = view.deployments.get(name)
    if deployment is None:
        raise NotFound(f"container {name!r} not found")
    if not is_container(deployment):
        raise NotFound(f"{name!r} is a deployment, not a container (corral get deployment {name})")


def render_containers(view: ClusterView, name: str | None, output: str, now: float) -> str:
    """`corral get containers [NAME] -o table|wide|json|yaml`."""
    if name is not None:
        _checked_name(view, name)
        view = ClusterView(
            deployments={name: view.deployments[name]},
            statuses=view.statuses,
            nodes=view.nodes,
            placements=view.placements,
            replica_statuses=view.replica_statuses,
        )
    if output in ("json", "yaml"):
        items = [
            container_object(view, key, now)
            for key in sorted(view.deployments)
            if is_container(view.deployments[key])
        ]
        return dump(items[0] if name is not None else as_list(items), output)
    rows = container_rows(view, now)
    return render_table(CONTAINER_HEADERS, rows) if rows else "No containers."


def describe_container(view: ClusterView, name: str, now: float) -> str:
    """`corral describe container NAME` (text)."""
    _checked_name(view, name)
    found = container_object(view, name, now)
    template = view.deployments[name].spec.template
    lines = [
        f"Name:            {name}",
        f"Namespace:       {found['namespace']}",
        f"Image:           {found['image']}",
        f"Command:         {' '.join(template.command) if template.command else NONE}",
        f"Node:            {found['node'] or NONE}",
        f"Status:          {found['status']}",
        f"Restart policy:  {found['restartPolicy']}",
        f"Restarts:        {found['restarts']}",
        f"Ports:           {_ports(view.deployments[name])}",
        f"Networks:        {', '.join(replica_networks(template))}",
        f"Replica:         {found['replica'] or NONE}",
    ]
    if found["message"]:
        lines.append(f"Message:         {found['message']}")
    if found["status"] == NODE_LOST:
        lines.append(
            f"Note:            node {found['node']} is lost; a container is not moved "
            "(it runs again when the node returns, or `corral node release` moves it)"
        )
    return "\n".join(lines)


# --- delete ---------------------------------------------------------------------------


def delete_containers(ctx: click.Context, names: tuple[str, ...]) -> None:
    """`corral delete container NAME...`: each must be a container (not another
    Deployment); refusals printed as they come, exit 1 after the last (as kubectl)."""
    kind = find_kind("Deployment")
    raws = {name: validated({"name": name}, DeleteRequest, {"name": "NAME"}) for name in names}

    async def send(client: CorralClient) -> list[str]:
        refused = []
        for name, raw in raws.items():
            existing = await client.deployment(name)
            if existing is None or not is_container(existing):
                why = "not found" if existing is None else "is a deployment, not a container"
                error = f"container {name!r} {why}"
                click.echo(f"Error (NotFound): {error}", err=True)
                refused.append(error)
                continue
            reply = await client.request(kind, "delete", raw)
            if reply.ok:
                click.echo(f"container/{name} deleted")
            else:
                click.echo(f"Error ({reply.reason}): {reply.error}", err=True)
                refused.append(reply.error)
        return refused

    if run_with_client(settings_of(ctx), send):
        ctx.exit(1)


# --- create service --container --------------------------------------------------------


async def container_service_parts(
    client: CorralClient, name: str, ports: tuple[str, ...]
) -> tuple[dict[str, str], list[dict[str, Any]], str]:
    """(selector, ports, network) of a Service in front of container NAME: its replica's
    label, the --port given, else one Service port per port the container declares."""
    deployment = await client.deployment(name)
    if deployment is None:
        raise CorralError(f"container {name!r} not found (the value of --container)")
    if not is_container(deployment):
        raise CorralError(
            f"--container {name!r} is a deployment, not a container: use --selector, or "
            f"corral expose deployment {name}"
        )
    template = deployment.spec.template
    if ports:
        service_ports = [parse_service_port(port) for port in ports]
    elif template.ports:
        service_ports = []
        for declared in template.ports:
            port: dict[str, Any] = {"port": declared.container_port}
            if declared.protocol != "TCP":
                port["protocol"] = declared.protocol
            if declared.name:
                port["name"] = declared.name
            service_ports.append(port)
    else:
        raise CorralError(
            f"container {name!r} declares no port (corral create container --port) and no "
            "--port was given: give --port PORT[:TARGET]"
        )
    selector = {CONTAINER_LABEL: template.labels.get(CONTAINER_LABEL, name)}
    return selector, service_ports, replica_networks(template)[0]
