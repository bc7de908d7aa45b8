"""Following one node's keys without a consumer (NatsBucket.follow), on a real nats-server:
the snapshot read at once (NatsBucket.snapshot: one direct get of every key's newest
entry), or from a watch whose consumer goes once current when it cannot be, then every
change read from the bucket in order, woken by the writes the bucket's stream republishes
or by its owner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from corral.contract import names
from corral.natsio import nats_internals
from corral.natsio.bus import bucket_stream, connect, open_buckets
from corral.natsio.kv import (
    FOLLOW_BATCH,
    Entry,
    NatsBucket,
    Snapshot,
    Wakeups,
    WatchIncomplete,
)
from tests.api_requests import CONSUMER_REQUESTS, api_requests
from tests.waiting import eventually

BUCKET = names.PLACEMENTS_BUCKET


async def consumers(bucket: NatsBucket, url: str) -> int:
    nc = await connect(url, name="test-consumers")
    try:
        info = await nc.jetstream().stream_info(bucket_stream(bucket.name))
        return int(info.state.consumer_count)
    finally:
        await nc.close()


async def last_sequence(bucket: NatsBucket, url: str) -> int:
    nc = await connect(url, name="test-last-sequence")
    try:
        info = await nc.jetstream().stream_info(bucket_stream(bucket.name))
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def take(feed: AsyncIterator[Entry | None], count: int) -> list[Entry | None]:
    got: list[Entry | None] = []
    with anyio.fail_after(10):
        while len(got) < count:
            got.append(await anext(feed))
    return got


async def test_a_follow_delivers_its_snapshot_then_every_change_in_order_and_keeps_no_consumer(
    buckets: dict[str, NatsBucket], nats_url: str
) -> None:
    placements = buckets[BUCKET]
    first = await placements.put("node-1.default.a", b"a1")
    await placements.put("node-2.default.b", b"b1")
    await placements.put("node-1.default.a", b"a2")
    async with api_requests(nats_url, CONSUMER_REQUESTS) as requests:
        feed = placements.follow("node-1.>", Wakeups())
        snapshot = await take(feed, 2)
    try:
        assert snapshot[1] is None and snapshot[0] is not None
        assert (snapshot[0].key, snapshot[0].value) == ("node-1.default.a", b"a2")
        assert snapshot[0].revision > first
        assert requests == []  # its snapshot read at once: no consumer made
        assert await consumers(placements, nats_url) == 0
        written = [
            await placements.put("node-2.default.b", b"b2"),  # another node's: not followed
            await placements.put("node-1.default.c", b"c1"),
            await placements.delete("node-1.default.a"),
            await placements.put("node-1.default.c", b"c2"),
        ]
        changes = await take(feed, 3)
        assert [(e.key, e.value, e.revision) for e in changes if e is not None] == [
            ("node-1.default.c", b"c1", written[1]),
            ("node-1.default.a", None, written[2]),
            ("node-1.default.c", b"c2", written[3]),
        ]
        assert await consumers(placements, nats_url) == 0
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


async def test_a_follow_of_keys_never_written_reads_the_first_one(
    buckets: dict[str, NatsBucket],
) -> None:
    placements = buckets[BUCKET]
    await placements.put("node-2.default.b", b"b1")
    feed = placements.follow("node-3.>", Wakeups())
    try:
        assert await take(feed, 1) == [None]
        revision = await placements.put("node-3.default.z", b"z1")
        assert await take(feed, 1) == [Entry("node-3.default.z", b"z1", revision)]
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


async def test_writes_nobody_told_of_are_read_in_order_when_its_owner_wakes_it(
    buckets: dict[str, NatsBucket], nats_url: str
) -> None:
    """No republished headers (taken off the stream: lost wake-ups): nothing is read
    until the owner wakes the follow, then everything, past a batch, in order."""
    placements = buckets[BUCKET]
    nc = await connect(nats_url, name="test-no-republish")
    try:
        js = nc.jetstream()
        config = (await js.stream_info(bucket_stream(BUCKET))).config
        config.republish = None
        await js.update_stream(config)
        assert (await js.stream_info(bucket_stream(BUCKET))).config.republish is None
    finally:
        await nc.close()
    wakeups = Wakeups()
    feed = placements.follow("node-1.>", wakeups)
    try:
        assert await take(feed, 1) == [None]
        count = FOLLOW_BATCH + 10
        revisions = [await placements.put(f"node-1.default.r{i}", b"v") for i in range(count)]
        wakeups.wake()
        changes = await take(feed, count)
        assert [e.revision for e in changes if e is not None] == revisions
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


async def test_placements_buckets_tell_their_writes_and_an_older_store_is_raised_to_it(
    nats_url: str,
) -> None:
    nc = await connect(nats_url, name="test-republish")
    try:
        js = nc.jetstream()
        buckets = await open_buckets(js)
        config = (await js.stream_info(bucket_stream(BUCKET))).config
        assert config.allow_direct
        assert config.republish is not None and config.republish.headers_only
        assert config.republish.src == f"$KV.{BUCKET}.>"
        assert config.republish.dest == names.kv_written_subject(BUCKET, ">")
        other = (await js.stream_info(bucket_stream(names.DEPLOYMENTS_BUCKET))).config
        assert other.republish is None  # only the placements
        assert not other.allow_direct
        # The statuses are read at once by their agents (NatsBucket.snapshot) too.
        statuses = (await js.stream_info(bucket_stream(names.REPLICA_STATUS_BUCKET))).config
        assert statuses.allow_direct and statuses.republish is None
        # A single key is still read from the leader: on this store of one server with
        # its direct gets (more replicas: test_store_limits).
        for name in (BUCKET, names.REPLICA_STATUS_BUCKET, names.NODES_BUCKET):
            assert nats_internals.key_value_direct(buckets[name]._kv)
            assert buckets[name]._direct_is_leader
        config.republish = None
        config.allow_direct = False
        await js.update_stream(config)
        await open_buckets(js)  # a store made by an older corral, opened again
        raised = (await js.stream_info(bucket_stream(BUCKET))).config
        assert raised.allow_direct and raised.republish is not None
        assert raised.republish.dest == names.kv_written_subject(BUCKET, ">")
    finally:
        await nc.close()


async def test_a_follow_whose_snapshot_consumer_was_made_again_during_it_reads_nothing_on(
    buckets: dict[str, NatsBucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py re-makes an ordered consumer after a gap (a new subscription id): the
    entries read then span two consumers, and the second one's count and position say
    nothing of what the first delivered. The follow ends before going on by reads. (Its
    snapshot is a watch's: the floor is past the store, so none is read at once.)"""
    placements = buckets[BUCKET]
    await placements.put("node-1.default.a", b"a1")
    ids = iter(range(100))
    monkeypatch.setattr(nats_internals, "subscription_id", lambda subscription: next(ids))
    feed = placements.follow("node-1.>", Wakeups(), floor=10**9)
    try:
        with pytest.raises(WatchIncomplete, match="made again during it"):
            await take(feed, 2)
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


