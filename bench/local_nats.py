"""A nats-server of a benchmark's own: JetStream on, free loopback ports, a temporary
store; ready when it yields, stopped and its store removed after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from bench_deploy import free_port_block  # the same free-port search as the deploy bench

from corral.client.local.nats_server import (
    jetstream_answers,
    nats_server_command,
    nats_server_env,
)


@dataclass(frozen=True)
class LocalNats:
    url: str
    monitor_port: int  # its HTTP monitoring port (-m)
    pid: int = 0  # its process (0: not started here)

    def _monitor(self, page: str) -> dict[str, Any]:
        """One page of the server's HTTP monitoring, decoded."""
        address = f"http://127.0.0.1:{self.monitor_port}/{page}"
        # As long as a busy server may take: a run that does not converge still saves
        # its table.
        with urllib.request.urlopen(address, timeout=30) as answer:
            document: dict[str, Any] = json.loads(answer.read())
        return document

    def varz(self) -> dict[str, int]:
        """The server's message and byte counters (/varz)."""
        document = self._monitor("varz")
        return {k: int(document[k]) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}

    def jetstream(self) -> dict[str, int]:
        """JetStream's consumers now and its API requests so far (/jsz)."""
        document = self._monitor("jsz")
        api = document.get("api", {})
        return {
            "consumers": int(document.get("consumers", 0)),
            "api_requests": int(api.get("total", 0)),
            "api_errors": int(api.get("errors", 0)),
        }

    def stream_writes(self) -> dict[str, int]:
        """Each stream's last sequence: how many messages were ever written to it (/jsz)."""
        document = self._monitor("jsz?accounts=true&streams=true")
        return {
            stream["name"]: int(stream.get("state", {}).get("last_seq", 0))
            for account in document.get("account_details") or []
            for stream in account.get("stream_detail") or []
        }


_sigterm = {"holding": False, "held": 0}  # see sigterm_held


def exit_on_sigterm() -> None:
    """SIGTERM (timeout(1), a CI runner, `kill`) ends the run as Ctrl-C does: through
    the `finally` that stops every process it started, not around it (and not inside
    a `sigterm_held` block: right after it)."""

    def terminated(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut it short
        if _sigterm["holding"]:
            _sigterm["held"] = signum
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)


@contextmanager
def sigterm_held() -> Iterator[None]:
    """A SIGTERM that comes during the block ends the run when the block is done: a
    process started in it is registered for the clean-up before the run ends (ended
    between the start and the registration, it would run on)."""
    _sigterm["holding"] = True
    try:
        yield
    finally:
        _sigterm["holding"] = False
        held, _sigterm["held"] = _sigterm["held"], 0
        if held:
            raise SystemExit(128 + held)


@contextmanager
def local_nats(prefix: str = "corral-bench-") -> Iterator[LocalNats]:
    """Start one (not from inside a running event loop: it waits with anyio.run)."""
    store = Path(tempfile.mkdtemp(prefix=prefix))
    server: subprocess.Popen[bytes] | None = None
    try:
        port = free_port_block(2)
        url = f"nats://127.0.0.1:{port}"
        command = nats_server_command("127.0.0.1", port, store / "jetstream")
        server = subprocess.Popen(
            [*command, "-m", str(port + 1)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **nats_server_env()},
        )
        deadline = time.monotonic() + 15
        while not anyio.run(jetstream_answers, url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start within 15 s")
            time.sleep(0.1)
        yield LocalNats(url, port + 1, server.pid)
    finally:
        stop_and_remove(server, store)


def stop_and_remove(server: subprocess.Popen[bytes] | None, store: Path) -> None:
    """Stop a server started here (killed when it has not stopped within 10 s), then
    remove its store, whatever the stop did."""
    try:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(store, ignore_errors=True)
