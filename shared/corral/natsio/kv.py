"""Key-value buckets with compare-and-set, and typed mirrors fed by watches.

`Bucket` is the small interface the controllers write through; `NatsBucket` is
JetStream KV behind it and `MemoryBucket` the in-memory fake for unit tests.
Every write that matters is conditional on the revision last read (compare-and-set,
docs/architecture.md): a `Conflict` means re-read and retry, never overwrite.

Echo keys prove that a watch is current. A reader that judges liveness from a
watch (the scheduler from the nodes watch, a node agent from its placements
watch) writes its own echo key into the watched bucket every second and sees it
come back through that same watch:

    key = echo_key("scheduler-3f9a", prefix="")      # "_echo.scheduler-3f9a"
    mirror = Mirror(bucket, Node)                     # echo keys are never items
    ...  await bucket.put(key, encode(time.time()))  # every second (see keep_echoing)
    age = mirror.echo_age(key)                        # seconds since it last came back
    fresh = age is not None and age <= 3 and not mirror.broken

An echo key is `<prefix>_echo.<owner>`: object names are DNS labels, which never
hold '_', so it can never be an object's key. Mirror keeps echo keys apart (never
in `items`, never passed to `on_change`) and records, on its own clock, when a new
revision of each arrived (`echoes`, `echo_age`). Readers of whole buckets skip them
(`is_echo_key`). Owners may find their echo key deleted (the scheduler removes
echo keys that stopped changing long ago): `put` writes it again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import re
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js import errors as js_errors
from nats.js.api import Header, StreamConfig
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from corral.contract import names
from corral.contract.backoff import Backoff
from corral.contract.codec import decode, encode
from corral.natsio import nats_internals

T = TypeVar("T")
log = logging.getLogger(__name__)


class Conflict(Exception):
    """The key's revision is not the one the write expected."""


class WatchIncomplete(Exception):
    """A watch cannot tell where the bucket's current entries end: it must start again."""


ECHO_SEGMENT: Final = "_echo"
_ECHO_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def echo_key(owner: str, prefix: str = "") -> str:
    """The echo key of `owner` (letters, digits, '-' and '_') under `prefix` ("" or a
    prefix ending in '.', such as "node-1." for a watch of "node-1.>")."""
    if not _ECHO_OWNER.fullmatch(owner):
        raise ValueError(f"echo owner {owner!r} must be 1-100 letters, digits, '-' or '_'")
    if prefix and (not prefix.endswith(".") or ">" in prefix or "*" in prefix):
        raise ValueError(f"echo prefix {prefix!r} must be empty or end with '.'")
    return f"{prefix}{ECHO_SEGMENT}.{owner}"


def is_echo_key(key: str) -> bool:
    """True for a key made by echo_key: never an object's key."""
    if ECHO_SEGMENT not in key:
        return False
    parts = key.split(".")
    return len(parts) >= 2 and ECHO_SEGMENT in parts[:-1]


@dataclass(frozen=True, slots=True)
class EchoSeen:
    """The newest revision of an echo key a Mirror saw, and when (on the Mirror's clock)
    that revision first arrived. A replay of the same revision does not refresh it."""

    revision: int
    seen_at: float
    value: bytes


async def keep_echoing(
    bucket: Bucket,
    key: str,
    *,
    interval: float = 1.0,
    wall_clock: Callable[[], float] = time.time,
    when: Callable[[], bool] | None = None,
) -> None:
    """Write `key` (the owner's wall-clock time, for people reading the bucket) every
    `interval` until cancelled, then delete it. Failures are logged and retried: a
    write that does not arrive leaves the echo late, as it should. Given `when`, only
    while it says yes; the key is deleted when it stops saying so."""
    written = False

    async def delete() -> None:
        try:
            await bucket.delete(key)
        except Exception:
            log.debug("echo %s/%s not deleted", bucket.name, key, exc_info=True)

    try:
        while True:
            if when is None or when():
                try:
                    written = True
                    with anyio.fail_after(max(interval, 1.0) * 2):
                        await bucket.put(key, encode(wall_clock()))
                except Exception as error:
                    log.debug("echo %s/%s not written: %s", bucket.name, key, error)
            elif written:
                written = False
                with anyio.move_on_after(max(interval, 1.0) * 2):
                    await delete()
            await asyncio.sleep(interval)  # nats-py is asyncio's: no anyio lookup per node
    finally:
        if written:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await delete()


