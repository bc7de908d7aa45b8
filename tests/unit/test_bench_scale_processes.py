"""bench_scale.py's processes: the simulator's run as much nicer as --simulator-nice
says (read back from the kernel), and a process started is stopped with the rest."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).parents[2] / "bench"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def bench_scale(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # its sibling modules, as when run as a script
    return importlib.import_module("bench_scale")


def _args(nice: int, passes: int | None = None, python_gc: bool = False) -> argparse.Namespace:
    return argparse.Namespace(
        simulator_processes=2,
        simulator_nice=nice,
        simulator_passes=passes,
        pods=110,
        ready_after=0.5,
        placements_watch="consumer",
        simulator_pool=None,
        simulator_python_gc=python_gc,
    )


def test_a_process_started_nicer_is_that_much_nicer_and_is_stopped_with_the_rest(
    bench_scale: ModuleType, tmp_path: Path
) -> None:
    cluster = bench_scale.Cluster(_args(7), tmp_path)
    try:
        nicer = cluster.start("nicer", SLEEPER, nice=7)
        same = cluster.start("same", SLEEPER)
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert nicer.nice() == min(own + 7, 19)
        assert same.nice() == own
    finally:
        cluster.stop()
    assert nicer.popen.poll() is not None and same.popen.poll() is not None
    assert nicer.nice() is None  # gone


def test_the_simulators_processes_and_the_victim_get_the_simulator_nice(
    bench_scale: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = bench_scale.Cluster(_args(5), tmp_path)
    started: dict[str, int] = {}

    def start(name: str, command: list[str], env: object = None, nice: int = 0) -> None:
        started[name] = nice

    monkeypatch.setattr(cluster, "start", start)
    cluster.start_hollow("hollow-cluster-0", 10, "hollow-0-")
    cluster.start_hollow("victim", 1, "victim-")
    assert started == {"hollow-cluster-0": 5, "victim": 5}


@pytest.mark.parametrize(("passes", "flag"), [(None, []), (0, ["0"]), (3, ["3"])])
def test_the_simulators_passes_at_once_are_given_only_when_asked(
    bench_scale: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    passes: int | None,
    flag: list[str],
) -> None:
    cluster = bench_scale.Cluster(_args(0, passes), tmp_path)
    commands: dict[str, list[str]] = {}

    def start(name: str, command: list[str], env: object = None, nice: int = 0) -> None:
        commands[name] = command

    monkeypatch.setattr(cluster, "start", start)
    cluster.start_hollow("hollow-cluster-0", 10, "hollow-0-")
    command = commands["hollow-cluster-0"]
    given = command[command.index("--passes-parallel") + 1 :][:1] if flag else []
    assert given == flag and ("--passes-parallel" in command) == bool(flag)


@pytest.mark.parametrize("python_gc", [False, True])
def test_the_simulators_collections_are_left_to_python_only_when_asked(
    bench_scale: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_gc: bool
) -> None:
    cluster = bench_scale.Cluster(_args(0, python_gc=python_gc), tmp_path)
    commands: dict[str, list[str]] = {}

    def start(name: str, command: list[str], env: object = None, nice: int = 0) -> None:
        commands[name] = command

    monkeypatch.setattr(cluster, "start", start)
    cluster.start_hollow("hollow-cluster-0", 10, "hollow-0-")
    assert ("--python-gc" in commands["hollow-cluster-0"]) is python_gc


def test_a_sigterm_while_a_process_starts_ends_the_run_once_it_is_registered(
    bench_scale: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ended between its start and its registration, a process would run on after the
    run (the clean-up stops only what it knows)."""
    local_nats = importlib.import_module("local_nats")
    before = signal.getsignal(signal.SIGTERM)
    cluster = bench_scale.Cluster(_args(0), tmp_path)
    real_popen = subprocess.Popen

    def popen_then_sigterm(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started: subprocess.Popen[bytes] = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        os.kill(os.getpid(), signal.SIGTERM)  # handled before Popen returns
        return started

    try:
        local_nats.exit_on_sigterm()
        monkeypatch.setattr(subprocess, "Popen", popen_then_sigterm)
        with pytest.raises(SystemExit) as ended:
            cluster.start("sleeper", SLEEPER)
        assert ended.value.code == 128 + signal.SIGTERM
        assert "sleeper" in cluster.procs  # registered: stopped with the rest
    finally:
        monkeypatch.undo()
        cluster.stop()
        signal.signal(signal.SIGTERM, before)
    assert cluster.procs["sleeper"].popen.poll() is not None


class _Resident:
    """A process as nats_server_memory reads it: its resident memory only."""

    def rss_mib(self) -> float:
        return 300.0


async def test_a_failed_read_of_nats_servers_memory_costs_its_rows_not_the_table(
    bench_scale: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import http.client

    def broken(port: int, *, collect: bool = False) -> None:
        raise http.client.IncompleteRead(b"heap profile: 1")  # not an OSError

    monkeypatch.setattr(bench_scale, "read_go_memory", broken)
    results = bench_scale.Results()
    await bench_scale.nats_server_memory(_Resident(), 1, results)
    assert [what for what, _, _ in results.rows] == ["nats-server's memory as Go counts it"]
    assert results.rows[0][1].startswith("not read (IncompleteRead(")
