"""Deciding in the event loop or in a worker thread: what a request waits, pure and in memory.

    .venv/bin/python bench/bench_decide_in.py [--nodes 1000] [--replicas 20000] [--per 200]

A cluster of --nodes nodes already running --replicas replicas (usage per node and the
replica names taken, as the scheduler keeps them), then Deployments of --per replicas
decided one after another with decide.schedule_deployment, as the scheduler's
controller does: in the event loop (yielding between decisions), or in one worker
thread (anyio.to_thread, on copies of the node records, liveness clocks and usage, as
control_loop.DecideIn.THREAD does). Meanwhile a task in the same event loop wakes every
millisecond (a request's stand-in) and records how late it wakes. Prints decisions/s and
the lateness p50/p99/max for both, each decision placing (--per new replicas) and each
deciding a converged Deployment (nothing to do); and what a worker *process* would pay
to receive the inputs and send the plan back (pickle), beside the decision's own time.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from bench_schedule import NOW, build

from corral.contract.specs import Deployment, DeploymentSpec, ObjectMeta
from corral_scheduler.decide import Plan, Usage, schedule, schedule_deployment
from corral_scheduler.snapshot import PlacedReplica, Snapshot


@dataclasses.dataclass
class Cluster:
    base: Snapshot  # nodes and liveness
    usage: dict[str, Usage]
    taken: dict[str, int]
    ready: set[str]
    template: Any


def running_cluster(nodes: int, replicas: int) -> Cluster:
    snapshot = build(nodes, replicas, 100)
    counter = itertools.count()
    plan = schedule(snapshot, NOW, wall_time=0.0, new_suffix=lambda: f"{next(counter):05d}")
    usage: dict[str, Usage] = {}
    taken: dict[str, int] = {}
    for placement in plan.place:
        found = usage.get(placement.node) or Usage()
        usage[placement.node] = Usage(
            found.cpu_millis + placement.cpu_millis,
            found.memory_bytes + placement.memory_bytes,
            found.pods + 1,
        )
        taken[placement.replica] = 1
    template = next(iter(snapshot.deployments.values())).spec.template
    base = dataclasses.replace(snapshot, deployments={})
    return Cluster(base, usage, taken, set(snapshot.nodes), template)


def views(cluster: Cluster, per: int, count: int, converged: bool) -> list[tuple[str, Snapshot]]:
    """`count` Deployments of `per` replicas: new (to place), or already placed."""
    made = []
    suffix = itertools.count()
    for index in range(count):
        deployment = Deployment(
            metadata=ObjectMeta(name=f"new-{index}", generation=1),
            spec=DeploymentSpec(replicas=per, template=cluster.template),
        )
        view = dataclasses.replace(cluster.base, deployments={deployment.key: deployment})
        if converged:
            plan = decide(cluster, view, deployment.key, cluster.usage, lambda: next(suffix))
            placements = {
                p.key: PlacedReplica(placement=p, revision=i + 1) for i, p in enumerate(plan.place)
            }
            status = plan.statuses[0][0]
            view = dataclasses.replace(
                view, placements=placements, statuses={deployment.key: (status, 1)}
            )
        made.append((deployment.key, view))
    return made


def decide(
    cluster: Cluster,
    view: Snapshot,
    key: str,
    usage: dict[str, Usage],
    counter: Callable[[], int],
) -> Plan:
    return schedule_deployment(
        view,
        key,
        NOW,
        usage=usage,
        taken_names=cluster.taken,
        ready_nodes=cluster.ready,
        wall_time=1.0,
        new_suffix=lambda: f"z{counter():04d}",
    )


async def run(
    cluster: Cluster, work: list[tuple[str, Snapshot]], mode: str
) -> tuple[float, list[float]]:
    """(decisions per second, lateness of a 1 ms sleeper in seconds)."""
    late: list[float] = []
    done = anyio.Event()
    counter = itertools.count().__next__
    limiter = anyio.CapacityLimiter(1)

    async def sleeper() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await anyio.sleep(0.001)
            late.append(time.perf_counter() - started - 0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper)
        await anyio.sleep(0.01)
        started = time.perf_counter()
        for key, view in work:
            await anyio.lowlevel.checkpoint()  # the controller yields before each
            if mode == "loop":
                decide(cluster, view, key, cluster.usage, counter)
            else:
                copied = dataclasses.replace(
                    view,
                    nodes=dict(view.nodes),
                    node_last_seen=dict(view.node_last_seen),
                    node_not_ready_since=dict(view.node_not_ready_since),
                )
                usage = dict(cluster.usage)
                await anyio.to_thread.run_sync(
                    partial(decide, cluster, copied, key, usage, counter), limiter=limiter
                )
        seconds = time.perf_counter() - started
        done.set()
    return len(work) / seconds, late


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=20_000)
    parser.add_argument("--per", type=int, default=200, help="replicas per Deployment decided")
    parser.add_argument("--count", type=int, default=50, help="Deployments decided per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="sys.setswitchinterval (seconds; Python's default 0.005): how long a thread "
        "holding the GIL keeps it before the loop may take it",
    )
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    cluster = running_cluster(args.nodes, args.replicas)
    print(
        f"{args.nodes} nodes running {args.replicas:,} replicas; deciding {args.count} "
        f"Deployments of {args.per} replicas, median of {args.rounds} rounds (interleaved); "
        f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    print(
        f"  {'decision':10} {'mode':7} {'decisions/s':>12} {'ms each':>8}"
        f"  {'1 ms sleeper late p50':>22} {'p99':>7} {'max':>7}"
    )
    for kind, converged in (("placing", False), ("converged", True)):
        work = views(cluster, args.per, args.count, converged)
        results: dict[str, list[tuple[float, list[float]]]] = {"loop": [], "thread": []}
        for _ in range(args.rounds):
            for mode in ("loop", "thread"):
                results[mode].append(anyio.run(run, cluster, work, mode))
        for mode, runs in results.items():
            rate = statistics.median(r[0] for r in runs)
            middle = sorted(runs, key=lambda r: r[0])[len(runs) // 2][1]
            print(
                f"  {kind:10} {mode:7} {rate:12,.0f} {1000 / rate:8.2f}"
                f"  {ms(middle, 0.5):>22} {ms(middle, 0.99):>7} {ms(middle, 1.0):>7}"
            )

    # A worker process: the inputs go over a pipe each decision, the plan comes back.
    key, view = views(cluster, args.per, 1, False)[0]
    inputs = (view, dict(cluster.usage), dict(cluster.taken), frozenset(cluster.ready))
    started = time.perf_counter()
    raw = pickle.dumps(inputs, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.loads(raw)
    inputs_seconds = time.perf_counter() - started
    plan = decide(cluster, view, key, cluster.usage, itertools.count().__next__)
    started = time.perf_counter()
    raw_plan = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.loads(raw_plan)
    plan_seconds = time.perf_counter() - started
    print(
        f"  a worker process would pickle per decision: inputs {len(raw) / 1024:,.0f} KiB in "
        f"{inputs_seconds * 1000:.1f} ms (dumps + loads), the plan ({len(plan.place)} "
        f"placements) {len(raw_plan) / 1024:,.0f} KiB in {plan_seconds * 1000:.1f} ms; "
        "the dumps half runs in the event loop"
    )


if __name__ == "__main__":
    main()
