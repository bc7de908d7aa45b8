"""bench_status_writes.py runs on a real nats-server and prints both ways of writing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "bench_status_writes.py"


def test_the_status_writes_benchmark_prints_both_ways() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--counts", "5", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "5 statuses, one after another" in done.stdout, done.stdout
    assert "5 statuses, together" in done.stdout, done.stdout
