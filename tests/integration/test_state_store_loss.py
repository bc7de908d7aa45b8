"""A store that lost one of its buckets is refused, never made again empty (an empty
placements bucket would make every agent remove every replica): the cluster identity
lists the buckets the cluster's state has. A new or wholly wiped store still starts,
and a bucket a newer corral adds is made and listed, by two services at once too."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import errors as js_errors

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.state import Cluster
from corral.natsio import nats_internals
from corral.natsio.bus import StoreSettings, bucket_stream, connect, open_buckets, open_cluster
from corral.natsio.cluster import StateStoreLost, read_cluster_identity
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext, run_idle, run_service
from corral_node_agent.main import AGENT_BUCKETS, buckets_used
from corral_node_agent.main import build_parser as agent_parser
from corral_node_agent.main import run as agent_run
from tests.agents import running_agent

PLACEMENTS_STREAM = bucket_stream(names.PLACEMENTS_BUCKET)


def service_args(url: str) -> argparse.Namespace:
    return argparse.Namespace(nats=[url], metrics_host="127.0.0.1", metrics_port=None)


@asynccontextmanager
async def service(url: str) -> AsyncIterator[ServiceContext]:
    """A service joined to the cluster (what every corral service does at start)."""
    async with anyio.create_task_group() as tg:
        ctx: ServiceContext = await tg.start(
            partial(run_service, "netmgr", run_idle, service_args(url))
        )
        try:
            yield ctx
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    nc = await connect(url, name="test")
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def api_requests(nc: NATS) -> list[str]:
    """The subjects of the JetStream API requests anyone makes from now on (a copy of
    each reaches this subscription)."""
    asked: list[str] = []

    async def note(msg: Msg) -> None:
        asked.append(msg.subject)

    await nc.subscribe("$JS.API.>", cb=note)
    await nc.flush()
    return asked


async def streams(js: JetStreamContext) -> set[str]:
    return {info.config.name or "" for info in await js.streams_info()}


async def identity_of(js: JetStreamContext) -> Cluster | None:
    kv = await js.key_value(names.CLUSTER_BUCKET)
    return await read_cluster_identity(NatsBucket(kv, names.CLUSTER_BUCKET))


@pytest.mark.parametrize("made_by", ["this corral", "a corral before the bucket list"])
async def test_a_service_refuses_a_store_that_lost_its_placements_and_makes_nothing(
    nats_url: str, made_by: str
) -> None:
    async with service(nats_url) as first:
        cluster = first.cluster
    async with jetstream(nats_url) as js:
        assert cluster.buckets == list(names.ALL_BUCKETS)
        if made_by != "this corral":  # an identity without the list: every bucket existed
            kv = await js.key_value(names.CLUSTER_BUCKET)
            await kv.put(names.CLUSTER_KEY, encode(Cluster(id=cluster.id, created_at=1.0)))
        await js.delete_stream(PLACEMENTS_STREAM)
        before = await streams(js)

        with pytest.raises(StateStoreLost) as refused:
            await run_service("netmgr", run_idle, service_args(nats_url))
        assert str(refused.value) == (
            f"the state store lost bucket {names.PLACEMENTS_BUCKET} of cluster {cluster.id}: "
            "corral will not recreate it empty, which would remove every replica; restore "
            "it from a backup, or start a new cluster with an empty store"
        )
        assert await streams(js) == before  # nothing made: no empty placements bucket
        with pytest.raises(js_errors.NotFoundError):
            await js.stream_info(PLACEMENTS_STREAM)
        identity = await identity_of(js)
        assert identity is not None and identity.id == cluster.id


async def test_the_service_process_says_which_buckets_were_lost_and_exits_1(
    nats_url: str,
) -> None:
    async with service(nats_url) as first:
        cluster = first.cluster
    async with jetstream(nats_url) as js:
        await js.delete_stream(PLACEMENTS_STREAM)
        await js.delete_stream(bucket_stream(names.DEPLOYMENTS_BUCKET))
    command = [str(Path(sys.executable).parent / "corral-netmgr"), "--nats", nats_url]
    result = await anyio.to_thread.run_sync(
        partial(subprocess.run, [*command, "--metrics-port", "-1"], capture_output=True, text=True)
    )
    assert result.returncode == 1, result.stderr
    assert (
        f"netmgr refuses to start: the state store lost buckets {names.DEPLOYMENTS_BUCKET}, "
        f"{names.PLACEMENTS_BUCKET} of cluster {cluster.id}: corral will not recreate it"
    ) in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_new_and_a_wholly_wiped_store_start_with_a_new_identity_listing_every_bucket(
    nats_url: str,
) -> None:
    async with service(nats_url) as first:
        assert first.cluster.buckets == list(names.ALL_BUCKETS)
    async with jetstream(nats_url) as js:
        for bucket in names.ALL_BUCKETS:  # the whole store lost, identity included
            await js.delete_stream(bucket_stream(bucket))
    async with service(nats_url) as again:
        assert again.cluster.id != first.cluster.id  # node agents then hold (safety.md)
        assert again.cluster.buckets == list(names.ALL_BUCKETS)
        assert set(again.buckets) == set(names.ALL_BUCKETS)


async def test_a_bucket_the_identity_does_not_list_is_made_and_listed_by_two_services_at_once(
    nats_url: str,
) -> None:
    async with service(nats_url) as first:
        cluster = first.cluster
    older = [bucket for bucket in names.ALL_BUCKETS if bucket != names.LEASES_BUCKET]
    async with jetstream(nats_url) as js:
        # The cluster was made by a corral that had no leases bucket yet.
        kv = await js.key_value(names.CLUSTER_BUCKET)
        await kv.put(names.CLUSTER_KEY, encode(Cluster(id=cluster.id, buckets=older)))
        await js.delete_stream(bucket_stream(names.LEASES_BUCKET))
        opened: list[dict[str, NatsBucket]] = []

        async def open_once() -> None:
            opened.append(await open_buckets(js))

        async with anyio.create_task_group() as tg:
            tg.start_soon(open_once)
            tg.start_soon(open_once)
        assert len(opened) == 2
        assert (await js.stream_info(bucket_stream(names.LEASES_BUCKET))).config.name
        identity = await identity_of(js)
        assert identity is not None and identity.id == cluster.id
        assert identity.buckets == [*older, names.LEASES_BUCKET]
        # From now on the leases bucket is the cluster's: losing it is refused too.
        await js.delete_stream(bucket_stream(names.LEASES_BUCKET))
        with pytest.raises(StateStoreLost, match=f"lost bucket {names.LEASES_BUCKET} "):
            await open_buckets(js)


async def test_the_identity_is_read_by_direct_get_and_not_found_is_asked_of_the_leader(
    nats_url: str,
) -> None:
    """Every agent reads the identity every few seconds: direct gets keep those reads
    off the JetStream API's queue. What a direct get does not find (a key not there, a
    stream deleted: no replica answers) is asked again through the API, so a wiped
    store still reads as one without an identity, as before."""
    async with service(nats_url) as first:
        cluster = first.cluster
    stream = bucket_stream(names.CLUSTER_BUCKET)
    nc = await connect(nats_url, name="test-requests")
    asked: list[str] = []  # the reads' request subjects, direct or through the API
    request = nc.request

    async def noting_request(subject: str, *args: Any, **kwargs: Any) -> Msg:
        if subject.startswith((f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}")):
            asked.append("direct" if ".DIRECT." in subject else "api")
        return await request(subject, *args, **kwargs)

    nc.request = noting_request  # type: ignore[method-assign]
    try:
        js = nc.jetstream()
        assert (await js.stream_info(stream)).config.allow_direct
        bucket = NatsBucket(await js.key_value(names.CLUSTER_BUCKET), names.CLUSTER_BUCKET)
        found = await read_cluster_identity(bucket)
        assert found is not None and found.id == cluster.id
        assert asked == ["direct"]
        assert await bucket.get("not-there") is None
        assert asked == ["direct", "direct", "api"]
        await js.delete_stream(stream)  # wiped: no replica answers a direct get
        assert await read_cluster_identity(bucket) is None
        assert asked == ["direct", "direct", "api", "direct", "api"]
    finally:
        await nc.close()


async def test_on_a_stream_of_one_replica_a_key_is_read_from_its_leader_by_direct_get(
    nats_url: str,
) -> None:
    """On a store of one server (the embedded default) a stream's direct gets are its
    leader's answers: a service's reads of single keys, those from the leader too (the
    identity, an agent's Node record and placements, a status), ask nothing of the
    JetStream API's queue, where each request waiting costs nats-server at every watch's
    end (bench/README.md). Only a get nobody answers (the stream deleted) is asked
    through the API, which tells a wiped store."""
    async with service(nats_url):
        pass  # the store made, as the first service makes it
    nc = await connect(nats_url, name="test-requests")
    asked: list[str] = []  # the reads' request subjects (a subscriber to them would answer)
    request = nc.request

    async def noting_request(subject: str, *args: Any, **kwargs: Any) -> Msg:
        if subject.startswith(("$JS.API.DIRECT.GET.", "$JS.API.STREAM.MSG.GET.")):
            asked.append(subject)
        return await request(subject, *args, **kwargs)

    nc.request = noting_request  # type: ignore[method-assign]
    try:
        js = nc.jetstream()
        buckets = await open_buckets(js)
        read = [
            names.CLUSTER_BUCKET,
            names.NODES_BUCKET,
            names.PLACEMENTS_BUCKET,
            names.REPLICA_STATUS_BUCKET,
        ]
        revision = await buckets[names.NODES_BUCKET].put("n1", b"{}")
        asked.clear()
        for name in read:
            assert await buckets[name].get("not-there") is None
            assert await buckets[name].leader_get("not-there") is None
        found = await buckets[names.NODES_BUCKET].leader_get("n1")
        assert found is not None and found.revision == revision
        assert await read_cluster_identity(buckets[names.CLUSTER_BUCKET], from_leader=True)
        assert len(asked) == 2 * len(read) + 2
        assert all(".DIRECT.GET." in subject for subject in asked), asked
        asked.clear()
        await js.delete_stream(bucket_stream(names.NODES_BUCKET))  # wiped: nobody answers
        assert await buckets[names.NODES_BUCKET].leader_get("n1") is None
        assert [subject.split(".")[2:4] for subject in asked] == [
            ["DIRECT", "GET"],
            ["STREAM", "MSG"],
        ]
        # With more replicas a replica behind could answer: from the leader through the
        # API, as before (the stream's configuration as a cluster of three has it).
        config = (await js.stream_info(bucket_stream(names.CLUSTER_BUCKET))).config
        config.num_replicas = 3
        cluster = buckets[names.CLUSTER_BUCKET]
        replicated = NatsBucket(cluster._kv, names.CLUSTER_BUCKET, stream=config)
        asked.clear()
        assert await replicated.leader_get("not-there") is None
        assert await replicated.get("not-there") is None
        assert [subject.split(".")[2] for subject in asked] == ["STREAM", "DIRECT", "STREAM"]
    finally:
        await nc.close()


async def test_a_service_starting_on_a_store_that_has_everything_asks_once_per_bucket(
    nats_url: str,
) -> None:
    """A service's start (every node agent's too) reads each bucket's stream once and
    changes no stream that is as it should be: a cluster whose agents all start at once
    asks nats-server's JetStream API (which queues at most 10,000 requests) little. It
    read each twice in each of two passes, and updated the events stream every time."""
    async with service(nats_url):
        pass  # the store made, as the first service makes it
    nc = await connect(nats_url, name="test-requests")
    asked = await api_requests(nc)
    try:
        async with service(nats_url) as ctx:
            await nc.flush()
            assert set(ctx.buckets) == set(names.ALL_BUCKETS)
            infos = [s.removeprefix("$JS.API.STREAM.INFO.") for s in asked if ".STREAM.INFO." in s]
            every_stream = [bucket_stream(b) for b in names.ALL_BUCKETS]
            assert sorted(infos) == sorted([*every_stream, names.SPEC_STREAM, names.EVENTS_STREAM])
            assert not [s for s in asked if ".STREAM.UPDATE." in s or ".STREAM.CREATE." in s]
            # the buckets read with direct gets still are (their streams' allow_direct)
            cluster = ctx.buckets[names.CLUSTER_BUCKET]
            assert isinstance(cluster, NatsBucket) and cluster._leader is not None
            for bucket in ctx.buckets.values():  # through the service's context, not setup's
                assert isinstance(bucket, NatsBucket)
                assert nats_internals.key_value_jetstream(bucket._kv) is ctx.js
                if bucket._leader is not None:
                    assert nats_internals.key_value_jetstream(bucket._leader) is ctx.js
            placements = ctx.buckets[names.PLACEMENTS_BUCKET]
            assert isinstance(placements, NatsBucket)  # one replica: its leader's direct gets
            assert nats_internals.key_value_direct(placements._kv)
            assert placements._direct_is_leader
    finally:
        await nc.close()


async def test_a_bucket_raised_at_start_is_read_as_raised(nats_url: str) -> None:
    """An older store's cluster bucket without direct gets is raised at start, and the
    bucket the service uses reads with them (from the stream's configuration after the
    raise, not the one read before it)."""
    async with service(nats_url):
        pass
    async with jetstream(nats_url) as js:
        stream = bucket_stream(names.CLUSTER_BUCKET)
        config = (await js.stream_info(stream)).config
        config.allow_direct = False
        await js.update_stream(config)
        buckets = await open_buckets(js)
        assert (await js.stream_info(stream)).config.allow_direct
        assert buckets[names.CLUSTER_BUCKET]._leader is not None  # direct, the leader after


async def test_a_stream_named_as_a_bucket_that_is_no_bucket_is_refused_before_anything_is_made(
    nats_url: str,
) -> None:
    async with jetstream(nats_url) as js:
        await js.add_stream(name=bucket_stream(names.SERVICES_BUCKET), subjects=["not.kv.>"])
        with pytest.raises(js_errors.BadBucketError):
            await open_buckets(js)
        assert await streams(js) == {bucket_stream(names.SERVICES_BUCKET)}


async def test_an_agent_on_a_store_that_has_every_bucket_opens_only_those_it_reads(
    nats_url: str,
) -> None:
    """A node agent's start reads the streams of its own buckets only (a dozen fewer
    requests per agent when a whole cluster starts); it needs no bucket it does not read,
    so one lost that it does not read is not its to refuse (the services that read it
    refuse the store), while one it reads is."""
    async with service(nats_url):
        pass  # the store made, every bucket listed
    nc = await connect(nats_url, name="test-requests")
    asked = await api_requests(nc)
    used = buckets_used(agent_parser().parse_args(["--node-name", "n1"]), 1)
    try:
        async with running_agent(nats_url, "n1", "--runtime", "hollow") as ctx:
            await nc.flush()
            assert set(ctx.buckets) == used
            infos = {s.removeprefix("$JS.API.STREAM.INFO.") for s in asked if ".STREAM.INFO." in s}
            assert infos == {bucket_stream(b) for b in used} | {
                names.SPEC_STREAM,
                names.EVENTS_STREAM,
            }
        async with jetstream(nats_url) as js:
            await js.delete_stream(bucket_stream(names.SERVICES_BUCKET))  # not the agent's
        async with running_agent(nats_url, "n1", "--runtime", "hollow") as ctx:
            assert set(ctx.buckets) == used
        with pytest.raises(StateStoreLost, match=f"lost bucket {names.SERVICES_BUCKET} "):
            await run_service("netmgr", run_idle, service_args(nats_url))  # it reads it
        async with jetstream(nats_url) as js:
            await js.delete_stream(bucket_stream(names.NODES_BUCKET))  # the agent's own
        args = agent_parser().parse_args(
            ["--nats", nats_url, "--node-name", "n1", "--runtime", "hollow"]
        )
        with pytest.raises(StateStoreLost, match=f"lost bucket {names.NODES_BUCKET} "):
            await run_service("node-agent", agent_run, args, uses=buckets_used)
    finally:
        await nc.close()


async def test_an_agent_first_on_a_new_store_makes_every_bucket(nats_url: str) -> None:
    async with running_agent(nats_url, "n1", "--runtime", "hollow") as ctx:
        used = buckets_used(agent_parser().parse_args(["--node-name", "n1"]), 1)
        assert set(ctx.buckets) == used
        async with jetstream(nats_url) as js:
            assert {bucket_stream(b) for b in names.ALL_BUCKETS} <= await streams(js)
            identity = await identity_of(js)
            assert identity is not None and set(names.ALL_BUCKETS) <= set(identity.buckets)


async def test_an_agent_of_a_cluster_of_shards_opens_its_own_shard(nats_url: str) -> None:
    async with jetstream(nats_url) as js:
        await open_cluster(js, StoreSettings(placement_shards=4))  # the store, made
    async with running_agent(nats_url, "n2", "--runtime", "hollow") as ctx:
        assert ctx.cluster.placement_shards == 4
        shard = names.placements_bucket_of("n2", 4)
        assert shard != names.placements_buckets(4)[0]
        assert set(ctx.buckets) == {*AGENT_BUCKETS, shard}


async def test_an_agent_on_a_store_missing_a_newer_bucket_makes_and_lists_it(
    nats_url: str,
) -> None:
    """A store from a corral before a bucket was added: the agent, on this corral, is the
    first service to start, and makes and lists it as any service does."""
    async with service(nats_url) as first:
        cluster = first.cluster
    async with jetstream(nats_url) as js:
        await js.delete_stream(bucket_stream(names.LEASES_BUCKET))
        older = [name for name in names.ALL_BUCKETS if name != names.LEASES_BUCKET]
        kv = await js.key_value(names.CLUSTER_BUCKET)
        await kv.put(names.CLUSTER_KEY, encode(msgspec.structs.replace(cluster, buckets=older)))
        async with running_agent(nats_url, "n1", "--runtime", "hollow"):
            assert bucket_stream(names.LEASES_BUCKET) in await streams(js)
            identity = await identity_of(js)
            assert identity is not None and identity.buckets == [*older, names.LEASES_BUCKET]
