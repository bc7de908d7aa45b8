"""`corral stack`: Docker Swarm's words for a Compose project (docs/compose.md).

`stack deploy -c FILE STACK` does what `corral apply -f FILE` does, with STACK as the
project name; `stack ls`, `stack ps STACK` and `stack rm STACK` find a project's objects
by the label Compose puts on them (com.docker.compose.project) in the project's
namespace (its name), and its networks (cluster-wide) by the same label.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import click
import msgspec

from corral.client.api import CorralClient, CorralError, RequestRejected, find_kind
from corral.client.cli.logs_commands import ReplicaRef, find_replicas, log_options, run_logs
from corral.client.cli.namespaces import split_table
from corral.client.cli.runner import run_with_client, settings_of
from corral.client.cli.swarm_commands import ps_table, selects
from corral.client.cli.tables import render_table
from corral.client.cli.write_commands import applied_verb, read_input_file
from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import REASON_CONFLICT, Reply
from corral.contract.network_specs import Network, Service
from corral.contract.specs import DeleteRequest, Deployment
from corral.contract.volume_specs import PersistentVolumeClaim

if TYPE_CHECKING:
    from corral.client.cli.manifests import Manifest  # PyYAML only for `stack deploy`

# The label Compose puts on a project's objects (corral.client.cli.compose.PROJECT_LABEL,
# not imported from there: that module loads PyYAML, which only `stack deploy` needs).
PROJECT_LABEL = "com.docker.compose.project"
# The largest file `stack deploy` reads (corral.client.cli.manifests.MAX_MANIFEST_BYTES).
MAX_FILE_BYTES = 1024 * 1024

# How often `stack rm` asks again to delete a network its Deployments still name.
NETWORK_RETRY_SECONDS = 0.2


@click.group("stack")
def stack() -> None:
    """Compose projects, with Docker Swarm's words: deploy, ls, ps, rm.

    A project lives in its own namespace (its name): its services' names are unique
    there and resolve by DNS among its replicas (docs/compose.md)."""


def project_manifests(file_name: str, project: str | None) -> tuple[str, list[Manifest]]:
    """The project's name and its manifests, the whole file checked (ClickException)."""
    from corral.client.cli.compose import ComposeError, read_compose, translate

    source, text = read_input_file(file_name, MAX_FILE_BYTES, "a file")
    try:
        document = read_compose(text, source, strict=True)
        if document is None:
            raise ComposeError(
                f"{source}: not a Compose file (a top-level `services:` mapping, no "
                "apiVersion or kind): apply manifests with corral apply -f"
            )
        translated = translate(document, source, project)
    except CorralError as error:
        raise click.ClickException(str(error)) from None
    if translated.unsupported:
        click.echo(
            f"warning: {source} (Compose project {translated.name}): dropped fields corral "
            f"does not support: {', '.join(translated.unsupported)}",
            err=True,
        )
    if translated.skipped:
        click.echo(
            f"{source}: not deployed (services with profiles, as Compose without "
            f"--profile): {', '.join(translated.skipped)}",
            err=True,
        )
    return translated.name, translated.manifests


async def check_compose_ownership(client: CorralClient, manifests: Sequence[Manifest]) -> Checked:
    """Before anything is sent (`stack deploy`, `corral apply -f`): each Compose
    project among `manifests` (corral.client.cli.compose.ComposeManifest.project) checked
    once by check_ownership over its own manifests; other manifests are not."""
    from corral.client.cli.compose import ComposeManifest

    projects: dict[str, list[Manifest]] = {}
    for manifest in manifests:
        if isinstance(manifest, ComposeManifest) and manifest.project:
            projects.setdefault(manifest.project, []).append(manifest)
    checked: Checked = {}
    for project, mine in projects.items():
        checked.update(await check_ownership(client, project, mine))
    return checked


# What check_ownership saw of each manifest's object, by (kind, namespace, name): its KV
# revision (0: absent). send_checked makes the write conditional on it.
Checked = dict[tuple[str, str, str], int]

