"""`corral set image deployment/NAME IMAGE`: change the image of a Deployment's one
container, as kubectl's `set image` (which also takes `CONTAINER=IMAGE`; corral's one
container is named after the Deployment, and `*` names every container, as kubectl's).

A read-modify-apply with the resourceVersion precondition (rollout_commands.change_template),
setting the kubernetes.io/change-cause annotation to the command, which the scheduler
records with the new revision (`corral rollout history`)."""

from __future__ import annotations

import click
import msgspec

from corral.client.api import CorralClient
from corral.client.cli.kinds import split_kind_name
from corral.client.cli.rollout_commands import change_template, with_template
from corral.client.cli.runner import run_with_client, settings_of
from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.specs import ContainerTemplate, Deployment


@click.group(name="set")
def set_group() -> None:
    """Change one field of an object: set image."""


def new_image(deployment: str, argument: str) -> str:
    """The image of `IMAGE` or `CONTAINER=IMAGE`, checked as a template's `image`."""
    container, sep, image = argument.rpartition("=")
    if sep and container not in (deployment, "*"):
        raise click.BadParameter(
            f"container {container!r} not found: deployment/{deployment} has one "
            f"container, {deployment!r}",
            param_hint="CONTAINER=IMAGE",
        )
    try:
        decode_payload(encode({"image": image}), ContainerTemplate)
    except InvalidPayload as error:
        raise click.BadParameter(
            f"invalid image {image!r}: {error.message}", param_hint="IMAGE"
        ) from None
    return image


@set_group.command()
@click.argument("kind")
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def image(ctx: click.Context, kind: str, images: tuple[str, ...]) -> None:
    """Change a Deployment's image: corral set image deployment/NAME [CONTAINER=]IMAGE."""
    given = "/" in kind
    kind, name = split_kind_name(kind, None if given else images[0])
    arguments = images if given else images[1:]
    if kind.lower() not in ("deployment", "deployments", "deploy"):
        raise click.BadParameter(
            f"corral set image works on deployments, not {kind!r}", param_hint="KIND"
        )
    if not name or len(arguments) != 1:
        raise click.UsageError("usage: corral set image deployment/NAME [CONTAINER=]IMAGE")
    argument = arguments[0]
    chosen = new_image(name, argument)
    cause = f"corral set image deployment/{name} {argument}"

    async def send(client: CorralClient) -> Deployment | None:
        async def change(deployment: Deployment, revision: int) -> Deployment | None:
            if deployment.spec.template.image == chosen:
                return None
            template = msgspec.structs.replace(deployment.spec.template, image=chosen)
            return with_template(deployment, revision, template, cause)

        return await change_template(client, name, change)

    changed = run_with_client(settings_of(ctx), send)
    click.echo(f"deployment/{name} image {'updated' if changed else 'unchanged'}")