# Python 3.12 makes interned strings immortal (PEP 683; 3.11 and 3.13 free them with
# their last reference): there a key interned would outlive its records, every replica
# name ever seen held for good, so keys are held as they arrive.
INTERN_KEYS: Final = sys.version_info[:2] != (3, 12)


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes | None  # None: deleted
    revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A prefix's current entries read at once (Bucket.snapshot): the newest entry of
    each key, delete markers as deleted entries, in revision order, and the stream
    sequence they are as of: every entry of the prefix up to `covered` is in `entries`
    or superseded by one that is."""

    entries: list[Entry]
    covered: int


def answered_by_its_leader(stream: StreamConfig | None) -> bool:
    """Whether every direct get of the stream is its leader's answer: a stream of one
    replica that answers direct gets (its one server; corral makes no mirrors of its
    buckets, whose direct gets a mirror could answer too). The replicas are as read when
    the bucket was opened: a service opens its buckets again at each start."""
    return stream is not None and bool(stream.allow_direct) and (stream.num_replicas or 1) == 1


def bucket_stream(bucket: str) -> str:
    """The JetStream stream behind a KV bucket."""
    return f"KV_{bucket}"


class Wakeups:
    """Tells a follow (Bucket.follow) to read its keys again: a write of one of them was
    republished, or its owner learnt of one another way (a revision a heartbeat ack
    told). Wake-ups coalesce: many before a read make one read, and a wake-up naming a
    revision the follow has read already makes none (each read scans the bucket from the
    last entry read: one that finds nothing costs the server as much as one that finds)."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._wanted = 0  # the newest revision a wake-up named
        self._anyway = False  # a wake-up that named none

    def wake(self, revision: int | None = None) -> None:
        """Read again; up to `revision` at least, when it is known."""
        if revision is None:
            self._anyway = True
        else:
            self._wanted = max(self._wanted, revision)
        self._event.set()

    async def wait(self, read: int) -> None:
        """Until a wake-up names a revision after `read`, or none. A revision named and
        still not read (the replica that answered was a moment behind the leader, which
        told of the write) is read again after FOLLOW_RETRY_SECONDS."""
        if self._wanted > read:
            await anyio.sleep(FOLLOW_RETRY_SECONDS)
            return
        while True:
            await self._event.wait()
            self._event = anyio.Event()
            if self._anyway or self._wanted > read:
                self._anyway = False
                return


class Bucket(Protocol):
    name: str

    async def get(self, key: str) -> Entry | None:
        """The key's entry; None when absent or deleted. From any replica of a bucket
        read with direct gets (what a replica finds may be old: see NatsBucket)."""
        ...

    async def leader_get(self, key: str) -> Entry | None:
        """As `get`, from the stream's leader, never a replica behind it: for a read an
        agent acts on (the cluster identity before it trusts a new read of its
        placements)."""
        ...

    async def create(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, revision: int) -> int: ...

    async def put(self, key: str, value: bytes) -> int: ...

    async def delete(self, key: str, revision: int | None = None) -> int:
        """Delete; conditional on `revision` when given. Returns the delete marker's revision."""
        ...

    def watch(self, prefix: str = ">") -> AsyncIterator[Entry | None]:
        """Current entries, then None once they are all delivered, then every change.
        A None after the first says the watch went on from a new consumer (NATS
        re-made it after a gap): entries purged in between (old delete markers) may
        have been skipped. Readers that only follow changes ignore it."""
        ...

    async def snapshot(self, prefix: str = ">", *, floor: int = 0) -> Snapshot | None:
        """The prefix's current entries read at once from the stream's leader, holding no
        consumer on the server; None when this read cannot give them (read them with a
        watch then): a stream of more than one replica (any replica would answer) or not
        read with direct gets, more keys than one read answers, or a store older than
        `floor` (a revision its reader has seen already: a store that went back)."""
        ...

    def follow(
        self, prefix: str, wakeups: Wakeups, *, floor: int = 0
    ) -> AsyncIterator[Entry | None]:
        """As `watch` (the current entries, then None, then every change in the
        bucket's order, none skipped), holding no consumer on the server: the current
        entries a `snapshot` (`floor` as there), or a watch's when it gives none, and
        later changes read from the bucket itself, from the revision after the last one
        read, whenever `wakeups` says so (a write of one of the keys, told by the
        bucket, wakes it too). A wake-up that is lost delays a change, never skips it."""
        ...


