"""Level-triggered convergence through real NATS: specs published while the scheduler
is down, scheduler restarts, and nodes that fall silent."""

from __future__ import annotations

import aiohttp
import anyio

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Event
from corral.contract.state import DeploymentStatus
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from tests.conftest import NatsServer
from tests.integration.scheduler_harness import (
    deployment_json,
    eventually,
    placements,
    register_node,
    request,
    running_scheduler,
)


async def test_spec_published_while_scheduler_is_down_is_applied_when_it_starts(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    nc = await connect(nats_url, "publisher")
    try:
        js = nc.jetstream()
        # a plain publish into the durable spec stream, as `nats pub` would do
        await js.publish(names.spec_subject("deployment", "apply"), deployment_json("late", 3))
        await js.publish(names.spec_subject("deployment", "apply"), b"{broken")
        rejected = await js.subscribe(f"{names.EVENTS_PREFIX}.rejected.>", ordered_consumer=True)
        async with running_scheduler(nats_url, nodes={"node-a": {}}):
            found = await eventually(
                lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 3
            )
            assert {p.deployment for p in found.values()} == {"late"}
            msg = await rejected.next_msg(timeout=10)
            event = decode(msg.data, Event)
            assert event.type == "Warning" and "malformed JSON" in event.message
    finally:
        await nc.close()


async def test_restarted_scheduler_converges_without_duplicates(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_scheduler(nats_url, nodes={"node-a": {}}) as ctx:
        assert (await request(ctx.nc, "deployment", "apply", deployment_json("web", 5))).ok
        first = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 5
        )
    async with running_scheduler(nats_url, nodes={"node-a": {}}) as ctx:
        # scale while the new scheduler works from a fresh view
        scale = encode({"name": "web", "replicas": 6})
        assert (await request(ctx.nc, "deployment", "scale", scale)).ok
        second = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 6
        )
    assert set(first) < set(second)


async def test_replicas_of_a_silent_node_move_to_a_ready_one(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    nodes = buckets[names.NODES_BUCKET]
    async with running_scheduler(nats_url) as ctx:
        await register_node(nodes, "node-a")  # once: then it falls silent
        assert (await request(ctx.nc, "deployment", "apply", deployment_json("web", 2))).ok
        await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 2
        )
        # node-b joins and keeps heartbeating; node-a falls silent
        async with anyio.create_task_group() as tg:

            async def heartbeat_b() -> None:
                while True:
                    await register_node(nodes, "node-b")
                    await anyio.sleep(1)

            tg.start_soon(heartbeat_b)
            moved = await eventually(
                lambda: placements(buckets[names.PLACEMENTS_BUCKET]),
                lambda p: len(p) == 2 and all(x.node == "node-b" for x in p.values()),
                within=25,
            )
            tg.cancel_scope.cancel()
        assert all(key.startswith("node-b.") for key in moved)


async def test_status_reports_pending_with_the_reason(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    big = deployment_json("big", 2, resources={"requests": {"cpu": "800m"}})
    async with running_scheduler(nats_url, nodes={"small": {"cpu": 1000}}) as ctx:
        assert (await request(ctx.nc, "deployment", "apply", big)).ok

        async def status() -> DeploymentStatus | None:
            entry = await buckets[names.DEPLOYMENT_STATUS_BUCKET].get("default.big")
            return (
                None
                if entry is None or entry.value is None
                else decode(entry.value, DeploymentStatus)
            )

        found = await eventually(status, lambda s: s is not None and s.pending == 1)
        assert found is not None
        assert found.pending_reason == "0/1 nodes are available: 1 Insufficient cpu"
        assert found.placed == 1


async def test_a_nats_outage_longer_than_the_grace_period_evicts_nothing(
    nats_server: NatsServer, buckets: dict[str, NatsBucket]
) -> None:
    steady = {"steady-1": {}, "steady-2": {}}
    async with running_scheduler(nats_server.url, nodes=steady) as ctx:
        assert (await request(ctx.nc, "deployment", "apply", deployment_json("web", 4))).ok
        before = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 4
        )
        port = ctx.http_port or 0
        lost_before = lost_count(await scrape(port))
        nats_server.stop()
        # The outage itself: every node falls silent for longer than the grace period.
        await anyio.sleep(NODE_LOST_SECONDS + 3)
        nats_server.start()
        await eventually(
            lambda: scrape(port), lambda m: "corral_scheduler_view_fresh 1.0" in m, within=60
        )
        # the nodes' heartbeats resume; give the scheduler a grace period's worth of passes
        await anyio.sleep(NODE_LOST_SECONDS + 2)
        after = await placements(buckets[names.PLACEMENTS_BUCKET])
        assert set(after) == set(before)
        # (metrics are per process: other tests' nodes may have been lost before)
        assert lost_count(await scrape(port)) == lost_before


def lost_count(metrics_text: str) -> float:
    """corral_stops_total{reason="node lost"}: replicas stopped because their node was lost."""
    for line in metrics_text.splitlines():
        if line.startswith('corral_stops_total{reason="node lost"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()
