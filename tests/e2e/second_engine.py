"""A second Docker engine on this machine, as a second node's engine (RECIPES.md):
its own data and exec roots, its own socket and its own bridge."""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BRIDGE = "corraltest2"
BRIDGE_ADDRESS = "172.30.2.1/24"


def _run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> None:
    subprocess.run(list(args), check=check, capture_output=True, timeout=120, env=env)


def _answers(host: str) -> bool:
    done = subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30, env={**os.environ, "DOCKER_HOST": host}
    )
    return done.returncode == 0


@contextmanager
def second_engine(root: Path, image: str) -> Iterator[str]:
    """Start dockerd on its own bridge, load `image` into it; yields its DOCKER_HOST.
    Everything is removed on exit: the engine, its containers, its bridge, its folders."""
    if shutil.which("dockerd") is None or shutil.which("ip") is None:
        raise RuntimeError("dockerd and ip (iproute2) are needed for a second engine")
    _run("ip", "link", "del", BRIDGE, check=False)  # a leftover of an interrupted run
    remove_rules_of(BRIDGE)
    _run("ip", "link", "add", "name", BRIDGE, "type", "bridge")
    process: subprocess.Popen[bytes] | None = None
    try:
        _run("ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        socket = root / "docker.sock"
        host = f"unix://{socket}"
        with (root / "dockerd.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    "dockerd",
                    "--data-root",
                    str(root / "data"),
                    "--exec-root",
                    str(root / "exec"),
                    "--pidfile",
                    str(root / "docker.pid"),
                    "-H",
                    host,
                    "--bridge",
                    BRIDGE,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not _answers(host):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second dockerd did not answer; see {root}/dockerd.log")
            time.sleep(0.2)
        saved = subprocess.run(
            ["docker", "save", image], capture_output=True, timeout=120, check=True
        )
        subprocess.run(
            ["docker", "load", "-q"],
            input=saved.stdout,
            capture_output=True,
            timeout=120,
            check=True,
            env={**os.environ, "DOCKER_HOST": host},
        )
        yield host
    finally:
        if process is not None and process.poll() is None:
            ids = subprocess.run(
                ["docker", "ps", "-aq"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "DOCKER_HOST": f"unix://{root / 'docker.sock'}"},
            ).stdout.split()
            if ids:
                _run(
                    "docker",
                    "rm",
                    "-f",
                    *ids,
                    check=False,
                    env={**os.environ, "DOCKER_HOST": f"unix://{root / 'docker.sock'}"},
                )
            # its networks too: dockerd leaves their bridges (and the routes to their
            # subnets) on the host when it stops, and a later network of that range
            # would be routed into a dead bridge
            _run(
                "docker",
                "network",
                "prune",
                "-f",
                check=False,
                env={**os.environ, "DOCKER_HOST": f"unix://{root / 'docker.sock'}"},
            )
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        _run("ip", "link", "del", BRIDGE, check=False)
        remove_rules_of(BRIDGE)
        shutil.rmtree(root, ignore_errors=True)


def remove_rules_of(bridge: str) -> None:
    """dockerd leaves its packet-filter rules for the bridge behind when it stops:
    delete exactly the rules that name this test's bridge or its subnet."""
    subnet = str(ipaddress.ip_interface(BRIDGE_ADDRESS).network)
    for table in ("filter", "nat"):
        saved = subprocess.run(
            ["iptables-save", "-t", table], capture_output=True, text=True, check=False
        ).stdout
        for line in saved.splitlines():
            if line.startswith("-A ") and (bridge in line.split() or subnet in line.split()):
                _run("iptables", "-t", table, "-D", *shlex.split(line[3:]), check=False)
