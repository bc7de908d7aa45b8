"""The commands that change the cluster: create, apply, scale, delete.

Each validates locally with the decoder the owner uses (so a bad spec never
leaves the machine), then sends a request to the owner and prints its Reply.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from corral.client.api import ApiKind, CorralClient, CorralError, RequestRejected, find_kind
from corral.client.cli.container_commands import delete_containers
from corral.client.cli.kinds import split_kind_name
from corral.client.cli.options import (
    given_namespace,
    parse_container_port,
    parse_env,
    parse_labels,
    parse_resource_list,
)
from corral.client.cli.runner import run_with_client, settings_of
from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.events import Reply
from corral.contract.specs import API_VERSION, DeleteRequest, Deployment, ScaleRequest

if TYPE_CHECKING:
    from corral.client.cli.manifests import Manifest


def _kind_arg(text: str) -> ApiKind:
    try:
        return find_kind(text)
    except CorralError as error:
        raise click.BadParameter(str(error), param_hint="KIND") from None


def _validated(raw_object: dict[str, Any], kind: type[msgspec.Struct]) -> bytes:
    """The JSON the owner will get, after decoding it exactly as the owner will."""
    raw = msgspec.json.encode(raw_object)
    try:
        decode_payload(raw, kind)
    except InvalidPayload as error:
        raise click.ClickException(error.message) from None
    return raw


def applied_verb(reply: Reply) -> str:
    if reply.unchanged:
        return "unchanged"
    return "created" if reply.generation == 1 else "configured"


def _rejected(error: RequestRejected) -> click.ClickException:
    reply = error.reply
    where = (
        f" (field `{reply.field}`)" if reply.field and f"`{reply.field}`" not in reply.error else ""
    )
    return click.ClickException(f"{reply.error}{where}")


# --- create -------------------------------------------------------------------------


@click.group()
def create() -> None:
    """Create an object from flags (see also: corral apply -f)."""


@create.command("deployment")
@click.argument("name")
@click.option("--image", required=True, help="The container image, e.g. nginx:1.27.")
@click.option("--replicas", type=int, default=1, show_default=True)
@click.option("--requests", "requests_", metavar="LIST", help="e.g. cpu=100m,memory=64Mi")
@click.option("--limits", metavar="LIST", help="e.g. cpu=500m,memory=128Mi")
@click.option("--env", "-e", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="PORT[/PROTOCOL]",
    help="A port the container listens on (kubectl's --port), e.g. 8080 or 53/udp; "
    "corral expose uses it. Repeatable.",
)
@click.option(
    "--network",
    "networks",
    multiple=True,
    metavar="NETWORK",
    help="A corral network the replicas join (the first carries their default route and "
    "DNS). Repeatable; none: the network `default`.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create_deployment(
    ctx: click.Context,
    name: str,
    image: str,
    replicas: int,
    requests_: str | None,
    limits: str | None,
    env: tuple[str, ...],
    labels: tuple[str, ...],
    ports: tuple[str, ...],
    networks: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run REPLICAS copies of IMAGE; `-- COMMAND ARGS...` replaces the image's entrypoint.

    Its replicas are labelled app=NAME, which `corral expose deployment NAME` selects."""
    template: dict[str, Any] = {"image": image}
    if ports:
        template["ports"] = [parse_container_port(port) for port in ports]
    if networks:
        template["networks"] = list(networks)
    if command:
        template["command"] = list(command)
    if env:
        template["env"] = parse_env(env)
    resources = {}
    if requests_:
        resources["requests"] = parse_resource_list(requests_, "--requests")
    if limits:
        resources["limits"] = parse_resource_list(limits, "--limits")
    if resources:
        template["resources"] = resources
    # createOnly: one made after the check below is refused too, not replaced.
    metadata: dict[str, Any] = {"name": name, "createOnly": True}
    if labels:
        metadata["labels"] = parse_labels(labels)
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {"replicas": replicas, "template": template},
    }
    raw = _validated(manifest, Deployment)
    kind = find_kind("Deployment")

    async def send(client: CorralClient) -> Reply:
        if await client.deployment(name) is not None:
            raise CorralError(
                f"deployment {name!r} already exists: change it with corral apply or corral scale"
            )
        return await client.request(kind, "apply", raw)

    reply = run_with_client(settings_of(ctx), send)
    if not reply.ok:
        raise _rejected(RequestRejected(reply))
    click.echo(f"deployment/{name} {applied_verb(reply)}")


