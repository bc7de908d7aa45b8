"""A Compose file on the local Docker engine through `corral up` (docs/compose.md): its
services run in the project's namespace, reach each other by their Compose names (a
Deployment and Service `web` in `default` neither changed nor answering for them), and
the networks isolate as declared (a service on `front` only cannot reach one on `back`
only); `corral stack rm` removes the containers and the networks made for it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from corral.contract import names
from tests.e2e.test_local_networking import DockerCorral, local, until
from tests.e2e.test_netmgr_node import Guard, sh, unchanged_host

pytestmark = pytest.mark.docker

__all__ = ["local", "unchanged_host"]  # fixtures, used by name

# web is on both networks, db on `back` only, edge on `front` only: edge reaches web,
# web reaches db, and edge cannot reach db (by its name, or by its address).
COMPOSE = """
name: e2eshop
services:
  web:
    image: {image}
    command: ["sh", "-c", "mkdir -p /w && echo web > /w/index.html && exec httpd -f -p 8080 -h /w"]
    networks: [front, back]
    expose: ["8080"]
  db:
    image: {image}
    command: ["sh", "-c", "mkdir -p /w && echo db > /w/index.html && exec httpd -f -p 8080 -h /w"]
    networks: [back]
    expose: ["8080"]
    healthcheck:
      test: ["CMD-SHELL", "wget -qO- http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 1s
      retries: 3
  edge:
    image: {image}
    command: ["sleep", "3600"]
    networks: [front]
networks:
  front: {{}}
  back: {{}}
"""


def container_of(local: DockerCorral, service: str, *, stopped: bool = False) -> str:
    """The service's container (running; `stopped`: also one not running)."""
    return sh(
        "docker", "ps", "-q", *(["-a"] if stopped else []),
        "--filter", f"label={names.LABEL_NODE}={local.node}",
        "--filter", f"label={names.LABEL_DEPLOYMENT}={service}",
        "--filter", f"label={names.LABEL_NAMESPACE}=e2eshop",
    ).stdout.strip()  # fmt: skip


def fetch(container: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # busybox's wget -T crashes in this image: timeout(1) bounds it instead
        ["docker", "exec", container, "timeout", "3", "wget", "-qO-", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_compose_project_runs_and_its_networks_isolate_as_declared(
    local: DockerCorral, test_image: str, unchanged_host: Guard, tmp_path: Path
) -> None:
    file = tmp_path / "compose.yaml"
    file.write_text(COMPOSE.format(image=test_image))
    local.up()
    # a Deployment and Service `web` in `default` too: the project's `web` is its own
    local.corral(
        "create", "deployment", "web", f"--image={test_image}", "--port=8080", "--",
        "sh", "-c", "mkdir -p /w && echo default > /w/index.html && exec httpd -f -p 8080 -h /w",
    )  # fmt: skip
    local.corral("expose", "deployment", "web", "--port=8080")
    deployed = local.corral("stack", "deploy", "-c", str(file))
    assert "deployment/web created" in deployed and "network/e2eshop-back created" in deployed
    containers = {
        service: str(until(lambda s=service: container_of(local, s), 90, f"{service} running"))
        for service in ("web", "db", "edge")
    }
    # by Compose name, inside the project: edge -> web (front), web -> db (back)
    answered = until(
        lambda: fetch(containers["edge"], "http://web:8080/").stdout.strip(), 60, "edge -> web"
    )
    assert answered == "web"
    answered = until(
        lambda: fetch(containers["web"], "http://db:8080/").stdout.strip(), 60, "web -> db"
    )
    assert answered == "db"
    # edge is on front only: db (back only) is out of its reach, by name and by address
    by_name = fetch(containers["edge"], "http://db:8080/")
    assert by_name.returncode != 0 and not by_name.stdout
    db_address = sh(
        "docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        containers["db"],
    ).stdout.split()[0]  # fmt: skip
    direct = fetch(containers["edge"], f"http://{db_address}:8080/")
    assert direct.returncode != 0 and not direct.stdout
    assert fetch(containers["web"], f"http://{db_address}:8080/").stdout.strip() == "db"

    listed = local.corral("stack", "ls")
    assert listed.split() == ["NAME", "SERVICES", "NAMESPACE", "e2eshop", "3", "e2eshop"]
    removed = local.corral("stack", "rm", "e2eshop")
    assert "network/e2eshop-front deleted" in removed
    until(
        lambda: not any(container_of(local, s, stopped=True) for s in ("web", "db", "edge")),
        60,
        "the project's containers removed",
    )
    assert "e2eshop-front" not in local.corral("network", "ls")
    assert "web" in local.corral("get", "deployments")  # default/web stays
    local.corral("delete", "service", "web")
    local.corral("delete", "deployment", "web")
    until(
        lambda: (
            not sh(
                "docker", "ps", "-aq", "--filter", f"label={names.LABEL_NODE}={local.node}"
            ).stdout.strip()
        ),
        60,
        "default/web removed",
    )
