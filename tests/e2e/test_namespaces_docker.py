"""Namespaces on the local Docker engine (issue 11), through `corral up` (scheduler,
netmgr with its node part, volmgr, a Docker node agent): two Deployments `web` in two
namespaces run side by side, and from a replica of each namespace the Service name `web`
answers with that namespace's replica; `web.<namespace>` reaches the other's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.contract import names
from tests.e2e.test_local_networking import HTTPD, DockerCorral, local, until
from tests.e2e.test_netmgr_node import Guard, sh, unchanged_host

pytestmark = pytest.mark.docker

__all__ = ["local", "unchanged_host"]  # fixtures, used by name


def containers(node: str) -> dict[str, dict[str, str]]:
    """namespace -> {"id", "name"} of the node's running replicas."""
    listed = sh(
        "docker", "ps", "--filter", f"label={names.LABEL_NODE}={node}",
        "--format", "{{json .}}",
    ).stdout.split("\n")  # fmt: skip
    found: dict[str, dict[str, str]] = {}
    for line in filter(None, listed):
        row = json.loads(line)
        labels = dict(item.split("=", 1) for item in row["Labels"].split(",") if "=" in item)
        found[labels[names.LABEL_NAMESPACE]] = {"id": row["ID"], "name": row["Names"]}
    return found


def fetch(container: str, url: str) -> str:
    done = sh("docker", "exec", container, "timeout", "3", "wget", "-qO-", url, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def test_deployments_named_web_in_two_namespaces_run_side_by_side_and_each_web_is_its_own(
    local: DockerCorral, test_image: str, unchanged_host: Guard, tmp_path: Path
) -> None:
    # One file, applied in each namespace (it names none); a short grace: busybox httpd
    # as PID 1 ignores SIGTERM.
    manifest = tmp_path / "web.yaml"
    manifest.write_text(
        json.dumps(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "terminationGracePeriodSeconds": 1,
                            "containers": [
                                {
                                    "name": "web",
                                    "image": test_image,
                                    "command": ["sh", "-c", HTTPD],
                                    "ports": [{"containerPort": 8080}],
                                }
                            ],
                        },
                    },
                },
            }
        )
    )
    local.up()
    for namespace in ("default", "team-a"):
        local.corral("apply", "-f", str(manifest), "-n", namespace)
        local.corral(
            "expose", "deployment", "web", "--port=80", "--target-port=8080", "-n", namespace
        )
    running = until(
        lambda: (lambda found: found if len(found) == 2 else None)(containers(local.node)),
        120,
        "a replica of each namespace running",
    )
    assert isinstance(running, dict)
    default, team = running["default"], running["team-a"]
    # The default namespace's names are those of before namespaces; another's carries it.
    assert "team-a." not in default["name"] and default["name"].startswith(f"corral_{local.node}_")
    assert default["name"].count(".") == 0
    assert f"corral_{local.node}_team-a.web-" in team["name"]

    listed = local.corral("get", "deployments", "-A")
    assert [line.split()[:3] for line in listed.splitlines()[1:]] == [
        ["default", "web", "1/1"],
        ["team-a", "web", "1/1"],
    ], listed
    # Each replica's short name `web` is its own namespace's Service (the search path);
    # the other namespace's is web.<namespace>. The page is the replica's hostname.
    for mine, other, namespace, elsewhere in (
        (default, team, "default", "team-a"),
        (team, default, "team-a", "default"),
    ):
        answered = until(lambda c=mine: fetch(c["id"], "http://web/"), 60, f"web from {namespace}")
        assert answered == mine["id"][:12], (namespace, answered)
        full = f"http://web.{namespace}.svc.cluster.local/"
        assert fetch(mine["id"], full) == mine["id"][:12]
        across = until(lambda c=mine, n=elsewhere: fetch(c["id"], f"http://web.{n}/"), 30, "across")
        assert across == other["id"][:12]

    local.corral("delete", "deployment", "web", "-n", "team-a")
    local.corral("delete", "service", "web", "-n", "team-a")
    until(lambda: set(containers(local.node)) == {"default"}, 60, "team-a's replica removed")
    assert containers(local.node)["default"]["id"] == default["id"]
    local.corral("delete", "service", "web")
    local.corral("delete", "deployment", "web")
    until(lambda: not containers(local.node), 60, "the replicas removed")