# --- apply ----------------------------------------------------------------------------


def read_input_file(file_name: str, limit: int, what: str) -> tuple[str, str]:
    """Where it came from ('<stdin>' for '-') and the text of a UTF-8 file of at most
    `limit` bytes; ClickException naming the file otherwise ("... for `what`")."""
    source = "<stdin>" if file_name == "-" else file_name
    try:
        if file_name == "-":
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            with Path(file_name).open("rb") as handle:
                raw = handle.read(limit + 1)
        if len(raw) > limit:
            raise click.ClickException(
                f"{source}: larger than the limit of {limit} bytes for {what}"
            )
        return source, raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise click.ClickException(f"cannot read {source}: {error}") from None


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def manifest_file_names(files: tuple[str, ...]) -> list[str]:
    """The files `-f` names: a directory gives its .yaml, .yml and .json files (not its
    subdirectories'), in name order, as kubectl reads one; one with none is an error."""
    names: list[str] = []
    for file_name in files:
        path = Path(file_name)
        if file_name == "-" or not path.is_dir():
            names.append(file_name)
            continue
        found = sorted(
            str(child)
            for child in path.iterdir()
            if child.suffix in MANIFEST_SUFFIXES and child.is_file()
        )
        if not found:
            raise click.ClickException(
                f"{file_name}: a directory with no {', '.join(MANIFEST_SUFFIXES)} file in it"
            )
        names += found
    return names


def read_manifest_files(files: tuple[str, ...]) -> list[Manifest]:
    """Every document of every file ('-' is stdin; a directory's files), all validated
    before anything is sent."""
    # Imported here: PyYAML only for `corral apply`.
    from corral.client.cli.manifests import (
        MAX_MANIFEST_BYTES,
        check_unique_objects,
        load_manifests,
    )
    from corral.client.cli.namespaces import resolve_namespaces

    manifests: list[Manifest] = []
    for file_name in manifest_file_names(files):
        source, text = read_input_file(file_name, MAX_MANIFEST_BYTES, "a manifest")
        try:
            manifests += load_manifests(text, source)
        except CorralError as error:
            raise click.ClickException(str(error)) from None
    manifests = resolve_namespaces(manifests, given_namespace(click.get_current_context()))
    try:
        check_unique_objects(manifests)  # across files too
    except CorralError as error:
        raise click.ClickException(str(error)) from None
    return manifests


_file_option = click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    metavar="FILE",
    help="A YAML manifest; '-' reads stdin; a directory, its .yaml, .yml and .json files. "
    "Repeatable; a file may hold several documents.",
)


