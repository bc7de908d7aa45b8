"""Many hollow nodes in one process (corral_node_agent.hollow_cluster) against a real
nats-server and the real scheduler: they take a Deployment's replicas as separate
nodes do, a stopped one's replicas move to the others, and each node's watch covers
only its own placements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import encode
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from corral_node_agent.hollow_cluster import ClusterSettings, HollowCluster, NodeState
from corral_node_agent.safety import Mode
from tests.integration.scheduler_harness import (
    deployment_json,
    placements,
    request,
    running_scheduler,
)
from tests.integration.test_cluster_hollow import running_on
from tests.unit.agent_helpers import placement
from tests.waiting import current, eventually


@asynccontextmanager
async def hollow_cluster(
    nats_url: str, nodes: int, **settings: Any
) -> AsyncIterator[HollowCluster]:
    cluster = HollowCluster(ClusterSettings(nodes=nodes, nats_url=nats_url, **settings))
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(20):
            await tg.start(cluster.run)
        try:
            yield cluster
        finally:
            tg.cancel_scope.cancel()


async def test_twenty_hollow_nodes_run_a_hundred_replicas_and_a_stopped_ones_move(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with (
        running_scheduler(nats_url) as scheduler,
        hollow_cluster(
            nats_url, 20, pool=6, ready_after=0.2, remove_after=0.1, passes_parallel=2
        ) as cluster,
    ):
        assert len(cluster.pools) == 4  # 20 nodes, 6 to a NATS connection
        assert cluster.counts()["active"] == 20
        # The nodes take turns at their passes, two at a time (pass_gate.PassGate).
        gate = cluster.pass_gate
        assert gate is not None and gate.parallel == 2
        assert all(node.agent.pass_gate is gate for node in cluster.nodes.values())
        assert (await request(scheduler.nc, "deployment", "apply", deployment_json("web", 100))).ok
        running = await eventually(
            lambda: running_on(buckets), lambda r: len(r) == 100, within=30, interval=0.2
        )
        assert set(running.values()) == set(cluster.nodes)  # every node took some
        assert cluster.running_replicas() == 100  # the hollow engines agree
        # Their placements, decoded node by node, hold one template among them
        # (corral.contract.sharing): not 100 copies in one process.
        held = [p for node in cluster.nodes.values() for p in node.agent.placements.values()]
        assert len(held) == 100 and len({id(p.template) for p in held}) == 1
        assert gate.passes >= 20
        await eventually(lambda: current(gate.waiting), lambda n: n == 0, within=10)

        victim = "hollow-3"
        await cluster.stop_node(victim)
        assert cluster.nodes[victim].state == NodeState.STOPPED
        moved = await eventually(
            lambda: running_on(buckets),
            lambda r: len(r) == 100 and victim not in r.values(),
            within=30,
            interval=0.2,
        )
        assert len(set(moved.values())) == 19
        placed = await placements(buckets[names.PLACEMENTS_BUCKET])
        assert all(p.node != victim for p in placed.values())


@pytest.mark.parametrize("how", ["consumer", "reads"])
async def test_each_hollow_node_watches_only_its_own_placements(
    nats_url: str, buckets: dict[str, NatsBucket], how: str
) -> None:
    async with hollow_cluster(
        nats_url, 3, pool=2, name_prefix="h-", placements_watch=how
    ) as cluster:
        bucket = buckets[names.PLACEMENTS_BUCKET]
        for name in cluster.nodes:
            for index in range(3):
                placed = placement(f"web-{name}-{index}", node=name)
                await bucket.put(
                    names.placement_key(name, "default", placed.replica), encode(placed)
                )

        async def ran() -> int:
            return cluster.running_replicas()

        await eventually(ran, lambda count: count == 9)
        for name, node in cluster.nodes.items():
            assert node.agent.mode == Mode.ACTIVE
            keys = list(node.agent.placements.items)
            assert len(keys) == 3
            assert all(key.startswith(names.placement_prefix(name)[:-1]) for key in keys)
            assert {c.spec.labels[names.LABEL_NODE] for c in node.runtime.containers.values()} == {
                name
            }

        # On the server: with `consumer`, one consumer per node, filtered on that node's
        # keys; with `reads`, none left (each node's snapshot consumer, filtered as well,
        # goes once current; later changes are read by sequence, NatsBucket.follow);
        # never one on the whole bucket.
        expected = sorted(
            f"$KV.{names.PLACEMENTS_BUCKET}.{names.placement_prefix(name)}"
            for name in cluster.nodes
        )
        nc = await connect(nats_url, name="test-consumers")
        try:
            js = nc.jetstream()
            stream = f"KV_{names.PLACEMENTS_BUCKET}"

            async def filters() -> list[str]:
                infos = await js.consumers_info(stream)
                return sorted(info.config.filter_subject or "" for info in infos)

            await eventually(
                filters, lambda found: found == (expected if how == "consumer" else [])
            )
        finally:
            await nc.close()


async def test_hollow_nodes_heartbeat_on_core_nats_and_write_their_records_only_on_change(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    # As an agent process does: acknowledged heartbeats, no record rewrite every beat
    # (10 nodes writing each beat would be 10 writes a second here, 5,000 at 5,000 nodes).
    async with (
        running_scheduler(nats_url),
        hollow_cluster(nats_url, 10) as cluster,
    ):
        nodes = buckets[names.NODES_BUCKET]
        assert isinstance(nodes, NatsBucket)

        async def writes_in_two_seconds() -> int:
            first = await nodes_stream_sequence(nats_url)
            await anyio.sleep(2)
            return await nodes_stream_sequence(nats_url) - first

        # once every node is heard (the first beats of a node start before the judge's
        # view is fresh, and write), the records stay as they are
        await eventually(writes_in_two_seconds, lambda n: n <= 2, within=30, interval=0)
        assert cluster.counts()["active"] == 10


async def nodes_stream_sequence(nats_url: str) -> int:
    """The last sequence of corral_nodes' stream: one per write (echo keys included)."""
    nc = await connect(nats_url, name="test-writes")
    try:
        info = await nc.jetstream().stream_info(f"KV_{names.NODES_BUCKET}")
        return int(info.state.last_seq)
    finally:
        await nc.close()