class NatsBucket:
    def __init__(self, kv: KeyValue, name: str, *, stream: StreamConfig | None = None) -> None:
        self._kv = kv
        self.name = name
        # The stream's configuration as read when the bucket was opened (None: not read):
        # whether its replicas answer direct gets, and how many there are (`snapshot`).
        self._stream = stream
        # Read with direct gets (the stream's allow_direct: any replica answers, outside
        # the JetStream API's request queue): a value found is used, though a replica
        # may be behind (a moment, or as long as it is cut off from its leader); "not
        # there", or no replica answering (a stream whose servers are away, or one
        # deleted), is asked again of the stream's leader, whose answer is what a
        # bucket without direct gets gives. leader_get never asks a replica. On a
        # stream of one replica its one server is its leader: its direct gets are the
        # leader's answers, "not there" included, and none waits in the API's queue
        # (bench/README.md, "Why 5,001 nodes collapse here"); only a get nobody
        # answers (the stream deleted) is asked of the API, which says so.
        direct = nats_internals.key_value_direct(kv)
        self._leader = nats_internals.key_value_through_api(kv) if direct else None
        self._direct_is_leader = direct and answered_by_its_leader(stream)

    def through(self, js: JetStreamContext) -> NatsBucket:
        """The same bucket through another JetStream context (its timeouts), opened
        once: no request to the server."""
        return NatsBucket(nats_internals.key_value_on(self._kv, js), self.name, stream=self._stream)

    async def get(self, key: str) -> Entry | None:
        try:
            entry = await self._kv.get(key)
        except js_errors.KeyNotFoundError:
            if self._leader is None or self._direct_is_leader:
                return None
            return await self._api_get(key)
        except nats_errors.NoRespondersError:
            if self._leader is None:
                raise
            return await self._api_get(key)
        return Entry(key, entry.value or b"", entry.revision or 0)

    async def leader_get(self, key: str) -> Entry | None:
        if self._direct_is_leader:
            return await self.get(key)
        return await self._api_get(key)

    async def _api_get(self, key: str) -> Entry | None:
        """The key as the stream's leader has it, asked through the JetStream API."""
        try:
            entry = await (self._leader or self._kv).get(key)
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
            js = nats_internals.key_value_jetstream(self._kv)
            ack = await js.publish(nats_internals.key_value_subject(self._kv, key), headers=headers)
            return int(ack.seq)
        except js_errors.APIError as error:
            if error.err_code in (10071, 10164):
                raise Conflict(f"{self.name}/{key} changed since revision {revision}") from error
            raise

    async def watch(
        self, prefix: str = ">", *, covered: list[int] | None = None
    ) -> AsyncGenerator[Entry | None, None]:
        # nats-py marks the end of the current entries when the consumer has nothing
        # pending, which can come before entries the server already sent are read.
        # So the end is where the count read reaches what the consumer had delivered.
        # When the consumer's info cannot be read, the watch raises WatchIncomplete.
        # `covered` gets the stream sequence the snapshot covers (every entry of the
        # prefix up to it was delivered, or superseded by one that was), before the None.
        watcher = await self._kv.watch(prefix, inactive_threshold=WATCH_INACTIVE_SECONDS)
        subscription = nats_internals.watch_subscription(watcher)
        read = 0
        delivered: int | None = None  # messages the server had sent when it said "no more"
        position = 0  # the stream sequence the consumer had looked up to then
        current_done = False
        consumer: tuple[str, str] | None = None  # (stream, name), once its info was read
        reading: int | None = None  # the subscription delivering, after the replay
        # the subscription the replay began on: re-made before it ends (a gap), what was
        # read spans two consumers and its count says nothing of `covered`
        replaying = None if subscription is None else nats_internals.subscription_id(subscription)
        try:
            if subscription is not None:
                nats_internals.stop_flow_control_polling(subscription)
            async for item in watcher:
                if item is not None:
                    read += 1
                    if reading is not None and subscription is not None:
                        now_reading = nats_internals.subscription_id(subscription)
                        if now_reading != reading:
                            # nats-py re-made the ordered consumer (a gap, missed
                            # heartbeats: after a reconnect) from the stream sequence
                            # after the last it delivered: entries purged meanwhile were
                            # skipped. Said with a None before the entry (see Bucket.watch).
                            reading = now_reading
                            yield None
                    deleted = item.operation in (KV_DEL, KV_PURGE)
                    value = None if deleted else (item.value or b"")
                    yield Entry(item.key, value, item.revision or 0)
                elif not current_done:
                    # Never fall back on nats-py's early marker: a partial snapshot would
                    # make its reader act on keys that only seem deleted.
                    delivered, consumer, position = await self._delivered(subscription)
                if not current_done and delivered is not None and read >= delivered:
                    current_done = True
                    if (
                        covered is not None
                        and subscription is not None
                        and nats_internals.subscription_id(subscription) == replaying
                    ):
                        covered.append(position)
                    if subscription is not None:
                        reading = nats_internals.subscription_id(subscription)
                    yield None
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2 * CONSUMER_INFO_TIMEOUT):
                try:
                    await watcher.stop()  # type: ignore[no-untyped-call]
                except Exception:  # the connection may already be gone
                    log.debug("watcher stop failed", exc_info=True)
                await self._delete_consumers(subscription, consumer)

    async def snapshot(self, prefix: str = ">", *, floor: int = 0) -> Snapshot | None:
        # One direct get of the last entry of every subject of the prefix (multi_last,
        # nats-server 2.11+), answered from the store at one moment, up to its last
        # sequence, which the end of the batch says (Nats-UpTo-Sequence): no consumer
        # made, listed, or deleted, and nothing waiting in the JetStream API's queue
        # (bench/README.md, "Why 5,001 nodes collapse here"). Only on a stream of one
        # replica, whose one server is its leader: on more, any replica answers, one cut
        # off from its leader too, and a store behind the leader but not behind `floor`
        # would still hold what the leader no longer does (replicas moved away while the
        # agent was cut off with that replica). What the answers make: SnapshotAnswers.
        stream = self._stream
        if not answered_by_its_leader(stream):
            return None
        js = nats_internals.key_value_jetstream(self._kv)
        nc = nats_internals.jetstream_client(js)
        request_subject = (
            f"{nats_internals.jetstream_api_prefix(js)}.DIRECT.GET.{bucket_stream(self.name)}"
        )
        answers = SnapshotAnswers(
            bucket_stream(self.name),
            len(nats_internals.key_value_subject(self._kv, "")),
            floor,
        )
        request = msgspec.json.encode(
            {"multi_last": [nats_internals.key_value_subject(self._kv, prefix)]}
        )
        replies = await nc.subscribe(nc.new_inbox())
        try:
            await nc.publish(request_subject, request, reply=replies.subject)
            while True:
                try:
                    msg, headers, status = await _direct_reply(replies)
                except nats_errors.TimeoutError:
                    log.debug("%s %s not read at once: no answer in time", self.name, prefix)
                    return None
                done = answers.take(msg, headers, status)
                if done:
                    if answers.refused:
                        log.debug("%s %s not read at once: %s", self.name, prefix, answers.refused)
                    return answers.snapshot
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CONSUMER_INFO_TIMEOUT):
                try:
                    await replies.unsubscribe()
                except Exception:  # the connection may be gone
                    log.debug("snapshot subscription not removed", exc_info=True)

    async def follow(
        self, prefix: str, wakeups: Wakeups, *, floor: int = 0
    ) -> AsyncIterator[Entry | None]:
        # The snapshot is `snapshot`'s, or when it gives none a watch's (its consumer on
        # the stream's leader, deleted once current); from then on, batched direct gets
        # of the prefix's subjects from the sequence after the last entry read: the
        # stream's own order, nothing skipped (any replica may answer: each holds a
        # prefix of the one log, so a replica behind only delays). The bucket's stream
        # republishes each write's headers (bus.open_buckets: placements buckets), which
        # wakes the follow.
        js = nats_internals.key_value_jetstream(self._kv)
        nc = nats_internals.jetstream_client(js)
        request_subject = (
            f"{nats_internals.jetstream_api_prefix(js)}.DIRECT.GET.{bucket_stream(self.name)}"
        )
        key_subjects = nats_internals.key_value_subject(self._kv, prefix)
        key_start = len(nats_internals.key_value_subject(self._kv, ""))

        async def woken(msg: Any) -> None:
            try:  # the write's own revision, when the republished headers say it
                wakeups.wake(int((msg.headers or {})["Nats-Sequence"]))
            except (KeyError, ValueError):
                wakeups.wake()

        told = await nc.subscribe(names.kv_written_subject(self.name, prefix), cb=woken)
        replies = await nc.subscribe(nc.new_inbox())
        try:
            read = 0  # the newest revision delivered
            covered: list[int] = []
            current = await self.snapshot(prefix, floor=floor)
            if current is not None:
                covered.append(current.covered)
                for item in current.entries:
                    read = item.revision
                    yield item
            else:
                async with aclosing(self.watch(prefix, covered=covered)) as watched:
                    async for entry in watched:
                        if entry is None:
                            break  # its consumer is deleted as the watch closes
                        read = max(read, entry.revision)
                        yield entry
            if not covered:
                raise WatchIncomplete(
                    f"watch of {self.name}: it ended before its snapshot, or its consumer was "
                    "made again during it (what it read may have a gap)"
                )
            after = max(read, covered[0])
            yield None
            wakeups.wake()  # what was written since the snapshot's end
            while True:
                await wakeups.wait(after)
                pending = True
                while pending:
                    entries, pending = await self._read_after(
                        nc, request_subject, replies, key_subjects, key_start, after
                    )
                    for entry in entries:
                        after = entry.revision
                        yield entry
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CONSUMER_INFO_TIMEOUT):
                for subscription in (told, replies):
                    try:
                        await subscription.unsubscribe()
                    except Exception:  # the connection may be gone
                        log.debug("follow subscription not removed", exc_info=True)

    async def _read_after(
        self,
        nc: Any,
        request_subject: str,
        replies: Any,
        key_subjects: str,
        key_start: int,
        after: int,
    ) -> tuple[list[Entry], bool]:
        """The entries of `key_subjects` after revision `after`, in order, up to
        FOLLOW_BATCH of them, and whether more are pending. Raises when the bucket does
        not answer in time, or answers anything but entries and an end."""
        request = msgspec.json.encode(
            {"seq": after + 1, "next_by_subj": key_subjects, "batch": FOLLOW_BATCH}
        )
        await nc.publish(request_subject, request, reply=replies.subject)
        entries: list[Entry] = []
        while True:
            msg, headers, status = await _direct_reply(replies)
            if status == "404":  # nothing after it
                return entries, False
            if status == "204":  # the end of the batch
                return entries, int(headers.get("Nats-Num-Pending") or 0) > 0
            if status is not None:
                raise FollowFailed(
                    f"reading {self.name} after revision {after}: status {status} "
                    f"{headers.get('Description', '')}".rstrip()
                )
            entry = _direct_entry(msg, key_start)
            if entry.revision <= after or (entries and entry.revision <= entries[-1].revision):
                raise FollowFailed(
                    f"reading {self.name} after revision {after}: "
                    f"revision {entry.revision} out of order"
                )
            entries.append(entry)

    async def _delete_consumers(self, subscription: Any, first: tuple[str, str] | None) -> None:
        """Delete a stopped watch's consumers now rather than after WATCH_INACTIVE_SECONDS:
        the one its replay ended on, and the one it read from last (nats-py makes a new
        one when an ordered consumer falls behind). Agents that watch again and again
        (each isolation starts a new watch) otherwise leave thousands behind, and every
        message stored is matched against each of them (9,180 on the placements stream
        of 2,001 hollow nodes, nats-server at 1 GB). Best effort: one that cannot be
        deleted (NATS away, or nats-py was making a new one as the watch stopped) still
        goes when it has been idle that long."""
        try:
            js = nats_internals.key_value_jetstream(self._kv)
            consumers = {first} if first is not None else set()
            if subscription is not None:
                consumers.add(nats_internals.subscription_consumer(subscription))
            for stream, name in consumers:
                try:
                    with anyio.fail_after(CONSUMER_INFO_TIMEOUT):
                        await js.delete_consumer(stream, name)
                except Exception as error:  # gone already, NATS away
                    log.debug("consumer %s of %s not deleted: %s", name, stream, error)
        except Exception:  # never instead of what ended the watch
            log.debug("the consumers of a watch of %s not deleted", self.name, exc_info=True)

    async def _delivered(self, subscription: Any) -> tuple[int, tuple[str, str], int]:
        """How many messages the watch's consumer has delivered, asked a few times, the
        consumer (stream, name), and the stream sequence it had delivered up to (its
        next sequence to look at, less one: what it skipped before there did not match)."""
        failure: BaseException | None = None
        for attempt in range(CONSUMER_INFO_ATTEMPTS):
            if attempt:
                await anyio.sleep(0.1 * 2**attempt)
            try:
                if subscription is None:
                    raise RuntimeError("the watch has no subscription")
                with anyio.fail_after(CONSUMER_INFO_TIMEOUT):
                    info = await subscription.consumer_info()
                return (
                    int(info.delivered.consumer_seq or 0),
                    (info.stream_name, info.name),
                    int(info.delivered.stream_seq or 0),
                )
            except Exception as error:
                failure = error
        raise WatchIncomplete(
            f"watch of {self.name}: the consumer's info could not be read "
            f"({type(failure).__name__}: {failure}); where the current entries end is unknown"
        ) from failure


