"""NATS addresses and failover on a real 3-server cluster (three nats-server
processes on loopback, JetStream, R3 buckets): the services take a list of
addresses, and when the server the scheduler is connected to is killed, specs
apply again through another server within 5 s (bench/bench_failover.py prints
the same number)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.natsio.bus import bucket_stream
from corral.natsio.service import run_service
from corral_scheduler.main import build_parser, run
from tests.integration.scheduler_harness import running_scheduler
from tests.nats_cluster import NatsCluster, measure_failover, running_nats_cluster

FAILOVER_GOAL_SECONDS = 5.0


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NatsCluster]:
    monkeypatch.setenv("CORRAL_KV_REPLICAS", "3")
    async with running_nats_cluster(tmp_path) as cluster:
        yield cluster


@pytest.mark.timeout(90)
async def test_specs_apply_again_within_5_s_after_the_schedulers_nats_server_is_killed(
    cluster: NatsCluster,
) -> None:
    # The scheduler gets every address, comma-separated, as deploy/README.md says.
    async with running_scheduler(cluster.url) as scheduler:
        failover = await measure_failover(cluster, scheduler)
    print(
        f"\nfailover: killed {failover.killed}, carried on through {failover.moved_to}: "
        f"request answered after {failover.request_seconds:.2f} s, "
        f"durable spec applied after {failover.durable_seconds:.2f} s"
    )
    assert failover.moved_to != failover.killed
    assert failover.request_seconds < FAILOVER_GOAL_SECONDS, failover
    assert failover.durable_seconds < FAILOVER_GOAL_SECONDS, failover


@pytest.mark.timeout(60)
async def test_a_service_given_the_nats_flag_once_per_server_connects_and_keeps_r3_buckets(
    cluster: NatsCluster,
) -> None:
    flags = [part for server in cluster.servers for part in ("--nats", server.url)]
    args = build_parser().parse_args([*flags, "--metrics-port", "0"])
    async with anyio.create_task_group() as tg:
        ctx = await tg.start(run_service, "scheduler", run, args)
        info = await ctx.js.stream_info(bucket_stream(names.DEPLOYMENTS_BUCKET))
        assert info.config.num_replicas == 3
        assert len(ctx.nc.servers) >= 3
        tg.cancel_scope.cancel()
