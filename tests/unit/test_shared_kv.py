"""The in-memory Bucket keeps the revision semantics of JetStream KV, and Mirror
follows a bucket, ignoring stale and undecodable entries."""

from __future__ import annotations

from typing import TypeVar

import anyio
import pytest

from corral.contract.codec import encode
from corral.contract.state import NodeCapacity
from corral.natsio.kv import (
    INTERN_KEYS,
    Conflict,
    Entry,
    MemoryBucket,
    Mirror,
    echo_key,
    is_echo_key,
    write_record,
)
from tests.waiting import eventually

T = TypeVar("T")


async def test_compare_and_set() -> None:
    bucket = MemoryBucket()
    first = await bucket.create("a", b"1")
    with pytest.raises(Conflict):
        await bucket.create("a", b"2")
    second = await bucket.update("a", b"2", first)
    with pytest.raises(Conflict):
        await bucket.update("a", b"3", first)
    with pytest.raises(Conflict):
        await bucket.delete("a", revision=first)
    await bucket.delete("a", revision=second)
    assert await bucket.get("a") is None


async def test_mirror_follows_and_skips_bad_records() -> None:
    bucket = MemoryBucket()
    await write_record(bucket, "n1", NodeCapacity(cpu_millis=1, memory_bytes=2), None)
    await bucket.put("broken", b"{not json")
    changed: list[str] = []
    n2_seen = anyio.Event()

    def on_change(key: str) -> None:
        changed.append(key)
        if key == "n2":
            n2_seen.set()

    mirror = Mirror(bucket, NodeCapacity, on_change=on_change)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        assert mirror.get("n1") == NodeCapacity(cpu_millis=1, memory_bytes=2)
        assert mirror.get("broken") is None
        await write_record(bucket, "n2", NodeCapacity(cpu_millis=3, memory_bytes=4), None)
        with anyio.fail_after(2):
            await n2_seen.wait()
        tg.cancel_scope.cancel()
    assert mirror.get("n2") == NodeCapacity(cpu_millis=3, memory_bytes=4)


def test_mirror_ignores_entries_older_than_what_it_applied() -> None:
    mirror = Mirror(MemoryBucket(), NodeCapacity)
    newer = encode(NodeCapacity(cpu_millis=2, memory_bytes=2))
    older = encode(NodeCapacity(cpu_millis=1, memory_bytes=1))
    mirror.apply(Entry("k", newer, 10))
    mirror.apply(Entry("k", older, 9))
    assert mirror.get("k") == NodeCapacity(cpu_millis=2, memory_bytes=2)
    mirror.apply(Entry("k", None, 11))
    mirror.apply(Entry("k", older, 10))
    assert mirror.get("k") is None


@pytest.mark.skipif(not INTERN_KEYS, reason="interned strings are immortal on Python 3.12")
def test_mirrors_of_one_process_hold_one_copy_of_a_key_they_share() -> None:
    """A replica's placement and its status are stored under the same key: the scheduler
    and netmgr mirror both, and hold the key once (100,000 keys of about 70 bytes each),
    whether it came from the watch or from a write of their own, at every revision."""
    value = encode(NodeCapacity(cpu_millis=1, memory_bytes=1))

    def fresh(key: str) -> str:
        return "".join(list(key))  # equal, and not the same object

    placements = Mirror(MemoryBucket("placements"), NodeCapacity)
    statuses = Mirror(MemoryBucket("statuses"), NodeCapacity)
    placements.apply(Entry(fresh("n1.default.web-a"), value, 3))  # its own write
    statuses.apply(Entry(fresh("n1.default.web-a"), value, 5), from_watch=True)
    statuses.apply(Entry(fresh("n1.default.web-a"), value, 6), from_watch=True)
    (held,) = placements.items
    (also,) = statuses.items
    assert held is also
    assert fresh("n1.default.web-a") is not held  # (the test makes new strings)


