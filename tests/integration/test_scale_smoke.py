"""The scale benchmark's small version, as a smoke test of the same code path: a
hollow cluster of 200 nodes, 5,000 replicas, a node lost while placing and one after,
every agent cut off at once
(nats-server paused) and back. No timing assertion: it
checks that every step completes and the table is written."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "bench_scale.py"
PLOT = BENCH.with_name("plot_scale.py")


@pytest.mark.timeout(420)  # beyond the bench's 280 s and the plot's 120 s
def test_the_small_scale_benchmark_places_runs_and_replaces_everything(tmp_path: Path) -> None:
    out = tmp_path / "scale.md"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            *("--steady", "3", "--timeout", "200", "--out", str(out)),
            *("--keep-logs", str(tmp_path / "logs")),
            *("--simulator-processes", "2"),  # the nodes shared: summed lateness, ports
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = out.read_text()
    for row in (
        "placements committed per second",
        "time to all 5,000 Running",
        "apply p50 / p99 while steady",
        "the store's own write p50 / p99 while placing",
        "the store's own write p50 / p99 while steady",
        "simulator's event loop late over 0.5 s while placing",
        "simulator's passes: wait for their turn p50 / p99, first apply to all Running",
        "nodes ready, fewest while placing",
        "one node lost halfway through placing",
        "running elsewhere after",
        "nats-server paused 5 s (every agent cut off)",
        "all nodes ready again after",
        "that recovery: JetStream API requests / errors, consumers after",
        "replicas placed anew meanwhile",
        "agents that stopped their replicas (entries to Stopping), from the pause on | 0 |",
        "simulator's event loop late over 0.5 s, from the pause on",
        "how the agents' placements became current again, from the pause on | ",
        "stream writes per node, from the pause on | ",
        "control plane + nats-server resident memory",
        "NATS messages in / out per replica, first apply to all Running",
        "stream writes per replica, first apply to all Running | KV_corral_",
    ):
        assert row in table, table
    assert "not within" not in table, table
    assert "the simulator in 2 processes" in table, table

    for phase in ("placing", "steady"):  # timed writes and answers, not an empty list's nan
        written = rf"the store's own write p50 / p99 while {phase} \| [\d.]+ / [\d.]+ ms \([1-9]"
        assert re.search(written, table), table
        answers = rf"own answer to apply, p50 / p99 while {phase} \| [\d.]+ / [\d.]+ ms \([1-9]"
        assert re.search(answers, table), table

    for name in ("hollow-cluster-0", "hollow-cluster-1"):
        assert f"| {name}: resident memory" in table, table
    # nats-server's memory read from its profiling port, before and after collections.
    go = (
        r"resident \d+ MiB: heap \d+ MiB \(block buffers \d+ MiB\), free heap kept \d+ MiB,"
        r" stacks \d+ MiB for [1-9][\d,]* goroutines \([1-9][\d,]* consumers\)"
    )
    assert re.search(rf"nats-server's memory as Go counts it, at the end \| {go}", table), table
    assert re.search(rf"nats-server after forced collections \(live\) \| {go}", table), table
    # Samples were read from both simulators and from the scheduler, not defaults.
    assert re.search(r"while placing \| \d+ of [1-9]\d* samples \(the latest", table), table
    midburst = r"halfway through placing \(\d+ replicas\): placed elsewhere after \| [\d.]+ s \("
    assert re.search(midburst, table), table
    fewest = r"fewest while placing \(the scheduler's count; [^|]*\| [\d,]+ of 202 \([1-9]"
    assert re.search(fewest, table), table
    # The simulator's passes took turns (its default gate), read from both processes.
    waits = (
        r"wait for their turn p50 / p99, first apply to all Running \| [\d.]+ / [\d.]+ ms \([1-9]"
    )
    assert re.search(waits, table), table
    # Agents isolated in the outage, read from both simulators: about one entry per
    # simulated agent (200; one already Isolated at the pause counts none, one that
    # flaps counts twice), so at least 150, more than either process holds.
    # Read from the simulators' counters: a way back named with its count.
    back = r"became current again, from the pause on \| (new|kept_by_acks|kept_by_echo) [\d,]+"
    assert re.search(back, table), table
    wrote = r"stream writes per node, from the pause on \| [^|]*KV_corral_nodes [\d.]+"
    assert re.search(wrote, table), table  # the agents' record writes on the way back
    isolated = re.search(
        r"agents isolated \(entries to Isolated\), from the pause[^|]*\| ([\d,]+)", table
    )
    assert isolated is not None and int(isolated.group(1).replace(",", "")) >= 150, table
    # The timeline beside it has samples, and draws.
    timeline = out.with_suffix(".csv").read_text().splitlines()
    assert timeline[0] == (
        "seconds,placements_made,replicas_ready,nodes_ready,view_fresh,store_write_ms"
    )
    assert len(timeline) >= 3, timeline
    rows = ([float(v) if v else math.nan for v in line.split(",")] for line in timeline[1:])
    columns = list(zip(*rows, strict=True))  # an empty store cell: no write in that sample
    assert max(columns[1]) > 0 and max(columns[3]) == 202, timeline  # placements, nodes
    writes = [ms for ms in columns[5] if not math.isnan(ms)]
    assert max(columns[4]) == 1 and writes and max(writes) > 0, timeline  # view, store
    # Every process's log was kept, the simulators' with their collections policy on.
    logs = tmp_path / "logs"
    for name in ("scheduler", "nats-server", "hollow-cluster-0", "hollow-cluster-1"):
        assert (logs / f"{name}.log").stat().st_size > 0, name
    drawn = subprocess.run(
        [sys.executable, str(PLOT), str(out.with_suffix(".csv")), "--out", str(tmp_path / "t.svg")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert drawn.returncode == 0, drawn.stderr
