"""`corral up` on the local Docker engine runs netmgr's node part too: a Service answers
on its node port, and `corral down` (after the workloads are deleted) leaves no
packet-filter chain, route or Docker network of the cluster behind."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.contract import names
from tests.e2e.test_netmgr_node import Guard, sh, unchanged_host
from tests.integration.test_local_up_down import LocalCorral

pytestmark = pytest.mark.docker

__all__ = ["unchanged_host"]  # a fixture, used by name
CORRAL = str(Path(sys.executable).parent / "corral")
HTTPD = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"


class DockerCorral(LocalCorral):
    """`corral up` with the Docker runtime and a node name of this test alone."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.node = f"e2e-up-{uuid.uuid4().hex[:8]}"

    def command(self, verb: str, *extra: str) -> list[str]:
        args = super().command(verb, *extra)
        if verb == "up":
            args[args.index("hollow")] = "docker"
            args[args.index("local-test")] = self.node
        return args

    def corral(self, *args: str) -> str:
        done = subprocess.run(
            [CORRAL, "--nats", self.nats_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture
def local(tmp_path: Path, test_image: str) -> Iterator[DockerCorral]:
    corral = DockerCorral(tmp_path / "data")
    try:
        yield corral
    finally:
        corral.run("down")
        left = sh(
            "docker", "ps", "-aq", "--filter", f"label={names.LABEL_NODE}={corral.node}"
        ).stdout.split()  # fmt: skip
        if left:
            sh("docker", "rm", "-f", *left, check=False)


def cluster_of(node: str) -> str:
    """The cluster id on the Docker networks netmgr made for `node`."""
    networks = sh(
        "docker", "network", "ls", "--filter", f"label={names.LABEL_NODE}={node}",
        "--format", "{{.Labels}}",
    ).stdout  # fmt: skip
    found = re.search(rf"{names.LABEL_CLUSTER}=([0-9a-f]{{16}})", networks)
    assert found is not None, networks
    return found.group(1)


def until(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = check()  # type: ignore[operator]
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def get(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=3) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[-1].decode().strip()


def test_corral_up_serves_a_node_port_and_corral_down_removes_every_rule_and_network(
    local: DockerCorral, test_image: str, unchanged_host: Guard
) -> None:
    local.up()
    cluster = json.loads(local.corral("network", "inspect", "default"))
    assert cluster  # the default network exists once the node part reported its host
    cluster_id = cluster_of(local.node)
    prefix = names.chain_prefix(cluster_id, local.node)
    unchanged_host.marks += [cluster_id, prefix]
    assert prefix in sh("iptables-save").stdout

    local.corral(
        "create", "deployment", "web", f"--image={test_image}", "--port=8080", "--",
        "sh", "-c", HTTPD,
    )  # fmt: skip
    local.corral("expose", "deployment", "web", "--type=NodePort", "--port=80")
    services = until(
        lambda: [line for line in local.corral("get", "services").splitlines() if "/TCP" in line],
        60,
        "the Service",
    )
    node_port = int(re.search(r":(\d+)/TCP", services[0]).group(1))  # type: ignore[index,union-attr]
    replica = until(
        lambda: sh(
            "docker", "ps", "-q", "--filter", f"label={names.LABEL_NODE}={local.node}"
        ).stdout.strip(),
        90,
        "the replica",
    )
    answered = until(lambda: _try_get("172.17.0.1", node_port), 60, "the node port")
    assert answered == str(replica)[:12]

    local.corral("delete", "service", "web")
    local.corral("delete", "deployment", "web")
    until(
        lambda: (
            not sh(
                "docker", "ps", "-aq", "--filter", f"label={names.LABEL_NODE}={local.node}"
            ).stdout.strip()
        ),
        60,
        "the replica removed",
    )
    down = local.run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert prefix not in sh("iptables-save").stdout
    assert cluster_id not in sh("docker", "network", "ls", "--format", "{{.Name}}").stdout


def _try_get(address: str, port: int) -> str:
    try:
        return get(address, port)
    except OSError:
        return ""
