"""Time from a crash-looping new revision to the automatic rollback completing, with
hollow nodes (docs/rollouts.md, "Automatic rollback"; no Docker needed).

    .venv/bin/python bench/bench_auto_rollback.py [--rounds 5] [--replicas 20] [--nodes 4]

A nats-server of its own, the scheduler in-process, and --nodes hollow nodes
(corral_node_agent.hollow_cluster, the real node agent on in-memory engines) whose
engines make every container of the bad image exit at once. Each round: `web`
(--replicas, autoRollback with crashLoopRestarts 2 within 60 s) rolled out on a good
image, then updated to the bad one. Printed per round and as medians: from the apply to
the scheduler's decision (status.autoRollback set), the scheduler's own measure of
decision -> complete (the histogram corral_auto_rollback_seconds), and apply -> complete
(the old template's replicas all updated and available again, revision N+2).
The crash loop itself takes the agent's back-off: the first restart at once, the
second after 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from local_nats import local_nats

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.state import (
    CONDITION_PROGRESSING,
    REASON_NEW_REPLICAS_AVAILABLE,
    DeploymentStatus,
)
from corral.natsio.bus import connect, ensure_streams, open_buckets
from corral_node_agent.hollow_cluster import ClusterSettings, HollowCluster
from corral_scheduler import metrics
from tests.integration.scheduler_harness import request, running_scheduler

GOOD, BAD = "bench/app:good", "bench/app:crash"
RULE = {"crashLoopRestarts": 2, "crashLoopWindowSeconds": 60}


def manifest(image: str, replicas: int, version: int) -> bytes:
    return encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": replicas,
                "autoRollback": RULE,
                "template": {"image": image, "env": {"ROUND": str(version)}},
            },
        }
    )


def histogram() -> tuple[float, float]:
    samples = next(iter(metrics.ROLLBACK_SECONDS.collect())).samples
    total = sum(s.value for s in samples if s.name.endswith("_sum"))
    count = sum(s.value for s in samples if s.name.endswith("_count"))
    return total, count


async def bench(url: str, rounds: int, replicas: int, nodes: int) -> None:
    nc = await connect(url, name="bench")
    js = nc.jetstream()
    await ensure_streams(js)
    buckets = await open_buckets(js)
    statuses = buckets[names.DEPLOYMENT_STATUS_BUCKET]

    async def status() -> DeploymentStatus | None:
        entry = await statuses.get("default.web")
        return (
            None if entry is None or entry.value is None else decode(entry.value, DeploymentStatus)
        )

    async def until(accept: Any, within: float = 120.0) -> DeploymentStatus:
        with anyio.fail_after(within):
            while True:
                found = await status()
                if found is not None and accept(found):
                    return found
                await anyio.sleep(0.02)

    def complete(revision: int) -> Any:
        def accept(found: DeploymentStatus) -> bool:
            cond = found.condition(CONDITION_PROGRESSING)
            return (
                found.revision == revision
                and cond is not None
                and cond.reason == REASON_NEW_REPLICAS_AVAILABLE
                and found.available == found.updated == found.replicas == replicas
                and found.placed == replicas
            )

        return accept

    hollow = HollowCluster(
        ClusterSettings(
            nodes=nodes,
            nats_url=url,
            heartbeat_seconds=0.5,
            report_seconds=0,
            exit_on_start={BAD: 1},
        )
    )
    decided: list[float] = []
    measured: list[float] = []
    total: list[float] = []
    async with running_scheduler(url) as scheduler, anyio.create_task_group() as tg:
        await tg.start(hollow.run)
        revision = 0
        for round_number in range(1, rounds + 1):
            reply = await request(
                scheduler.nc, "deployment", "apply", manifest(GOOD, replicas, round_number)
            )
            assert reply.ok, reply.error
            revision += 1
            await until(complete(revision))
            await anyio.sleep(0.5)  # its history's availableAt written
            before = histogram()
            reply = await request(
                scheduler.nc, "deployment", "apply", manifest(BAD, replicas, round_number)
            )
            assert reply.ok, reply.error
            started = time.monotonic()
            revision += 1
            await until(
                lambda s, failed=revision: (
                    s.auto_rollback is not None and s.auto_rollback.from_revision == failed
                )
            )
            decided.append(time.monotonic() - started)
            revision += 1
            await until(complete(revision))
            total.append(time.monotonic() - started)
            after = histogram()
            if after[1] > before[1]:
                measured.append((after[0] - before[0]) / (after[1] - before[1]))
            print(
                f"round {round_number}: apply -> rollback decided {decided[-1]:.2f} s, "
                f"decided -> complete (scheduler's histogram) "
                f"{measured[-1] if measured else float('nan'):.2f} s, "
                f"apply -> complete {total[-1]:.2f} s",
                flush=True,
            )
        tg.cancel_scope.cancel()
    await nc.close()
    print(
        f"median over {rounds} rounds, {replicas} replicas on {nodes} hollow nodes: "
        f"apply -> decided {statistics.median(decided):.2f} s, "
        f"decided -> complete {statistics.median(measured):.2f} s, "
        f"apply -> complete {statistics.median(total):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    with local_nats() as server:
        anyio.run(bench, server.url, args.rounds, args.replicas, args.nodes)


if __name__ == "__main__":
    main()
