"""What judging node liveness costs the scheduler's event loop: every node judged at
every pass (as before) vs only the nodes whose moment came (the heap of moments,
control_loop.py).

    .venv/bin/python bench/bench_judge.py [--nodes 5000] [--seconds 30] [--silent 50]
                                          [--heard-every 1] [--out table.txt]

In this process, on in-memory buckets and a simulated clock: `--nodes` nodes with a
record each, every one heard every `--heard-every` seconds at its own moment (its clock set, as
the heartbeat thread does, spread evenly; 3 s is what heartbeats acknowledged late
look like, each node's silence near R), except `--silent` of them that
fall silent a third of the way in (they are judged lost R later). The passes come
when the loop would wake (`wait_seconds`, at most a tick apart) and judge the nodes
(`judge_nodes` every node, `judge_due_nodes` those due); only they are timed.
Printed per mode: passes per simulated second, nodes judged per second, the CPU time
the passes took per simulated second (the share of a core judging takes), and when
the silent nodes were judged lost after their silence passed R (simulated seconds:
both modes must say the same).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anyio

from corral.contract.codec import encode
from corral.contract.state import Node, NodeCapacity
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.natsio.cluster import cluster_buckets
from corral.natsio.kv import Entry, MemoryBucket
from corral_scheduler.control_loop import ControlLoop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def run_mode(
    mode: str, nodes: int, seconds: float, silent: int, every: float
) -> dict[str, float]:
    clock = Clock()
    buckets = {name: MemoryBucket(name) for name in cluster_buckets(1)}
    loop = ControlLoop(buckets, None, monotonic=clock, wall_clock=time.time)  # type: ignore[arg-type]
    names = [f"node-{index}" for index in range(nodes)]
    capacity = NodeCapacity(cpu_millis=4000, memory_bytes=2**33)
    for revision, name in enumerate(names, start=1):
        loop.nodes.apply(Entry(name, encode(Node(name=name, capacity=capacity)), revision))
        loop.node_last_seen[name] = clock.now
    loop.feed_fresh_since = clock.now  # the view fresh throughout
    judge = loop.judge_nodes if mode == "every node" else loop.judge_due_nodes
    loop.judge_nodes(clock.now)  # the first pass judges every node in both modes
    quiet = set(names[:silent])
    start = clock.now
    silent_from = start + seconds / 3
    beat = 0  # the beat-th of all: node beat % nodes, in round beat // nodes
    passes = 0
    judged = 0
    busy = 0.0
    lost_at: dict[str, float] = {}
    next_pass = clock.now + loop.wait_seconds()
    while next_pass < start + seconds:
        while True:  # the beats up to the next pass, in order, as the heartbeat thread
            name = names[beat % nodes]
            at = start + every * (beat // nodes + (beat % nodes) / nodes)
            if at > next_pass:
                break
            beat += 1
            if name not in quiet or at < silent_from:
                loop.node_last_seen[name] = at
        clock.now = next_pass
        began = time.perf_counter()
        count = judge(clock.now)
        busy += time.perf_counter() - began
        passes += 1
        judged += nodes if count is None else count
        for name in quiet:
            if name not in lost_at and name not in loop.ready_nodes:
                lost_at[name] = clock.now
        next_pass = clock.now + loop.wait_seconds()
    late = [lost_at[name] - (loop.node_last_seen[name] + NODE_LOST_SECONDS) for name in lost_at]
    return {
        "passes/s": passes / seconds,
        "judged/s": judged / seconds,
        "cpu ms/s": 1000 * busy / seconds,
        "lost": len(lost_at),
        "judged lost after R, worst ms": 1000 * max(late, default=float("nan")),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--silent", type=int, default=50)
    parser.add_argument(
        "--heard-every", type=float, default=1.0, help="seconds between a node's signs"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for mode in ("every node", "due nodes"):
        result = await run_mode(mode, args.nodes, args.seconds, args.silent, args.heard_every)
        rows.append((mode, result))
    widths = [max(12, len(key) + 2) for key in rows[0][1]]
    header = f"{'judging':<12}" + "".join(
        f"{key:>{width}}" for key, width in zip(rows[0][1], widths, strict=True)
    )
    lines = [
        f"{args.nodes} nodes heard every {args.heard_every:g} s, {args.silent} falling silent, "
        f"{args.seconds:.0f} simulated seconds",
        header,
    ]
    for mode, result in rows:
        cells = "".join(
            f"{value:>{width}.1f}" if isinstance(value, float) else f"{value:>{width}}"
            for value, width in zip(result.values(), widths, strict=True)
        )
        lines.append(f"{mode:<12}{cells}")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    anyio.run(main)