async def test_a_follow_whose_snapshot_cannot_be_read_at_once_watches_for_it(
    buckets: dict[str, NatsBucket], nats_url: str
) -> None:
    """A floor past what the store answers (a replica behind what its reader saw): the
    snapshot is a watch's, whose consumer goes once current, and the follow goes on."""
    placements = buckets[BUCKET]
    revision = await placements.put("node-1.default.a", b"a1")
    async with api_requests(nats_url, CONSUMER_REQUESTS) as requests:
        feed = placements.follow("node-1.>", Wakeups(), floor=revision + 1)
        try:
            assert await take(feed, 2) == [Entry("node-1.default.a", b"a1", revision), None]
            await eventually(lambda: consumers(placements, nats_url), lambda count: count == 0)
            later = await placements.put("node-1.default.b", b"b1")
            assert await take(feed, 1) == [Entry("node-1.default.b", b"b1", later)]
        finally:
            await feed.aclose()  # type: ignore[attr-defined]
    assert any(".CREATE." in subject for subject in requests)
    assert any(".DELETE." in subject for subject in requests)


async def test_a_snapshot_is_each_keys_newest_entry_as_of_one_sequence_read_at_once(
    buckets: dict[str, NatsBucket], nats_url: str
) -> None:
    placements = buckets[BUCKET]
    async with api_requests(nats_url, CONSUMER_REQUESTS) as requests:
        # Nothing of the prefix stored: no entries, as of no sequence, when its reader
        # saw none; a reader that saw something cannot tell this answer's age.
        assert await placements.snapshot("node-1.>") == Snapshot([], 0)
        assert await placements.snapshot("node-1.>", floor=1) is None
        await placements.put("node-1.default.a", b"a1")
        a2 = await placements.put("node-1.default.a", b"a2")
        await placements.put("node-1.default.c", b"c1")
        c_deleted = await placements.delete("node-1.default.c")
        await placements.put("node-2.default.b", b"b1")  # another node's
        last = await last_sequence(placements, nats_url)
        snapshot = await placements.snapshot("node-1.>")
        assert snapshot == Snapshot(
            [Entry("node-1.default.a", b"a2", a2), Entry("node-1.default.c", None, c_deleted)],
            last,
        )
        # A floor the store has reached reads it; one past it does not.
        assert await placements.snapshot("node-1.>", floor=last) == snapshot
        assert await placements.snapshot("node-1.>", floor=last + 1) is None
    assert requests == []


