"""A cluster made with its placements in shards, on the real Docker engine: the node's
placements are in its own shard (not the first), its agent runs, scales and heals them
there, and the CLI reads them from that shard."""

from __future__ import annotations

import json

import anyio
import pytest

from corral.contract import names
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from tests.e2e.conftest import AgentFactory
from tests.e2e.test_deployment_lifecycle import corral, running_containers
from tests.integration.scheduler_harness import placements, running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker


def shards_putting_elsewhere(node: str) -> int:
    """A number of shards that puts `node`'s placements outside the first shard."""
    return next(
        k for k in range(2, names.MAX_PLACEMENT_SHARDS + 1) if names.placement_shard(node, k)
    )


async def placed_in(nats_url: str, bucket: str) -> set[str]:
    """The nodes of the placements in `bucket` (its current keys, echo keys not)."""
    nc = await connect(nats_url, name="test-shard-keys")
    try:
        kv = await nc.jetstream().key_value(bucket)
        return {p.node for p in (await placements(NatsBucket(kv, bucket))).values()}
    finally:
        await nc.close()


async def test_a_sharded_clusters_replicas_run_scale_heal_and_go_on_docker(
    nats_url: str,
    node_name: str,
    test_image: str,
    agent_running: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shards = shards_putting_elsewhere(node_name)
    shard = names.placements_bucket_of(node_name, shards)
    monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", str(shards))
    async with running_scheduler(nats_url) as scheduler, agent_running():
        assert scheduler.cluster.placement_shards == shards
        await corral(
            nats_url,
            "create",
            "deployment",
            "sharded",
            f"--image={test_image}",
            "--replicas=3",
            "--",
            "sleep",
            "3600",
        )
        await eventually(
            lambda: running_containers(node_name, "sharded"), lambda ids: len(ids) == 3, within=60
        )
        # The placements are in the node's shard, and in no other.
        assert await placed_in(nats_url, shard) == {node_name}
        for other in names.placements_buckets(shards):
            if other != shard:
                assert await placed_in(nats_url, other) == set()
        replicas = json.loads((await corral(nats_url, "get", "replicas", "-o", "json")).stdout)
        assert len(replicas) == 3

        await corral(nats_url, "scale", "deployment", "sharded", "--replicas=1")
        (survivor,) = await eventually(
            lambda: running_containers(node_name, "sharded"), lambda ids: len(ids) == 1, within=60
        )
        await anyio.run_process(["docker", "rm", "-f", survivor])
        await eventually(
            lambda: running_containers(node_name, "sharded"),
            lambda ids: len(ids) == 1 and survivor not in ids,
            within=30,
        )
        await corral(nats_url, "delete", "deployment", "sharded")
        await eventually(
            lambda: running_containers(node_name, "sharded"), lambda ids: ids == [], within=60
        )
