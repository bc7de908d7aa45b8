"""bench_watch_scan.py runs on a real nats-server and prints a row per count of
watchers and buckets (sizes too small to mean anything: the path is what is tested)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "bench_watch_scan.py"


def test_the_watch_scan_benchmark_prints_a_row_per_shape() -> None:
    command = [
        sys.executable,
        str(BENCH),
        *("--watchers", "3,120", "--writes", "300", "--shards", "1,2"),
        *("--late-watches", "4", "--timeout", "60"),
    ]
    # A session of its own: on a timeout its nats-server goes with it (SIGTERM to the
    # group lets the benchmark's clean-up stop the server and remove its store).
    bench = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = bench.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stop_group(bench, signal.SIGTERM)
        try:
            stdout, stderr = bench.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", ""
        raise AssertionError(f"the benchmark did not end in 120 s: {stdout}{stderr}") from None
    finally:
        if bench.poll() is None:
            stop_group(bench, signal.SIGKILL)
            bench.wait()
    assert bench.returncode == 0, stderr[-3000:]
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "µs" in line]
    shapes = [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows]
    assert shapes == [("3", "1"), ("120", "1"), ("3", "2"), ("120", "2")], stdout


def stop_group(process: subprocess.Popen[str], how: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, how)