# A watch's consumer on the server goes this long after its watch stopped (nats-py's
# default is 5 minutes: at thousands of nodes, every one-shot read left a consumer
# behind that long). A watch alive keeps its consumer: it has interest. A client cut off
# longer than this finds its consumer gone when it comes back, and nats-py makes it
# again after its idle heartbeats are missed (about 20 s; measured): longer than every
# window of the time budget (R' = 35 s), so a partition the budget plans for heals
# without it.
WATCH_INACTIVE_SECONDS: Final = 60.0


class FollowFailed(Exception):
    """A follow's or snapshot's read of its keys got an answer it cannot use: the
    follow ends, the snapshot is not taken."""


class SnapshotAnswers:
    """What the answers to one multi_last direct get make (NatsBucket.snapshot), taken
    one at a time: the snapshot, or None (`refused` says why) when they do not make a
    whole one, and the caller reads with a watch instead. Anything but a clean end
    refuses: more than 1,024 keys (413), bytes still pending at the end (the server's
    max pending), a store older than `floor`, an answer from another stream (a mirror
    answering direct gets for it), entries out of order, a 404 after entries ("Message
    Not Found": one failed to load) or any other status (408 from a server without
    multi_last), an answer without its headers. "No Results" (404 first) says no entry of
    the prefix is stored, but not as of which sequence: taken only when the reader has
    seen none (`floor` 0). (Corral makes no mirrors of its buckets; a mirror's "No
    Results" would name no stream.)"""

    def __init__(self, stream: str, key_start: int, floor: int) -> None:
        self._stream = stream
        self._key_start = key_start
        self._floor = floor
        self._entries: list[Entry] = []
        self._pending = 0  # what the last entry said was still to come
        self.snapshot: Snapshot | None = None
        self.refused = ""

    def take(self, msg: Any, headers: Mapping[str, str], status: str | None) -> bool:
        """Take one answer; True when it is the last (`snapshot` then says)."""
        try:
            return self._take(msg, headers, status)
        except (KeyError, ValueError) as error:  # headers missing or not numbers
            return self._refuse(f"an answer without its headers: {error!r}")

    def _take(self, msg: Any, headers: Mapping[str, str], status: str | None) -> bool:
        if status is None:
            if headers.get("Nats-Stream", self._stream) != self._stream:
                return self._refuse(f"answered by stream {headers.get('Nats-Stream')}")
            entry = _direct_entry(msg, self._key_start)
            if self._entries and entry.revision <= self._entries[-1].revision:
                return self._refuse(f"revision {entry.revision} out of order")
            self._entries.append(entry)
            self._pending = int(headers.get("Nats-Num-Pending") or 0)
            return False
        description = headers.get("Description", "")
        if status == "404" and description == "No Results" and not self._entries:
            if self._floor > 0:
                return self._refuse("no entries, as of an unknown sequence")
            self.snapshot = Snapshot([], 0)
            return True
        if status != "204":
            return self._refuse(f"status {status} {description}".rstrip())
        covered = int(headers.get("Nats-UpTo-Sequence") or 0)
        if int(headers.get("Nats-Num-Pending") or 0) > 0 or self._pending > 0:
            return self._refuse("entries still pending at the end")
        if covered < max(self._floor, 1):
            return self._refuse(f"a store as of {covered}, older than {self._floor}")
        self.snapshot = Snapshot(self._entries, covered)
        return True

    def _refuse(self, why: str) -> bool:
        self.refused = why
        return True


