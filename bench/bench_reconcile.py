"""The scheduler's control loop on a real nats-server: the whole-cluster pass per change
(before) vs one Deployment per reconcile (after), and what requests wait meanwhile.

    .venv/bin/python bench/bench_reconcile.py [--nodes 200] [--deployments 100]
                                              [--replicas 10000] [--out table.txt]

For each mode it starts its own nats-server (JetStream, a free loopback port, a
temporary store, removed at the end), registers `--nodes` hollow-like nodes that
heartbeat every second, starts the scheduler's ControlLoop in this process, applies
`--deployments` Deployments of `--replicas` replicas in all, and waits until every
replica is placed. Meanwhile a request task in the same event loop does what an apply
request does against KV (a read, then a compare-and-set write, in a bucket of its
own) every 10 ms, and records how long each took from when it was due; a task
sleeping 1 ms at a time records how late it wakes up (the event loop's stalls).

  before   the loop as it was: snapshot of the whole cluster -> schedule() -> commit,
           back to back while there is something to do, then every second (the same
           pipelined PlanApplier as after, so only the deciding differs)
  after    ControlLoop.run(): a Controller over Deployment keys (one worker), a 1 s
           liveness tick, per-key decisions from incrementally kept indexes

Printed per mode: placements committed/s (first apply to the last replica placed), the
apply-request latency p50/p99/max during it, the cost of one change once converged
(before: one whole pass; after: one reconcile of the changed Deployment, no-op and a
scale by one), and the resync cost (after: reconciling every Deployment once).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from bench_kv_writes import StallMeter  # how late a task sleeping 1 ms wakes up
from local_nats import local_nats

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
    ResourceList,
    Resources,
)
from corral.contract.state import Node, NodeCapacity
from corral.natsio.bus import connect, open_buckets
from corral.natsio.kv import Bucket, NatsBucket
from corral_scheduler.control_loop import TICK_SECONDS, ControlLoop, random_suffix
from corral_scheduler.decide import schedule

REQUEST_EVERY = 0.01
REQUESTS_BUCKET = "bench_requests"


@dataclass
class Result:
    mode: str
    place_seconds: float = 0.0
    placed: int = 0
    latencies: list[float] = field(default_factory=list)
    change_noop_ms: float = 0.0
    change_scale_ms: float = 0.0
    resync_ms: float = 0.0
    stall_p99: float = 0.0
    stall_worst: float = 0.0

    def quantile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return max(self.latencies, default=0.0)
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


def deployment(index: int, replicas: int) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=f"app-{index}", generation=1),
        spec=DeploymentSpec(
            replicas=replicas,
            template=ContainerTemplate(
                image="corral-test/busybox:1",
                resources=Resources(requests=ResourceList(cpu="10m", memory="16Mi")),
            ),
        ),
    )


async def heartbeats(bucket: Bucket, count: int) -> None:
    """Hollow-like nodes: a record each, written again every second."""
    while True:
        for index in range(count):
            node = Node(
                name=f"node-{index}",
                runtime="hollow",
                capacity=NodeCapacity(cpu_millis=8000, memory_bytes=32 * 2**30, pods=110),
                heartbeat_at=time.time(),
            )
            await bucket.put(node.name, encode(node))
        await anyio.sleep(1.0)


async def requests(bucket: NatsBucket, latencies: list[float]) -> None:
    """An apply request every REQUEST_EVERY: read the record, write it compare-and-set;
    latency counted from when it was due (a late wake-up is time a request waits)."""
    revision = await bucket.put("request", b"{}")
    due = time.perf_counter()
    while True:
        due += REQUEST_EVERY
        await anyio.sleep(max(0.0, due - time.perf_counter()))
        entry = await bucket.get("request")
        if entry is not None:
            revision = entry.revision
        revision = await bucket.update("request", b"{}", revision)
        latencies.append(time.perf_counter() - due)
        due = max(due, time.perf_counter())


async def whole_cluster_passes(loop: ControlLoop, tg: TaskGroup) -> None:
    """The loop before this branch: one pure pass over the whole snapshot per change."""
    await loop.start(tg)
    while True:
        now = loop.monotonic()
        loop.update_feed(now)
        plan = schedule(loop.snapshot(), now, wall_time=time.time(), new_suffix=random_suffix)
        if plan.is_empty():
            await anyio.sleep(TICK_SECONDS)
            continue
        await loop.applier.commit(plan)
        await anyio.lowlevel.checkpoint()


async def until(condition: Callable[[], bool], limit: float = 600.0) -> None:
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 (polling the mirrors: they have no event)
            await anyio.sleep(0.01)


async def timed_ms(step: Callable[[], Awaitable[object]], repeat: int = 5) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        await step()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) * 1000


async def measure(url: str, mode: str, args: argparse.Namespace) -> Result:
    nc = await connect(url, name=f"bench-reconcile-{mode}")
    result = Result(mode)
    try:
        js = nc.jetstream()
        buckets: dict[str, Bucket] = dict(await open_buckets(js))
        scratch = NatsBucket(
            await js.create_key_value(bucket=REQUESTS_BUCKET, history=1), REQUESTS_BUCKET
        )
        loop = ControlLoop(buckets, None)
        per = args.replicas // args.deployments
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeats, buckets[names.NODES_BUCKET], args.nodes)
            if mode == "before":
                tg.start_soon(whole_cluster_passes, loop, tg)
                await until(lambda: loop.feed_fresh_since is not None)
                await until(
                    lambda: (
                        sum(
                            loop.snapshot().schedulable(n, loop.monotonic())
                            for n in loop.nodes.items
                        )
                        == args.nodes
                    )
                )
            else:
                await tg.start(loop.run)
                await until(lambda: len(loop.ready_nodes) == args.nodes)
            tg.start_soon(requests, scratch, result.latencies)
            meter = StallMeter()
            tg.start_soon(meter.run)
            await anyio.sleep(0.5)
            result.latencies.clear()
            meter.late.clear()
            started = time.perf_counter()
            for index in range(args.deployments):
                item = deployment(index, per)
                await buckets[names.DEPLOYMENTS_BUCKET].put(item.key, encode(item))
            await until(lambda: len(loop.placements.items) >= per * args.deployments)
            result.place_seconds = time.perf_counter() - started
            result.placed = len(loop.placements.items)
            latencies = list(result.latencies)
            result.stall_p99, result.stall_worst = meter.p99, meter.worst
            await until(lambda: len(loop.statuses.items) == args.deployments)
            await anyio.sleep(2.0)  # settled: statuses written, queue empty
            key = deployment(0, per).key
            if mode == "before":

                async def one_pass() -> None:
                    now = loop.monotonic()
                    schedule(loop.snapshot(), now, wall_time=time.time(), new_suffix=random_suffix)

                result.change_noop_ms = await timed_ms(one_pass)
                result.change_scale_ms = result.change_noop_ms  # a pass decides every key
            else:
                result.change_noop_ms = await timed_ms(lambda: loop.reconcile(key))
                scaled = [per]

                async def scale_by_one() -> None:
                    scaled[0] += 1
                    loop.deployments.items[key] = (deployment(0, scaled[0]), 1)
                    await loop.reconcile(key)

                result.change_scale_ms = await timed_ms(scale_by_one)
                keys = sorted(loop.deployments.items)

                async def resync() -> None:
                    for each in keys:
                        await loop.reconcile(each)

                result.resync_ms = await timed_ms(resync, repeat=3)
            result.latencies = latencies
            tg.cancel_scope.cancel()
        for bucket in (*names.ALL_BUCKETS, REQUESTS_BUCKET):
            await js.delete_key_value(bucket)
        return result
    finally:
        await nc.close()


def run_mode(mode: str, args: argparse.Namespace) -> Result:
    with local_nats("corral-bench-reconcile-") as server:
        return anyio.run(measure, server.url, mode, args)


def table(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"{args.nodes} hollow-like nodes (heartbeat 1 s), {args.deployments} Deployments, "
        f"{args.replicas} replicas, one nats-server; apply requests every "
        f"{REQUEST_EVERY * 1000:.0f} ms in the same event loop:",
        f"  {'mode':<7} {'placed/s':>9} {'req p50':>9} {'req p99':>9} {'req max':>9}"
        f" {'loop stall p99':>15} {'max':>9}"
        f" {'change (no-op)':>15} {'change (scale+1)':>17} {'resync (all)':>13}",
    ]
    for r in results:
        resync = f"{r.resync_ms:.1f} ms" if r.mode == "after" else "(= a pass)"
        lines.append(
            f"  {r.mode:<7} {r.placed / r.place_seconds:>9,.0f}"
            f" {r.quantile(50) * 1000:>6.1f} ms {r.quantile(99) * 1000:>6.1f} ms"
            f" {max(r.latencies, default=0.0) * 1000:>6.1f} ms"
            f" {r.stall_p99 * 1000:>12.1f} ms {r.stall_worst * 1000:>6.1f} ms"
            f" {r.change_noop_ms:>12.2f} ms {r.change_scale_ms:>14.2f} ms {resync:>13}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--modes", default="before,after")
    parser.add_argument("--out", type=Path, help="also save the table here")
    args = parser.parse_args()
    results = [run_mode(mode, args) for mode in args.modes.split(",")]
    text = table(results, args)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
