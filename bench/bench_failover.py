"""How long corral's scheduler is unable to apply specs when its NATS server dies.

    .venv/bin/python bench/bench_failover.py [--runs 3]

Each run starts a real 3-server NATS cluster on loopback (three nats-server
processes, JetStream, random free ports), the scheduler in this process with every
address (`--nats a,b,c`) and R3 buckets (CORRAL_KV_REPLICAS=3), waits until the
Raft leaders of what the scheduler writes are off its server (its steady state:
corral.natsio.bus.keep_leaders_elsewhere), then SIGKILLs the server the scheduler is
connected to and prints, from the kill:
  request: until an apply request (retried every 50 ms, as a client would) is answered ok
  durable: until a spec published on corral.spec.deployment.apply after the kill is stored
Everything it starts is stopped and its data removed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.nats_cluster

from corral.natsio.service import ServiceContext, run_service
from corral_scheduler.main import build_parser, run
from tests.nats_cluster import (
    Failover,
    NatsCluster,
    measure_failover,
    wait_for_jetstream,
)


async def one_run() -> Failover:
    root = Path(tempfile.mkdtemp(prefix="corral-failover-"))
    cluster = NatsCluster(root)
    cluster.start()
    try:
        await wait_for_jetstream(cluster)
        args = build_parser().parse_args(["--nats", cluster.url, "--metrics-port", "-1"])
        async with anyio.create_task_group() as tg:
            scheduler: ServiceContext = await tg.start(run_service, "scheduler", run, args)
            failover = await measure_failover(cluster, scheduler)
            tg.cancel_scope.cancel()
        return failover
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    os.environ["CORRAL_KV_REPLICAS"] = "3"
    logging.basicConfig(level=logging.CRITICAL)
    results = []
    for number in range(1, runs + 1):
        failover = anyio.run(one_run)
        results.append(failover)
        print(
            f"run {number}: killed {failover.killed} -> {failover.moved_to}: "
            f"request {failover.request_seconds:.2f} s, durable {failover.durable_seconds:.2f} s "
            f"(published after {failover.published_seconds:.2f} s)",
            flush=True,
        )
    worst = max(max(r.request_seconds, r.durable_seconds) for r in results)
    print(f"worst failover over {runs} runs: {worst:.2f} s (goal: < 5 s)")


if __name__ == "__main__":
    main()