async def _direct_reply(replies: Any) -> tuple[Any, Mapping[str, str], str | None]:
    """The next answer to a batched direct get: the message, its headers and its status
    (None: an entry). Raises when none comes within FOLLOW_READ_TIMEOUT."""
    msg = await replies.next_msg(timeout=FOLLOW_READ_TIMEOUT)
    headers = msg.headers or {}
    return msg, headers, headers.get("Status")


def _direct_entry(msg: Any, key_start: int) -> Entry:
    """The entry a direct get answered with (its key after `key_start` characters of
    its subject; a delete or purge marker as a deleted entry)."""
    headers = msg.headers or {}
    key = headers["Nats-Subject"][key_start:]
    if INTERN_KEYS:
        key = sys.intern(key)
    deleted = headers.get(KV_OP) in (KV_DEL, KV_PURGE)
    return Entry(key, None if deleted else msg.data, int(headers["Nats-Sequence"]))


# A follow's reads of its bucket: entries a read asks for at most (more pending: read
# again at once), and how long it waits for each reply.
FOLLOW_BATCH: Final = 256
FOLLOW_READ_TIMEOUT: Final = 5.0
FOLLOW_RETRY_SECONDS: Final = 0.1

# Reading a watch consumer's info: attempts, and the bound on each.
CONSUMER_INFO_ATTEMPTS: Final = 3
CONSUMER_INFO_TIMEOUT: Final = 2.0


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

    async def leader_get(self, key: str) -> Entry | None:
        return await self.get(key)  # one copy: the leader's (a subclass's get included)

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

    async def snapshot(self, prefix: str = ">", *, floor: int = 0) -> Snapshot | None:
        """The prefix's entries now (a bucket in memory keeps no delete markers)."""
        if self.revision < floor:
            return None
        entries = sorted(
            (e for key, e in self.items.items() if _matches(prefix, key)),
            key=lambda entry: entry.revision,
        )
        return Snapshot(entries, self.revision)

    async def follow(
        self, prefix: str, wakeups: Wakeups, *, floor: int = 0
    ) -> AsyncIterator[Entry | None]:
        """The watch: a bucket in memory holds no consumers."""
        async for item in self.watch(prefix):
            yield item

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

    Echo keys (see echo_key) are kept apart in `echoes`; `echo_age(key)` says how
    long ago a new revision of one came back through the watch, on `clock`.

    The watch never stops for good, but a reader can see it break: `current` is
    True once the replay of the present watch is complete and until it fails;
    `broken` is True from a failure (or an end) until a new watch's replay is
    complete; `failures` counts them, `last_error` tells the last, and
    `on_broken(error)` is called at each (error None: the watch ended).

    `delivered` is the newest revision a watch delivered (echo keys included). Given
    `group_of` (a key -> its group, e.g. the node of a placement key), `newest(group)`
    is the newest revision of any key of that group this process saw delivered or
    wrote, deletions included: what a reader of only that group must have seen.

    `share` is given each value just decoded (or handed over with its own write), and
    returns what to hold: the value, or it holding parts shared with other records
    (placements: their template, corral.contract.sharing). Sharing that fails is logged
    and the value held as it is.
    """

    def __init__(
        self,
        bucket: Bucket,
        kind: type[T],
        prefix: str = ">",
        on_change: Callable[[str], Any] | None = None,
        *,
        on_broken: Callable[[BaseException | None], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        group_of: Callable[[str], str] | None = None,
        share: Callable[[T], T] | None = None,
    ) -> None:
        self.bucket = bucket
        self.kind = kind
        self.share = share
        self.share_failures = 0  # values held unshared: sharing raised (logged once)
        self.prefix = prefix
        self.on_change = on_change
        self.on_broken = on_broken
        self.clock = clock
        self.items: dict[str, tuple[T, int]] = {}
        self.unreadable: set[str] = set()
        self.echoes: dict[str, EchoSeen] = {}
        self.current = False
        self.broken = False
        self.failures = 0
        self.last_error = ""
        # The newest revision applied per key, deletes included: an entry older than it
        # (a watch catching up with a write this process already applied) is ignored.
        # A delete this process applied itself stays here only until the watch has
        # passed its revision; nothing older can come after that.
        self._applied: dict[str, int] = {}
        # Writes this process applied itself that the watch has not delivered yet, and
        # a heap of them by revision, forgotten once the live watch has passed them.
        self._unconfirmed: dict[str, int] = {}
        self._own_writes: list[tuple[int, str]] = []
        self._live = False  # the present watch's replay is complete
        self._position = 0  # the newest revision the live watch delivered
        self.delivered = 0
        self.group_of = group_of
        self._newest: dict[str, int] = {}  # group -> newest revision (group_of)

    def values(self) -> list[T]:
        return [value for value, _ in self.items.values()]

    def get(self, key: str) -> T | None:
        found = self.items.get(key)
        return None if found is None else found[0]

    def revision(self, key: str) -> int | None:
        found = self.items.get(key)
        return None if found is None else found[1]

    def newest(self, group: str) -> int:
        """The newest revision of a key of `group` seen or written (0: none; group_of)."""
        return self._newest.get(group, 0)

    def echo_age(self, key: str, now: float | None = None) -> float | None:
        """Seconds (on `clock`) since a new revision of echo `key` came back; None: never."""
        seen = self.echoes.get(key)
        if seen is None:
            return None
        return (self.clock() if now is None else now) - seen.seen_at

    def apply(self, entry: Entry, *, from_watch: bool = False, value: T | None = None) -> None:
        """Apply a change: from the watch, or a write this process just made. `value`:
        the object this process encoded as `entry.value` (its own write), held rather
        than decoded again (through `share` too: the caller hands it over); it must
        decode from those bytes to its equal."""
        if from_watch and entry.revision > self.delivered:
            self.delivered = entry.revision
        if is_echo_key(entry.key):
            self._apply_echo(entry)
            if from_watch and self._live:
                self._passed(entry.revision)
            return
        # One copy of a key for every mirror of this process that holds it (a replica's
        # placement and its status share their key), and for every revision of it.
        key = sys.intern(entry.key) if INTERN_KEYS else entry.key
        if self.group_of is not None:
            group = self.group_of(key)
            if entry.revision > self._newest.get(group, 0):
                self._newest[group] = entry.revision
        applied = self._applied.get(key, 0)
        if entry.revision < applied:
            return
        if from_watch and entry.revision == applied and entry.value is not None:
            # This very value is applied already (this process wrote it, or a new
            # watch's replay brought it again): the same bytes, nothing to decode or
            # tell. (A scheduler's own placements come back this way, one per replica.)
            if self._unconfirmed.get(key) == applied:
                del self._unconfirmed[key]
            if self._live:
                self._passed(entry.revision)
            return
        if from_watch:
            if entry.revision >= self._unconfirmed.get(key, entry.revision + 1):
                del self._unconfirmed[key]
            if entry.value is None:
                # The watch is in order: nothing older of this key can follow its deletion.
                self._applied.pop(key, None)
            else:
                self._applied[key] = entry.revision
        else:
            self._applied[key] = entry.revision
            self._unconfirmed[key] = entry.revision
            heapq.heappush(self._own_writes, (entry.revision, key))
        self.unreadable.discard(key)
        if entry.value is None:
            self.items.pop(key, None)
        else:
            try:
                if value is None:
                    value = decode(entry.value, self.kind)
                self.items[key] = (self._shared(value), entry.revision)
            except msgspec.DecodeError as error:
                log.warning("cannot read %s/%s: %s", self.bucket.name, key, error)
                self.items.pop(key, None)
                self.unreadable.add(key)
        if from_watch and self._live:
            self._passed(entry.revision)
        if self.on_change is not None:
            self.on_change(key)

    def _shared(self, value: T) -> T:
        """`value` through `share`; as it is if sharing fails (memory, not meaning)."""
        if self.share is None:
            return value
        try:
            return self.share(value)
        except Exception:
            self.share_failures += 1
            if self.share_failures == 1:  # the same bug would say it for every record
                log.exception("sharing a value of %s failed: held as decoded", self.bucket.name)
            return value

    def _apply_echo(self, entry: Entry) -> None:
        known = self.echoes.get(entry.key)
        if known is not None and entry.revision <= known.revision:
            return  # a replay of what was seen, or older: not a sign of life
        if entry.value is None:
            self.echoes.pop(entry.key, None)
        else:
            self.echoes[entry.key] = EchoSeen(entry.revision, self.clock(), entry.value)

    def _passed(self, revision: int) -> None:
        """The watch has delivered everything up to `revision`: forget older own writes."""
        self._position = max(self._position, revision)
        while self._own_writes and self._own_writes[0][0] <= self._position:
            written_at, key = heapq.heappop(self._own_writes)
            if self._unconfirmed.get(key) == written_at:
                del self._unconfirmed[key]
            if (
                self._applied.get(key) == written_at
                and key not in self.items
                and key not in self.unreadable
            ):
                del self._applied[key]  # an own delete: nothing older can come now

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the bucket forever; reports started once the current entries are in.

        A watch that fails or ends is started again (with back-off); the keys its
        fresh replay no longer has were deleted meanwhile, and are dropped.
        """
        started = False
        delays = Backoff(first=0.5, most=5.0)
        while True:
            replayed: set[str] | None = set()
            newest = 0
            self._live = False
            failure: BaseException | None = None
            try:
                async for entry in self.bucket.watch(self.prefix):
                    if entry is None:
                        if replayed is not None:
                            self._replayed(replayed, newest)
                            replayed = None
                            delays.reset()
                        if not started:
                            started = True
                            task_status.started()
                        continue
                    if replayed is not None:
                        replayed.add(entry.key)
                        newest = max(newest, entry.revision)
                    self.apply(entry, from_watch=True)
                log.warning("watch of %s/%s ended; watching again", self.bucket.name, self.prefix)
            except Exception as error:  # NATS away, a consumer lost: never stop following
                failure = error
                log.warning(
                    "watch of %s/%s failed (%s); watching again",
                    self.bucket.name,
                    self.prefix,
                    error,
                )
            self._broke(failure)
            await anyio.sleep(delays.next())

    def _replayed(self, keys: set[str], newest: int) -> None:
        """The watch's replay is complete: what it did not have was deleted meanwhile."""
        for key in (set(self.items) | self.unreadable) - keys:
            if self._unconfirmed.get(key, 0) > newest:
                continue  # this process wrote it after the replay began: the watch will tell
            self._unconfirmed.pop(key, None)
            self.apply(Entry(key, None, self._applied.get(key, 0)), from_watch=True)
        for key in set(self.echoes) - keys:
            del self.echoes[key]
        self._live = True
        self._passed(newest)
        self.current = True
        self.broken = False

    def _broke(self, failure: BaseException | None) -> None:
        self.current = False
        self.broken = True
        self._live = False
        self.failures += 1
        self.last_error = "ended" if failure is None else f"{type(failure).__name__}: {failure}"
        if self.on_broken is not None:
            try:
                self.on_broken(failure)
            except Exception:
                log.exception("on_broken of the watch of %s failed", self.bucket.name)


