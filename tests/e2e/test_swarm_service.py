"""`corral service create --publish P:8080` on the local Docker engine (`corral up`): the
command waits until the replica runs and its --health-cmd passes (a real exec probe),
the published port P answers on the node's address with the replica's hostname, and
`corral service rm` removes the container and the Service."""

from __future__ import annotations

import socket
import subprocess

import pytest

from corral.contract import names
from tests.e2e.test_local_networking import (
    CORRAL,
    HTTPD,
    DockerCorral,
    _try_get,
    local,
    until,
)
from tests.e2e.test_netmgr_node import Guard, sh, unchanged_host

pytestmark = pytest.mark.docker

__all__ = ["local", "unchanged_host"]  # fixtures, used by name


def free_node_port() -> int:
    """A port of the node-port range no process on this host listens on."""
    for port in range(31700, 32700, 7):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 31700-32700")


def test_a_published_swarm_service_answers_on_exactly_its_port(
    local: DockerCorral, test_image: str, unchanged_host: Guard
) -> None:
    local.up()
    port = free_node_port()
    created = subprocess.run(
        [
            CORRAL, "--nats", local.nats_url, "service", "create", "--name", "web",
            "--publish", f"{port}:8080",
            "--health-cmd", "wget -qO- http://127.0.0.1:8080/ >/dev/null",
            "--health-interval", "1s", "--health-retries", "3",
            test_image, "sh", "-c", HTTPD,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    assert (
        created.stdout == "web\n" and 'deployment "web" successfully rolled out' in created.stderr
    )
    replica = sh(
        "docker", "ps", "-q", "--filter", f"label={names.LABEL_NODE}={local.node}"
    ).stdout.strip()  # fmt: skip
    assert replica, "the command returned before the replica ran"
    # node ports answer on the node's addresses (not 127.0.0.1: docs/networking.md)
    answered = until(lambda: _try_get("172.17.0.1", port), 60, "the published port")
    assert answered == replica[:12]
    assert f"*:{port}->8080/tcp" in local.corral("service", "ls")

    assert local.corral("service", "rm", "web") == "web\n"
    until(
        lambda: (
            not sh(
                "docker", "ps", "-aq", "--filter", f"label={names.LABEL_NODE}={local.node}"
            ).stdout.strip()
        ),
        60,
        "the replica removed",
    )
    assert "web" not in local.corral("get", "services")
    down = local.run("down")
    assert down.returncode == 0, down.stdout + down.stderr
