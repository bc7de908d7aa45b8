"""A cluster grows by adding nodes: the scheduler and several node agents (hollow
runtime, so no Docker) on one real nats-server, each a service of its own."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext
from tests.agents import running_agent
from tests.integration.scheduler_harness import (
    deployment_json,
    placements,
    request,
    running_scheduler,
)
from tests.waiting import eventually


def hollow_agent(nats_url: str, node: str) -> AbstractAsyncContextManager[ServiceContext]:
    flags = ("--runtime", "hollow", "--cpu", "2", "--memory", "4Gi", "--heartbeat-seconds", "0.5")
    return running_agent(nats_url, node, *flags)


async def running_on(buckets: dict[str, NatsBucket], placement_shards: int = 1) -> dict[str, str]:
    """replica -> node, for placed replicas (in any shard of the placements) whose agent
    reports them Running."""
    placed: dict[str, object] = {}
    for shard in names.placements_buckets(placement_shards):
        placed.update(await placements(buckets[shard]))
    found: dict[str, str] = {}
    async for entry in buckets[names.REPLICA_STATUS_BUCKET].watch():
        if entry is None:
            break
        if entry.value is not None and entry.key in placed:
            status = decode(entry.value, ReplicaStatus)
            if status.state == ReplicaState.RUNNING:
                found[status.replica] = status.node
    return found


async def test_added_node_takes_new_replicas_and_a_lost_node_is_replaced(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_scheduler(nats_url) as scheduler, hollow_agent(nats_url, "node-1"):
        assert (await request(scheduler.nc, "deployment", "apply", deployment_json("web", 4))).ok
        await eventually(lambda: running_on(buckets), lambda r: len(r) == 4)

        async with hollow_agent(nats_url, "node-2"):
            # a node joins: scaling up spreads onto it, nothing else is configured
            scale = b'{"name": "web", "replicas": 8}'
            assert (await request(scheduler.nc, "deployment", "scale", scale)).ok
            spread = await eventually(lambda: running_on(buckets), lambda r: len(r) == 8)
            assert sorted(spread.values()).count("node-2") == 4

        # node-2's agent is gone: after the grace period its replicas move to node-1
        moved = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]),
            lambda p: len(p) == 8 and all(x.node == "node-1" for x in p.values()),
            within=30,
        )
        assert len(moved) == 8
        await eventually(lambda: running_on(buckets), lambda r: len(r) == 8, within=15)
