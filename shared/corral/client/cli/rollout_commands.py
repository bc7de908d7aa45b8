"""`corral rollout pause|resume deployment/NAME`: flip a Deployment's `spec.paused`.

A read-modify-apply: the stored Deployment is read with its revision and applied again
with `paused` changed and `metadata.resourceVersion` set to that revision, so a change
made meanwhile by someone else is never overwritten (the scheduler refuses the stale
precondition; the command reads again and retries a few times)."""

from __future__ import annotations

import click
import msgspec

from corral.client.api import CorralClient, CorralError, RequestRejected
from corral.client.cli.kinds import split_kind_name
from corral.client.cli.runner import run_with_client, settings_of
from corral.contract import names
from corral.contract.events import REASON_CONFLICT
from corral.contract.specs import Deployment

ATTEMPTS = 5


@click.group()
def rollout() -> None:
    """Manage a Deployment's rollout: pause, resume."""


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
    key = names.object_key(names.DEFAULT_NAMESPACE, name)
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
