"""How far the durable specs of one kind were applied, kept in KV by the kind's owner.

Stored at corral_leases["specs.<kind>"] (compare-and-set), it is what makes the
CORRAL_SPECS stream safe to replay:

- `applied`: every spec of this kind at or below this stream sequence was handled
  (applied, rejected, skipped or given up on). A redelivered spec at or below it is
  skipped, and a lost durable consumer is made again from `applied + 1`. The record
  is made with the durable consumer, so a lost consumer without it (missing or
  unreadable) cannot know what was applied: it is made again delivering only new
  specs, never replaying old ones (corral.natsio.bus).
- `deleted`: object key (names.object_key: <namespace>.<name>; a bare name, written
  before keys carried the namespace, is the default namespace's) -> the stream's last
  sequence when a request (not the stream) deleted that object while older specs of
  the kind were still unapplied. A spec of that object at or below it is older than
  the delete, and never brings the object back. An entry goes once `applied` passes
  it (the progress rule then covers it).

A stored object records its own sequence (ObjectMeta.spec_sequence) for the third
rule: a spec at or below the stored object's sequence is older than what is stored.
See docs/api.md, "Durable specs".
"""

from __future__ import annotations

import logging

import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.natsio.kv import Bucket, Conflict

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 10


class SpecProgress(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    applied: int = 0
    deleted: dict[str, int] = {}

    def superseded_by(self, key: str, sequence: int) -> int:
        """The newer sequence that makes the spec `sequence` of the object `key` old, or 0."""
        if sequence <= self.applied:
            return self.applied
        deleted_at = self.deleted.get(key, 0)
        namespace, name = names.split_object_key(key)
        if namespace == names.DEFAULT_NAMESPACE:
            deleted_at = max(deleted_at, self.deleted.get(name, 0))
        return deleted_at if sequence <= deleted_at else 0


def progress_key(kind: str) -> str:
    return f"specs.{kind.lower()}"


async def read_progress(bucket: Bucket, kind: str) -> tuple[SpecProgress, int | None]:
    """The stored progress and its revision (None: none stored yet). An unreadable
    record counts as none: the stored objects' own sequences still guard them."""
    entry = await bucket.get(progress_key(kind))
    if entry is None or entry.value is None:
        return SpecProgress(), None
    try:
        return decode(entry.value, SpecProgress), entry.revision
    except msgspec.DecodeError as error:
        log.warning("cannot read %s/%s (%s); starting over", bucket.name, entry.key, error)
        return SpecProgress(), entry.revision


async def recorded_progress(bucket: Bucket, kind: str) -> tuple[SpecProgress | None, bool]:
    """The stored progress (None: missing or unreadable), and whether a record is
    stored at all (False: missing)."""
    entry = await bucket.get(progress_key(kind))
    if entry is None or entry.value is None:
        return None, False
    return _readable(entry.value), True


def _readable(raw: bytes) -> SpecProgress | None:
    try:
        return decode(raw, SpecProgress)
    except msgspec.DecodeError:
        return None


async def _write(bucket: Bucket, kind: str, progress: SpecProgress, revision: int | None) -> None:
    key = progress_key(kind)
    if revision is None:
        await bucket.create(key, encode(progress))
    else:
        await bucket.update(key, encode(progress), revision)


async def advance(bucket: Bucket, kind: str, sequence: int) -> SpecProgress:
    """Record that every spec of `kind` up to `sequence` was handled (never lowers it),
    and forget the deletes it now covers."""
    for _ in range(CAS_ATTEMPTS):
        progress, revision = await read_progress(bucket, kind)
        if sequence <= progress.applied:
            return progress
        advanced = SpecProgress(
            applied=sequence,
            deleted={name: at for name, at in progress.deleted.items() if at > sequence},
        )
        try:
            await _write(bucket, kind, advanced, revision)
        except Conflict:
            continue
        return advanced
    raise Conflict(f"{bucket.name}/{progress_key(kind)} kept changing")


async def remember_delete(bucket: Bucket, kind: str, key: str, position: int) -> None:
    """A request deleted the object `key` when the stream was at `position`: older specs of that
    object still waiting in the stream must not bring it back."""
    for _ in range(CAS_ATTEMPTS):
        progress, revision = await read_progress(bucket, kind)
        if position <= max(progress.applied, progress.deleted.get(key, 0)):
            return  # every spec at or below `position` is already covered
        remembered = SpecProgress(
            applied=progress.applied, deleted={**progress.deleted, key: position}
        )
        try:
            await _write(bucket, kind, remembered, revision)
        except Conflict:
            continue
        return
    raise Conflict(f"{bucket.name}/{progress_key(kind)} kept changing")


async def start_progress(bucket: Bucket, kind: str, applied: int) -> SpecProgress:
    """Make the record readable and at least at `applied`, when a durable consumer is
    made (or bound without a record): a record missing later means it was lost.
    A readable record keeps its deletes not covered by `applied`; an unreadable one
    is replaced."""
    key = progress_key(kind)
    for _ in range(CAS_ATTEMPTS):
        entry = await bucket.get(key)
        stored = None if entry is None or entry.value is None else _readable(entry.value)
        if stored is not None and stored.applied >= applied:
            return stored
        made = SpecProgress(
            applied=applied,
            deleted={}
            if stored is None
            else {name: at for name, at in stored.deleted.items() if at > applied},
        )
        try:
            if entry is None or entry.value is None:
                await bucket.create(key, encode(made))
            else:
                await bucket.update(key, encode(made), entry.revision)
        except Conflict:
            continue
        return made
    raise Conflict(f"{bucket.name}/{key} kept changing")
