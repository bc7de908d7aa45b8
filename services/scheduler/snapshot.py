"""An immutable view of the cluster, the only input of the deciding step."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.specs import Deployment
from corral.state import DeploymentStatus, Node, Placement, ReplicaStatus

# A node whose record has not changed for this long (by the scheduler's clock) is NotReady.
NODE_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Versioned:
    """A record with the KV revision it was read at (for compare-and-set)."""

    revision: int


@dataclass(frozen=True)
class PlacedReplica(Versioned):
    placement: Placement


@dataclass(frozen=True)
class Snapshot:
    deployments: dict[str, Deployment] = field(default_factory=dict)
    statuses: dict[str, tuple[DeploymentStatus, int]] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    node_last_seen: dict[str, float] = field(default_factory=dict)  # monotonic seconds
    placements: dict[str, PlacedReplica] = field(default_factory=dict)  # key node.replica
    replica_statuses: dict[str, ReplicaStatus] = field(default_factory=dict)  # same key

    def node_ready(self, name: str, now: float) -> bool:
        node = self.nodes.get(name)
        if node is None or not node.ready:
            return False
        return now - self.node_last_seen.get(name, float("-inf")) <= NODE_GRACE_SECONDS
