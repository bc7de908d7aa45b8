"""bench_watch_scan.py runs on a real nats-server and prints a row per count of
watchers and buckets (sizes too small to mean anything: the path is what is tested)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "bench_watch_scan.py"


def test_the_watch_scan_benchmark_prints_a_row_per_shape() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--watchers",
            "3,120",
            "--writes",
            "300",
            "--shards",
            "1,2",
            "--late-watches",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "µs" in line]
    shapes = [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows]
    assert shapes == [("3", "1"), ("120", "1"), ("3", "2"), ("120", "2")], done.stdout
