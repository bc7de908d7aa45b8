"""Following one node's keys without a consumer (NatsBucket.follow), on a real nats-server:
the snapshot from a watch whose consumer goes once current, then every change read from
the bucket in order, woken by the writes the bucket's stream republishes or by its owner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from corral.contract import names
from corral.natsio import nats_internals
from corral.natsio.bus import bucket_stream, connect, open_buckets
from corral.natsio.kv import FOLLOW_BATCH, Entry, NatsBucket, Wakeups, WatchIncomplete
from tests.waiting import eventually

BUCKET = names.PLACEMENTS_BUCKET


async def consumers(bucket: NatsBucket, url: str) -> int:
    nc = await connect(url, name="test-consumers")
    try:
        info = await nc.jetstream().stream_info(bucket_stream(bucket.name))
        return int(info.state.consumer_count)
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
    feed = placements.follow("node-1.>", Wakeups())
    try:
        snapshot = await take(feed, 2)
        assert snapshot[1] is None and snapshot[0] is not None
        assert (snapshot[0].key, snapshot[0].value) == ("node-1.default.a", b"a2")
        assert snapshot[0].revision > first
        # the snapshot's consumer went with it
        await eventually(lambda: consumers(placements, nats_url), lambda count: count == 0)
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
        # A single key is still read from the leader, not from any replica.
        assert not nats_internals.key_value_direct(buckets[BUCKET]._kv)
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
    nothing of what the first delivered. The follow ends before going on by reads."""
    placements = buckets[BUCKET]
    await placements.put("node-1.default.a", b"a1")
    ids = iter(range(100))
    monkeypatch.setattr(nats_internals, "subscription_id", lambda subscription: next(ids))
    feed = placements.follow("node-1.>", Wakeups())
    try:
        with pytest.raises(WatchIncomplete, match="made again during it"):
            await take(feed, 2)
    finally:
        await feed.aclose()  # type: ignore[attr-defined]
