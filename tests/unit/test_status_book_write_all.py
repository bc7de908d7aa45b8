"""StatusBook.write_all: a pass's changed statuses written together (pipelined), each still
compare-and-set: unchanged ones are not written, a conflict is read again and retried,
one that keeps conflicting is forgotten, and another failure is raised after what
committed is recorded."""

from __future__ import annotations

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
