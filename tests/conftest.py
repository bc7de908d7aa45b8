"""Fixtures shared by every test folder: a real nats-server with JetStream on a
random free port, and a connected client with corral's streams and buckets."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.client.local.nats_server import nats_server_command
from corral.natsio.bus import connect, ensure_streams, open_buckets
from corral.natsio.kv import NatsBucket


@pytest.fixture(autouse=True)
def _decide_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """CORRAL_TEST_DECIDE_IN=thread|loop runs every scheduler ControlLoop made in a test
    with its decision there (corral_scheduler.control_loop.DecideIn): the same tests hold
    both ways."""
    mode = os.environ.get("CORRAL_TEST_DECIDE_IN")
    if mode:
        from corral_scheduler import control_loop

        monkeypatch.setattr(control_loop, "DECIDE_IN", control_loop.DecideIn(mode))


@pytest.fixture(autouse=True)
def _agent_process_starts_with_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node agents run in-process here: each test is a new agent process, whose cut-off
    clock counts from its start when it has no acknowledged write noted
    (corral_node_agent.main.counting_from), not from when the test session imported
    the agent. Else an agent started more than F (20 s) into the session goes Stopping
    at once, removing its replicas until its first write is acknowledged (a restart
    "adopting its own" then made them anew). tests/agents.py resets it at each agent
    start too, for a test that starts one more than F into itself."""
    from corral_node_agent import main

    monkeypatch.setattr(main, "PROCESS_STARTED", time.monotonic())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """A nats-server process with JetStream, stoppable and restartable on the same port."""

    def __init__(self, store_dir: Path) -> None:
        self.port = free_port()
        self.store_dir = store_dir
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            nats_server_command("127.0.0.1", self.port, self.store_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("nats-server exited at start") from None
                time.sleep(0.02)
        raise RuntimeError("nats-server did not listen within 10 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def buckets(nats_url: str) -> AsyncIterator[dict[str, NatsBucket]]:
    """corral's buckets on the test server, through a client of the test's own."""
    nc = await connect(nats_url, name="test")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        yield await open_buckets(js)
    finally:
        await nc.close()
