"""The scale benchmark stopped with SIGTERM (timeout(1), a CI runner, `kill`) stops every
process it started: nats-server, the control plane and the hollow cluster do not run on
without it, eating the cores of the next run."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from tests.waiting import current, eventually

BENCH = Path(__file__).parents[2] / "bench" / "bench_scale.py"


def descendants(pid: int) -> set[int]:
    """The processes below `pid` now (from /proc: children of each of its threads)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{task}/children").read_text()
            except FileNotFoundError:
                continue
            for child in map(int, text.split()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (one nobody reaped has stopped all the same)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(120)
async def test_sigterm_stops_every_process_the_benchmark_started(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(BENCH),
        *("--nodes", "20", "--replicas", "40", "--deployments", "2"),
        *("--steady", "60", "--outage", "0", "--timeout", "100"),
        *("--out", str(tmp_path / "scale.md")),
    ]
    log = tmp_path / "bench.log"
    started: set[int] = set()
    with log.open("wb") as output:
        bench = await anyio.open_process(command, stdout=output, stderr=output)
    try:
        # nats-server, scheduler, netmgr, volmgr, the hollow cluster and its victim.
        started = await eventually(
            lambda: current(descendants(bench.pid)), lambda found: len(found) >= 6, within=60
        )
        bench.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            await bench.wait()
        assert bench.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert [pid for pid in started if running(pid)] == []
    finally:
        if bench.returncode is None:
            bench.kill()
            await bench.wait()
        for pid in started:  # what a failed run left (reparented: found by its pid)
            if running(pid):
                os.kill(pid, signal.SIGKILL)
