"""Storage settings that do not drift: every stream and bucket has a size limit (a
clear error when full), replicas and limits are never lowered by one service's
setting and are raised to it, and delete markers are purged after their retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import errors as js_errors

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import REASON_STORE_FULL
from corral.natsio import nats_internals
from corral.natsio.bus import (
    BUCKET_MAX_CONSUMERS,
    StoreSettings,
    bucket_stream,
    connect,
    ensure_streams,
    open_buckets,
)
from corral.natsio.kv import WATCH_INACTIVE_SECONDS
from tests.integration.scheduler_harness import deployment_json, request, running_scheduler
from tests.nats_cluster import NatsCluster, running_nats_cluster
from tests.waiting import eventually


async def test_a_full_bucket_answers_a_clear_error_and_the_scheduler_keeps_serving(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_KV_MAX_BYTES", "8192")
    async with running_scheduler(nats_url) as ctx:
        info = await ctx.js.stream_info(bucket_stream(names.DEPLOYMENTS_BUCKET))
        assert info.config.max_bytes == 8192
        replies = []
        for number in range(60):
            reply = await request(
                ctx.nc, "deployment", "apply", deployment_json(f"app-{number}", 1)
            )
            replies.append(reply)
            if not reply.ok:
                break
        full = replies[-1]
        assert not full.ok, "60 deployments fit in 8 KiB?"
        assert full.reason == REASON_STORE_FULL and full.retryable
        assert "state store is full" in full.error and "CORRAL_KV_MAX_BYTES" in full.error
        # Still serving: a delete (a small marker) and a read-only unchanged apply work.
        again = await request(ctx.nc, "deployment", "apply", deployment_json("app-0", 1))
        assert again.ok and again.unchanged


async def test_a_full_spec_stream_refuses_new_specs_and_keeps_the_old(nats_url: str) -> None:
    nc = await connect(nats_url, "test")
    try:
        js = nc.jetstream()
        await ensure_streams(js, StoreSettings(specs_max_bytes=4096))
        subject = names.spec_subject("deployment", "apply")
        first = await js.publish(subject, deployment_json("first", 1))
        with pytest.raises(js_errors.APIError) as refused:
            for number in range(100):
                await js.publish(subject, deployment_json(f"app-{number}", 1))
        assert "maximum bytes" in (refused.value.description or "")
        assert (await js.get_msg(names.SPEC_STREAM, first.seq)).data == deployment_json("first", 1)
    finally:
        await nc.close()


async def test_a_service_never_lowers_a_size_limit_and_raises_a_lower_one(nats_url: str) -> None:
    nc = await connect(nats_url, "test")
    try:
        js = nc.jetstream()
        big, small = (
            StoreSettings(bucket_max_bytes=4 << 20, specs_max_bytes=4 << 20),
            StoreSettings(bucket_max_bytes=1 << 20, specs_max_bytes=1 << 20),
        )
        await ensure_streams(js, big)
        await open_buckets(js, big)
        await ensure_streams(js, small)  # a service started with smaller settings
        await open_buckets(js, small)
        bucket = bucket_stream(names.NODES_BUCKET)
        assert (await js.stream_info(bucket)).config.max_bytes == 4 << 20
        assert (await js.stream_info(names.SPEC_STREAM)).config.max_bytes == 4 << 20
        larger = StoreSettings(bucket_max_bytes=8 << 20, specs_max_bytes=8 << 20)
        await ensure_streams(js, larger)
        await open_buckets(js, larger)
        assert (await js.stream_info(bucket)).config.max_bytes == 8 << 20
        assert (await js.stream_info(names.SPEC_STREAM)).config.max_bytes == 8 << 20
    finally:
        await nc.close()


async def test_delete_markers_are_purged_after_their_retention(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_KV_MARKER_RETENTION_SECONDS", "0.5")
    async with running_scheduler(nats_url) as ctx:
        assert (await request(ctx.nc, "deployment", "apply", deployment_json("gone", 1))).ok
        assert (await request(ctx.nc, "deployment", "apply", deployment_json("kept", 1))).ok
        assert (await request(ctx.nc, "deployment", "delete", encode({"name": "gone"}))).ok
        stream = bucket_stream(names.DEPLOYMENTS_BUCKET)

        async def subjects() -> set[str]:
            info = await ctx.js.stream_info(stream, subjects_filter=">")
            return set(info.state.subjects or {})

        left = await eventually(subjects, lambda found: not any("gone" in s for s in found))
        assert f"$KV.{names.DEPLOYMENTS_BUCKET}.default.kept" in left  # a live key keeps its value


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    async with running_nats_cluster(tmp_path) as cluster:
        yield cluster


# Buckets read with direct gets, a single key of which is also read from the leader.
READ_FROM_LEADER = (
    names.CLUSTER_BUCKET,
    names.NODES_BUCKET,
    names.PLACEMENTS_BUCKET,
    names.REPLICA_STATUS_BUCKET,
)


@pytest.mark.timeout(90)
async def test_replicas_are_never_lowered_by_a_service_and_buckets_are_raised(
    cluster: NatsCluster,
) -> None:
    nc = await connect(cluster.url, "test")
    try:
        js = nc.jetstream(timeout=15)
        await ensure_streams(js, StoreSettings(replicas=3))
        # buckets made R1 (an older setup): a key is read from its one server directly
        opened = await open_buckets(js, StoreSettings(replicas=1))
        assert all(opened[name]._direct_is_leader for name in READ_FROM_LEADER)
        # A service started without CORRAL_KV_REPLICAS=3 keeps the streams at R3 ...
        await ensure_streams(js, StoreSettings(replicas=1))
        for stream in (names.SPEC_STREAM, names.EVENTS_STREAM):
            assert (await js.stream_info(stream)).config.num_replicas == 3
        assert (await js.stream_info(bucket_stream(names.NODES_BUCKET))).config.num_replicas == 1
        # ... and one started with it raises the buckets to R3.
        opened = await open_buckets(js, StoreSettings(replicas=3))
        for bucket in names.ALL_BUCKETS:
            assert (await js.stream_info(bucket_stream(bucket))).config.num_replicas == 3
        # Any of three replicas answers a direct get, one behind too: a key read from
        # the leader is asked through the API (the agents' buckets read through it).
        for name in READ_FROM_LEADER:
            assert not opened[name]._direct_is_leader
        assert opened[names.CLUSTER_BUCKET]._leader is not None  # the leader asked by the API
        for name in READ_FROM_LEADER[1:]:  # the agents' buckets: every key through the API
            assert not nats_internals.key_value_direct(opened[name]._kv)
        await open_buckets(js, StoreSettings(replicas=1))
        assert (await js.stream_info(bucket_stream(names.NODES_BUCKET))).config.num_replicas == 3
    finally:
        await nc.close()


async def test_buckets_take_more_than_the_servers_default_of_1000_consumers(
    nats_url: str,
) -> None:
    """Every node agent watches its own placements: a consumer each. A store made before
    (max_consumers unset: the server's default caps it at 1,000) is raised too."""
    nc = await connect(nats_url, "test")
    try:
        js = nc.jetstream()
        await js.create_key_value(bucket=names.PLACEMENTS_BUCKET, history=5)
        stream = bucket_stream(names.PLACEMENTS_BUCKET)
        assert (await js.stream_info(stream)).config.max_consumers == -1
        buckets = await open_buckets(js, StoreSettings())
        for bucket in names.ALL_BUCKETS:
            info = await js.stream_info(bucket_stream(bucket))
            assert info.config.max_consumers == BUCKET_MAX_CONSUMERS, bucket
        kv = await js.key_value(names.PLACEMENTS_BUCKET)
        watchers = [await kv.watch(f"node-{n}.>") for n in range(1001)]
        assert (await js.stream_info(stream)).state.consumer_count == 1001
        for watcher in watchers:
            await watcher.stop()  # type: ignore[no-untyped-call]
        # A watch of corral's asks the server to drop its consumer soon after it stops.
        deployments = bucket_stream(names.DEPLOYMENTS_BUCKET)
        async for entry in buckets[names.DEPLOYMENTS_BUCKET].watch():
            if entry is None:
                consumers = await js.consumers_info(deployments)
                thresholds = [c.config.inactive_threshold for c in consumers]
                assert thresholds == [WATCH_INACTIVE_SECONDS]
                break
    finally:
        await nc.close()


async def test_services_starting_together_on_a_new_store_share_the_buckets_one_made(
    nats_url: str,
) -> None:
    """Two services find a bucket missing at once; the first makes it (and raises its
    limits), the second's create then meets a stream of another configuration: it opens
    that bucket instead of failing its start."""
    nc = await connect(nats_url, "test")
    try:
        js = nc.jetstream()
        await open_buckets(js, StoreSettings())  # the first service: every bucket made

        class LateLooker:
            """The second service: it looked before the first made the buckets."""

            def __getattr__(self, name: str) -> object:
                return getattr(js, name)

            async def stream_info(self, stream: str) -> object:
                if stream not in self.seen:
                    self.seen.add(stream)
                    raise js_errors.NotFoundError
                return await js.stream_info(stream)

            seen: set[str] = set()

        buckets = await open_buckets(LateLooker(), StoreSettings())  # type: ignore[arg-type]
        assert set(buckets) == set(names.ALL_BUCKETS)
        info = await js.stream_info(bucket_stream(names.PLACEMENTS_BUCKET))
        assert info.config.max_consumers == BUCKET_MAX_CONSUMERS
    finally:
        await nc.close()
