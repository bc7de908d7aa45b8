"""What `corral network ...`, `create service|pv|pvc|storageclass` and `expose` share:
checking an object built from flags (an error names the flag), and creating it only if
it is new."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import click
import msgspec

from corral.client.api import CorralClient, CorralError, RequestRejected, find_kind
from corral.client.cli.runner import Settings, run_with_client
from corral.client.cli.write_commands import _rejected, applied_verb
from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.events import Reply


def validated(manifest: dict[str, Any], kind: type[msgspec.Struct], flags: dict[str, str]) -> bytes:
    """The JSON the owner will get, decoded as the owner will; an error about a field
    that came from a flag (`flags`: field path prefix -> flag) names the flag first."""
    raw = msgspec.json.encode(manifest)
    try:
        decode_payload(raw, kind)
    except InvalidPayload as error:
        for prefix, flag in flags.items():
            if error.field == prefix or error.field.startswith((f"{prefix}.", f"{prefix}[")):
                raise click.BadParameter(error.message, param_hint=flag) from None
        raise click.ClickException(error.message) from None
    return raw


async def exists(client: CorralClient, kind: str, name: str) -> bool:
    readers: dict[str, Callable[[], Awaitable[Mapping[str, object]]]] = {
        "Network": client.networks,
        "Service": client.services,
        "PersistentVolume": client.volumes,
        "PersistentVolumeClaim": client.claims,
        "StorageClass": client.storage_classes,
    }
    return name in await readers[kind]()


def create_only(raw: bytes) -> bytes:
    """The apply `raw` with metadata.createOnly: its owner refuses it (Conflict) when
    the object exists, however recently it was made (docs/api.md)."""
    document = msgspec.json.decode(raw)
    document["metadata"] = {**document.get("metadata", {}), "createOnly": True}
    return msgspec.json.encode(document)


def create_new(settings: Settings, kind: str, name: str, raw: bytes) -> None:
    """Send an apply for an object that must not exist yet (as kubectl create): an
    existing one is refused and left as it is, also one made after the check (the
    apply's metadata.createOnly). Prints `<kind>/<name> created`."""
    api_kind = find_kind(kind)
    raw = create_only(raw)

    async def send(client: CorralClient) -> Reply:
        if await exists(client, kind, name):
            raise CorralError(
                f"{api_kind.subject_kind} {name!r} already exists: change it with corral apply, "
                f"or delete it first (corral delete {api_kind.subject_kind} {name})"
            )
        return await client.request(api_kind, "apply", raw)

    reply = run_with_client(settings, send)
    if not reply.ok:
        raise _rejected(RequestRejected(reply))
    click.echo(f"{api_kind.subject_kind}/{name} {applied_verb(reply)}")
