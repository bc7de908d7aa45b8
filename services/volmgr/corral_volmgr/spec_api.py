"""What volmgr's answers to apply and delete of PersistentVolumes, claims and
StorageClasses add to the rules every spec API follows (corral.natsio.spec_api;
docs/api.md, "Durable specs").

Checks against the rest of the cluster (a bound volume's spec, a Terminating claim)
read the mirrors under one lock, held by every apply and delete of the three kinds
and by the controllers' writes: this process is the only writer (the lease). A
decision waits (Busy) until every mirror it reads is current, and every write is put
into the kind's own mirror at once, so the next decision sees it.

A delete may be deferred (in-use protection, docs/volumes.md "Protection and
reclaim"): the kind's `protect` writes the status that says so and returns the
reply's message; the object stays until its controller removes it.
"""

from __future__ import annotations

import contextvars
from typing import Any, TypeVar

import msgspec

from corral.contract.codec import encode
from corral.contract.events import REASON_INVALID, Reply
from corral.contract.volume_specs import PersistentVolume, PersistentVolumeClaim, StorageClass
from corral.natsio import spec_api
from corral.natsio.kv import Entry, Mirror
from corral.natsio.spec_api import SpecPosition, no_stream

T = TypeVar("T", PersistentVolume, PersistentVolumeClaim, StorageClass)

# The message of a delete deferred by `protect` in this request (one list per task).
_deferred: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "volmgr_deferred_delete", default=None
)


class Refusal(Exception):
    """An apply refused: the field and why (reason: Invalid, or Conflict when the
    cluster's state, not the request, is in the way)."""

    def __init__(self, field: str, message: str, reason: str = REASON_INVALID) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def changed_fields(before: msgspec.Struct, after: msgspec.Struct, prefix: str) -> list[str]:
    """The top-level fields of two structs of one type that differ, as camelCase paths."""
    found = []
    for field in before.__struct_fields__:
        if getattr(before, field) != getattr(after, field):
            found.append(f"{prefix}{camel(field)}")
    return found


class SpecAPI(spec_api.LockedSpecAPI[T]):
    """What the three APIs share: `kind`, its type, its bucket's mirror."""

    service = "volmgr"

    def settle(self, wanted: T, current: T | None) -> T | Reply:
        try:
            return self.decide(wanted, current)
        except Refusal as error:
            return self.reply(
                ok=False,
                name=wanted.metadata.name,
                reason=error.reason,
                error=error.message,
                field=error.field,
            )

    def decide(self, wanted: T, current: T | None) -> T:
        """The object to store for `wanted`, or a Refusal."""
        return wanted

    async def protect(self, key: str, revision: int) -> str:
        """Before `key` is deleted: "" to delete it now, or the message of a deferred
        delete (the status saying so is written; its controller deletes it later)."""
        return ""

    # --- deleting, deferred when in use --------------------------------------------

    async def delete(self, raw: bytes, sequence: int = 0) -> Reply:
        notes: list[str] = []
        token = _deferred.set(notes)
        try:
            reply = await super().delete(raw, sequence)
        finally:
            _deferred.reset(token)
        if reply.ok and notes:
            return msgspec.structs.replace(reply, message=notes[-1])
        return reply

    # --- removing, unless `protect` defers it ---------------------------------------

    async def remove(self, key: str, revision: int) -> int:
        deferred = await self.protect(key, revision)
        if deferred:
            notes = _deferred.get()
            if notes is not None:
                notes.append(deferred)
            return revision
        return await super().remove(key, revision)


async def write_status(mirror: Mirror[Any], key: str, value: Any) -> None:
    """Write a status record compare-and-set on what `mirror` holds (Conflict raised,
    the API retries), and apply it to the mirror."""
    raw = encode(value)
    revision = mirror.revision(key)
    if revision is None:
        written = await mirror.bucket.create(key, raw)
    else:
        written = await mirror.bucket.update(key, raw, revision)
    mirror.apply(Entry(key, raw, written))


__all__ = ["Refusal", "SpecAPI", "SpecPosition", "changed_fields", "no_stream", "write_status"]
