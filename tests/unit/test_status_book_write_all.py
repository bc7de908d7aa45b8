"""StatusBook.write_all: a pass's changed statuses written together (pipelined), each still
compare-and-set: unchanged ones are not written, a conflict is read again and retried,
one that keeps conflicting is forgotten, and another failure is raised after what
committed is recorded."""

from __future__ import annotations

import contextlib

import anyio
import msgspec
import pytest

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.kv import Conflict, MemoryBucket
from corral_node_agent.status_book import StatusBook

NODE = "node-a"


def status(replica: str, state: ReplicaState = ReplicaState.RUNNING) -> ReplicaStatus:
    return ReplicaStatus(replica=replica, deployment="web", node=NODE, state=state)


def key(replica: str) -> str:
    return names.placement_key(NODE, "default", replica)


def stored(bucket: MemoryBucket, replica: str) -> ReplicaStatus | None:
    found = bucket.items.get(key(replica))
    return None if found is None or found.value is None else decode(found.value, ReplicaStatus)


class Moody(MemoryBucket):
    """Conflicts on `conflicting` keys `conflicts` times each (as if another writer had
    just changed them), and fails outright on `failing` keys."""

    def __init__(self) -> None:
        super().__init__("statuses")
        self.conflicting: dict[str, int] = {}
        self.failing: set[str] = set()
        self.failure: type[Exception] = RuntimeError  # e.g. the stream is full

    def _moody(self, key: str) -> None:
        if key in self.failing:
            raise self.failure(f"writing {key} failed")
        if self.conflicting.get(key, 0) > 0:
            self.conflicting[key] -= 1
            raise Conflict(f"{key}: wrong last sequence")

    async def create(self, key: str, value: bytes) -> int:
        self._moody(key)
        return await super().create(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        self._moody(key)
        return await super().update(key, value, revision)


async def test_only_what_changed_is_written_and_every_write_is_conditional() -> None:
    bucket = MemoryBucket("statuses")
    book = StatusBook(bucket, NODE, clock=lambda: 5.0)
    first = [status(f"web-{n}", ReplicaState.PENDING) for n in range(20)]
    assert await book.write_all(first) == 20
    assert await book.write_all(first) == 0  # nothing changed: nothing written
    revision_of_3 = bucket.items[key("web-3")].revision
    changed = [*first[:3], status("web-3"), *first[4:]]
    assert await book.write_all(changed) == 1
    after = stored(bucket, "web-3")
    assert after is not None and after.state == ReplicaState.RUNNING and after.updated_at == 5.0
    assert bucket.items[key("web-3")].revision > revision_of_3
    # Someone else's write in between: ours was based on an old revision, so it is read
    # again and written on the new one (no blind overwrite, no lost write).
    await bucket.update(key("web-5"), b'{"replica": "theirs"}', bucket.items[key("web-5")].revision)
    assert await book.write_all([status("web-5")]) == 1
    after5 = stored(bucket, "web-5")
    assert after5 is not None and after5.state == ReplicaState.RUNNING


async def test_a_conflict_is_retried_and_one_that_keeps_conflicting_is_forgotten() -> None:
    bucket = Moody()
    book = StatusBook(bucket, NODE)
    bucket.conflicting = {key("web-1"): 1, key("web-2"): 10}
    assert await book.write_all([status("web-0"), status("web-1"), status("web-2")]) == 2
    assert stored(bucket, "web-1") is not None  # the second round wrote it
    assert stored(bucket, "web-2") is None and book.get("web-2") is None  # next pass
    assert book.get("web-0") is not None and book.get("web-1") is not None


async def test_a_failure_is_raised_after_what_committed_is_recorded() -> None:
    bucket = Moody()
    book = StatusBook(bucket, NODE)
    bucket.failing = {key("web-1")}
    with pytest.raises(RuntimeError):
        await book.write_all([status("web-0"), status("web-1"), status("web-2")])
    assert sorted(book.replicas()) == ["web-0", "web-2"]  # committed: known, not rewritten
    bucket.failing = set()
    assert await book.write_all([status("web-0"), status("web-1"), status("web-2")]) == 1
    # The connection failing stops the batch (kv.write_many): what was not sent is
    # neither recorded nor lost; the next pass writes it.
    bucket.failing, bucket.failure = {key("web-3")}, TimeoutError
    with pytest.raises(TimeoutError):
        await book.write_all([status(f"web-{n}", ReplicaState.PENDING) for n in range(3, 6)])
    assert sorted(book.replicas()) == ["web-0", "web-1", "web-2"]
    bucket.failing = set()
    assert await book.write_all([status(f"web-{n}") for n in range(6)]) == 3


async def test_the_stamp_is_the_books_clock_and_the_status_is_otherwise_as_given() -> None:
    bucket = MemoryBucket("statuses")
    book = StatusBook(bucket, NODE, clock=lambda: 42.0)
    given = msgspec.structs.replace(status("web-9"), message="started", restarts=2)
    await book.write_all([given])
    assert stored(bucket, "web-9") == msgspec.structs.replace(given, updated_at=42.0)


class LostReplies(MemoryBucket):
    """Commits the writes to `lost` keys, then loses the reply: a timeout, or (`hang`)
    no answer until the caller gives up."""

    def __init__(self) -> None:
        super().__init__("statuses")
        self.lost: set[str] = set()
        self.hang = False

    async def update(self, key: str, value: bytes, revision: int) -> int:
        committed = await super().update(key, value, revision)
        if key in self.lost:
            if self.hang:
                await anyio.sleep_forever()
            raise TimeoutError(f"nats: timeout (the write of {key} committed)")
        return committed


@pytest.mark.parametrize("hang", [False, True], ids=["timed out", "cut short"])
async def test_a_write_whose_outcome_was_not_seen_is_written_again_next_pass(hang: bool) -> None:
    bucket = LostReplies()
    book = StatusBook(bucket, NODE)
    ready = status("web-0")
    await book.write_all([ready, status("web-1")])
    failing = msgspec.structs.replace(ready, state=ReplicaState.FAILED, message="exited 1")
    bucket.lost, bucket.hang = {key("web-0")}, hang
    with anyio.move_on_after(0.2):
        with contextlib.suppress(TimeoutError):
            await book.write_all([failing])
    after = stored(bucket, "web-0")
    assert after is not None and after.state == ReplicaState.FAILED  # committed, unseen
    bucket.lost = set()
    # Back to what the book last saw stored: written all the same (the store says Failed).
    assert await book.write_all([ready, status("web-1")]) == 1
    back = stored(bucket, "web-0")
    assert back is not None and back.state == ReplicaState.RUNNING
    assert book.uncertain == set()
    assert await book.write_all([ready, status("web-1")]) == 0


async def test_conflicts_are_not_retried_once_the_agent_stops_acting() -> None:
    bucket = Moody()
    book = StatusBook(bucket, NODE)
    await book.write_all([status("web-0", ReplicaState.PENDING)])
    bucket.conflicting = {key("web-0"): 1}
    acting = iter([False])
    assert await book.write_all([status("web-0")], go_on=lambda: next(acting)) == 0
    pending = stored(bucket, "web-0")
    assert pending is not None and pending.state == ReplicaState.PENDING  # not retried
    assert book.uncertain == {"web-0"}  # the next pass writes it
    assert await book.write_all([status("web-0")]) == 1
