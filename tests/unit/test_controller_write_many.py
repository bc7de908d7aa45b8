"""write_many: many conditional writes in flight at once, one outcome per write in the
order given (its revision, a Conflict, or another error), a partial commit as a matter
of course, no more sends after the connection failed, and never more in flight than
asked. On the in-memory bucket; tests/integration/test_write_many.py does it on NATS."""

from __future__ import annotations

import anyio
import nats.errors
import pytest

from corral.natsio.kv import (
    Bucket,
    Conflict,
    Create,
    Delete,
    Entry,
    MemoryBucket,
    Mirror,
    NotAttempted,
    Update,
    Write,
    write_many,
)


async def test_conflicts_and_successes_come_back_per_write_in_order() -> None:
    bucket = MemoryBucket()
    a = await bucket.create("a", b"1")
    b = await bucket.create("b", b"1")
    c = await bucket.create("c", b"1")
    await bucket.update("b", b"2", b)  # b moved on: writes based on `b` conflict
    writes: list[Write] = [
        Create("new", b"n"),
        Create("a", b"x"),  # exists
        Update("a", b"2", a),
        Update("b", b"x", b),  # stale
        Delete("c", c),
        Delete("b", b),  # stale
    ]
    outcomes = await write_many(bucket, writes, max_in_flight=3)
    assert [outcome.write for outcome in outcomes] == writes
    assert [outcome.ok for outcome in outcomes] == [True, False, True, False, True, False]
    assert [outcome.conflict for outcome in outcomes] == [False, True, False, True, False, True]
    assert all(isinstance(o.error, Conflict) for o in outcomes if not o.ok)
    assert (await bucket.get("a")) == Entry("a", b"2", outcomes[2].revision or -1)
    assert await bucket.get("c") is None
    assert (await bucket.get("new")) == Entry("new", b"n", outcomes[0].revision or -1)
    assert (await bucket.get("b")) is not None


async def test_committed_outcomes_apply_to_a_mirror_as_entries() -> None:
    bucket = MemoryBucket()
    old = await bucket.create("gone", b'"x"')
    mirror: Mirror[str] = Mirror(bucket, str)
    mirror.apply(Entry("gone", b'"x"', old))
    outcomes = await write_many(bucket, [Create("k", b'"v"'), Delete("gone", old)])
    for outcome in outcomes:
        assert outcome.entry is not None
        mirror.apply(outcome.entry)
    assert mirror.get("k") == "v"
    assert mirror.get("gone") is None
    assert outcomes[1].entry == Entry("gone", None, outcomes[1].revision or -1)
    failed = await write_many(bucket, [Create("k", b'"again"')])
    assert failed[0].entry is None


class Flaky:
    """A bucket whose n-th write fails with a given error; counts the writes sent."""

    def __init__(self, inner: MemoryBucket, fail_at: int, error: Exception) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail_at = fail_at
        self.error = error
        self.sent = 0

    async def _count(self) -> None:
        self.sent += 1
        if self.sent == self.fail_at:
            raise self.error

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def create(self, key: str, value: bytes) -> int:
        await self._count()
        return await self.inner.create(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        await self._count()
        return await self.inner.update(key, value, revision)

    async def put(self, key: str, value: bytes) -> int:
        return await self.inner.put(key, value)

    async def delete(self, key: str, revision: int | None = None) -> int:
        await self._count()
        return await self.inner.delete(key, revision)

    def watch(self, prefix: str = ">") -> object:
        return self.inner.watch(prefix)


async def test_after_a_connection_failure_nothing_more_is_sent() -> None:
    flaky = Flaky(MemoryBucket(), fail_at=3, error=nats.errors.TimeoutError())
    bucket: Bucket = flaky  # type: ignore[assignment]
    writes = [Create(f"k{n}", b"v") for n in range(10)]
    outcomes = await write_many(bucket, writes, max_in_flight=1)
    assert flaky.sent == 3
    assert [o.ok for o in outcomes[:2]] == [True, True]
    assert isinstance(outcomes[2].error, nats.errors.TimeoutError)
    assert all(isinstance(o.error, NotAttempted) for o in outcomes[3:])
    assert "k5" in str(outcomes[5].error)


async def test_an_error_of_one_write_does_not_stop_the_others() -> None:
    flaky = Flaky(MemoryBucket(), fail_at=2, error=ValueError("payload too large"))
    bucket: Bucket = flaky  # type: ignore[assignment]
    outcomes = await write_many(bucket, [Create(f"k{n}", b"v") for n in range(5)])
    assert flaky.sent == 5
    assert [o.ok for o in outcomes] == [True, False, True, True, True]
    assert not outcomes[1].conflict


class Gate:
    """A bucket whose writes wait for a gate; records how many are in flight at once."""

    def __init__(self) -> None:
        self.name = "gate"
        self.inner = MemoryBucket()
        self.open = anyio.Event()
        self.in_flight = 0
        self.most = 0

    async def create(self, key: str, value: bytes) -> int:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.open.wait()
            return await self.inner.create(key, value)
        finally:
            self.in_flight -= 1


async def test_no_more_than_max_in_flight_writes_are_outstanding() -> None:
    gate = Gate()
    bucket: Bucket = gate  # type: ignore[assignment]
    results = []

    async def run() -> None:
        results.extend(
            await write_many(bucket, [Create(f"k{n}", b"v") for n in range(50)], max_in_flight=8)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        assert gate.in_flight == 8  # pipelined: not one after another ...
        gate.open.set()
    assert gate.most == 8  # ... and never more than asked
    assert len(results) == 50 and all(outcome.ok for outcome in results)


async def test_an_empty_batch_writes_nothing() -> None:
    assert await write_many(MemoryBucket(), []) == []


def test_bad_writes_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"Update\.revision"):
        Update("k", b"v", 0)
    with pytest.raises(ValueError, match=r"Delete\.revision"):
        Delete("k", -3)
    with pytest.raises(ValueError, match=r"Create\.key"):
        Create("", b"v")


async def test_max_in_flight_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        await write_many(MemoryBucket(), [Create("k", b"v")], max_in_flight=0)
