"""`corral rollout pause|resume deployment/NAME`: flip a Deployment's `spec.paused`;
`rollout history|undo|restart` (the revisions the scheduler keeps in
corral_deployment_history) and `rollout status` (follows the status record).

A read-modify-apply: the stored Deployment is read with its revision and applied again
with `paused` changed and `metadata.resourceVersion` set to that revision, so a change
made meanwhile by someone else is never overwritten (the scheduler refuses the stale
precondition; the command reads again and retries a few times)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Awaitable, Callable

import click
import msgspec
import yaml

from corral.client.api import CorralClient, CorralError, RequestRejected
from corral.client.cli.kinds import split_kind_name
from corral.client.cli.progress import RolloutOutcome, follow_rollout
from corral.client.cli.runner import run_with_client, settings_of
from corral.client.cli.tables import render_table
from corral.contract import names
from corral.contract.events import REASON_CONFLICT
from corral.contract.specs import CHANGE_CAUSE_ANNOTATION, ContainerTemplate, Deployment
from corral.contract.state import DeploymentHistory, DeploymentRevision

ATTEMPTS = 5


@click.group()
def rollout() -> None:
    """Manage a Deployment's rollout: status, history, undo, restart, pause, resume."""


def _target(kind: str, name: str | None, verb: str) -> str:
    kind, name = split_kind_name(kind, name)
    if kind.lower() not in ("deployment", "deployments", "deploy"):
        raise click.BadParameter(
            f"corral rollout {verb} works on deployments, not {kind!r}", param_hint="KIND"
        )
    if not name:
        raise click.UsageError(f"missing NAME: corral rollout {verb} deployment/NAME")
    return name


async def set_paused(client: CorralClient, name: str, paused: bool) -> bool:
    """Set `spec.paused` of Deployment `name`; False when it already was so. Raises
    CorralError when it does not exist, or when it kept changing under the write."""
    key = names.object_key(client.namespace, name)
    for _ in range(ATTEMPTS):
        stored = (await client.read_bucket(names.DEPLOYMENTS_BUCKET, Deployment, key)).get(key)
        if stored is None:
            raise CorralError(f"deployment {name!r} not found")
        deployment, revision = stored
        if deployment.spec.paused == paused:
            return False
        changed = msgspec.structs.replace(
            deployment,
            metadata=msgspec.structs.replace(deployment.metadata, resource_version=revision),
            spec=msgspec.structs.replace(deployment.spec, paused=paused),
        )
        try:
            await client.apply(changed)
        except RequestRejected as error:
            if error.reply.reason == REASON_CONFLICT:
                continue  # changed meanwhile: read it again
            raise
        return True
    raise CorralError(f"deployment {name!r} kept changing; try again")


def _flip(ctx: click.Context, kind: str, name: str | None, paused: bool) -> None:
    verb = "pause" if paused else "resume"
    target = _target(kind, name, verb)

    async def send(client: CorralClient) -> bool:
        return await set_paused(client, target, paused)

    changed = run_with_client(settings_of(ctx), send)
    state = "paused" if paused else "resumed"
    if not changed:
        raise click.ClickException(
            f"deployment/{target} is {'already paused' if paused else 'not paused'}"
        )
    click.echo(f"deployment/{target} {state}")


@rollout.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.pass_context
def pause(ctx: click.Context, kind: str, name: str | None) -> None:
    """Hold a Deployment's template changes: corral rollout pause deployment/NAME.
    Scaling still applies; `resume` rolls out what changed meanwhile."""
    _flip(ctx, kind, name, True)


@rollout.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.pass_context
def resume(ctx: click.Context, kind: str, name: str | None) -> None:
    """Roll out a paused Deployment's template again: corral rollout resume deployment/NAME."""
    _flip(ctx, kind, name, False)


# --- revisions: history, undo, restart (the scheduler keeps them: corral_scheduler.history)


async def read_deployment(client: CorralClient, name: str) -> tuple[Deployment, int]:
    """The stored Deployment `name` and its KV revision; CorralError when there is none."""
    key = names.object_key(client.namespace, name)
    stored = (await client.read_bucket(names.DEPLOYMENTS_BUCKET, Deployment, key)).get(key)
    if stored is None:
        raise CorralError(f"deployment {name!r} not found")
    return stored


