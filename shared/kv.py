"""Key-value buckets with compare-and-set, and typed mirrors fed by watches.

`Bucket` is the small interface the controllers write through; `NatsBucket` is
JetStream KV behind it and `MemoryBucket` the in-memory fake for unit tests.
Every write that matters is conditional on the revision last read (ARCHITECTURE
rule 3): a `Conflict` means re-read and retry, never overwrite.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from nats.js import errors as js_errors
from nats.js.api import Header
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from corral.codec import decode, encode

T = TypeVar("T")
log = logging.getLogger(__name__)


class Conflict(Exception):
    """The key's revision is not the one the write expected."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes | None  # None: deleted
    revision: int


class Bucket(Protocol):
    name: str

    async def get(self, key: str) -> Entry | None: ...

    async def create(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, revision: int) -> int: ...

    async def put(self, key: str, value: bytes) -> int: ...

    async def delete(self, key: str, revision: int | None = None) -> int:
        """Delete; conditional on `revision` when given. Returns the delete marker's revision."""
        ...

    def watch(self, prefix: str = ">") -> AsyncIterator[Entry | None]:
        """Current entries, then None once they are all delivered, then every change."""
        ...


class NatsBucket:
    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv = kv
        self.name = name

    async def get(self, key: str) -> Entry | None:
        try:
            entry = await self._kv.get(key)
        except js_errors.KeyNotFoundError:
            return None
        return Entry(key, entry.value or b"", entry.revision or 0)

    async def create(self, key: str, value: bytes) -> int:
        try:
            revision: int = await self._kv.create(key, value)
        except js_errors.KeyWrongLastSequenceError as error:
            raise Conflict(f"{self.name}/{key} exists") from error
        return revision

    async def update(self, key: str, value: bytes, revision: int) -> int:
        if revision <= 0:  # nats-py treats last=0 as create; never let that slip through
            raise ValueError("update needs the revision last read; use create for a new key")
        try:
            new_revision: int = await self._kv.update(key, value, last=revision)
        except js_errors.KeyWrongLastSequenceError as error:
            raise Conflict(f"{self.name}/{key} changed since revision {revision}") from error
        return new_revision

    async def put(self, key: str, value: bytes) -> int:
        revision: int = await self._kv.put(key, value)
        return revision

    async def delete(self, key: str, revision: int | None = None) -> int:
        # As nats-py's KeyValue.delete, but returning the marker's sequence (its revision),
        # which a Mirror needs to apply its own delete at the right place.
        headers = {KV_OP: KV_DEL}
        if revision:
            headers[Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(revision)
        try:
            ack = await self._kv._js.publish(f"{self._kv._pre}{key}", headers=headers)
            return int(ack.seq)
        except js_errors.APIError as error:
            if error.err_code in (10071, 10164):
                raise Conflict(f"{self.name}/{key} changed since revision {revision}") from error
            raise

    async def watch(self, prefix: str = ">") -> AsyncIterator[Entry | None]:
        # nats-py marks the end of the current entries when the consumer has nothing
        # pending, which can come before entries the server already sent are read.
        # So the end is where the count read reaches what the consumer had delivered.
        watcher = await self._kv.watch(prefix)
        subscription = watcher._sub
        read = 0
        delivered: int | None = None  # messages the server had sent when it said "no more"
        current_done = False
        try:
            async for item in watcher:
                if item is not None:
                    read += 1
                    deleted = item.operation in (KV_DEL, KV_PURGE)
                    value = None if deleted else (item.value or b"")
                    yield Entry(item.key, value, item.revision or 0)
                elif not current_done and subscription is not None:
                    try:
                        info = await subscription.consumer_info()
                        delivered = info.delivered.consumer_seq or 0
                    except Exception:  # no answer: take nats-py's word for it
                        delivered = read
                if not current_done and delivered is not None and read >= delivered:
                    current_done = True
                    yield None
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await watcher.stop()  # type: ignore[no-untyped-call]
                except Exception:  # the connection may already be gone
                    log.debug("watcher stop failed", exc_info=True)


def _matches(prefix: str, key: str) -> bool:
    if prefix == ">":
        return True
    if prefix.endswith(".>"):
        return key.startswith(prefix[:-1])
    return key == prefix


class MemoryBucket:
    """An in-memory Bucket with the same revision semantics, for unit tests."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.revision = 0
        self.items: dict[str, Entry] = {}
        self._watchers: list[tuple[str, MemoryObjectSendStream[Entry | None]]] = []

    def _write(self, key: str, value: bytes | None) -> int:
        self.revision += 1
        entry = Entry(key, value, self.revision)
        if value is None:
            self.items.pop(key, None)
        else:
            self.items[key] = entry
        for prefix, stream in list(self._watchers):
            if _matches(prefix, key):
                try:
                    stream.send_nowait(entry)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self._watchers.remove((prefix, stream))
        return self.revision

    async def get(self, key: str) -> Entry | None:
        return self.items.get(key)

    async def create(self, key: str, value: bytes) -> int:
        if key in self.items:
            raise Conflict(f"{self.name}/{key} exists")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        current = self.items.get(key)
        if current is None or current.revision != revision:
            raise Conflict(f"{self.name}/{key} changed since revision {revision}")
        return self._write(key, value)

    async def put(self, key: str, value: bytes) -> int:
        return self._write(key, value)

    async def delete(self, key: str, revision: int | None = None) -> int:
        current = self.items.get(key)
        if revision is not None and (current is None or current.revision != revision):
            raise Conflict(f"{self.name}/{key} changed since revision {revision}")
        return self._write(key, None)

    async def watch(self, prefix: str = ">") -> AsyncIterator[Entry | None]:
        send, receive = anyio.create_memory_object_stream[Entry | None](10_000)
        for entry in sorted(self.items.values(), key=lambda e: e.revision):
            if _matches(prefix, entry.key):
                send.send_nowait(entry)
        send.send_nowait(None)
        self._watchers.append((prefix, send))
        async with receive:
            async for item in receive:
                yield item


class Mirror(Generic[T]):
    """A typed, always-current copy of (part of) a bucket, kept by a watch.

    A value that does not decode (corrupt, or written by a newer corral) is logged
    and its key put in `unreadable`: it is neither a value nor a deletion, and
    controllers leave what depends on it alone rather than act on a guess. A bad
    record never stops the service that reads it. `on_change` is called after
    every change with the key, so a controller can mark it dirty.
    """

    def __init__(
        self,
        bucket: Bucket,
        kind: type[T],
        prefix: str = ">",
        on_change: Callable[[str], Any] | None = None,
    ) -> None:
        self.bucket = bucket
        self.kind = kind
        self.prefix = prefix
        self.on_change = on_change
        self.items: dict[str, tuple[T, int]] = {}
        self.unreadable: set[str] = set()
        # The newest revision applied per key, deletes included: an entry older than it
        # (a watch catching up with a write this process already applied) is ignored.
        self._applied: dict[str, int] = {}

    def values(self) -> list[T]:
        return [value for value, _ in self.items.values()]

    def get(self, key: str) -> T | None:
        found = self.items.get(key)
        return None if found is None else found[0]

    def revision(self, key: str) -> int | None:
        found = self.items.get(key)
        return None if found is None else found[1]

    def apply(self, entry: Entry, *, from_watch: bool = False) -> None:
        """Apply a change: from the watch, or a write this process just made."""
        if entry.revision < self._applied.get(entry.key, 0):
            return
        if from_watch and entry.value is None:
            # The watch is in order: nothing older of this key can follow its deletion.
            self._applied.pop(entry.key, None)
        else:
            self._applied[entry.key] = entry.revision
        self.unreadable.discard(entry.key)
        if entry.value is None:
            self.items.pop(entry.key, None)
        else:
            try:
                self.items[entry.key] = (decode(entry.value, self.kind), entry.revision)
            except msgspec.DecodeError as error:
                log.warning("cannot read %s/%s: %s", self.bucket.name, entry.key, error)
                self.items.pop(entry.key, None)
                self.unreadable.add(entry.key)
        if self.on_change is not None:
            self.on_change(entry.key)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the bucket forever; reports started once the current entries are in.

        A watch that fails or ends is started again (with back-off); the keys its
        fresh replay no longer has were deleted meanwhile, and are dropped.
        """
        started = False
        delay = 0.5
        while True:
            replayed: set[str] | None = set()
            try:
                async for entry in self.bucket.watch(self.prefix):
                    if entry is None:
                        if replayed is not None:
                            self._drop_all_but(replayed)
                            replayed = None
                            delay = 0.5
                        if not started:
                            started = True
                            task_status.started()
                        continue
                    if replayed is not None:
                        replayed.add(entry.key)
                    self.apply(entry, from_watch=True)
                log.warning("watch of %s/%s ended; watching again", self.bucket.name, self.prefix)
            except Exception as error:  # NATS away, a consumer lost: never stop following
                log.warning(
                    "watch of %s/%s failed (%s); watching again",
                    self.bucket.name,
                    self.prefix,
                    error,
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _drop_all_but(self, keys: set[str]) -> None:
        for key in (set(self.items) | self.unreadable) - keys:
            self.apply(Entry(key, None, self._applied.get(key, 0)))


async def write_record(bucket: Bucket, key: str, value: Any, revision: int | None) -> int:
    """Create the key when revision is None, else compare-and-set on that revision."""
    raw = encode(value)
    if revision is None:
        return await bucket.create(key, raw)
    return await bucket.update(key, raw, revision)
