"""The rules netmgr's answers to apply and delete share, for Networks and Services,
the same as the scheduler's for Deployments (docs/api.md, "Durable specs"):

- the payload is validated whole; nothing is written for bad input;
- writes are compare-and-set, retried on a conflict;
- `resourceVersion` (metadata.resourceVersion of an apply, or of a delete request),
  when not 0, must be the stored KV revision;
- a durable spec (from the CORRAL_SPECS stream, `sequence` > 0) older than what is
  stored is skipped: every stored object records the stream sequence it came from
  (metadata.specSequence), and a request's delete is remembered in
  corral.natsio.spec_progress before the object is deleted.

Checks against the rest of the cluster (overlapping ranges, a node port taken) read
the mirrors under one lock, held by every apply and delete of both kinds: this
process is the only writer (the lease), so an allocation can never race another.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

import anyio
import msgspec

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode, decode_payload, encode
from corral.contract.events import (
    REASON_BUSY,
    REASON_CONFLICT,
    REASON_INTERNAL,
    REASON_INVALID,
    REASON_NOT_FOUND,
    REASON_SUPERSEDED,
    Reply,
)
from corral.contract.network_specs import Network, Service
from corral.contract.specs import DeleteRequest, ObjectMeta
from corral.natsio.bus import DurableSpecHandler, is_store_full, store_full_reply
from corral.natsio.kv import Bucket, Conflict, Entry, Mirror
from corral.natsio.spec_progress import progress_key, read_progress, remember_delete
from corral_netmgr.allocator import AllocationError

CAS_ATTEMPTS = 10
log = logging.getLogger(__name__)

# The newest CORRAL_SPECS sequence of this kind (corral.natsio.bus.spec_stream_position).
SpecPosition = Callable[[], Awaitable[int]]


async def no_stream() -> int:
    return 0


T = TypeVar("T", Network, Service)


class SpecAPI(Generic[T]):
    """What the Network and Service APIs share: `kind`, its type, its bucket's mirror."""

    kind: str
    type: type[T]

    def __init__(
        self,
        mirror: Mirror[T],
        *,
        lock: anyio.Lock,
        views: Iterable[Mirror[Any]],
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
    ) -> None:
        """`views`: the mirrors a decision reads (it waits, Busy, until they are current);
        `progress`: the bucket of corral.natsio.spec_progress (corral_leases)."""
        self.mirror: Mirror[T] = mirror
        self.bucket = mirror.bucket
        self.lock = lock
        self.views: list[Mirror[Any]] = [mirror, *views]
        self.progress = progress
        self.spec_position = spec_position

    @property
    def noun(self) -> str:
        return self.kind.lower()

    # --- replies -------------------------------------------------------------------

    def reply(self, *, ok: bool, reason: str = "", **fields: Any) -> Reply:
        """A Reply about this kind (a refusal always with its `reason`)."""
        return Reply(kind=self.kind, ok=ok, reason=reason, **fields)

    def invalid(self, name: str, error: str, field: str) -> Reply:
        return self.reply(ok=False, name=name, reason=REASON_INVALID, error=error, field=field)

    def invalid_payload(self, error: InvalidPayload) -> Reply:
        return self.reply(ok=False, reason=REASON_INVALID, error=error.message, field=error.field)

    def accepted(
        self, name: str, revision: int, generation: int, *, unchanged: bool = False
    ) -> Reply:
        return self.reply(
            ok=True, name=name, revision=revision, generation=generation, unchanged=unchanged
        )

    def not_found(self, name: str) -> Reply:
        return self.reply(
            ok=False,
            name=name,
            reason=REASON_NOT_FOUND,
            error=f"{self.noun} {name!r} not found",
            field="name",
        )

    def busy(self, name: str) -> Reply:
        return self.reply(
            ok=False,
            name=name,
            reason=REASON_BUSY,
            error=f"{self.noun} {name!r} kept changing under {CAS_ATTEMPTS} attempts; try again",
        )

    def not_ready(self, name: str) -> Reply | None:
        """Busy while a mirror a decision reads has not replayed (or its watch broke)."""
        for mirror in self.views:
            if not mirror.current:
                return self.reply(
                    ok=False,
                    name=name,
                    reason=REASON_BUSY,
                    error=f"netmgr's view of {mirror.bucket.name} is not current yet; try again",
                )
        return None

    def superseded(self, name: str, why: str) -> Reply:
        return self.reply(
            ok=True,
            name=name,
            unchanged=True,
            reason=REASON_SUPERSEDED,
            message=f"older than what is stored: {why}",
        )

    # --- the rules -----------------------------------------------------------------

    async def position(self, sequence: int) -> int:
        """The sequence to record with a write: the durable spec's own, or for a
        request the stream's newest (every durable spec up to it is older)."""
        return sequence if sequence else await self.spec_position()

    async def handled_before(self, key: str, name: str, sequence: int) -> Reply | None:
        """A durable spec already covered by the progress record: handled before, or
        older than a request's delete of the same object."""
        if not sequence or self.progress is None:
            return None
        progress, _ = await read_progress(self.progress, self.kind)
        newer = progress.superseded_by(key, sequence)
        if not newer:
            return None
        what = "handled before" if sequence <= progress.applied else "deleted since"
        return self.superseded(name, f"{what} (stream sequence {newer})")

    def older_than_stored(self, name: str, sequence: int, current: T | None) -> Reply | None:
        if current is None:
            return None
        stored = current.metadata.spec_sequence
        if sequence and sequence <= stored:
            return self.superseded(
                name, f"the stored {self.noun} is newer (stream sequence {stored})"
            )
        return None

    def stale(self, name: str, precondition: int, entry: Entry | None, field: str) -> Reply | None:
        """The conflict when a precondition (a revision the writer last saw) does not hold."""
        if not precondition:
            return None
        if entry is None or entry.value is None:
            error = f"resourceVersion {precondition} is stale: {self.noun} {name!r} does not exist"
        elif entry.revision != precondition:
            error = (
                f"resourceVersion {precondition} is stale: the stored {self.noun} is at "
                f"revision {entry.revision}"
            )
        else:
            return None
        return self.reply(
            ok=False,
            name=name,
            revision=0 if entry is None else entry.revision,
            reason=REASON_CONFLICT,
            error=error,
            field=field,
        )

    def readable(self, raw: bytes | None) -> T | None:
        if raw is None:
            return None
        try:
            return decode(raw, self.type)
        except msgspec.DecodeError:
            return None

    async def remember(self, key: str, name: str, position: int) -> Reply | None:
        """Remember a request's delete in the progress record; the retryable refusal
        (nothing deleted) when that fails."""
        if self.progress is None or not position:
            return None
        try:
            await remember_delete(self.progress, self.kind, key, position)
        except Exception as error:
            log.warning("could not remember the delete of %s", name, exc_info=True)
            if is_store_full(error):
                return store_full_reply(error)
            return self.reply(
                ok=False,
                name=name,
                reason=REASON_BUSY if isinstance(error, Conflict) else REASON_INTERNAL,
                error=(
                    f"{self.noun} {name!r} was not deleted: the delete could not be recorded "
                    f"in {self.progress.name}/{progress_key(self.kind)} "
                    f"({type(error).__name__}: {error}), and without it an older spec still "
                    f"waiting in {names.SPEC_STREAM} could bring it back; try again"
                ),
            )
        return None

    # --- what each kind decides ------------------------------------------------------

    def decide(self, wanted: T, current: T | None) -> T:
        """The object to store for `wanted` (`current`: what is stored, if readable), with
        what the cluster allocates filled in; an AllocationError refuses it."""
        raise NotImplementedError

    def delete_key(self, request: DeleteRequest) -> str:
        return request.key

    def refuse_delete(self, name: str, key: str) -> Reply | None:
        """Why `name` may not be deleted now, or None."""
        return None

    # --- apply and delete ----------------------------------------------------------

    async def apply(self, raw: bytes, sequence: int = 0) -> Reply:
        try:
            wanted = decode_payload(raw, self.type)
        except InvalidPayload as error:
            return self.invalid_payload(error)
        name = wanted.metadata.name
        key = wanted.key
        skipped = await self.handled_before(key, name, sequence)
        if skipped is not None:
            return skipped
        position = await self.position(sequence)
        precondition = wanted.metadata.resource_version
        async with self.lock:
            waiting = self.not_ready(name)
            if waiting is not None:
                return waiting
            for _ in range(CAS_ATTEMPTS):
                entry = await self.bucket.get(key)
                current = None if entry is None else self.readable(entry.value)
                older = self.older_than_stored(name, sequence, current)
                if older is not None:
                    return older
                stale = self.stale(name, precondition, entry, "metadata.resourceVersion")
                if stale is not None:
                    return stale
                try:
                    decided = self.decide(wanted, current)
                except AllocationError as error:
                    return self.invalid(name, error.message, error.field)
                try:
                    if entry is None or entry.value is None:
                        stored = msgspec.structs.replace(
                            decided, metadata=self.new_metadata(wanted.metadata, position)
                        )
                        revision = await self.create(key, encode(stored))
                        return self.accepted(name, revision, 1)
                    if current is None:
                        # What is stored cannot be read (corrupt, or from a newer corral):
                        # a whole new spec replaces it, at the next generation.
                        generation = stored_generation(entry.value) + 1
                        stored = msgspec.structs.replace(
                            decided,
                            metadata=self.new_metadata(wanted.metadata, position, generation),
                        )
                        revision = await self.update(key, encode(stored), entry.revision)
                        return self.accepted(name, revision, generation)
                    if (current.spec, current.metadata.labels) == (
                        decided.spec,
                        decided.metadata.labels,
                    ):
                        return self.accepted(
                            name, entry.revision, current.metadata.generation, unchanged=True
                        )
                    metadata = self.next_metadata(current.metadata, wanted.metadata, position)
                    stored = msgspec.structs.replace(decided, metadata=metadata)
                    revision = await self.update(key, encode(stored), entry.revision)
                    return self.accepted(name, revision, metadata.generation)
                except Conflict:
                    continue
            return self.busy(name)

    async def delete(self, raw: bytes, sequence: int = 0) -> Reply:
        try:
            request = decode_payload(raw, DeleteRequest)
        except InvalidPayload as error:
            return self.invalid_payload(error)
        name = request.name
        key = self.delete_key(request)
        skipped = await self.handled_before(key, name, sequence)
        if skipped is not None:
            return skipped
        position = await self.position(sequence)
        remembered = False
        async with self.lock:
            waiting = self.not_ready(name)
            if waiting is not None:
                return waiting
            for _ in range(CAS_ATTEMPTS):
                entry = await self.bucket.get(key)
                stale = self.stale(name, request.resource_version, entry, "resourceVersion")
                if stale is not None:
                    return stale
                if entry is None or entry.value is None:
                    return self.not_found(name)
                older = self.older_than_stored(name, sequence, self.readable(entry.value))
                if older is not None:
                    return older
                refused = self.refuse_delete(name, key)
                if refused is not None:
                    return refused
                if not remembered and not sequence:
                    # A durable spec of this name still waiting in the stream is older
                    # than this delete: it must not bring the object back. Remembered
                    # before the delete, and no delete without it.
                    failed = await self.remember(key, name, position)
                    if failed is not None:
                        return failed
                    remembered = True
                try:
                    await self.remove(key, entry.revision)
                except Conflict:
                    continue
                return self.reply(ok=True, name=name, revision=entry.revision)
            return self.busy(name)

    def handlers(self) -> dict[str, DurableSpecHandler]:
        return {"apply": self.apply, "delete": self.delete}

    # --- writing -------------------------------------------------------------------

    async def create(self, key: str, raw: bytes) -> int:
        revision = await self.bucket.create(key, raw)
        self.mirror.apply(Entry(key, raw, revision))
        return revision

    async def update(self, key: str, raw: bytes, revision: int) -> int:
        written = await self.bucket.update(key, raw, revision)
        self.mirror.apply(Entry(key, raw, written))
        return written

    async def remove(self, key: str, revision: int) -> int:
        marker = await self.bucket.delete(key, revision=revision)
        self.mirror.apply(Entry(key, None, marker))
        return marker

    @staticmethod
    def new_metadata(wanted: ObjectMeta, position: int, generation: int = 1) -> ObjectMeta:
        return msgspec.structs.replace(
            wanted,
            generation=generation,
            uid=str(uuid.uuid4()),
            creation_timestamp=time.time(),
            resource_version=0,
            spec_sequence=position,
        )

    @staticmethod
    def next_metadata(current: ObjectMeta, wanted: ObjectMeta, position: int) -> ObjectMeta:
        return msgspec.structs.replace(
            current,
            labels=wanted.labels,
            generation=current.generation + 1,
            resource_version=0,
            spec_sequence=max(position, current.spec_sequence),
        )


def stored_generation(raw: bytes) -> int:
    """The generation of a record that does not decode, if it has one."""
    try:
        document = msgspec.json.decode(raw)
        generation = document["metadata"]["generation"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return 0
    return generation if isinstance(generation, int) and generation >= 0 else 0