async def read_history(client: CorralClient, name: str) -> DeploymentHistory:
    key = names.object_key(client.namespace, name)
    found = (await client.read_bucket(names.DEPLOYMENT_HISTORY_BUCKET, DeploymentHistory, key)).get(
        key
    )
    return DeploymentHistory(name=name) if found is None else found[0]


def with_template(
    deployment: Deployment, revision: int, template: ContainerTemplate, cause: str
) -> Deployment:
    """`deployment` with `template` and change cause `cause`, to be applied only over the
    stored version `revision` (the resourceVersion precondition)."""
    annotations = dict(deployment.metadata.annotations)
    annotations[CHANGE_CAUSE_ANNOTATION] = cause
    return msgspec.structs.replace(
        deployment,
        metadata=msgspec.structs.replace(
            deployment.metadata, resource_version=revision, annotations=annotations
        ),
        spec=msgspec.structs.replace(deployment.spec, template=template),
    )


Change = Callable[[Deployment, int], Awaitable[Deployment | None]]


async def change_template(client: CorralClient, name: str, change: Change) -> Deployment | None:
    """Read Deployment `name`, let `change` make its new version (None: nothing to do),
    apply it with the resourceVersion precondition; read again and retry when it
    changed meanwhile. Returns what was applied, or None."""
    for _ in range(ATTEMPTS):
        deployment, revision = await read_deployment(client, name)
        changed = await change(deployment, revision)
        if changed is None:
            return None
        try:
            await client.apply(changed)
        except RequestRejected as error:
            if error.reply.reason == REASON_CONFLICT:
                continue
            raise
        return changed
    raise CorralError(f"deployment {name!r} kept changing; try again")


def history_table(history: DeploymentHistory) -> str:
    """kubectl's `rollout history` table: REVISION and CHANGE-CAUSE, oldest first, with
    AVAILABLE: yes for a revision whose rollout once completed (every replica updated
    and available: `availableAt`), the ones the automatic rollback may return to."""
    rows = [
        [str(r.revision), _yes(r.available_at), r.change_cause or "<none>"]
        for r in history.revisions
    ]
    return render_table(["REVISION", "AVAILABLE", "CHANGE-CAUSE"], rows)


def _yes(available_at: float) -> str:
    return "yes" if available_at else "no"


