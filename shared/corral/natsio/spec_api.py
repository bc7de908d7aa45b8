"""The rules every spec API follows (the scheduler's Deployments, netmgr's Networks and
Services), for any object with `.metadata` (ObjectMeta), `.spec` and `.key`
(docs/api.md, "Durable specs"):

- the payload is validated whole; nothing is written for bad input;
- writes are compare-and-set, retried on a conflict (CAS_ATTEMPTS, then Busy);
- a precondition: `resourceVersion` (metadata.resourceVersion of an apply, or of a
  request naming a stored object), when not 0, must be the stored KV revision;
  metadata.createOnly of an apply: nothing may be stored under its key (Conflict
  naming it otherwise); the write is the KV create, so of two racing creates of
  one name exactly one is stored;
- a durable spec (from the CORRAL_SPECS stream, `sequence` > 0) older than what is
  stored is skipped: every stored object records the stream sequence it came from
  (metadata.specSequence; a request records the stream's newest sequence at the
  time), and a request's delete is remembered in corral.natsio.spec_progress before
  the object is deleted (when it cannot be, nothing is deleted: a retryable error).

A kind's API subclasses SpecAPI and keeps only what is its own: `settle` (what the
cluster decides about an apply, or a refusal), `refuse_delete`, other verbs, and
for a service that decides under a lock on its own view, LockedSpecAPI below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio
import msgspec

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode, decode_payload, encode
from corral.contract.events import REASON_BUSY, REASON_CONFLICT, REASON_INTERNAL, Reply
from corral.contract.specs import DeleteRequest, ObjectMeta
from corral.natsio.bus import DurableSpecHandler, is_store_full, store_full_reply
from corral.natsio.kv import Bucket, Conflict, Entry, Mirror
from corral.natsio.spec_progress import progress_key, read_progress, remember_delete
from corral.natsio.spec_replies import CAS_ATTEMPTS, SpecReplies

log = logging.getLogger(__name__)

# The newest CORRAL_SPECS sequence of this kind (corral.natsio.bus.spec_stream_position).
SpecPosition = Callable[[], Awaitable[int]]


async def no_stream() -> int:
    return 0


class SpecObject(Protocol):
    @property
    def metadata(self) -> ObjectMeta: ...

    @property
    def spec(self) -> Any: ...

    @property
    def key(self) -> str: ...


T = TypeVar("T", bound=SpecObject)


def with_metadata(obj: T, metadata: ObjectMeta) -> T:
    """`obj` (a msgspec Struct) with other metadata."""
    return cast(T, msgspec.structs.replace(cast(Any, obj), metadata=metadata))


class SpecAPI(SpecReplies, Generic[T]):
    """Apply and delete of one kind (`kind`, its `type`), stored in `bucket`."""

    type: type[T]
    # What an unrecorded delete's refusal says an older spec could bring back.
    brought_back = "it"

    def __init__(
        self,
        bucket: Bucket,
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
    ) -> None:
        """`progress`: the bucket of corral.natsio.spec_progress (corral_leases); without it,
        only the stored objects' own sequences guard against older durable specs."""
        self.bucket = bucket
        self.progress = progress
        self.spec_position = spec_position

    def handlers(self) -> dict[str, DurableSpecHandler]:
        return {"apply": self.apply, "delete": self.delete}

    # --- the rules -----------------------------------------------------------------

    async def position(self, sequence: int) -> int:
        """The sequence to record with a write: the durable spec's own, or for a
        request the stream's newest (every durable spec up to it is older)."""
        return sequence if sequence else await self.spec_position()

    async def handled_before(self, key: str, name: str, sequence: int) -> Reply | None:
        """A durable spec already covered by the progress record: handled before, or
        older than a request's delete of the same object (`key`)."""
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

    def readable(self, raw: bytes | None) -> T | None:
        """The stored object, or None when there is none or it cannot be read."""
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
                    f"waiting in {names.SPEC_STREAM} could bring {self.brought_back} back; "
                    "try again"
                ),
            )
        return None

    def exists(self, name: str, revision: int) -> Reply:
        """The refusal of a create-only apply (metadata.createOnly) of a stored object."""
        return self.reply(
            ok=False,
            name=name,
            reason=REASON_CONFLICT,
            error=f"{self.noun} {name!r} already exists (revision {revision}): "
            "metadata.createOnly asks that it does not; it is left as it is",
            field="metadata.createOnly",
        )

    # --- what each kind decides (the defaults: nothing) -----------------------------

    def serialized(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held around every decision (a service deciding on its own view locks it)."""
        return contextlib.nullcontext()

    def not_ready(self, name: str) -> Reply | None:
        """Why no decision can be made now (Busy), or None."""
        return None

    def settle(self, wanted: T, current: T | None) -> T | Reply:
        """The object to store for `wanted` (`current`: what is stored, if readable; its
        labels and annotations are stored as settled too), or the refusal."""
        return wanted

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
        skipped = await self.handled_before(wanted.key, name, sequence)
        if skipped is not None:
            return skipped
        position, read = await self.position_and_entry(sequence, wanted.key)
        async with self.serialized():
            waiting = self.not_ready(name)
            if waiting is not None:
                return waiting
            for _ in range(CAS_ATTEMPTS):
                try:
                    return await self._apply_once(wanted, sequence, position, read)
                except Conflict:
                    read = None  # changed meanwhile: read it again
                    continue
            return self.busy(name)

    async def position_and_entry(
        self, sequence: int, key: str
    ) -> tuple[int, tuple[Entry | None] | None]:
        """The stream position a write records and the stored entry of `key`, read at
        once (two round trips in the time of one: what an apply waits for). The entry
        may be older than the lock taken after it: the write is compare-and-set, so a
        change in between is a Conflict and the entry is read again."""
        if sequence:  # a durable spec: its own sequence, nothing to read
            return sequence, None
        position = asyncio.ensure_future(self.spec_position())
        try:
            entry = await self.bucket.get(key)
        except BaseException:
            position.cancel()
            with contextlib.suppress(BaseException):
                await position
            raise
        return await position, (entry,)

    async def _apply_once(
        self, wanted: T, sequence: int, position: int, read: tuple[Entry | None] | None
    ) -> Reply:
        """`read`: the entry of the key as read just before (in a 1-tuple), or None to
        read it now."""
        name, key = wanted.metadata.name, wanted.key
        entry = await self.bucket.get(key) if read is None else read[0]
        current = None if entry is None else self.readable(entry.value)
        older = self.older_than_stored(name, sequence, current)
        if older is not None:
            return older
        precondition = wanted.metadata.resource_version
        stale = self.stale(name, precondition, entry, "metadata.resourceVersion")
        if stale is not None:
            return stale
        if wanted.metadata.create_only and entry is not None and entry.value is not None:
            return self.exists(name, entry.revision)
        decided = self.settle(wanted, current)
        if isinstance(decided, Reply):
            return decided
        if entry is None or entry.value is None:
            stored = with_metadata(decided, new_metadata(decided.metadata, position))
            return self.accepted(name, await self.create(key, encode(stored)), 1)
        if current is None:
            # What is stored cannot be read (corrupt, or from a newer corral):
            # a whole new spec replaces it, at the next generation.
            generation = stored_generation(entry.value) + 1
            stored = with_metadata(decided, new_metadata(decided.metadata, position, generation))
            return self.accepted(
                name, await self.update(key, encode(stored), entry.revision), generation
            )
        if (current.spec, current.metadata.labels, current.metadata.annotations) == (
            decided.spec,
            decided.metadata.labels,
            decided.metadata.annotations,
        ):
            revision = entry.revision
            if position > current.metadata.spec_sequence:
                # Nothing to change but the position: recorded all the same, so that a
                # durable spec published before this request (at or below it) and
                # applied after it is skipped as older, as after a write.
                recorded = msgspec.structs.replace(current.metadata, spec_sequence=position)
                stored = with_metadata(current, recorded)
                revision = await self.update(key, encode(stored), entry.revision)
            return self.accepted(name, revision, current.metadata.generation, unchanged=True)
        metadata = next_metadata(current.metadata, decided.metadata, position)
        stored = with_metadata(decided, metadata)
        revision = await self.update(key, encode(stored), entry.revision)
        return self.accepted(name, revision, metadata.generation)

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
        async with self.serialized():
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

    # --- writing (a service with its own view of the bucket updates it here too) ----

    async def create(self, key: str, raw: bytes) -> int:
        return await self.bucket.create(key, raw)

    async def update(self, key: str, raw: bytes, revision: int) -> int:
        return await self.bucket.update(key, raw, revision)

    async def remove(self, key: str, revision: int) -> int:
        return await self.bucket.delete(key, revision=revision)


class LockedSpecAPI(SpecAPI[T]):
    """A kind of a service that decides under one lock on its own view (netmgr,
    volmgr): a decision reads `views` (mirrors) and waits, Busy, until each is
    current; every apply and delete of the service's kinds holds `lock`, and each
    write is put into the kind's own `mirror` at once, so the next decision sees it.
    The process is the only writer (its lease). `service` names it in Busy replies."""

    service = "this service"

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
        super().__init__(mirror.bucket, progress, spec_position)
        self.mirror: Mirror[T] = mirror
        self.lock = lock
        self.views: list[Mirror[Any]] = [mirror, *views]

    def serialized(self) -> anyio.Lock:
        return self.lock

    def not_ready(self, name: str) -> Reply | None:
        """Busy while a mirror a decision reads has not replayed (or its watch broke)."""
        for mirror in self.views:
            if not mirror.current:
                return self.reply(
                    ok=False,
                    name=name,
                    reason=REASON_BUSY,
                    error=f"{self.service}'s view of {mirror.bucket.name} is not current yet; "
                    "try again",
                )
        return None

    async def create(self, key: str, raw: bytes) -> int:
        revision = await super().create(key, raw)
        self.mirror.apply(Entry(key, raw, revision))
        return revision

    async def update(self, key: str, raw: bytes, revision: int) -> int:
        written = await super().update(key, raw, revision)
        self.mirror.apply(Entry(key, raw, written))
        return written

    async def remove(self, key: str, revision: int) -> int:
        marker = await super().remove(key, revision)
        self.mirror.apply(Entry(key, None, marker))
        return marker


def new_metadata(wanted: ObjectMeta, position: int, generation: int = 1) -> ObjectMeta:
    """The metadata of a newly stored object (or one replacing an unreadable record)."""
    return msgspec.structs.replace(
        wanted,
        generation=generation,
        uid=str(uuid.uuid4()),
        creation_timestamp=time.time(),
        resource_version=0,
        create_only=False,
        spec_sequence=position,
    )


def next_metadata(current: ObjectMeta, wanted: ObjectMeta, position: int) -> ObjectMeta:
    """The metadata of a changed object: its own, with the new labels and annotations,
    one generation on."""
    return msgspec.structs.replace(
        current,
        labels=wanted.labels,
        annotations=wanted.annotations,
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
