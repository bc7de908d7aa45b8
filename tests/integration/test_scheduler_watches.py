"""The watches the scheduler judges liveness by, through a real nats-server: a watch
that cannot tell where the current entries end starts again instead of handing over
a partial snapshot, and echo keys never reach readers as records."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from nats.js.client import JetStreamContext

from corral.client.api import CorralClient
from corral.contract import names
from corral.contract.codec import encode
from corral.natsio.bus import connect, open_buckets
from corral.natsio.kv import Entry, NatsBucket, WatchIncomplete, echo_key
from tests.conftest import NatsServer
from tests.integration.scheduler_harness import register_node
from tests.partition_proxy import Mode as ProxyMode
from tests.partition_proxy import partition_proxy


def failing_consumer_info(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """Make the watch's own consumer-info reads fail `failures` times (nats-py's first
    read, inside KeyValue.watch, still works). Returns the count of calls."""
    real = JetStreamContext.PushSubscription.consumer_info
    calls = [0]

    async def consumer_info(self: Any) -> Any:
        calls[0] += 1
        if 1 < calls[0] <= failures + 1:
            raise TimeoutError("consumer info timed out")
        return await real(self)

    monkeypatch.setattr(JetStreamContext.PushSubscription, "consumer_info", consumer_info)
    return calls


async def read_snapshot(bucket: NatsBucket) -> list[Entry]:
    found: list[Entry] = []
    async for entry in bucket.watch():
        if entry is None:
            return found
        found.append(entry)
    raise AssertionError("the watch ended")


async def test_a_watch_whose_end_of_snapshot_cannot_be_read_fails_instead_of_ending_early(
    buckets: dict[str, NatsBucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    placements = buckets[names.PLACEMENTS_BUCKET]
    for index in range(20):
        await placements.put(f"node-a.web-{index:05d}", b"{}")
    failing_consumer_info(monkeypatch, failures=100)
    with pytest.raises(WatchIncomplete, match="current entries end is unknown"):
        await read_snapshot(placements)


async def test_a_watch_asks_the_consumer_again_after_one_failed_read(
    buckets: dict[str, NatsBucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    placements = buckets[names.PLACEMENTS_BUCKET]
    for index in range(20):
        await placements.put(f"node-a.web-{index:05d}", b"{}")
    calls = failing_consumer_info(monkeypatch, failures=1)
    found = await read_snapshot(placements)
    assert len(found) == 20
    assert calls[0] >= 3  # nats-py's read, the failed one, the retry


async def test_readers_of_whole_buckets_never_see_echo_keys(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    nodes = buckets[names.NODES_BUCKET]
    placements = buckets[names.PLACEMENTS_BUCKET]
    await register_node(nodes, "node-a")
    await nodes.put(echo_key("scheduler-1"), encode(1.0))
    await placements.put(echo_key("agent-1", prefix="node-a."), encode(1.0))
    async with await CorralClient.connect(nats_url) as client:
        assert set(await client.nodes()) == {"node-a"}
        assert await client.placements() == {}
        raw = await client.read_bucket(names.NODES_BUCKET, object)  # decodes anything
        assert set(raw) == {"node-a"}


async def test_a_stopped_watch_deletes_its_consumer_at_once(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    """Not after its 60 s of inactivity: agents that watch again after every isolation
    would leave thousands behind (NatsBucket._delete_consumer)."""
    placements = buckets[names.PLACEMENTS_BUCKET]
    await placements.put("node-a.default.web-1", b"{}")
    nc = await connect(nats_url, name="test-consumers")
    try:
        js = nc.jetstream()
        stream = f"KV_{names.PLACEMENTS_BUCKET}"

        async def consumers() -> set[str]:
            return {info.name for info in await js.consumers_info(stream)}

        before = await consumers()
        async with aclosing(placements.watch(names.placement_prefix("node-a"))) as watch:
            async for entry in watch:
                if entry is None:  # the snapshot is in: the watch is live
                    assert len(await consumers() - before) == 1
                    break
        assert await consumers() == before
    finally:
        await nc.close()


async def test_a_watch_says_when_it_goes_on_from_a_new_consumer(
    nats_server: NatsServer, buckets: dict[str, NatsBucket]
) -> None:
    """Bytes to the watcher are lost (a blackholed connection), so nats-py re-makes its
    ordered consumer from after the last entry it delivered: the watch says so with a
    None before what follows (old delete markers purged in between would have been
    skipped: a node agent back from an isolation then reads its placements afresh)."""
    writer = buckets[names.PLACEMENTS_BUCKET]
    await writer.put("node-a.default.web-1", b"1")
    async with partition_proxy(nats_server.port) as proxy:
        nc = await connect(proxy.url, name="test-reset")
        try:
            placements = (await open_buckets(nc.jetstream()))[names.PLACEMENTS_BUCKET]
            seen: list[str | None] = []
            async with aclosing(placements.watch(names.placement_prefix("node-a"))) as watch:
                iterator = aiter(watch)
                with anyio.fail_after(30):
                    assert (await anext(iterator)).key == "node-a.default.web-1"  # type: ignore[union-attr]
                    assert await anext(iterator) is None  # the snapshot is in
                    proxy.cut(ProxyMode.BLACKHOLE)
                    await writer.put("node-a.default.web-2", b"2")  # lost on the way
                    proxy.heal()  # the connection is closed: the client connects again
                    await writer.put("node-a.default.web-3", b"3")
                    while "node-a.default.web-3" not in seen:
                        entry = await anext(iterator)
                        seen.append(None if entry is None else entry.key)
            assert seen[0] is None, seen  # said before anything of the new consumer
            assert "node-a.default.web-2" in seen, seen  # from after the last delivered
        finally:
            await nc.close()


async def test_a_watch_answers_flow_control_as_it_comes_without_nats_pys_poller(
    nats_url: str,
) -> None:
    """NatsBucket.watch stops nats-py's flow-control poller (four wake-ups a second per
    watch: a hollow cluster runs one per node). A burst bigger than the consumer's
    flow-control window still comes through whole: each request is answered on arrival."""
    nc = await connect(nats_url, name="test-flow-control")
    writer = await connect(nats_url, name="test-flow-control-writer")
    answered: list[str] = []
    publish = nc.publish

    async def counting_publish(subject: str, payload: bytes = b"", **kwargs: Any) -> None:
        if subject.startswith("$JS.FC."):
            answered.append(subject)
        await publish(subject, payload, **kwargs)

    nc.publish = counting_publish  # type: ignore[method-assign]
    try:
        kv = await nc.jetstream().create_key_value(bucket="test_flow_control")
        bucket = NatsBucket(kv, "test_flow_control")
        source = await writer.jetstream().key_value("test_flow_control")
        count, value = 400, b"x" * 64 * 1024  # 25 MiB
        got = 0
        with anyio.fail_after(60):  # a stalled watch fails here, not at the suite's timeout
            async with aclosing(bucket.watch("burst.>")) as watch:
                async for entry in watch:
                    if entry is None and got == 0:
                        pollers = [
                            task
                            for task in asyncio.all_tasks()
                            if "check_flow_control_response" in repr(task.get_coro())
                        ]
                        assert pollers == []
                        for i in range(count):
                            await source.put(f"burst.{i}", value)
                        continue
                    assert entry is not None and entry.value == value
                    got += 1
                    if got == count:
                        break
        assert answered  # the burst made the server ask, and the asks were answered
    finally:
        await nc.close()
        await writer.close()