def test_mirror_keeps_the_newest_revision_per_group_and_what_its_watch_delivered() -> None:
    mirror = Mirror(MemoryBucket(), NodeCapacity, group_of=lambda key: key.partition(".")[0])
    value = encode(NodeCapacity(cpu_millis=1, memory_bytes=1))
    mirror.apply(Entry("a.x", value, 4), from_watch=True)
    mirror.apply(Entry("b.x", value, 5), from_watch=True)
    mirror.apply(Entry("a.y", value, 7))  # this process's own write
    mirror.apply(Entry("a.x", None, 9), from_watch=True)  # a deletion counts too
    mirror.apply(Entry("a.y", value, 6), from_watch=True)  # older: not newer for a
    mirror.apply(Entry(echo_key("me", prefix="b."), value, 12), from_watch=True)
    assert (mirror.newest("a"), mirror.newest("b"), mirror.newest("c")) == (9, 5, 0)
    assert mirror.delivered == 12  # echo keys are delivered too; own writes are not


def test_an_own_write_coming_back_through_the_watch_is_neither_decoded_nor_told_again() -> None:
    told: list[str] = []
    mirror = Mirror(MemoryBucket(), NodeCapacity, on_change=told.append)
    raw = encode(NodeCapacity(cpu_millis=1, memory_bytes=1))
    mirror.apply(Entry("mine", raw, 5))  # this process's write
    value = mirror.get("mine")
    mirror.apply(Entry("mine", raw, 5), from_watch=True)  # the watch brings it back
    assert told == ["mine"] and mirror.get("mine") is value  # the same object: not decoded
    assert mirror._unconfirmed == {}  # confirmed all the same
    mirror.apply(Entry("mine", None, 6), from_watch=True)  # anything newer is applied
    assert told == ["mine", "mine"] and mirror.get("mine") is None


class FlakyBucket(MemoryBucket):
    """A bucket whose first watch breaks after replaying, like a lost consumer."""

    def __init__(self) -> None:
        super().__init__("flaky")
        self.watches = 0

    async def watch(self, prefix: str = ">"):  # type: ignore[no-untyped-def]
        self.watches += 1
        broken = self.watches == 1
        async for entry in super().watch(prefix):
            yield entry
            if broken and entry is None:
                raise ConnectionError("consumer lost")


async def test_mirror_watches_again_after_a_failure_and_drops_what_was_deleted() -> None:
    bucket = FlakyBucket()
    await write_record(bucket, "kept", NodeCapacity(cpu_millis=1, memory_bytes=1), None)
    await write_record(bucket, "gone", NodeCapacity(cpu_millis=2, memory_bytes=2), None)
    mirror = Mirror(bucket, NodeCapacity)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        assert set(mirror.items) == {"kept", "gone"}
        # deleted while the mirror's watch is down: the next replay no longer has it
        await bucket.delete("gone")

        async def state() -> tuple[int, set[str]]:
            return bucket.watches, set(mirror.items)

        await eventually(state, lambda s: s == (2, {"kept"}), within=5)
        tg.cancel_scope.cancel()


# --- echo keys ------------------------------------------------------------------------


