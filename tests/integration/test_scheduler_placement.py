"""The scheduler against a real nats-server: requests, placements, scaling, node loss."""

from __future__ import annotations

from corral.contract import names
from corral.natsio.kv import NatsBucket
from tests.integration.scheduler_harness import (
    deployment_json,
    eventually,
    placements,
    request,
    running_scheduler,
)


async def test_apply_places_replicas_spread_over_ready_nodes(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_scheduler(nats_url, nodes={"node-a": {}, "node-b": {}}) as ctx:
        reply = await request(ctx.nc, "deployment", "apply", deployment_json("web", 4))
        assert reply.ok, reply
        assert reply.generation == 1 and reply.revision > 0
        found = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 4
        )
        nodes = sorted(p.node for p in found.values())
        assert nodes == ["node-a", "node-a", "node-b", "node-b"]
        assert all(p.replica.startswith("web-") for p in found.values())