_STORED: dict[str, tuple[str, type[Any]]] = {
    "Network": (names.NETWORKS_BUCKET, Network),
    "Deployment": (names.DEPLOYMENTS_BUCKET, Deployment),
    "Service": (names.SERVICES_BUCKET, Service),
    "PersistentVolumeClaim": (names.CLAIMS_BUCKET, PersistentVolumeClaim),
}


async def _stored_with_revisions(
    client: CorralClient, kind: str, namespace: str
) -> dict[str, tuple[Any, int]]:
    bucket, type_ = _STORED[kind]
    records: dict[str, tuple[Any, int]] = await client.read_bucket(bucket, type_)
    return {
        value.metadata.name: (value, revision)
        for value, revision in records.values()
        if kind == "Network" or value.metadata.namespace == namespace
    }


async def check_ownership(client: CorralClient, project: str, manifests: list[Manifest]) -> Checked:
    """Nothing of another project, or of no project, is taken over: an object of the
    same kind and name that exists without this project's label is refused (a
    CorralError naming the first). What it saw is returned for send_checked."""
    stored: dict[str, Mapping[str, tuple[Any, int]]] = {
        kind: await _stored_with_revisions(client, kind, client.scope(project)) for kind in _STORED
    }
    checked: Checked = {}
    for manifest in manifests:
        if manifest.kind.kind not in stored:
            continue
        seen = stored[manifest.kind.kind].get(manifest.name)
        checked[manifest.kind.kind, manifest.namespace, manifest.name] = (
            0 if seen is None else seen[1]
        )
        if seen is None:
            continue
        found = seen[0]
        owner = found.metadata.labels.get(PROJECT_LABEL)
        if owner != project:
            whose = f"of project {owner!r}" if owner else "made outside this project"
            raise CorralError(
                f"{manifest.where}: {manifest.kind.subject_kind}/{manifest.name} exists, "
                f"{whose}: corral does not take it over (rename it in the file, or remove it)"
            )
    return checked


async def send_checked(client: CorralClient, manifest: Manifest, checked: Checked) -> Reply:
    """Apply `manifest` on the condition check_ownership saw: absent, create-only; owned,
    at the revision read. A Conflict (it changed since) is a CorralError naming it."""
    seen = checked.get((manifest.kind.kind, manifest.namespace, manifest.name))
    spec = manifest.spec
    if seen is not None:
        meta: Any = getattr(spec, "metadata")  # noqa: B009 (every applied kind has one)
        condition: dict[str, Any] = (
            {"create_only": True} if seen == 0 else {"resource_version": seen}
        )
        spec = msgspec.structs.replace(spec, metadata=msgspec.structs.replace(meta, **condition))
    client.namespace = manifest.namespace
    reply = await client.request(manifest.kind, "apply", encode(spec))
    if not reply.ok and reply.reason == REASON_CONFLICT and seen is not None:
        raise CorralError(
            f"{manifest.where}: {manifest.kind.subject_kind}/{manifest.name} changed since "
            "it was checked: run it again"
        )
    if not reply.ok:
        raise CorralError(f"{manifest.where}: {RequestRejected(reply)}")
    return reply


@stack.command("deploy")
@click.option(
    "-c",
    "--compose-file",
    "compose_file",
    required=True,
    metavar="FILE",
    help="The Compose file ('-': stdin).",
)
@click.option(
    "-p", "--project-name", "project_flag", metavar="NAME", help="The project name (as STACK)."
)
@click.argument("stack_name", metavar="[STACK]", required=False)
@click.pass_context
def deploy(
    ctx: click.Context, compose_file: str, project_flag: str | None, stack_name: str | None
) -> None:
    """Create or update a Compose project: each service a Deployment and a Service, the
    file's networks and named volumes, in the namespace STACK (the same as corral apply
    -f FILE). STACK, else -p, else $COMPOSE_PROJECT_NAME, else the file's `name:`, else
    its folder's name."""
    if stack_name and project_flag and stack_name != project_flag:
        raise click.UsageError(f"STACK {stack_name!r} and -p {project_flag!r} differ: give one")
    project, manifests = project_manifests(compose_file, stack_name or project_flag)
    from corral.client.cli.manifests import check_node_ports

    try:
        check_node_ports(manifests)  # what is deployed together: before anything is sent
    except CorralError as error:
        raise click.ClickException(str(error)) from None

    async def send(client: CorralClient) -> None:
        checked = await check_ownership(client, project, manifests)
        for manifest in manifests:
            reply = await send_checked(client, manifest, checked)
            click.echo(f"{manifest.kind.subject_kind}/{manifest.name} {applied_verb(reply)}")

    run_with_client(settings_of(ctx), send)