def test_echo_keys_can_never_be_object_keys() -> None:
    assert echo_key("scheduler-3f9a") == "_echo.scheduler-3f9a"
    assert echo_key("agent_1", prefix="node-1.") == "node-1._echo.agent_1"
    assert is_echo_key("_echo.scheduler-3f9a") and is_echo_key("node-1._echo.agent_1")
    for key in ("web", "node-1.web-abcde", "_echo", "node-1._echo", "echo.x", "my_echo.x"):
        assert not is_echo_key(key), key
    with pytest.raises(ValueError, match="echo owner"):
        echo_key("a.b")
    with pytest.raises(ValueError, match="echo prefix"):
        echo_key("a", prefix="node-1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_mirror_keeps_echo_keys_apart_and_times_them_on_its_own_clock() -> None:
    bucket = MemoryBucket()
    clock = Clock()
    changed: list[str] = []
    mirror = Mirror(bucket, float, on_change=changed.append, clock=clock)
    key = echo_key("me")
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        assert mirror.echo_age(key) is None  # never seen: not fresh
        await bucket.put(key, encode(1.0))
        await bucket.put("record", encode(2.0))
        await eventually(lambda: _async(set(mirror.items)), lambda s: s == {"record"})
        assert changed == ["record"]  # an echo is never a change of a record
        assert key in mirror.echoes and key not in mirror.items
        clock.now = 107.5
        assert mirror.echo_age(key) == 7.5
        # a new revision (even of the same value) is a sign of life
        await bucket.put(key, encode(1.0))
        await eventually(lambda: _async(mirror.echo_age(key)), lambda age: age == 0.0)
        clock.now = 110.0
        await bucket.delete(key)
        await eventually(lambda: _async(mirror.echo_age(key)), lambda age: age is None)
        tg.cancel_scope.cancel()


async def _async(value: T) -> T:
    return value


def test_a_replayed_echo_is_no_sign_of_life() -> None:
    clock = Clock()
    mirror = Mirror(MemoryBucket(), float, clock=clock)
    key = echo_key("other")
    mirror.apply(Entry(key, encode(1.0), 5), from_watch=True)
    clock.now = 200.0
    mirror.apply(Entry(key, encode(1.0), 5), from_watch=True)  # a watch restarted
    assert mirror.echo_age(key) == 100.0
    mirror.apply(Entry(key, encode(1.0), 9), from_watch=True)
    assert mirror.echo_age(key) == 0.0


# --- a broken watch is visible ------------------------------------------------------------


async def test_a_reader_can_see_the_watch_break_and_come_back() -> None:
    bucket = FlakyBucket()
    await write_record(bucket, "kept", NodeCapacity(cpu_millis=1, memory_bytes=1), None)
    errors: list[BaseException | None] = []
    mirror = Mirror(bucket, NodeCapacity, on_broken=errors.append)
    assert not mirror.current and not mirror.broken
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        # the first watch broke right after its replay; the mirror said so
        await eventually(lambda: _async(mirror.failures), lambda n: n == 1, within=5)
        assert len(errors) == 1 and isinstance(errors[0], ConnectionError)
        assert "consumer lost" in mirror.last_error
        # then a second watch replays, and the mirror is current again
        await eventually(
            lambda: _async((mirror.current, mirror.broken)), lambda s: s == (True, False), within=5
        )
        tg.cancel_scope.cancel()


# --- nothing is kept for keys that are gone ----------------------------------------------


async def test_the_mirror_forgets_keys_deleted_while_its_watch_was_down() -> None:
    bucket = FlakyBucket()
    await write_record(bucket, "kept", NodeCapacity(cpu_millis=1, memory_bytes=1), None)
    await write_record(bucket, "gone", NodeCapacity(cpu_millis=2, memory_bytes=2), None)
    mirror = Mirror(bucket, NodeCapacity)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        await bucket.delete("gone")  # someone else deletes it while the watch is down
        await eventually(lambda: _async(mirror.current and mirror.failures == 1), bool)
        tg.cancel_scope.cancel()
    assert set(mirror.items) == {"kept"}
    assert set(mirror._applied) == {"kept"}


async def test_the_mirror_forgets_its_own_deletes_once_the_watch_has_passed_them() -> None:
    bucket = FlakyBucket()
    keys = [f"k{i}" for i in range(50)]
    for key in [*keys, "kept"]:
        await write_record(bucket, key, NodeCapacity(cpu_millis=1, memory_bytes=1), None)
    mirror = Mirror(bucket, NodeCapacity)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        # this process deletes them (as the scheduler stops placements) while the watch
        # is down, so the watch never delivers those deletions
        for key in keys:
            marker = await bucket.delete(key)
            mirror.apply(Entry(key, None, marker))
        await eventually(lambda: _async(mirror.current and mirror.failures == 1), bool)
        await bucket.put(echo_key("me"), encode(1.0))  # anything newer passes the watch on
        await eventually(lambda: _async(set(mirror._applied)), lambda s: s == {"kept"})
        tg.cancel_scope.cancel()
    assert set(mirror.items) == {"kept"}


async def test_an_own_write_made_during_a_replay_is_not_dropped_by_it() -> None:
    mirror = Mirror(MemoryBucket(), NodeCapacity)
    raw = encode(NodeCapacity(cpu_millis=1, memory_bytes=1))
    mirror.apply(Entry("old", raw, 3), from_watch=True)
    mirror.apply(Entry("mine", raw, 12))  # written by this process after the replay began
    mirror._replayed({"other"}, newest=10)
    assert set(mirror.items) == {"mine"}  # "old" was deleted meanwhile; "mine" will come
