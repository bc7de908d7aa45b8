"""`corral down --remove-replicas` on the local Docker engine: this node's replicas are
stopped and removed, and with them go the Docker network and packet-filter chains they
kept; containers that are not this cluster's stay running; `corral up` runs the same
replicas again from what is stored."""

from __future__ import annotations

import uuid

from corral.contract import names
from tests.e2e.test_local_networking import HTTPD, DockerCorral, cluster_of, local, until
from tests.e2e.test_netmgr_node import Guard, sh, unchanged_host

__all__ = ["local", "unchanged_host"]  # fixtures, used by name


def ours(node: str, *, running: bool = False) -> list[str]:
    """Ids of corral's containers of `node` (any cluster)."""
    flags = [] if running else ["-a"]
    listed = sh(
        "docker", "ps", *flags, "-q", "--filter", f"label={names.LABEL_NODE}={node}",
        "--filter", f"label={names.LABEL_MANAGED}=true",
    ).stdout  # fmt: skip
    return listed.split()


def test_down_remove_replicas_removes_only_this_clusters_and_up_runs_them_again(
    local: DockerCorral, test_image: str, unchanged_host: Guard
) -> None:
    local.up()
    local.corral(
        "create", "deployment", "web", f"--image={test_image}", "--replicas=2", "--", "sh",
        "-c", HTTPD,
    )  # fmt: skip
    until(lambda: len(ours(local.node, running=True)) == 2, 90, "two replicas running")
    cluster_id = cluster_of(local.node)
    prefix = names.chain_prefix(cluster_id, local.node)
    unchanged_host.marks += [cluster_id, prefix]

    # On the same engine: another cluster's replica of a node of the same name, and a
    # container corral never made. Neither is this cluster's to remove.
    tag = uuid.uuid4().hex[:8]
    strangers = [
        sh(
            "docker", "run", "-d", "--name", f"corral-e2e-other-{tag}",
            "--label", f"{names.LABEL_MANAGED}=true",
            "--label", f"{names.LABEL_CLUSTER}=0123456789abcdef",
            "--label", f"{names.LABEL_NODE}={local.node}",
            test_image, "sleep", "300",
        ).stdout.strip(),
        sh(
            "docker", "run", "-d", "--name", f"e2e-someones-{tag}", test_image, "sleep", "300"
        ).stdout.strip(),
    ]  # fmt: skip
    try:
        down = local.run("down", "--remove-replicas")
        assert down.returncode == 0, down.stdout + down.stderr
        assert "the replicas removed; the node agent's clean-up:" in down.stdout
        assert down.stdout.count(f"  removed corral_{local.node}_web-") == 2, down.stdout
        left = set(ours(local.node))
        assert left == {s[:12] for s in strangers[:1]}, left  # only the other cluster's
        running = sh("docker", "ps", "-q", "--no-trunc").stdout.split()
        assert all(stranger in running for stranger in strangers)
        # What the replicas kept is gone with them: the network, the chains.
        assert cluster_id not in sh("docker", "network", "ls", "--format", "{{.Name}}").stdout
        assert prefix not in sh("iptables-save").stdout

        local.up()  # the same Deployment, from the store: its replicas run again
        until(lambda: len(ours(local.node, running=True)) == 3, 90, "the replicas back")
        local.corral("delete", "deployment", "web")
        until(lambda: len(ours(local.node)) == 1, 60, "the replicas removed")
        down = local.run("down")
        assert down.returncode == 0, down.stdout + down.stderr
    finally:
        sh("docker", "rm", "-f", *strangers, check=False)
