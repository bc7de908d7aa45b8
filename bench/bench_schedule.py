"""How fast the scheduler decides: schedule(snapshot) on large clusters, pure and in memory.

    .venv/bin/python bench/bench_schedule.py [--nodes 1000] [--replicas 10000]

Prints the time of one deciding pass for: placing every replica from scratch,
a pass with nothing to do (the steady state, run every second), and re-placing
the replicas of one lost node; then the time of one Deployment's decision, as the
control loop makes it on a change (`schedule_deployment`, with the usage per node and
the names taken kept per change): with nothing to do, and scaled up by one replica.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import msgspec

from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
    ResourceList,
    Resources,
)
from corral.contract.state import Node, NodeCapacity
from corral_scheduler.decide import Plan, Usage, schedule, schedule_deployment
from corral_scheduler.node_ranking import NodeRanking
from corral_scheduler.snapshot import PlacedReplica, Snapshot

NOW = 10_000.0


def build(nodes: int, replicas: int, deployments: int) -> Snapshot:
    per = replicas // deployments
    template = ContainerTemplate(
        image="corral-test/busybox:1",
        resources=Resources(requests=ResourceList(cpu="10m", memory="16Mi")),
    )
    return Snapshot(
        deployments={
            f"default.app-{i}": Deployment(
                metadata=ObjectMeta(name=f"app-{i}", generation=1),
                spec=DeploymentSpec(replicas=per, template=template),
            )
            for i in range(deployments)
        },
        nodes={
            f"node-{i}": Node(
                name=f"node-{i}",
                capacity=NodeCapacity(cpu_millis=8000, memory_bytes=32 * 2**30, pods=110),
            )
            for i in range(nodes)
        },
        node_last_seen={f"node-{i}": NOW for i in range(nodes)},
    )


def timed(snapshot: Snapshot, now: float = NOW) -> tuple[float, Plan]:
    counter = itertools.count()
    started = time.perf_counter()
    plan = schedule(snapshot, now, wall_time=0.0, new_suffix=lambda: f"{next(counter):05d}")
    return time.perf_counter() - started, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    empty = build(args.nodes, args.replicas, args.deployments)
    runs = [timed(empty) for _ in range(args.repeat)]
    seconds = statistics.median(r[0] for r in runs)
    plan = runs[0][1]
    placed = plan.place
    print(f"cluster: {args.nodes} nodes, {args.deployments} deployments, {args.replicas} replicas")
    print(f"place all from scratch : {seconds * 1000:8.1f} ms  ({len(placed)} placements)")

    placements = {p.key: PlacedReplica(revision=i + 1, placement=p) for i, p in enumerate(placed)}
    statuses = {status.key: (status, 1) for status, _ in plan.statuses}
    steady = Snapshot(**{**empty.__dict__, "placements": placements, "statuses": statuses})
    steady_runs = [timed(steady)[0] for _ in range(args.repeat)]
    print(f"steady state (no-op)   : {statistics.median(steady_runs) * 1000:8.1f} ms")

    lost = dict(steady.node_last_seen, **{"node-0": NOW - 60})
    node_loss = Snapshot(**{**steady.__dict__, "node_last_seen": lost})
    loss_seconds, loss_plan = timed(node_loss)
    moved = len(loss_plan.place)
    print(f"one node lost          : {loss_seconds * 1000:8.1f} ms  ({moved} replicas re-placed)")

    usage: dict[str, Usage] = {}
    for placement in placed:
        found = usage.setdefault(placement.node, Usage())
        found.cpu_millis += placement.cpu_millis
        found.memory_bytes += placement.memory_bytes
        found.pods += 1
    taken = {placement.replica for placement in placed}
    ready = set(steady.nodes)
    key = "default.app-0"

    ranking = NodeRanking()  # as the control loop keeps it
    for name, node in steady.nodes.items():
        used = usage.get(name) or Usage()
        ranking.update(name, node.capacity, used.cpu_millis, used.memory_bytes)

    def one(view: Snapshot, ranked: NodeRanking | None = ranking) -> tuple[float, Plan]:
        counter = itertools.count()
        started = time.perf_counter()
        plan = schedule_deployment(
            view,
            key,
            NOW,
            usage=usage,
            taken_names=taken,
            ready_nodes=ready,
            wall_time=0.0,
            new_suffix=lambda: f"new{next(counter):05d}",
            ranking=ranked,
        )
        return time.perf_counter() - started, plan

    mine = {k: p for k, p in placements.items() if p.placement.deployment_key == key}
    view = Snapshot(
        **{
            **steady.__dict__,
            "deployments": {key: steady.deployments[key]},
            "statuses": {key: statuses[key]},
            "placements": mine,
            "orphan_holders": frozenset(),  # as the control loop's index says: none
        }
    )
    repeat = max(args.repeat, 20)
    noop = statistics.median(one(view)[0] for _ in range(repeat))
    print(f"one Deployment, no-op  : {noop * 1000:8.2f} ms")
    deployment = view.deployments[key]
    grown = msgspec.structs.replace(
        deployment, spec=msgspec.structs.replace(deployment.spec, replicas=len(mine) + 1)
    )
    scaled = Snapshot(**{**view.__dict__, "deployments": {key: grown}})
    runs = [one(scaled) for _ in range(repeat)]
    assert len(runs[0][1].place) == 1
    scale = statistics.median(r[0] for r in runs)
    among = f"1 placement among {len(ready)} nodes"
    print(f"one Deployment, +1     : {scale * 1000:8.2f} ms  ({among}, off the ranking)")
    every = [one(scaled, None) for _ in range(repeat)]
    assert [p.node for p in every[0][1].place] == [p.node for p in runs[0][1].place]
    scale = statistics.median(r[0] for r in every)
    print(f"  ranking every node   : {scale * 1000:8.2f} ms")
    many = len(ready) // 2
    wide = msgspec.structs.replace(
        deployment, spec=msgspec.structs.replace(deployment.spec, replicas=len(mine) + many)
    )
    widened = Snapshot(**{**view.__dict__, "deployments": {key: wide}})
    for label, ranked in (("off the ranking", ranking), ("ranking every node", None)):
        seconds = statistics.median(one(widened, ranked)[0] for _ in range(max(args.repeat, 5)))
        print(f"one Deployment, +{many:<5}: {seconds * 1000:8.2f} ms  ({label})")


if __name__ == "__main__":
    main()
