"""The placements split by node into shards (corral.natsio.sharded): each node's keys in
one bucket, read and written as one, each shard watched on its own; a cluster keeps the
number it was made with, and an agent acts on no store whose number is not its own."""

from __future__ import annotations

import zlib
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.state import Cluster, Placement
from corral.natsio.cluster import (
    UnreadableIdentity,
    buckets_to_list,
    cluster_buckets,
    ensure_cluster_identity,
    lost_buckets,
    read_cluster_identity,
)
from corral.natsio.kv import Create, Entry, MemoryBucket, write_many
from corral.natsio.sharded import ShardedBucket, ShardedMirror, node_placements_bucket
from corral_node_agent.local_record import LocalRecord, LocalRecordFile
from corral_node_agent.membership import Membership
from corral_node_agent.safety import Identity
from tests.unit.agent_helpers import placement
from tests.waiting import current, eventually

SHARDS = 4


def nodes_in_every_shard(shards: int = SHARDS) -> dict[int, str]:
    """A node name for each shard (the first of node-0, node-1, ... that lands there)."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < shards:
        found.setdefault(names.placement_shard(f"node-{index}", shards), f"node-{index}")
        index += 1
    return found


def shard_buckets_in_memory(shards: int = SHARDS) -> list[MemoryBucket]:
    return [MemoryBucket(name) for name in names.placements_buckets(shards)]


def key_of(node: str, replica: str) -> str:
    return names.placement_key(node, "default", replica)


def test_the_shard_of_a_node_is_the_same_everywhere_and_spreads_nodes() -> None:
    # crc32, not Python's hash(): every process (and every run) picks the same shard.
    assert zlib.crc32(b"node-1") == 0x13F21C5F
    assert names.placement_shard("node-1", 16) == 0x13F21C5F % 16 == 15
    assert names.placements_bucket_of("node-1", 16) == "corral_placements_15"
    assert names.placement_shard("hollow-7", 1) == 0
    counts = [0] * 16
    for index in range(1600):
        counts[names.placement_shard(f"hollow-{index}", 16)] += 1
    assert min(counts) >= 60  # about 100 each


def test_one_shard_is_the_one_bucket_of_before_and_shards_fence_it() -> None:
    assert names.placements_buckets(1) == (names.PLACEMENTS_BUCKET,)
    assert cluster_buckets(1) == buckets_to_list(1) == names.ALL_BUCKETS
    assert names.placements_buckets(3) == (
        "corral_placements_0",
        "corral_placements_1",
        "corral_placements_2",
    )
    made = cluster_buckets(3)
    assert names.PLACEMENTS_BUCKET not in made
    assert made[-3:] == names.placements_buckets(3)
    # Listed but never made: a corral from before shards finds it missing and refuses
    # the store, instead of reading an empty corral_placements.
    assert buckets_to_list(3) == (*made, names.PLACEMENTS_FENCE)
    identity = Cluster(id="c0ffee", buckets=list(buckets_to_list(3)), placement_shards=3)
    before_shards_finds_missing = [names.PLACEMENTS_BUCKET]
    assert lost_buckets(identity, before_shards_finds_missing) == [names.PLACEMENTS_BUCKET]


def test_a_shard_missing_is_lost_even_when_the_identity_does_not_list_it() -> None:
    # An identity edited by hand, or restored in part: its shards are its shards.
    identity = Cluster(id="c0ffee", buckets=list(names.ALL_BUCKETS), placement_shards=4)
    assert lost_buckets(identity, ["corral_placements_3", "corral_other"]) == [
        "corral_placements_3"
    ]


@pytest.mark.parametrize("bad", [0, -1, names.MAX_PLACEMENT_SHARDS + 1, "4", True, 2.0])
def test_a_bad_number_of_shards_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match="placement shards must be a whole number"):
        names.check_placement_shards(bad)


def test_the_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.natsio.bus import StoreSettings

    assert StoreSettings.from_env().placement_shards == 1
    monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", "16")
    assert StoreSettings.from_env().placement_shards == 16
    monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", "65")
    with pytest.raises(ValueError, match="CORRAL_PLACEMENT_SHARDS must be a whole number"):
        StoreSettings.from_env()


async def test_an_identity_made_now_keeps_its_shards_and_one_from_before_has_one() -> None:
    bucket = MemoryBucket(names.CLUSTER_BUCKET)
    made = await ensure_cluster_identity(bucket, 8)
    assert made.placement_shards == 8
    assert made.buckets == list(buckets_to_list(8))
    # Asked again with another number, the cluster keeps its own.
    assert (await ensure_cluster_identity(bucket, 2)).placement_shards == 8
    old = MemoryBucket(names.CLUSTER_BUCKET)
    old._write(names.CLUSTER_KEY, b'{"id": "c0ffee", "buckets": []}')
    found = await read_cluster_identity(old)
    assert found is not None and found.placement_shards == 1


async def test_an_identity_with_an_impossible_number_of_shards_is_unreadable() -> None:
    bucket = MemoryBucket(names.CLUSTER_BUCKET)
    bucket._write(names.CLUSTER_KEY, encode(Cluster(id="c0ffee", placement_shards=0)))
    with pytest.raises(UnreadableIdentity, match="placement shards"):
        await read_cluster_identity(bucket)


async def test_an_identity_listing_shards_but_saying_one_is_unreadable() -> None:
    # A corral from before shards that rewrote the identity drops the number it does
    # not know: read as one shard, every placement in the shards would be missed.
    bucket = MemoryBucket(names.CLUSTER_BUCKET)
    rewritten = Cluster(id="c0ffee", buckets=list(buckets_to_list(4)), placement_shards=1)
    bucket._write(names.CLUSTER_KEY, encode(rewritten))
    with pytest.raises(UnreadableIdentity, match="lists placement shards' buckets"):
        await read_cluster_identity(bucket)


async def test_reads_and_writes_go_to_the_shard_of_the_keys_node() -> None:
    buckets = shard_buckets_in_memory()
    sharded = ShardedBucket(buckets)
    nodes = nodes_in_every_shard()
    writes = [Create(key_of(node, f"r{shard}"), b"x") for shard, node in nodes.items()]
    outcomes = await write_many(sharded, writes)
    assert all(outcome.entry is not None for outcome in outcomes)
    for shard, node in nodes.items():
        assert list(buckets[shard].items) == [key_of(node, f"r{shard}")]
        # Each shard counts its own revisions: the first write of each is 1.
        assert buckets[shard].items[key_of(node, f"r{shard}")].revision == 1
        assert await sharded.get(key_of(node, f"r{shard}")) is not None
    assert node_placements_bucket({b.name: b for b in buckets}, SHARDS, nodes[2]) is buckets[2]


def test_a_watch_across_shards_is_refused() -> None:
    sharded = ShardedBucket(shard_buckets_in_memory())
    with pytest.raises(ValueError, match="would span shards"):
        sharded.watch(">")
    with pytest.raises(ValueError, match="would span shards"):
        sharded.watch("*.>")
    # One shard: the one bucket, watched whole as before.
    single = ShardedBucket(shard_buckets_in_memory(1))
    single.watch(">")


async def test_the_mirror_reads_every_shard_as_one_and_each_node_in_its_own() -> None:
    buckets = shard_buckets_in_memory()
    nodes = nodes_in_every_shard()
    changed: list[str] = []
    mirror = ShardedMirror(buckets, Placement, on_change=changed.append)
    for shard, node in nodes.items():
        for index in range(shard + 1):  # shard k gets k + 1 writes: revisions 1..k+1
            p = placement(f"web-{shard}-{index}", node=node)
            await buckets[shard].create(key_of(node, p.replica), encode(p))
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await tg.start(mirror.run)
        assert mirror.current
        assert len(mirror.items) == 1 + 2 + 3 + 4
        assert set(mirror.items) == set(changed)
        for shard, node in nodes.items():
            assert mirror.newest(node) == shard + 1  # its own shard's revisions
            assert mirror.shard_of_node(node) is mirror.shards[shard]
            key = key_of(node, f"web-{shard}-0")
            assert key in mirror.items
            got = mirror.get(key)
            assert got is not None and got.node == node
        # A write this process made is applied to its shard's mirror.
        node = nodes[3]
        p = placement("web-new", node=node)
        mirror.apply(Entry(key_of(node, "web-new"), encode(p), 9))
        assert mirror.shards[3].get(key_of(node, "web-new")) is not None
        assert mirror.newest(node) == 9
        assert mirror.newest(nodes[0]) == 1
        tg.cancel_scope.cancel()


class Recorded(LocalRecordFile):
    def __init__(self, record: LocalRecord | None) -> None:
        self.record = record

    def load(self) -> LocalRecord | None:
        return self.record

    def save(self, record: LocalRecord) -> None:
        self.record = record


def identity_bucket(cluster: Cluster) -> MemoryBucket:
    bucket = MemoryBucket(names.CLUSTER_BUCKET)
    bucket._write(names.CLUSTER_KEY, encode(cluster))
    return bucket


@pytest.mark.parametrize("local", [None, LocalRecord(node="n", cluster_id="c1")])
async def test_an_agent_acts_on_no_store_whose_placements_are_in_other_shards(
    local: LocalRecord | None,
) -> None:
    # A store made anew with another number of shards keeps this node's placements in
    # another bucket than the one the agent watches: an empty watch there would remove
    # every replica. Its containers are left alone until the agent starts again.
    membership = Membership(
        "n", identity_bucket(Cluster(id="c1", placement_shards=4)), Recorded(local), 1
    )
    await membership.check(from_leader=True)
    assert membership.identity == Identity.UNREADABLE
    assert "4 shard(s)" in membership.problem and "started again" in membership.problem
    same = Membership(
        "n", identity_bucket(Cluster(id="c1", placement_shards=4)), Recorded(local), 4
    )
    await same.check(from_leader=True)
    assert same.identity == Identity.RECOGNISED


async def test_adopting_a_store_of_other_shards_does_not_make_it_recognised(
    tmp_path: Path,
) -> None:
    from corral.contract.specs import NodeDecision

    local = Recorded(LocalRecord(node="n", cluster_id="0123456789abcdef"))
    membership = Membership(
        "n", identity_bucket(Cluster(id="fedcba9876543210", placement_shards=2)), local, 1
    )
    await membership.check(from_leader=True)
    assert membership.identity == Identity.MISMATCH

    async def remove_nothing(cluster: str) -> tuple[int, list[str]]:
        return 0, []

    decision = NodeDecision(node="n", cluster_id="0123456789abcdef")
    reply = await membership.decide("adopt", encode(decision), remove_nothing)
    assert reply.ok
    assert membership.identity == Identity.UNREADABLE
    assert "2 shard(s)" in membership.problem
    assert membership.shards_changed == membership.problem  # the agent then stops


async def test_a_key_in_another_nodes_shard_is_no_placement() -> None:
    # Written by hand, or by a writer that routes otherwise: no agent watches it there,
    # so it is read as absent everywhere (and what it would have placed is placed again).
    buckets = shard_buckets_in_memory()
    nodes = nodes_in_every_shard()
    changed: list[str] = []
    mirror = ShardedMirror(buckets, Placement, on_change=changed.append)
    right = key_of(nodes[1], "right")
    wrong = key_of(nodes[1], "wrong")
    await buckets[1].create(right, encode(placement("right", node=nodes[1])))
    await buckets[2].create(wrong, encode(placement("wrong", node=nodes[1])))
    await buckets[3].create(right, encode(placement("right", node=nodes[1])))  # a copy
    await buckets[0].create(right, encode(placement("right", node=nodes[1])))  # another
    await buckets[2].create(key_of(nodes[1], "bad"), b"{not json")
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await tg.start(mirror.run)
        assert list(mirror.items) == [right]
        assert len(mirror.items) == 1
        assert [p.replica for p in mirror.values()] == ["right"]
        assert mirror.get(wrong) is None and wrong not in mirror.items
        assert changed == [right]
        assert mirror.unreadable == frozenset()
        bad = key_of(nodes[1], "bad")
        assert mirror.misplaced == {(2, wrong), (2, bad), (3, right), (0, right)}
        await buckets[2].delete(wrong)
        await buckets[3].delete(right)
        await eventually(
            lambda: current(set(mirror.misplaced)), lambda m: m == {(2, bad), (0, right)}
        )
        assert list(mirror.items) == [right] and len(mirror.items) == 1
        assert changed == [right]
        tg.cancel_scope.cancel()


def test_cluster_info_says_how_the_placements_are_kept() -> None:
    from corral.client.cli.cluster_commands import identity_table, placements_line

    assert placements_line(1) == "1 bucket (corral_placements)"
    assert placements_line(2) == "2 shards by node (corral_placements_0 ... corral_placements_1)"
    table = identity_table(Cluster(id="c0ffee", created_at=0.0, buckets=["a", "b"]), "nats://x")
    assert table.splitlines() == [
        "Cluster:    c0ffee",
        "Made:       1970-01-01 00:00:00 UTC",
        "NATS:       nats://x",
        "Placements: 1 bucket (corral_placements)",
        f"Buckets:    {len(names.ALL_BUCKETS)}",
    ]


async def test_an_agent_whose_cluster_changes_shards_stops_and_leaves_its_containers() -> None:
    # The cluster's identity says 4 shards while the agent runs on 1 (as after `corral
    # node adopt` of a store made anew with 4): this node's placements are in another
    # bucket. The agent removes nothing and exits (a supervisor starts it again, on the
    # cluster's shards).
    from corral_node_agent.membership import PlacementShardsChanged
    from tests.unit.agent_helpers import CLUSTER_ID
    from tests.unit.test_agent_loop import IMAGE, a_world

    world = a_world()
    await world.place(placement("web-1", IMAGE))
    with pytest.raises(BaseExceptionGroup) as raised:
        async with anyio.create_task_group() as tg:
            await tg.start(world.agent().run)
            await eventually(lambda: current(len(world.runtime.running())), lambda n: n == 1)
            made_anew = Cluster(id=CLUSTER_ID, placement_shards=4)
            world.cluster._write(names.CLUSTER_KEY, encode(made_anew))
            with anyio.fail_after(5):
                await anyio.sleep_forever()
    (stopped,) = leaves(raised.value)
    assert isinstance(stopped, PlacementShardsChanged)
    assert "keeps its placements in 4 shard(s)" in str(stopped)
    assert len(world.runtime.running()) == 1  # left running


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]