def _moment(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def revision_text(history: DeploymentHistory, revision: int) -> str:
    """One revision's template (kubectl's `rollout history --revision N`), as YAML."""
    entry = history.find(revision)
    if entry is None:
        raise CorralError(
            f"--revision {revision}: deployment {history.name!r} has no such revision "
            f"(it has {_numbers(history)})"
        )
    body = yaml.safe_dump(
        {"template": msgspec.to_builtins(entry.template)}, sort_keys=False, default_flow_style=False
    )
    lines = [
        f"deployment/{history.name} with revision #{entry.revision}",
        f"Template hash: {entry.template_hash}",
        f"Change cause:  {entry.change_cause or '<none>'}",
        "Available:     "
        + (_moment(entry.available_at) if entry.available_at else "no (never fully available)"),
        body.rstrip("\n"),
    ]
    return "\n".join(lines)


def _numbers(history: DeploymentHistory) -> str:
    return ", ".join(str(r.revision) for r in history.revisions) or "none"


def undo_target(
    history: DeploymentHistory, current_hash: str, to_revision: int
) -> DeploymentRevision:
    """The revision `rollout undo` goes back to: `to_revision`, or (0) the one before the
    newest. CorralError naming --to-revision when there is no such revision."""
    if to_revision:
        entry = history.find(to_revision)
        if entry is None:
            raise CorralError(
                f"--to-revision {to_revision}: deployment {history.name!r} has no such "
                f"revision (it has {_numbers(history)})"
            )
        return entry
    older = [r for r in history.revisions if r.template_hash != current_hash]
    if not older:
        raise CorralError(f"deployment {history.name!r} has no previous revision to go back to")
    return older[-1]


def _refuse_paused(deployment: Deployment, verb: str) -> None:
    if deployment.spec.paused:
        raise CorralError(
            f"deployment {deployment.metadata.name!r} is paused; "
            f"run `corral rollout resume` before {verb}"
        )


@rollout.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option(
    "--revision", type=click.IntRange(min=1), default=None, help="Show this revision's template."
)
@click.pass_context
def history(ctx: click.Context, kind: str, name: str | None, revision: int | None) -> None:
    """A Deployment's revisions and their change causes:
    corral rollout history deployment/NAME [--revision N]."""
    target = _target(kind, name, "history")

    async def read(client: CorralClient) -> str:
        await read_deployment(client, target)
        found = await read_history(client, target)
        if revision is not None:
            return revision_text(found, revision)
        return f"deployment/{target}\n{history_table(found)}"

    click.echo(run_with_client(settings_of(ctx), read))


@rollout.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option(
    "--to-revision",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The revision to go back to; 0: the previous one.",
)
@click.pass_context
def undo(ctx: click.Context, kind: str, name: str | None, to_revision: int) -> None:
    """Go back to an earlier template: corral rollout undo deployment/NAME [--to-revision N].
    The template becomes a new revision, as in Kubernetes."""
    target = _target(kind, name, "undo")
    cause = f"corral rollout undo deployment/{target}" + (
        f" --to-revision={to_revision}" if to_revision else ""
    )
    chosen: list[DeploymentRevision] = []

    async def send(client: CorralClient) -> Deployment | None:
        async def change(deployment: Deployment, revision: int) -> Deployment | None:
            current = deployment.spec.template.template_hash()
            entry = undo_target(await read_history(client, target), current, to_revision)
            _refuse_paused(deployment, "undo")
            chosen[:] = [entry]
            if entry.template_hash == current:
                return None
            return with_template(deployment, revision, entry.template, cause)

        return await change_template(client, target, change)

    applied = run_with_client(settings_of(ctx), send)
    if applied is None:
        click.echo(
            f"deployment/{target} skipped rollback (current template already matches "
            f"revision {chosen[0].revision})"
        )
        return
    click.echo(f"deployment/{target} rolled back to revision {chosen[0].revision}")


@rollout.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.pass_context
def restart(ctx: click.Context, kind: str, name: str | None) -> None:
    """Replace every replica: corral rollout restart deployment/NAME (sets the template's
    restartedAt, so its hash changes and the rollout settings apply)."""
    target = _target(kind, name, "restart")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async def change(deployment: Deployment, revision: int) -> Deployment | None:
        _refuse_paused(deployment, "restart")
        template = msgspec.structs.replace(deployment.spec.template, restarted_at=now)
        return with_template(
            deployment, revision, template, f"corral rollout restart deployment/{target}"
        )

    async def send(client: CorralClient) -> Deployment | None:
        return await change_template(client, target, change)

    run_with_client(settings_of(ctx), send)
    click.echo(f"deployment/{target} restarted")


# --- status: follow the Deployment's status record until the rollout is done


def parse_timeout(text: str) -> float:
    """A duration like kubectl's: 90, 90s, 2m, 1h, 1m30s; 0: no limit."""
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+(?:\.[0-9]+)?)s)?", text)
    if not text or parts is None:
        raise click.BadParameter(
            f"{text!r} is not a duration like 30s, 5m or 1h", param_hint="--timeout"
        )
    hours, minutes, seconds = (float(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


@rollout.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option(
    "--timeout",
    "limit",
    default="0s",
    show_default=True,
    help="Give up (exit 1) after this long: 30s, 5m, 1h; 0s: wait as long as it takes.",
)
@click.pass_context
def status(ctx: click.Context, kind: str, name: str | None, limit: str) -> None:
    """Follow a rollout until every replica runs the current template and is available
    (exit 0); exit 1 when its progress deadline is exceeded, when it was rolled back
    automatically, or at --timeout: corral rollout status deployment/NAME."""
    target = _target(kind, name, "status")
    seconds = parse_timeout(limit)

    async def follow(client: CorralClient) -> RolloutOutcome:
        return await follow_rollout(client, target, timeout=seconds or None)

    outcome = run_with_client(settings_of(ctx), follow)
    if not outcome.ok:
        click.echo(f"error: {outcome.message}", err=True)
        ctx.exit(1)