@dataclass(frozen=True)
class StackRow:
    name: str
    services: int
    namespace: str


async def stacks(client: CorralClient) -> list[StackRow]:
    """Every project that has Deployments, by their project label (any namespace)."""
    stored = await client.read_bucket(names.DEPLOYMENTS_BUCKET, Deployment)
    counts: Counter[tuple[str, str]] = Counter()
    for deployment, _ in stored.values():
        project = deployment.metadata.labels.get(PROJECT_LABEL)
        if project:
            counts[project, deployment.metadata.namespace] += 1
    return [StackRow(p, n, ns) for (p, ns), n in sorted(counts.items())]


def ls_table(rows: list[StackRow]) -> str:
    if not rows:
        return "No stacks."
    return render_table(
        ["NAME", "SERVICES", "NAMESPACE"], [[r.name, str(r.services), r.namespace] for r in rows]
    )


@stack.command("ls")
@click.pass_context
def ls(ctx: click.Context) -> None:
    """List stacks: NAME SERVICES NAMESPACE."""
    click.echo(run_with_client(settings_of(ctx), lambda client: _ls(client)))


async def _ls(client: CorralClient) -> str:
    return ls_table(await stacks(client))


def _mine(deployments: dict[str, Deployment], project: str) -> dict[str, Deployment]:
    return {
        name: d
        for name, d in deployments.items()
        if d.metadata.labels.get(PROJECT_LABEL) == project
    }


async def ps_text(client: CorralClient, project: str) -> str:
    """`stack ps`: every replica of the project's services in one table, as `service ps`."""
    deployments = _mine(await client.deployments(project), project)
    if not deployments:
        raise CorralError(f"nothing found in stack: {project}")
    statuses = await client.deployment_statuses(project)
    services = await client.services(project)
    placements = await client.placements()
    replica_statuses = await client.replica_statuses()
    headers: list[str] = []
    rows: list[list[str]] = []
    now = time.time()
    for name in sorted(deployments):
        deployment = deployments[name]
        mine = [s for s in services.values() if selects(s, deployment)]
        table = split_table(
            ps_table(deployment, statuses.get(name), placements, replica_statuses, mine, now)
        )
        if table is None:
            continue
        headers = table[0]
        rows += table[1]
    if not rows:
        return f"No replicas in stack {project}."
    return render_table(headers, rows)


@stack.command("ps")
@click.argument("stack_name", metavar="STACK")
@click.pass_context
def ps(ctx: click.Context, stack_name: str) -> None:
    """List the replicas (tasks) of a stack's services, as `corral service ps`."""
    click.echo(run_with_client(settings_of(ctx), lambda client: ps_text(client, stack_name)))