async def write_record(bucket: Bucket, key: str, value: Any, revision: int | None) -> int:
    """Create the key when revision is None, else compare-and-set on that revision."""
    raw = encode(value)
    if revision is None:
        return await bucket.create(key, raw)
    return await bucket.update(key, raw, revision)


# --- pipelined compare-and-set writes ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Create:
    """Write `value` under `key` only if the key is absent (or deleted)."""

    key: str
    value: bytes

    def __post_init__(self) -> None:
        _check_write("Create", self.key)


@dataclass(frozen=True, slots=True)
class Update:
    """Write `value` under `key` only if its revision is still `revision`."""

    key: str
    value: bytes
    revision: int

    def __post_init__(self) -> None:
        _check_write("Update", self.key, self.revision)


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete `key` only if its revision is still `revision`."""

    key: str
    revision: int

    def __post_init__(self) -> None:
        _check_write("Delete", self.key, self.revision)


Write = Create | Update | Delete


def _check_write(kind: str, key: str, revision: int | None = None) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{kind}.key must be a non-empty string, got {key!r}")
    if revision is not None and (
        not isinstance(revision, int) or isinstance(revision, bool) or revision <= 0
    ):
        raise ValueError(f"{kind}.revision must be the revision last read (> 0), got {revision!r}")


class NotAttempted(Exception):
    """A write of write_many that was not sent, because the connection failed on an
    earlier one: retry it with the others that did not commit."""


# Failures of the connection or of JetStream as a whole, not of one write: after one,
# write_many sends nothing more (every other write would wait for its own timeout).
CONNECTION_ERRORS: Final[tuple[type[BaseException], ...]] = (
    TimeoutError,  # nats.errors.TimeoutError is one
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionDrainingError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.NoRespondersError,
    nats_errors.NoServersError,
    js_errors.NoStreamResponseError,
    js_errors.ServiceUnavailableError,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one write: its new revision (a delete's: the marker's), or the error
    (Conflict: the key changed since it was read; NotAttempted: not sent)."""

    write: Write
    revision: int | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def conflict(self) -> bool:
        return isinstance(self.error, Conflict)

    @property
    def entry(self) -> Entry | None:
        """The committed change, to apply to a Mirror (mirror.apply); None if not committed."""
        if self.error is not None or self.revision is None:
            return None
        value = None if isinstance(self.write, Delete) else self.write.value
        return Entry(self.write.key, value, self.revision)


