"""`corral up` / `corral down` end to end: real nats-server, the real services as
processes (the node agent on the hollow runtime, so no Docker is needed)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

from corral.client.local.layout import Layout
from corral.client.local.processes import ProcessRef, stop_processes
from corral.client.local.state_file import SupervisorRecord, read_state

UP_TIMEOUT = 120


def _free_block(size: int) -> int:
    """A port p with p .. p+size-1 all free on 127.0.0.1, below Linux's ephemeral range
    (32768-60999): a port picked there may be taken by any outgoing connection before
    the service binds it."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - size)
        held = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no block of free ports")


class LocalCorral:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.layout = Layout.at(data_dir)
        self.nats_port = _free_block(1)
        self.metrics_base = _free_block(5)
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"

    def command(self, verb: str, *extra: str) -> list[str]:
        args = [sys.executable, "-m", "corral.client.local", verb, "--data-dir", str(self.data_dir)]
        if verb == "up":
            args += [
                "--nats-port",
                str(self.nats_port),
                "--metrics-base-port",
                str(self.metrics_base),
                "--runtime",
                "hollow",
                "--node-name",
                "local-test",
            ]
        return [*args, *extra]

    def run(self, verb: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(verb, *extra),
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT + 30,
            check=False,
        )

    def up(self) -> SupervisorRecord:
        result = self.run("up", "-d")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "corral is up" in result.stdout
        record = read_state(self.layout)
        assert record is not None and record.ready
        return record

    def all_refs(self, record: SupervisorRecord) -> list[ProcessRef]:
        refs = [record.ref()]
        refs += [ref for child in record.children if (ref := child.ref()) is not None]
        return refs


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalCorral]:
    corral = LocalCorral(tmp_path / "corral-data")
    seen: list[ProcessRef] = []
    try:
        yield corral
    finally:
        record = read_state(corral.layout)
        if record is not None:
            seen = corral.all_refs(record)
        corral.run("down")
        # Whatever a failed test left behind.
        stop_processes([ref for ref in seen if ref.alive()], timeout=5)


def test_up_starts_everything_healthy_and_down_stops_every_process(local: LocalCorral) -> None:
    record = local.up()
    assert local.layout.pid_file.read_text().strip() == str(record.pid)
    names = sorted(child.name for child in record.children)
    assert names == ["nats", "netmgr", "node-agent", "scheduler", "volmgr"]
    for child in record.children:
        ref = child.ref()
        assert ref is not None and ref.alive(), child
        assert Path(child.log).exists()
        if child.health_url is not None:
            assert _status(child.health_url) == 200, child.name
            # A service process loads no HTTP client or YAML library (corral.natsio.lean;
            # hollow runtime here, so the node agent has no aiodocker either): none of
            # their compiled extensions is mapped into it.
            maps = Path(f"/proc/{ref.pid}/maps").read_text()
            for library in ("/aiohttp/", "/multidict/", "/yarl/", "/yaml/"):
                assert library not in maps, (child.name, library)
    assert (local.layout.nats_store / "jetstream").is_dir()

    refs = local.all_refs(record)
    result = local.run("down")
    assert result.returncode == 0, result.stderr
    assert "corral stopped" in result.stdout
    assert [ref for ref in refs if ref.alive()] == []
    assert not local.layout.pid_file.exists()

    again = local.run("down")
    assert again.returncode == 0
    assert "not running" in again.stdout


def test_a_second_up_is_refused_while_one_runs(local: LocalCorral) -> None:
    record = local.up()
    second = local.run("up", "-d")
    assert second.returncode != 0
    assert "already running" in second.stderr + second.stdout
    still = read_state(local.layout)
    assert still is not None and still.pid == record.pid


def test_a_killed_child_is_restarted(local: LocalCorral) -> None:
    record = local.up()
    agent = next(child for child in record.children if child.name == "node-agent")
    old = agent.ref()
    assert old is not None and agent.health_url is not None
    os.kill(old.pid, signal.SIGKILL)

    def restarted() -> bool:
        now = read_state(local.layout)
        if now is None:
            return False
        child = next(child for child in now.children if child.name == "node-agent")
        ref = child.ref()
        return child.restarts == 1 and ref is not None and ref.pid != old.pid and ref.alive()

    _until(restarted, 30, "the node agent to be restarted")
    _until(lambda: _status(agent.health_url or "") == 200, 60, "the new node agent's /healthz")
    assert "restarting in" in Path(agent.log).read_text()
    assert "node-agent exited" in local.layout.supervisor_log.read_text()


async def test_state_survives_down_and_up(local: LocalCorral) -> None:
    local.up()
    nc = await nats.connect(local.nats_url)
    try:
        kv = await nc.jetstream().create_key_value(bucket="local_test")
        await kv.put("kept", b"across restarts")
    finally:
        await nc.close()
    assert local.run("down").returncode == 0

    local.up()
    nc = await nats.connect(local.nats_url)
    try:
        kv = await nc.jetstream().key_value("local_test")
        entry = await kv.get("kept")
        assert entry.value == b"across restarts"
    finally:
        await nc.close()


def test_foreground_up_stops_everything_on_sigterm(local: LocalCorral) -> None:
    with (local.layout.data_dir.parent / "foreground.log").open("w+") as output:
        local.layout.data_dir.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(local.command("up"), stdout=output, stderr=subprocess.STDOUT)
        try:
            _until(
                lambda: (record := read_state(local.layout)) is not None and record.ready,
                UP_TIMEOUT,
                "corral up to be ready",
            )
            record = read_state(local.layout)
            assert record is not None
            refs = local.all_refs(record)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
            assert [ref for ref in refs if ref.alive()] == []
            output.seek(0)
            text = output.read()
            assert "corral is up" in text
            assert "corral stopped" in text
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_down_stops_the_children_of_a_supervisor_that_was_killed(local: LocalCorral) -> None:
    record = local.up()
    children = [ref for child in record.children if (ref := child.ref()) is not None]
    os.kill(record.pid, signal.SIGKILL)
    _until(lambda: not record.ref().alive(), 10, "the supervisor to die")
    assert all(ref.alive() for ref in children)  # orphans: in their own session

    result = local.run("down")
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout and "stopped leftovers" in result.stdout
    assert [ref for ref in children if ref.alive()] == []


def test_up_refuses_a_port_in_use(local: LocalCorral) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", local.metrics_base + 2))
        squatter.listen()
        result = local.run("up")
    assert result.returncode != 0
    assert f"port(s) {local.metrics_base + 2}" in result.stderr
    assert not local.layout.pid_file.exists()