async def remove_stack(
    client: CorralClient,
    project: str,
    volumes: bool,
    wait_seconds: float,
    volumes_hint: str = "stack rm --volumes",
) -> list[str]:
    """Delete a project's Services and Deployments, its claims when `volumes`, then the
    networks made for it (asked again while its Deployments still name them): only
    objects with the project's label (`stack rm`, and `corral delete -f` of a Compose
    file). The lines to print; `volumes_hint`: what deletes a kept claim."""
    lines: list[str] = []
    # each read with its revision: a delete refuses an object changed since (_delete_read)
    deployments = await _owned_revisions(client, "Deployment", project)
    services = await _owned_revisions(client, "Service", project)
    claims = await _owned_revisions(client, "PersistentVolumeClaim", project)
    networks = {
        n: net
        for n, net in (await client.networks()).items()
        if net.metadata.labels.get(PROJECT_LABEL) == project
    }
    if not (deployments or services or claims or networks):
        raise CorralError(f"nothing found in stack: {project}")
    for name in sorted(services):
        reply = await _delete_read(client, "Service", name, project, services[name])
        lines.append(reply.message or f"service/{name} deleted")
    for name in sorted(deployments):
        reply = await _delete_read(client, "Deployment", name, project, deployments[name])
        lines.append(reply.message or f"deployment/{name} deleted")
    for name in sorted(claims):
        if volumes:
            reply = await _delete_read(client, "PersistentVolumeClaim", name, project, claims[name])
            lines.append(reply.message or f"persistentvolumeclaim/{name} deleted")
        else:
            lines.append(
                f"persistentvolumeclaim/{name} kept, with its data ({volumes_hint} "
                "deletes it, as docker compose down -v)"
            )
    deadline = time.monotonic() + wait_seconds
    for name in sorted(networks):
        while True:
            try:
                reply = await client.delete("Network", name)
            except RequestRejected as error:
                # Refused while a Deployment being deleted still names it: ask again.
                if error.reply.reason != "Conflict" or time.monotonic() > deadline:
                    raise
                await anyio.sleep(NETWORK_RETRY_SECONDS)
                continue
            lines.append(reply.message or f"network/{name} deleted")
            break
    return lines


async def _owned_revisions(client: CorralClient, kind: str, project: str) -> dict[str, int]:
    stored = await _stored_with_revisions(client, kind, client.scope(project))
    return {
        name: revision
        for name, (value, revision) in stored.items()
        if value.metadata.labels.get(PROJECT_LABEL) == project
    }


async def _delete_read(
    client: CorralClient, kind: str, name: str, namespace: str, revision: int
) -> Reply:
    """Delete an object at the revision it was read at (a Conflict: it changed since)."""
    request = DeleteRequest(name=name, namespace=namespace, resource_version=revision)
    reply = await client.request(find_kind(kind), "delete", encode(request))
    if not reply.ok and reply.reason == REASON_CONFLICT:
        raise CorralError(
            f"{find_kind(kind).subject_kind}/{name} changed since it was checked: run it again"
        )
    if not reply.ok:
        raise RequestRejected(reply)
    return reply


@stack.command("rm")
@click.argument("stack_names", metavar="STACK...", nargs=-1, required=True)
@click.option(
    "-v",
    "--volumes",
    is_flag=True,
    help="Also delete the claims of the stack's named volumes, and their data (kept "
    "otherwise, as `docker compose down` keeps named volumes without -v).",
)
@click.pass_context
def rm(ctx: click.Context, stack_names: tuple[str, ...], volumes: bool) -> None:
    """Remove stacks: their Deployments, Services and the networks made for them; claims
    (and their data) only with --volumes."""
    settings = settings_of(ctx)

    async def remove(client: CorralClient) -> list[str]:
        lines = []
        for name in stack_names:
            lines += await remove_stack(client, name, volumes, settings.timeout)
        return lines

    for line in run_with_client(settings, remove):
        click.echo(line)


@stack.command("logs")
@click.argument("stack_name", metavar="STACK")
@click.argument("service_names", metavar="[SERVICE...]", nargs=-1)
@log_options
@click.pass_context
def logs(
    ctx: click.Context,
    stack_name: str,
    service_names: tuple[str, ...],
    follow: bool,
    tail: int | None,
    since_text: str | None,
    timestamps: bool,
) -> None:
    """The logs of a stack's services (all, or those named), each line led by
    REPLICA@NODE |, as `docker compose logs` (corral logs, docs/api.md)."""

    async def find(client: CorralClient) -> list[ReplicaRef]:
        client.namespace = stack_name
        mine = _mine(await client.deployments(stack_name), stack_name)
        if not mine:
            raise CorralError(f"nothing found in stack: {stack_name}")
        refs: list[ReplicaRef] = []
        for name in service_names or sorted(mine):
            if name not in mine:
                raise CorralError(f"no such service in stack {stack_name}: {name}")
            refs += await find_replicas(client, f"deployment/{name}")
        return refs

    run_logs(
        ctx,
        stack_name,
        follow=follow,
        tail=tail,
        since_text=since_text,
        timestamps=timestamps,
        prefix=True,
        style="docker",
        find=find,
    )
