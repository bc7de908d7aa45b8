"""The scheduler's HTTP endpoint, and its resilience to records it cannot read."""

from __future__ import annotations

import aiohttp

from corral.contract import names
from corral.natsio.kv import NatsBucket
from tests.integration.scheduler_harness import (
    deployment_json,
    placements,
    request,
    running_scheduler,
)
from tests.waiting import eventually


async def fetch(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_metrics_and_health(nats_url: str, buckets: dict[str, NatsBucket]) -> None:
    async with running_scheduler(nats_url, nodes={"node-a": {}}) as ctx:
        assert ctx.http_port
        status, body = await fetch(ctx.http_port, "/healthz")
        assert status == 200 and "nats=ok" in body
        assert (await request(ctx.nc, "deployment", "apply", deployment_json("web", 2))).ok
        _, metrics = await eventually(
            lambda: fetch(ctx.http_port or 0, "/metrics"),
            lambda r: 'corral_replicas_desired{deployment="web"} 2.0' in r[1],
        )
        for name in (
            "corral_replicas_ready",
            "corral_replicas_pending",
            "corral_scheduling_latency_seconds_bucket",
            "corral_nodes_ready",
        ):
            assert name in metrics


async def test_unreadable_records_are_skipped_and_the_scheduler_keeps_working(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    for bucket in buckets.values():
        await bucket.put("garbage", b"\x00not a record")
    async with running_scheduler(nats_url, nodes={"node-a": {}}) as ctx:
        assert (await request(ctx.nc, "deployment", "apply", deployment_json("web", 2))).ok
        await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]),
            lambda p: len([k for k in p if k != "garbage"]) == 2,
        )