async def test_a_snapshot_is_not_read_at_once_from_a_replicated_stream(
    buckets: dict[str, NatsBucket], nats_url: str
) -> None:
    """Any replica may answer a direct get, also one cut off from its leader (with the
    agent): not behind what the agent saw before it was cut off, its store may still
    hold replicas the leader has moved away since. Only a stream of one replica, whose
    one server is its leader, is read so, whatever the floor."""
    placements = buckets[BUCKET]
    revision = await placements.put("node-1.default.a", b"a1")
    nc = await connect(nats_url, name="test-replicated")
    try:
        js = nc.jetstream()
        config = (await js.stream_info(bucket_stream(BUCKET))).config
        config.num_replicas = 3  # as a cluster of three would have it
        replicated = NatsBucket(placements._kv, BUCKET, stream=config)
        assert await replicated.snapshot("node-1.>") is None
        assert await replicated.snapshot("node-1.>", floor=revision) is None
        config.num_replicas = 1
        found = await NatsBucket(placements._kv, BUCKET, stream=config).snapshot("node-1.>")
        assert found is not None and found.entries == [Entry("node-1.default.a", b"a1", revision)]
        config.num_replicas, config.allow_direct = 1, False
        assert await NatsBucket(placements._kv, BUCKET, stream=config).snapshot(">") is None
        assert await NatsBucket(placements._kv, BUCKET).snapshot(">") is None  # not read
    finally:
        await nc.close()


async def test_more_keys_than_one_direct_get_answers_are_not_a_snapshot(
    buckets: dict[str, NatsBucket], nats_url: str
) -> None:
    """nats-server answers a multi_last get of at most 1,024 subjects (413 beyond): the
    prefix's keys are then read with a watch, and a follow still starts."""
    placements = buckets[BUCKET]
    nc = await connect(nats_url, name="test-many-keys")
    try:
        js = nc.jetstream()
        acks = [await js.publish(f"$KV.{BUCKET}.node-1.default.r{i}", b"v") for i in range(1025)]
        assert await placements.snapshot("node-1.>") is None
        assert await placements.snapshot("node-1.default.r1000") is not None
        feed = placements.follow("node-1.>", Wakeups())
        try:
            got = await take(feed, 1026)
            assert got[-1] is None
            assert [e.revision for e in got[:-1] if e is not None] == [a.seq for a in acks]
        finally:
            await feed.aclose()  # type: ignore[attr-defined]
    finally:
        await nc.close()
