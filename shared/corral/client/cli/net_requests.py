"""What `corral network ...`, `create service|pv|pvc|storageclass` and `expose` share:
checking an object built from flags (an error names the flag), and creating it only if
it is new."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import click
import msgspec

from corral.client.api import CorralClient, CorralError, RequestRejected, find_kind
from corral.client.cli.container_commands import validated as validated  # one home, re-exported
from corral.client.cli.runner import Settings, run_with_client
from corral.client.cli.write_commands import _rejected, applied_verb
from corral.contract.events import Reply


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
