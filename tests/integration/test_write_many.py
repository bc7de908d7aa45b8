"""write_many on JetStream KV: hundreds of conditional writes in flight on one
connection, conflicts mixed with successes, each outcome matching what the server
stored (and what a watch sees), a create over a deleted key, and a closed connection
that stops the batch at once instead of timing out write by write."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import nats.errors
import pytest
from nats.aio.client import Client

from corral.natsio.bus import connect
from corral.natsio.kv import (
    Conflict,
    Create,
    Delete,
    Mirror,
    NatsBucket,
    NotAttempted,
    Update,
    Write,
    write_many,
)
from tests.waiting import eventually


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    nc = await connect(nats_url, name="test-write-many")
    try:
        yield nc
    finally:
        await nc.close()


async def make_bucket(nc: Client, name: str = "test_write_many") -> NatsBucket:
    kv = await nc.jetstream().create_key_value(bucket=name, history=1)
    return NatsBucket(kv, name)


async def test_conflicts_mixed_with_successes_each_get_their_own_outcome(client: Client) -> None:
    bucket = await make_bucket(client)
    created = await write_many(bucket, [Create(f"k{n:03}", b"v0") for n in range(300)])
    assert all(outcome.ok for outcome in created)
    revision = {o.write.key: o.revision or 0 for o in created}
    assert len(set(revision.values())) == 300

    # Someone else moves every third key on: writes based on what we read conflict.
    for n in range(0, 300, 3):
        key = f"k{n:03}"
        revision[key + "-theirs"] = await bucket.update(key, b"theirs", revision[key])

    writes: list[Write] = []
    for n in range(300):
        key = f"k{n:03}"
        if n % 2:
            writes.append(Update(key, b"v1", revision[key]))
        else:
            writes.append(Delete(key, revision[key]))
    writes += [Create("k001", b"dup"), Create("fresh", b"new")]
    outcomes = await write_many(bucket, writes, max_in_flight=64)

    assert [o.write for o in outcomes] == writes
    for n, outcome in enumerate(outcomes[:300]):
        key = f"k{n:03}"
        stored = await bucket.get(key)
        if n % 3 == 0:
            assert outcome.conflict, key
            assert isinstance(outcome.error, Conflict)
            assert stored is not None and stored.value == b"theirs"
        elif n % 2:
            assert outcome.ok, (key, outcome.error)
            assert stored is not None and stored.value == b"v1"
            assert stored.revision == outcome.revision
        else:
            assert outcome.ok, (key, outcome.error)
            assert stored is None
    assert outcomes[300].conflict  # k001 exists
    assert outcomes[301].ok
    committed = sum(o.ok for o in outcomes)
    assert committed == 300 - 100 + 1


async def test_a_mirror_that_applies_the_outcomes_agrees_with_its_watch(client: Client) -> None:
    bucket = await make_bucket(client)
    first = await write_many(bucket, [Create(f"k{n}", b'"a"') for n in range(200)])
    mirror: Mirror[str] = Mirror(bucket, str)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        writes: list[Write] = [
            Update(o.write.key, b'"b"', o.revision or 0) if n % 2 else Delete(o.write.key, 999_999)
            for n, o in enumerate(first)
        ]
        for outcome in await write_many(bucket, writes, max_in_flight=32):
            if outcome.entry is not None:
                mirror.apply(outcome.entry)  # at once, as a plan applier does
        assert sorted(mirror.items) == sorted(f"k{n}" for n in range(200))
        assert {mirror.get(f"k{n}") for n in range(1, 200, 2)} == {"b"}
        assert {mirror.get(f"k{n}") for n in range(0, 200, 2)} == {"a"}  # stale deletes
        stored = {f"k{n}": await bucket.get(f"k{n}") for n in range(200)}

        async def revisions_seen() -> dict[str, int | None]:
            return {key: mirror.revision(key) for key in stored}

        await eventually(
            revisions_seen,
            lambda seen: seen == {k: e.revision if e else None for k, e in stored.items()},
        )
        tg.cancel_scope.cancel()


async def test_a_create_over_a_deleted_key_succeeds_in_a_batch(client: Client) -> None:
    bucket = await make_bucket(client)
    revision = await bucket.create("k", b"1")
    await bucket.delete("k", revision=revision)
    outcomes = await write_many(bucket, [Create("k", b"2"), Create("other", b"3")])
    assert [o.ok for o in outcomes] == [True, True]
    stored = await bucket.get("k")
    assert stored is not None and stored.value == b"2"


async def test_a_closed_connection_ends_the_batch_at_once(nats_url: str) -> None:
    nc = await connect(nats_url, name="test-write-many-closed")
    bucket = await make_bucket(nc)
    await nc.close()
    with anyio.fail_after(5):  # not 5 s of timeout per write
        outcomes = await write_many(
            bucket, [Create(f"k{n}", b"v") for n in range(1000)], max_in_flight=4
        )
    assert not any(o.ok for o in outcomes)
    assert isinstance(outcomes[0].error, nats.errors.ConnectionClosedError)
    assert sum(isinstance(o.error, NotAttempted) for o in outcomes) >= 990