# Writes of one write_many in flight at once. Measured on 2 cores (bench/bench_kv_writes.py,
# docs/architecture.md): 64 already gives 3-4x the writes/s of one awaited after another;
# more adds little and stalls the event loop longer (every answered write wakes its
# sender in the same loop turn), which a request served by the same loop waits out.
WRITES_IN_FLIGHT: Final = 64


async def write_many(
    bucket: Bucket, writes: Iterable[Write], *, max_in_flight: int = WRITES_IN_FLIGHT
) -> list[Outcome]:
    """Send every write, up to `max_in_flight` at once on the bucket's connection, each
    still conditional (create-if-absent or compare-and-set on its revision), and return
    one Outcome per write, in the order given.

    A batch commits in part as a matter of course: the caller applies what committed and
    decides again about the rest (a Conflict means read again). Writes to one key in one
    batch are not ordered among themselves; each is still conditional. After a failure of
    the connection (CONNECTION_ERRORS) nothing more is sent: the writes not yet sent get
    NotAttempted. Cancelled, it leaves unknown which writes in flight committed; the
    watch tells.
    """
    if max_in_flight < 1:
        raise ValueError(f"write_many max_in_flight must be at least 1, got {max_in_flight}")
    batch = list(writes)
    outcomes: list[Outcome | None] = [None] * len(batch)
    position = 0
    broken: BaseException | None = None

    async def sender() -> None:
        nonlocal position, broken
        while broken is None and position < len(batch):
            index = position
            position += 1
            write = batch[index]
            try:
                revision = await _write_one(bucket, write)
            except Exception as error:
                outcomes[index] = Outcome(write, None, error)
                if isinstance(error, CONNECTION_ERRORS) and broken is None:
                    broken = error
            else:
                outcomes[index] = Outcome(write, revision)

    if len(batch) == 1:
        await sender()
    elif batch:
        async with anyio.create_task_group() as tg:
            for _ in range(min(max_in_flight, len(batch))):
                tg.start_soon(sender)
    result: list[Outcome] = []
    for write, outcome in zip(batch, outcomes, strict=True):
        if outcome is None:
            reason = f"{type(broken).__name__}: {broken}" if broken else "not sent"
            outcome = Outcome(write, None, NotAttempted(f"{bucket.name}/{write.key}: {reason}"))
        result.append(outcome)
    return result


async def _write_one(bucket: Bucket, write: Write) -> int:
    if isinstance(write, Create):
        return await bucket.create(write.key, write.value)
    if isinstance(write, Update):
        return await bucket.update(write.key, write.value, write.revision)
    return await bucket.delete(write.key, revision=write.revision)
