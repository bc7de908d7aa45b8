"""An idle hollow cluster: how many nodes this machine holds ready, and what each costs.

The control plane as bench_scale.py starts it (nats-server, scheduler, netmgr, volmgr,
each its own process) and `--nodes` hollow nodes in `--simulator-processes` processes,
nothing applied. Every `--every` seconds one line: the nodes the scheduler counts
ready; each process's CPU over the period (a share of one core); the writes stored
per stream over the period (nodes records, placements (echo keys), events); and what
the hollow nodes report: their mode changes (`corral_agent_mode_entries_total`),
beats proven by late acks (`corral_agent_heartbeats_proven_late_total`) and mode
changes not reported as events (`corral_agent_mode_events_held_total`). At the end,
each process's CPU per node over the last half of the run (microseconds of CPU per
node and second): what holding a node costs the simulator and the control plane.

    .venv/bin/python bench/bench_idle_cluster.py [--nodes 2000] [--seconds 150]
        [--simulator-processes 2] [--placement-shards 16] [--every 10] [--keep]

Run it with PYTHONPATH pointing at the code to measure (bench/README.md, "Under
overload"). It removes everything it made (processes, the run's folder).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import tempfile
import time
from pathlib import Path

import anyio
from bench_scale import Cluster, nodes_ready_and_placed, samples
from local_nats import exit_on_sigterm

from corral.contract import names

# The hollow nodes' counters summed over the simulator's processes: (metric, label).
AGENT_COUNTERS = (
    ("corral_agent_mode_entries_total", "Isolated"),
    ("corral_agent_mode_entries_total", "Stopping"),
    ("corral_agent_heartbeats_proven_late_total", ""),
    ("corral_agent_mode_events_held_total", ""),
)


def stream_group(stream: str) -> str:
    """The column a stream's writes are counted in."""
    if stream.startswith("KV_" + names.NODES_BUCKET):
        return "nodes"
    if stream.startswith("KV_" + names.PLACEMENTS_BUCKET):
        return "placements"
    if stream == names.EVENTS_STREAM:
        return "events"
    return "other"


def agent_counters(cluster: Cluster) -> dict[str, float]:
    """AGENT_COUNTERS summed over the simulator's processes (those serving metrics)."""
    totals = {f"{metric}:{label}": 0.0 for metric, label in AGENT_COUNTERS}
    for name in cluster.simulators:
        try:
            text = cluster.metrics(name)
        except (OSError, http.client.HTTPException):
            continue  # serves its metrics once all its nodes started
        for sample in samples(text):
            for metric, label in AGENT_COUNTERS:
                if sample.name == metric and (not label or sample.labels.get("mode") == label):
                    totals[f"{metric}:{label}"] += sample.value
    return totals


async def run(args: argparse.Namespace) -> None:
    os.environ["CORRAL_PLACEMENT_SHARDS"] = str(args.placement_shards)
    settings = argparse.Namespace(
        simulator_processes=args.simulator_processes,
        decide_in=None,
        answer_in=None,
        python_gc=False,
        pods=110,
        ready_after=0.5,
        simulator_passes=None,
        placements_watch=args.placements_watch,
        simulator_pool=None,
        simulator_nice=0,
    )
    workdir = Path(tempfile.mkdtemp(prefix="corral-scale-idle-"))
    cluster = Cluster(settings, workdir)
    try:
        await cluster.start_control_plane()
        for index, name in enumerate(cluster.simulators):
            share = args.nodes // len(cluster.simulators) + (
                1 if index < args.nodes % len(cluster.simulators) else 0
            )
            cluster.start_hollow(name, share, f"hollow-{index}-")
        started = time.monotonic()
        print(
            f"{args.nodes:,} idle hollow nodes in {len(cluster.simulators)} processes "
            f"({os.cpu_count()} cores), placements in {args.placement_shards} shards",
            flush=True,
        )
        print(
            "  t (s) | ready | CPU % of a core: nats, scheduler, netmgr, volmgr, simulators "
            "| writes/s: nodes, placements, events | Isolated, Stopping, proven late, "
            "events held",
            flush=True,
        )
        cpu_before = {name: proc.cpu_seconds() for name, proc in cluster.procs.items()}
        writes_before: dict[str, int] = {}
        at_before = started
        halfway: tuple[float, dict[str, float]] | None = None
        ready_seen: list[int] = []
        while time.monotonic() - started < args.seconds:
            await anyio.sleep(args.every)
            now = time.monotonic()
            period = now - at_before
            cpu = {name: proc.cpu_seconds() for name, proc in cluster.procs.items()}
            if halfway is None and now - started >= args.seconds / 2:
                halfway = (now, cpu)
            try:
                writes = await anyio.to_thread.run_sync(cluster.stream_writes)
            except OSError:
                writes = dict(writes_before)
            grouped = {"nodes": 0, "placements": 0, "events": 0, "other": 0}
            for stream, count in writes.items():
                grouped[stream_group(stream)] += count - writes_before.get(stream, 0)
            ready, _ = await anyio.to_thread.run_sync(nodes_ready_and_placed, cluster)
            ready_seen.append(ready)
            counters = await anyio.to_thread.run_sync(agent_counters, cluster)
            shares = ", ".join(
                f"{100 * (cpu[name] - cpu_before[name]) / period:.0f}" for name in cluster.procs
            )
            print(
                f"  {now - started:5.0f} | {ready:5} | {shares} | "
                f"{grouped['nodes'] / period:.0f}, {grouped['placements'] / period:.0f}, "
                f"{grouped['events'] / period:.0f} | "
                + ", ".join(f"{value:.0f}" for value in counters.values()),
                flush=True,
            )
            cpu_before, writes_before, at_before = cpu, writes, now
        if halfway is not None:
            since, cpu_half = halfway
            span = time.monotonic() - since
            end = {name: proc.cpu_seconds() for name, proc in cluster.procs.items()}
            per_node = ", ".join(
                f"{name} {1e6 * (end[name] - cpu_half[name]) / span / args.nodes:.0f}"
                for name in cluster.procs
            )
            print(
                "CPU over the last half, µs per second and node of the cluster (the "
                f"simulators' summed: what simulating a node costs): {per_node}"
            )
        held = sum(1 for ready in ready_seen[len(ready_seen) // 2 :] if ready == args.nodes)
        print(
            f"every node ready in {held} of the last {len(ready_seen) - len(ready_seen) // 2} "
            "samples"
        )
    finally:
        cluster.stop()
        if args.keep:
            print(f"the run's folder (logs): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between lines")
    parser.add_argument("--simulator-processes", type=int, default=2)
    parser.add_argument("--placement-shards", type=int, default=16)
    parser.add_argument("--placements-watch", choices=["consumer", "reads"], default="consumer")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (its logs)")
    args = parser.parse_args()
    if args.nodes < 1 or args.simulator_processes < 1 or not args.every > 0:
        parser.error("--nodes, --simulator-processes and --every must be positive")
    names.check_placement_shards(args.placement_shards)
    anyio.run(run, args)


if __name__ == "__main__":
    main()
