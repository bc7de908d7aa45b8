"""The client's kind registry and node readiness."""

from __future__ import annotations

import pytest

from corral.client.api import API_KINDS, CorralError, find_kind, node_is_ready
from corral.contract.specs import Deployment
from corral.contract.state import Node, NodeCapacity
from corral.contract.time_budget import NODE_STALE_SECONDS


@pytest.mark.parametrize("spelling", ["Deployment", "deployment", "deployments", "deploy"])
def test_find_kind(spelling: str) -> None:
    kind = find_kind(spelling)
    assert kind is API_KINDS["Deployment"]
    assert kind.spec_type is Deployment and kind.owner == "scheduler"
    assert kind.subject_kind == "deployment"


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(CorralError, match="unknown kind 'gadget': corral knows Deployment"):
        find_kind("gadget")


def test_node_ready_within_grace() -> None:
    node = Node(name="n", capacity=NodeCapacity(cpu_millis=1, memory_bytes=1), heartbeat_at=100.0)
    assert node_is_ready(node, 100.0 + NODE_STALE_SECONDS)
    assert not node_is_ready(node, 100.5 + NODE_STALE_SECONDS)
    assert node_is_ready(node, 90.0)  # the agent's clock ahead of the reader's: not hidden
    import msgspec

    assert not node_is_ready(msgspec.structs.replace(node, ready=False), 100.0)
