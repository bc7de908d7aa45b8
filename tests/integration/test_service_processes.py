"""Service processes as `corral up` starts them (their console scripts, against a real
nats-server): what is mapped into them and how many threads they run once started.
What each imports is pinned in tests/unit/test_service_imports.py; this checks the
running process (docs/architecture.md, "Idle memory")."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from tests.conftest import free_port
from tests.waiting import current as _value
from tests.waiting import eventually

# Mapped into no idle service process: OpenSSL's hashlib binding, the bz2 and lzma
# compressors and their libraries, the C++ runtime (frozenlist's compiled module).
NEVER_MAPPED = ("/_hashlib.", "/_bz2.", "/_lzma.", "libbz2", "liblzma", "libstdc++")


def console_script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            status: int = answer.status
            return status
    except OSError:
        return 0


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
        return text


@asynccontextmanager
async def service_process(
    script: str, nats_url: str, *extra: str
) -> AsyncIterator[tuple[int, int]]:
    """(pid, metrics port) of a started service; stopped with SIGTERM after."""
    port = free_port()
    command = [console_script(script), "--nats", nats_url, "--metrics-host", "127.0.0.1"]
    command += ["--metrics-port", str(port), "--log-level", "WARNING", *extra]
    process = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=None)
    try:

        async def status() -> int:
            assert process.returncode is None, f"{script} exited with {process.returncode}"
            return await anyio.to_thread.run_sync(healthz, port)

        await eventually(status, lambda code: code == 200, within=20)
        yield process.pid, port
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(15):
            process.terminate()
            await process.wait()
        await process.aclose()


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


@pytest.mark.parametrize(
    ("script", "extra", "own_threads"),
    [
        # the scheduler answers requests and heartbeats on threads of their own
        ("corral-scheduler", (), 3),
        ("corral-netmgr", (), 1),
        ("corral-volmgr", (), 1),
        ("corral-node-agent", ("--runtime", "hollow", "--node-name", "lean-1"), 1),
    ],
)
async def test_a_started_service_maps_nothing_it_left_out_and_runs_only_its_own_threads(
    nats_url: str, tmp_path: Path, script: str, extra: tuple[str, ...], own_threads: int
) -> None:
    if script == "corral-node-agent":
        extra = (*extra, "--state-dir", str(tmp_path / "agent"))
    async with service_process(script, nats_url, *extra) as (pid, port):
        maps = mapped(pid)
        assert [name for name in NEVER_MAPPED if name in maps] == []
        # its own threads start with it (/healthz may answer before), and no other: no
        # worker thread left from a name lookup
        count = await eventually(lambda: _value(threads(pid)), lambda n: n >= own_threads)
        assert count == own_threads
        # /metrics still carries the default collectors, in the text format
        text = await anyio.to_thread.run_sync(metrics, port)
        assert "# TYPE python_gc_objects_collected_total counter" in text
        assert "process_resident_memory_bytes" in text
