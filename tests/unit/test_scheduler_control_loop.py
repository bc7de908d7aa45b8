"""The control loop on in-memory buckets and a clock of the test's own: a view is
fresh only while every watch liveness depends on brings its echo back, releases,
and nothing kept for what is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Reply
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import Node, NodeCapacity, OrphanReplica
from corral.contract.time_budget import NODE_LOST_AFTER_STOP_SECONDS, NODE_LOST_SECONDS
from corral.natsio.cluster import cluster_buckets
from corral.natsio.kv import MemoryBucket, echo_key, write_record
from corral_scheduler import metrics
from corral_scheduler.control_loop import ECHO_GC_SECONDS, ControlLoop
from corral_scheduler.node_api import NodeAPI, NodeRelease, release_key
from tests.waiting import current as _value
from tests.waiting import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StallingBucket(MemoryBucket):
    """Writes land, but while `stalled` its watches hear nothing (a stalled consumer)."""

    stalled = False

    def _write(self, key: str, value: bytes | None) -> int:
        if not self.stalled:
            return super()._write(key, value)
        watchers, self._watchers = self._watchers, []
        try:
            return super()._write(key, value)
        finally:
            self._watchers = watchers


class Cluster:
    def __init__(self, placement_shards: int = 1) -> None:
        self.clock = Clock()
        self.buckets = {name: StallingBucket(name) for name in cluster_buckets(placement_shards)}
        self.loop = ControlLoop(
            dict(self.buckets),
            None,
            monotonic=self.clock,
            wall_clock=lambda: 1.0,
            placement_shards=placement_shards,
        )
        # What each node's record lists as orphans (written with every heartbeat).
        self.orphans: dict[str, list[OrphanReplica]] = {}

    @property
    def nodes(self) -> StallingBucket:
        return self.buckets[names.NODES_BUCKET]

    @property
    def placements(self) -> StallingBucket:
        return self.buckets[names.PLACEMENTS_BUCKET]

    async def heartbeat(self, name: str) -> None:
        node = Node(
            name=name,
            capacity=NodeCapacity(cpu_millis=4000, memory_bytes=2**33),
            orphans=self.orphans.get(name, []),
        )
        entry = await self.nodes.get(name)
        await write_record(self.nodes, name, node, None if entry is None else entry.revision)

    async def apply(self, name: str, replicas: int, replacement: str = "Fast") -> None:
        deployment = Deployment(
            metadata=ObjectMeta(name=name, generation=1),
            spec=DeploymentSpec(
                replicas=replicas,
                template=ContainerTemplate(image="app:1"),
                replacement=replacement,  # type: ignore[arg-type]
            ),
        )
        await self.buckets[names.DEPLOYMENTS_BUCKET].put(deployment.key, encode(deployment))

    async def echo(self) -> None:
        """Write the echoes and wait until those whose watch is not stalled are back."""
        await self.loop.echo_once()
        for mirror, key in self.loop.echo_watches:
            if not getattr(mirror.bucket, "stalled", False):
                await eventually(
                    lambda m=mirror, k=key: _value(m.echo_age(k)), lambda a: a == 0, interval=0.001
                )

    async def tick(self, seconds: float, *, beating: tuple[str, ...] = ()) -> None:
        """Let `seconds` pass in one-second steps: the nodes in `beating` heartbeat, the
        loop echoes and runs a pass at each."""
        for _ in range(int(seconds)):
            self.clock.now += 1
            for name in beating:
                await self.heartbeat(name)
            await self.echo()
            await self.loop.run_pass()

    def placed_on(self) -> list[str]:
        return sorted(p.node for p in self.loop.placements.values())


@asynccontextmanager
async def running(placement_shards: int = 1) -> AsyncIterator[Cluster]:
    cluster = Cluster(placement_shards)
    async with anyio.create_task_group() as tg:
        await cluster.loop.start(tg, echoes=False)
        try:
            yield cluster
        finally:
            tg.cancel_scope.cancel()


async def placed_and_running(cluster: Cluster, *nodes: str) -> None:
    for name in nodes:
        await cluster.heartbeat(name)
    await cluster.tick(1, beating=nodes)
    await eventually(lambda: _value(len(cluster.loop.placements.items)), lambda n: n > 0)


# --- finding 4: every watch a judgement depends on must be fresh -----------------------


async def test_a_stalled_nodes_watch_judges_no_node_lost_while_other_echoes_flow() -> None:
    async with running() as cluster:
        await cluster.apply("web", 2)
        await placed_and_running(cluster, "a", "b")
        assert cluster.placed_on() == ["a", "b"]
        cluster.nodes.stalled = True  # heartbeats land, the nodes watch hears nothing
        await cluster.tick(3 * NODE_LOST_SECONDS, beating=("a", "b"))
        assert cluster.placed_on() == ["a", "b"]
        assert cluster.loop.feed_fresh_since is None
        # the watch recovers: the nodes are heard, and nothing was lost meanwhile
        cluster.nodes.stalled = False
        await cluster.tick(2 * NODE_LOST_SECONDS, beating=("a", "b"))
        assert cluster.loop.feed_fresh_since is not None
        assert cluster.placed_on() == ["a", "b"]
        # and a node that really falls silent is still judged lost on a fresh view
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=("b",))
        assert cluster.placed_on() == ["b", "b"]


async def test_a_stalled_placements_watch_makes_the_view_stale_too() -> None:
    async with running() as cluster:
        await cluster.apply("web", 1)
        await placed_and_running(cluster, "a")
        assert cluster.loop.update_feed(cluster.clock.now)
        cluster.placements.stalled = True
        await cluster.tick(4, beating=("a",))
        assert not cluster.loop.update_feed(cluster.clock.now)


async def test_a_broken_watch_makes_the_view_stale_at_once() -> None:
    async with running() as cluster:
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        assert cluster.loop.update_feed(cluster.clock.now)
        cluster.loop.releases._broke(ConnectionError("consumer lost"))
        assert not cluster.loop.update_feed(cluster.clock.now)


async def test_a_watch_restarting_is_no_sign_of_life_of_a_silent_node() -> None:
    async with running() as cluster:
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        seen = cluster.loop.node_last_seen["a"]
        cluster.clock.now += 3
        record = await cluster.nodes.get("a")
        assert record is not None
        cluster.loop.nodes.apply(record, from_watch=True)  # a replay: same revision
        assert cluster.loop.node_last_seen["a"] == seen


# --- AfterStop and release -------------------------------------------------------------


async def release(cluster: Cluster, node: str, *, force: bool = False) -> Reply:
    payload = {"name": node, "force": True} if force else {"name": node}
    return await NodeAPI(cluster.loop, None).release(encode(payload))


async def test_after_stop_replicas_wait_for_r_prime_unless_the_node_is_released() -> None:
    async with running() as cluster:
        await cluster.apply("db", 1, replacement="AfterStop")
        await placed_and_running(cluster, "a")
        await cluster.heartbeat("b")
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=("b",))  # a falls silent
        assert cluster.placed_on() == ["a"]  # a Fast Deployment would have moved by now
        reply = await release(cluster, "a", force=True)
        assert reply.ok, reply
        await cluster.tick(1, beating=("b",))
        assert cluster.placed_on() == ["b"]
        assert await cluster.nodes.get("a") is None  # the node is forgotten


async def test_after_stop_replicas_move_after_r_prime_of_silence() -> None:
    async with running() as cluster:
        await cluster.apply("db", 1, replacement="AfterStop")
        await placed_and_running(cluster, "a")
        await cluster.heartbeat("b")
        await cluster.tick(NODE_LOST_AFTER_STOP_SECONDS - 1, beating=("b",))
        assert cluster.placed_on() == ["a"]
        await cluster.tick(3, beating=("b",))
        assert cluster.placed_on() == ["b"]


async def test_a_node_whose_after_stop_replicas_may_still_run_is_released_only_with_force() -> None:
    async with running() as cluster:
        await cluster.apply("db", 1, replacement="AfterStop")
        await cluster.apply("web", 1)  # Fast: never a reason to wait
        await placed_and_running(cluster, "a")
        await cluster.heartbeat("b")
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=("b",))  # a is silent R + 2
        refused = await release(cluster, "a")
        assert not refused.ok and refused.field == "force"
        wait = int(NODE_LOST_AFTER_STOP_SECONDS - (NODE_LOST_SECONDS + 2))
        assert refused.error.startswith(
            "node 'a' has replicas that must never run twice (AfterStop Deployments or "
            "containers: db) that may still run"
        )
        assert f"wait {wait} s more" in refused.error and "--force" in refused.error
        assert await cluster.nodes.get("a") is not None and not cluster.loop.releases.items
        assert sorted(p.deployment for p in cluster.loop.placements.values() if p.node == "a") == [
            "db"
        ]  # web has moved (Fast); db stays until R' or a forced release
        assert (await release(cluster, "a", force=True)).ok
        await cluster.tick(1, beating=("b",))
        assert cluster.placed_on() == ["b", "b"]


@pytest.mark.parametrize("replacement", ["Fast", "AfterStop"])
async def test_a_node_is_released_without_force_when_no_after_stop_replica_can_run_there(
    replacement: str,
) -> None:
    async with running() as cluster:
        await cluster.apply("db", 1, replacement=replacement)
        await placed_and_running(cluster, "a")
        await cluster.heartbeat("b")
        # Fast: released after R; AfterStop: after R', when its agent surely stopped them.
        silent = NODE_LOST_SECONDS + 2 if replacement == "Fast" else NODE_LOST_AFTER_STOP_SECONDS
        await cluster.tick(silent + 1, beating=("b",))
        reply = await release(cluster, "a")
        assert reply.ok, reply


async def test_a_live_node_cannot_be_released() -> None:
    async with running() as cluster:
        await cluster.apply("web", 1)
        await placed_and_running(cluster, "a")
        reply = await release(cluster, "a")
        assert not reply.ok and reply.field == "name"
        assert "node 'a' is alive" in reply.error and "stop its node agent" in reply.error
        assert await cluster.nodes.get("a") is not None
        assert not cluster.loop.releases.items


async def test_release_is_refused_while_the_view_is_stale_and_for_unknown_nodes() -> None:
    async with running() as cluster:
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        cluster.nodes.stalled = True
        await cluster.tick(NODE_LOST_SECONDS + 2)
        reply = await release(cluster, "a")
        assert not reply.ok and "not current" in reply.error
        missing = await release(cluster, "nope")
        assert not missing.ok and "node 'nope' not found" in missing.error
        bad = await NodeAPI(cluster.loop, None).release(b'{"name": "Not_A_Label"}')
        assert not bad.ok and bad.field == "name"


async def test_a_release_ends_when_nothing_is_left_and_survives_until_then() -> None:
    async with running() as cluster:
        await cluster.apply("db", 1, replacement="AfterStop")
        await placed_and_running(cluster, "a")
        await cluster.heartbeat("b")
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=("b",))
        assert (await release(cluster, "a", force=True)).ok
        stored = await cluster.buckets[names.LEASES_BUCKET].get(release_key("a"))
        assert stored is not None and stored.value is not None
        assert decode(stored.value, NodeRelease).node == "a"
        await cluster.tick(2, beating=("b",))
        assert cluster.placed_on() == ["b"]
        assert await cluster.buckets[names.LEASES_BUCKET].get(release_key("a")) is None


async def test_a_node_that_comes_back_after_its_release_is_a_new_node() -> None:
    async with running() as cluster:
        await cluster.apply("web", 2)
        await placed_and_running(cluster, "a", "b")
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=("b",))
        # a's replica has moved already (Fast); its record is still there
        assert cluster.placed_on() == ["b", "b"]
        assert (await release(cluster, "a")).ok
        assert cluster.loop.snapshot().released == {"a"}
        await cluster.heartbeat("a")  # its agent comes back at once, writing a new record
        await eventually(lambda: _value(cluster.loop.nodes.get("a")), lambda n: n is not None)
        await cluster.tick(2, beating=("a", "b"))
        assert cluster.loop.snapshot().released == frozenset()
        assert cluster.loop.snapshot().schedulable("a", cluster.clock.now)


# --- finding 11: nothing kept for what is gone -----------------------------------------


async def test_liveness_clocks_of_deleted_nodes_are_forgotten() -> None:
    async with running() as cluster:
        await cluster.apply("web", 1)
        await placed_and_running(cluster, "a")
        for index in range(20):
            await cluster.heartbeat(f"gone-{index}")
        await cluster.tick(1, beating=("a",))
        assert "gone-3" in cluster.loop.node_last_seen
        for index in range(20):
            await cluster.nodes.delete(f"gone-{index}")
        # a's record goes too, but its replica is still placed there: a's clock stays
        await cluster.nodes.delete("a")
        await cluster.tick(1)
        assert set(cluster.loop.node_last_seen) == {"a"}
        assert set(cluster.loop._node_shapes) == set()
        assert set(cluster.loop.node_not_ready_since) == set()


async def test_echo_keys_of_gone_owners_are_collected_and_live_ones_kept() -> None:
    async with running() as cluster:
        dead = echo_key("scheduler-dead")
        agent = echo_key("agent-1", prefix="a.")
        await cluster.nodes.put(dead, encode(1.0))
        await cluster.placements.put(agent, encode(1.0))
        await cluster.tick(1)
        assert dead in cluster.loop.nodes.echoes
        assert agent in cluster.loop.placements.shard(agent).echoes
        # the agent keeps writing (its clock may be anywhere: only revisions count)
        for _ in range(int(ECHO_GC_SECONDS / 10) + 1):
            await cluster.tick(10)
            await cluster.placements.put(agent, encode(-5.0))
        await cluster.tick(1)
        await eventually(lambda: cluster.nodes.get(dead), lambda e: e is None)
        assert await cluster.placements.get(agent) is not None
        own = echo_key(cluster.loop.owner)
        assert await cluster.nodes.get(own) is not None


async def test_a_gone_owners_echo_is_collected_from_every_shard_of_the_placements() -> None:
    # The same echo key is in each shard, at the same revision here: asking one shard
    # to delete it must not count as asking the others.
    async with running(placement_shards=2) as cluster:
        dead = echo_key("scheduler-dead")
        shards = [cluster.buckets[name] for name in names.placements_buckets(2)]
        for shard in shards:
            await shard.put(dead, encode(1.0))
        assert {shard.items[dead].revision for shard in shards} == {1}
        await cluster.tick(1)
        await cluster.tick(ECHO_GC_SECONDS + 1)
        await cluster.tick(1)
        for shard in shards:
            await eventually(lambda shard=shard: shard.get(dead), lambda e: e is None)
        own = echo_key(cluster.loop.owner)
        assert all(own in mirror.echoes for mirror in cluster.loop.placements.shards)


async def test_an_echo_key_written_again_meanwhile_is_not_deleted() -> None:
    async with running() as cluster:
        late = echo_key("agent-2")
        await cluster.nodes.put(late, encode(1.0))
        await cluster.tick(1)
        seen = cluster.loop.nodes.echoes[late]
        cluster.nodes.stalled = True  # its new write is not seen by the watch...
        await cluster.nodes.put(late, encode(2.0))
        cluster.nodes.stalled = False
        cluster.clock.now += ECHO_GC_SECONDS + 1
        await cluster.echo()
        await cluster.loop.run_pass()
        # ...but the delete is compare-and-set on the revision seen: it keeps its key
        entry = await cluster.nodes.get(late)
        assert entry is not None and entry.revision > seen.revision


def sample_labels(name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in metrics.STOPS.collect()
        for sample in family.samples
        if sample.name == name
    ]


async def test_metric_labels_never_carry_node_names_and_deleted_deployments_lose_series() -> None:
    async with running() as cluster:
        await cluster.apply("web", 1)
        await placed_and_running(cluster, "node-with-a-name")
        await cluster.heartbeat("spare")
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=("spare",))
        assert cluster.placed_on() == ["spare"]
        reasons = {labels["reason"] for labels in sample_labels("corral_stops_total")}
        assert "node lost" in reasons
        assert not any("node-with-a-name" in reason for reason in reasons)
        assert desired_series() == {"web": 1}
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].delete("default.web")
        await cluster.tick(2, beating=("spare",))
        assert desired_series() == {}


def desired_series() -> dict[str, float]:
    return {
        sample.labels["deployment"]: sample.value
        for family in metrics.REPLICAS_DESIRED.collect()
        for sample in family.samples
    }


@pytest.fixture(autouse=True)
def _no_stale_series() -> None:
    for gauge in (metrics.REPLICAS_DESIRED, metrics.REPLICAS_READY, metrics.REPLICAS_PENDING):
        gauge.clear()


# --- recording a revision is best-effort: it never holds up placements -------------------


async def test_a_history_write_that_fails_does_not_stop_placements() -> None:
    async with running() as cluster:
        assert cluster.loop.history is not None
        calls = 0

        async def broken_get(key: str) -> None:
            nonlocal calls
            calls += 1
            raise ConnectionError("nats: no responders")

        cluster.loop.history.bucket.get = broken_get  # type: ignore[method-assign]
        before = metrics.HISTORY_ERRORS._value.get()
        await cluster.apply("web", 2)
        await placed_and_running(cluster, "n1")
        await eventually(lambda: _value(len(cluster.loop.placements.items)), lambda n: n == 2)
        assert calls > 0
        assert metrics.HISTORY_ERRORS._value.get() > before
        result = await cluster.loop.reconcile("default.web")  # asks to try again soon
        assert result is not None and result.requeue_after is not None
