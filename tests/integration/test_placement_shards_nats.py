"""A cluster whose placements are split by node into shards (CORRAL_PLACEMENT_SHARDS),
against a real nats-server: the buckets are made and listed with the cluster, a lost
shard is refused, and the real scheduler places replicas on hollow nodes of every
shard, each node's in its own shard, told and watched there, and moved when a node
stops; the client reads them all."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import msgspec
import pytest

from corral.client.api import CorralClient
from corral.contract import names
from corral.contract.codec import encode
from corral.contract.state import Cluster, Placement
from corral.natsio import bus
from corral.natsio.bus import StoreSettings, open_buckets, open_cluster
from corral.natsio.cluster import (
    StateStoreLost,
    StoreInconsistent,
    cluster_buckets,
    lost_buckets,
)
from corral.natsio.kv import NatsBucket
from corral.natsio.sharded import shard_buckets
from corral_node_agent.membership import PlacementShardsChanged
from tests.integration.scheduler_harness import (
    deployment_json,
    placements,
    request,
    running_scheduler,
)
from tests.integration.test_cli_reads import corral
from tests.integration.test_cluster_hollow import running_on
from tests.integration.test_hollow_cluster import hollow_cluster
from tests.integration.test_state_store_loss import jetstream, streams
from tests.waiting import eventually

SHARDS = 4


async def test_a_cluster_keeps_the_shards_it_was_made_with_and_a_lost_one_is_refused(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with jetstream(nats_url) as js:
        monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", str(SHARDS))
        buckets, identity = await open_cluster(js)
        assert identity.placement_shards == SHARDS
        assert set(names.placements_buckets(SHARDS)) <= set(identity.buckets)
        assert set(names.placements_buckets(SHARDS)) <= set(buckets)
        present = await streams(js)
        assert {f"KV_{name}" for name in names.placements_buckets(SHARDS)} <= present
        # corral_placements is listed, never made: a corral from before shards looks for
        # it, finds it missing and listed, and refuses the store (StateStoreLost) rather
        # than read no placements from it.
        assert names.PLACEMENTS_FENCE in identity.buckets
        assert f"KV_{names.PLACEMENTS_BUCKET}" not in present
        assert lost_buckets(identity, [names.PLACEMENTS_BUCKET]) == [names.PLACEMENTS_BUCKET]
        # A service started with another setting opens the cluster's shards, and says so.
        monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", "1")
        with caplog.at_level(logging.WARNING, logger="corral.natsio.bus"):
            again, same = await open_cluster(js)
        assert same == identity and set(again) == set(buckets)
        assert "keeps its placements in 4 shard(s)" in caplog.text
        await js.delete_stream("KV_corral_placements_2")
        with pytest.raises(StateStoreLost, match="corral_placements_2"):
            await open_buckets(js)
        # Refused before anything was made again (an empty shard would remove replicas).
        present = await streams(js)
        assert "KV_corral_placements_2" not in present
        assert "KV_corral_placements_3" in present


async def test_a_service_that_loses_the_race_to_make_the_cluster_opens_the_winners_shards(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This service opens the buckets of a new store for one shard; before it makes the
    # identity, another makes the cluster with 4. It works with the cluster's 4.
    async with jetstream(nats_url) as js:
        monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", "1")
        made_first = bus.ensure_cluster_identity

        async def the_other_service_first(bucket: Any, placement_shards: int = 1) -> Cluster:
            other = StoreSettings(placement_shards=SHARDS)
            await open_buckets(js, other)  # its buckets, then its identity
            await made_first(bucket, SHARDS)
            return await made_first(bucket, placement_shards)

        monkeypatch.setattr(bus, "ensure_cluster_identity", the_other_service_first)
        buckets, cluster = await open_cluster(js)
        assert cluster.placement_shards == SHARDS
        assert set(names.placements_buckets(SHARDS)) <= set(buckets)
        # The corral_placements it made for one shard is gone: the fence holds (a corral
        # from before shards finds it missing).
        assert names.PLACEMENTS_BUCKET not in buckets
        assert f"KV_{names.PLACEMENTS_BUCKET}" not in await streams(js)


async def test_a_corral_placements_with_records_in_a_cluster_of_shards_is_refused(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with jetstream(nats_url) as js:
        monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", str(SHARDS))
        await open_cluster(js)
        # Made empty (a service that lost the race, then crashed): removed at the next start.
        await js.create_key_value(bucket=names.PLACEMENTS_BUCKET)
        await open_cluster(js)
        assert f"KV_{names.PLACEMENTS_BUCKET}" not in await streams(js)
        # Watched (a corral from before shards got past the fence): refused, kept.
        kv = await js.create_key_value(bucket=names.PLACEMENTS_BUCKET)
        watcher = await kv.watchall()
        with pytest.raises(StoreInconsistent, match="corral_placements that was written"):
            await open_cluster(js)
        await watcher.stop()
        # Written to, even if purged since: refused, kept.
        await kv.put("n1.default.web-1", b"{}")
        await js.purge_stream(f"KV_{names.PLACEMENTS_BUCKET}")
        with pytest.raises(StoreInconsistent, match="corral_placements that was written"):
            await open_cluster(js)
        assert f"KV_{names.PLACEMENTS_BUCKET}" in await streams(js)


@pytest.mark.parametrize("reused", [False, True], ids=["opened again", "setup's buckets"])
async def test_buckets_made_for_other_shards_than_the_clusters_are_removed(
    nats_url: str, reused: bool
) -> None:
    # A service starting on an empty store with 4 shards makes every bucket for 4; before
    # it makes the identity, another makes the cluster with one. The first one's shards
    # go (never used), as run_service opens them: buckets, then the cluster (from the
    # buckets its setup opened: the cluster's one shard is opened then).
    async with jetstream(nats_url) as js:
        made: list[str] = []
        four = StoreSettings(placement_shards=4)
        opened = await open_buckets(js, four, made=made)
        assert set(names.placements_buckets(4)) <= set(made)
        await open_cluster(js, StoreSettings(placement_shards=1))  # the other service
        buckets, cluster = await open_cluster(
            js, four, made=made, opened=opened if reused else None
        )
        assert cluster.placement_shards == 1
        assert set(buckets) == set(cluster_buckets(1))
        present = await streams(js)
        assert not {f"KV_{name}" for name in names.placements_buckets(4)} & present
        assert f"KV_{names.PLACEMENTS_BUCKET}" in present


async def test_a_store_without_identity_but_with_one_buckets_placements_is_not_sharded(
    nats_url: str,
) -> None:
    # A cluster of one shard that lost its identity: made again with 4 shards, its
    # placements would be in no shard. Refused before anything is made.
    async with jetstream(nats_url) as js:
        kv = await js.create_key_value(bucket=names.PLACEMENTS_BUCKET)
        await kv.put("n1.default.web-1", b"{}")
        with pytest.raises(StoreInconsistent, match="no cluster identity but has placements"):
            await open_cluster(js, StoreSettings(placement_shards=4))
        assert await streams(js) == {f"KV_{names.PLACEMENTS_BUCKET}"}


async def test_replicas_on_hollow_nodes_of_every_shard_run_are_told_and_move(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", str(SHARDS))
    async with (
        running_scheduler(nats_url) as scheduler,
        hollow_cluster(
            nats_url, 20, pool=6, ready_after=0.2, remove_after=0.1, passes_parallel=4
        ) as cluster,
    ):
        assert scheduler.cluster.placement_shards == SHARDS
        assert cluster.placement_shards == SHARDS
        shards = shard_buckets(scheduler.buckets, SHARDS)
        assert (await request(scheduler.nc, "deployment", "apply", deployment_json("web", 100))).ok

        async def running() -> dict[str, str]:
            return await running_on(scheduler.buckets, SHARDS)

        placed = await eventually(running, lambda r: len(r) == 100, within=30, interval=0.2)
        assert set(placed.values()) == set(cluster.nodes)  # every node took some
        # Each node's placements are in its own shard only, and every shard has some.
        for index, shard in enumerate(shards):
            nodes = {p.node for p in (await placements(shard)).values()}
            assert nodes, f"shard {index} holds no placements"
            assert {names.placement_shard(node, SHARDS) for node in nodes} == {index}
        # Each agent watches its own shard, and was told a revision of its keys there
        # that its watch delivered (the scheduler's acks read the node's shard).
        for name, node in cluster.nodes.items():
            assert node.agent._placements_bucket.name == names.placements_bucket_of(name, SHARDS)

        async def untold() -> list[str]:
            return [
                name
                for name, node in cluster.nodes.items()
                if not 0 < node.agent.watch_proof.mark() <= node.agent.placements.delivered
            ]

        await eventually(untold, lambda names_left: not names_left, within=10, interval=0.2)

        # A record in a shard that is not its node's is no placement, for the client too.
        home = names.placement_shard("hollow-5", SHARDS)
        one_of_its = placed_on_node(await placements(shards[home]), "hollow-5")[0]
        stray = msgspec.structs.replace(one_of_its, replica="stray")
        elsewhere = shards[(home + 1) % SHARDS]
        await elsewhere.put(names.placement_key("hollow-5", "default", "stray"), encode(stray))
        async with await CorralClient.connect(nats_url) as client:
            assert len(await client.placements()) == 100
            one = await client.placements("hollow-5")
            assert one and {p.node for p in one.values()} == {"hollow-5"}
            assert all(p.replica != "stray" for p in one.values())

        victim = "hollow-3"
        await cluster.stop_node(victim)
        moved = await eventually(
            running,
            lambda r: len(r) == 100 and victim not in r.values(),
            within=30,
            interval=0.2,
        )
        assert len(set(moved.values())) == 19


async def test_cluster_info_tells_the_cluster_and_how_its_placements_are_kept(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    none_yet = await corral(nats_url, "cluster-info")
    assert none_yet.exit_code == 1
    assert "no cluster at" in none_yet.output and "no corral service has started" in none_yet.output
    monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", "16")
    async with jetstream(nats_url) as js:
        _, identity = await open_cluster(js)
    shown = await corral(nats_url, "cluster-info")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"Cluster:    {identity.id}"
    assert lines[2] == f"NATS:       {nats_url}"
    assert lines[3] == (
        "Placements: 16 shards by node (corral_placements_0 ... corral_placements_15)"
    )
    document = json.loads((await corral(nats_url, "cluster-info", "-o", "json")).output)
    assert document["kind"] == "Cluster" and document["id"] == identity.id
    assert document["placementShards"] == 16
    assert document["placementBuckets"][-1] == "corral_placements_15"


def placed_on_node(found: dict[str, Placement], node: str) -> list[Placement]:
    return [placement for placement in found.values() if placement.node == node]


async def test_a_hollow_cluster_ends_when_its_cluster_changes_shards(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    # Its nodes read the old shards: the process ends (exit 1 from its main), to be
    # started again on the cluster's, and its nodes' containers are left running.
    cluster_bucket = buckets[names.CLUSTER_BUCKET]
    with pytest.raises(BaseExceptionGroup) as raised:
        async with hollow_cluster(nats_url, 2, name_prefix="sh-") as cluster:
            assert cluster.placement_shards == 1
            entry = await cluster_bucket.leader_get(names.CLUSTER_KEY)
            assert entry is not None and entry.value is not None
            identity = msgspec.json.decode(entry.value, type=Cluster)
            resharded = msgspec.structs.replace(identity, placement_shards=4)
            await cluster_bucket.update(names.CLUSTER_KEY, encode(resharded), entry.revision)
            with anyio.fail_after(15):
                await anyio.sleep_forever()
    changed, _ = raised.value.split(PlacementShardsChanged)
    assert changed is not None