@click.command()
@_file_option
@click.pass_context
def apply(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Create or update the objects of manifests (apiVersion/kind/metadata/spec).

    Kinds: corral/v1 Deployment, Network, Service, PersistentVolume,
    PersistentVolumeClaim and StorageClass, and Kubernetes' apps/v1 Deployment, v1
    Service, PersistentVolume and PersistentVolumeClaim and storage.k8s.io/v1
    StorageClass (the fields corral does not support are dropped, with one warning per
    document naming them; see docs/manifests.md). Every document of every file is
    checked before anything is sent: one bad document refuses them all."""
    if not files:
        raise click.UsageError("give at least one manifest: corral apply -f FILE")
    manifests = read_manifest_files(files)
    from corral.client.cli.manifests import check_node_ports

    try:
        check_node_ports(manifests)  # what is applied together: before anything is sent
    except CorralError as error:
        raise click.ClickException(str(error)) from None
    for manifest in manifests:
        if manifest.dropped:
            click.echo(
                f"warning: {manifest.label}: "
                f"dropped fields corral does not support: {', '.join(manifest.dropped)}",
                err=True,
            )

    async def send(client: CorralClient) -> None:
        # Imported here: stack_commands imports this module.
        from corral.client.cli.stack_commands import check_compose_ownership, send_checked

        # A Compose project takes over nothing another project, or no project, made
        # (as `corral stack deploy`): checked for each before anything is sent, and
        # each write conditional on what the check saw (send_checked).
        checked = await check_compose_ownership(client, manifests)
        for manifest in manifests:
            client.namespace = manifest.namespace  # its own, resolved (-n, as kubectl)
            reply = await send_checked(client, manifest, checked)
            click.echo(f"{manifest.kind.subject_kind}/{manifest.name} {applied_verb(reply)}")

    run_with_client(settings_of(ctx), send)


# --- scale ----------------------------------------------------------------------------


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("--replicas", type=int, required=True, help="The new replica count.")
@click.pass_context
def scale(ctx: click.Context, kind: str, name: str | None, replicas: int) -> None:
    """Set the replica count: corral scale deployment NAME --replicas N."""
    kind, name = split_kind_name(kind, name)
    if name is None:
        raise click.UsageError("missing NAME: corral scale deployment NAME --replicas N")
    api_kind = _kind_arg(kind)
    if api_kind.kind != "Deployment":  # the only kind with replicas
        raise click.BadParameter(
            f"corral scales deployments; a {api_kind.subject_kind} has no replicas",
            param_hint="KIND",
        )
    raw = _validated({"name": name, "replicas": replicas}, ScaleRequest)

    async def send(client: CorralClient) -> Reply:
        return await client.request(api_kind, "scale", raw)

    reply = run_with_client(settings_of(ctx), send)
    if not reply.ok:
        raise _rejected(RequestRejected(reply))
    click.echo(f"{api_kind.subject_kind}/{name} scaled")


# --- delete ---------------------------------------------------------------------------


@click.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@_file_option
@click.option(
    "--volumes",
    is_flag=True,
    help="With -f of a Compose file: also delete the claims of its named volumes, and "
    "their data (kept otherwise, as `docker compose down` without -v).",
)
@click.pass_context
def delete(
    ctx: click.Context,
    kind: str | None,
    names: tuple[str, ...],
    files: tuple[str, ...],
    volumes: bool,
) -> None:
    """Delete objects: corral delete deployment|service|network|pv|pvc|storageclass
    NAME..., or corral delete -f FILE (a Compose file: its project, as corral stack rm;
    its claims only with --volumes)."""
    targets: list[tuple[ApiKind, str]] = []
    if files:
        if kind is not None:
            raise click.UsageError("give either -f FILE or KIND NAME, not both")
        manifests = read_manifest_files(files)
        projects = compose_projects(manifests)
        if volumes and not projects:
            raise click.UsageError("--volumes is for Compose files: corral delete -f FILE")
        refused = remove_compose_projects(ctx, projects, volumes) if projects else False
        # Every other object the files name, in its namespace; a missing one is reported
        # and the others still deleted (exit 1), as kubectl delete -f.
        plain = [m for m in manifests if not _project_of(m)]
        if plain:
            raws = [
                _validated({"name": m.name, "namespace": m.namespace}, DeleteRequest) for m in plain
            ]
            delete_each(ctx, [(m.kind, m.name) for m in plain], lambda name: b"", raws)
        if refused:
            ctx.exit(1)
        return
    else:
        if volumes:
            raise click.UsageError("--volumes is for Compose files: corral delete -f FILE")
        if kind is None:
            raise click.UsageError("missing KIND and NAME: corral delete deployment NAME")
        if "/" in kind:
            kind, first = split_kind_name(kind, None)
            names = (first or "", *names)
        if not names:
            raise click.UsageError(f"missing NAME: corral delete {kind} NAME")
        if kind.lower() in ("container", "containers"):  # Deployments that are containers
            delete_containers(ctx, names)
            return
        api_kind = _kind_arg(kind)
        targets = [(api_kind, name) for name in names]
    delete_each(ctx, targets, lambda name: _validated({"name": name}, DeleteRequest))


def _project_of(manifest: Manifest) -> str:
    """The Compose project a manifest was made for ("": a plain manifest)."""
    from corral.client.cli.compose import ComposeManifest

    return manifest.project if isinstance(manifest, ComposeManifest) else ""


def compose_projects(manifests: list[Manifest]) -> list[str]:
    """The Compose projects among `manifests`, in file order, each once."""
    return list(dict.fromkeys(p for p in map(_project_of, manifests) if p))


def remove_compose_projects(ctx: click.Context, projects: list[str], volumes: bool) -> bool:
    """`corral delete -f` of Compose files: each project removed as `corral stack rm`
    removes it (only objects with its label; Services, Deployments, claims only when
    `volumes`, networks last). Each failure printed as it comes, the other projects
    still tried; True when one failed."""
    from corral.client.cli.stack_commands import remove_stack

    settings = settings_of(ctx)

    async def send(client: CorralClient) -> bool:
        failed = False
        for project in projects:
            try:
                lines = await remove_stack(
                    client, project, volumes, settings.timeout, "delete -f --volumes"
                )
            except CorralError as error:
                click.echo(f"Error: {error}", err=True)
                failed = True
                continue
            for line in lines:
                click.echo(line)
        return failed

    return run_with_client(settings, send)


def delete_each(
    ctx: click.Context,
    targets: list[tuple[ApiKind, str]],
    request_of: Callable[[str], bytes],
    raws: list[bytes] | None = None,
) -> None:
    """Send a delete for each (kind, name), each tried as kubectl does: each refusal
    printed as it comes, exit 1 after the last. `request_of`: a name's validated
    DeleteRequest (raising first, so that bad input sends nothing); `raws`: instead, one
    validated request per target."""
    if raws is None:
        raws = [request_of(name) for _, name in targets]
    requests = [(api_kind, name, raw) for (api_kind, name), raw in zip(targets, raws, strict=True)]

    async def send(client: CorralClient) -> list[str]:
        refused: list[str] = []
        for api_kind, name, raw in requests:
            reply = await client.request(api_kind, "delete", raw)
            if reply.ok:
                # A deferred delete says why: e.g. a claim in use is Terminating until
                # no replica uses it (docs/volumes.md, "Protection and reclaim").
                # Several names deleted at once: each answer says which object it is about.
                what = f"{api_kind.subject_kind}/{name}"
                click.echo(f"{what}: {reply.message}" if reply.message else f"{what} deleted")
            else:
                # Each refusal as it comes (kubectl's `Error from server (NotFound)`),
                # the others still tried; exit 1 at the end.
                reason = f" ({reply.reason})" if reply.reason else ""
                click.echo(f"Error{reason}: {reply.error}", err=True)
                refused.append(reply.error)
        return refused

    refused = run_with_client(settings_of(ctx), send)
    if refused:
        ctx.exit(1)


# --- diff -----------------------------------------------------------------------------


class DiffError(click.ClickException):
    """`corral diff` fails with exit 2 (1 means differences, as kubectl diff)."""

    exit_code = 2


@click.command()
@_file_option
@click.pass_context
def diff(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Show what `corral apply -f FILE` would change: a unified diff per object of what
    is stored and what apply would store, in the file's form (apps/v1 or corral/v1).

    Exit 0: no differences; 1: differences; 2: an error (as kubectl diff)."""
    if not files:
        raise click.UsageError("give at least one manifest: corral diff -f FILE")
    try:
        manifests = read_manifest_files(files)
        text = run_with_client(settings_of(ctx), lambda client: manifest_diffs(client, manifests))
    except click.ClickException as error:
        raise DiffError(error.message) from None
    if text:
        click.echo(text, nl=False)
        ctx.exit(1)


async def manifest_diffs(client: CorralClient, manifests: list[Manifest]) -> str:
    """The unified diffs of every manifest against what is stored ("" when none differ)."""
    from corral.client.cli.kube_output import read_objects

    stored: dict[tuple[str, str], dict[str, tuple[msgspec.Struct, Any]]] = {}
    texts = []
    for manifest in manifests:
        where = (manifest.kind.kind, manifest.namespace)
        if where not in stored:
            stored[where] = await read_objects(client, manifest.kind, None, manifest.namespace)
        found = stored[where].get(manifest.name)
        texts.append(object_diff(manifest, None if found is None else found[0]))
    return "".join(texts)


def object_diff(manifest: Manifest, stored: msgspec.Struct | None) -> str:
    """One object's unified diff, stored (`a/`, /dev/null when none) against what apply
    would store (`b/`), both in the manifest's form; "" when apply would change nothing."""
    import difflib

    from corral.client.cli.kube_output import corral_form, kubernetes_form, with_allocations
    from corral.client.cli.output import dump

    form = kubernetes_form if manifest.kubernetes else corral_form
    after = dump(form(with_allocations(manifest.spec, stored), server=False), "yaml") + "\n"
    before = "" if stored is None else dump(form(stored, server=False), "yaml") + "\n"
    if before == after:
        return ""
    label = f"{manifest.kind.subject_kind}/{manifest.name}"
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile="/dev/null" if stored is None else f"a/{label}",
        tofile=f"b/{label}",
    )
    return "".join(lines)
