"""`corral get` rendering from an in-memory view of the cluster."""

from __future__ import annotations

import json

import msgspec
import pytest

from corral.client.api import CorralError
from corral.client.cli.read_commands import render_get
from corral.client.cli.views import ClusterView
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import DeploymentStatus, Node, NodeCapacity

NOW = 1_000_000.0


def view(pending: int = 0, available: int | None = None) -> ClusterView:
    deployment = Deployment(
        metadata=ObjectMeta(name="web", generation=1, creation_timestamp=NOW - 30),
        spec=DeploymentSpec(replicas=2, template=ContainerTemplate(image="nginx:1.27")),
    )
    status = DeploymentStatus(
        name="web",
        replicas=2,
        ready=2 - pending,
        updated=2 - pending,
        pending=pending,
        available=2 - pending if available is None else available,
    )
    node = Node(
        name="n1",
        capacity=NodeCapacity(cpu_millis=1500, memory_bytes=2**30),
        heartbeat_at=NOW,
        agent_started_at=NOW - 90,
    )
    return ClusterView(
        deployments={"web": deployment}, statuses={"web": status}, nodes={"n1": node}
    )


def test_deployments_without_pending_have_no_message_column() -> None:
    assert render_get(view(), "deployments", None, "table", NOW).splitlines() == [
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE",
        "web    2/2     2            2           30s",
    ]


def test_available_counts_replicas_ready_for_min_ready_seconds_not_just_ready() -> None:
    assert render_get(view(available=1), "deployments", None, "table", NOW).splitlines() == [
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE",
        "web    2/2     2            1           30s",
    ]


def test_pending_deployments_say_why() -> None:
    text = render_get(view(pending=1), "deployments", None, "table", NOW)
    assert text.splitlines()[0].endswith("MESSAGE")
    assert "1 pending: not placed yet" in text


def test_a_deployment_without_status_shows_zero_ready() -> None:
    cluster = view()
    cluster.statuses.clear()
    assert "0/2" in render_get(cluster, "deployments", "web", "table", NOW)


def test_nodes_ready_notready_and_json() -> None:
    cluster = view()
    assert "Ready" in render_get(cluster, "nodes", None, "table", NOW)
    stale = render_get(cluster, "nodes", "n1", "table", NOW + 11)
    assert "NotReady" in stale
    cluster.nodes["n1"] = msgspec.structs.replace(cluster.nodes["n1"], ready=False)
    data = json.loads(render_get(cluster, "nodes", "n1", "json", NOW))
    assert data["status"] == "NotReady" and data["allocated"]["pods"] == 0


def test_unknown_name_is_an_error() -> None:
    with pytest.raises(CorralError, match="node 'nope' not found"):
        render_get(view(), "nodes", "nope", "table", NOW)
