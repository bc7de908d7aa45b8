"""The in-memory Bucket keeps the revision semantics of JetStream KV, and Mirror
follows a bucket, ignoring stale and undecodable entries."""

from __future__ import annotations

import anyio
import pytest

from corral.codec import encode
from corral.kv import Conflict, Entry, MemoryBucket, Mirror, write_record
from corral.state import NodeCapacity
from tests.waiting import eventually


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
