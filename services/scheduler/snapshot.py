"""An immutable view of the cluster, the only input of the deciding step.

Node liveness is judged by the scheduler's own clock (monotonic seconds), from
when it saw each node's record change, and only while its own view of NATS is
known to be fresh: a scheduler cut off from NATS sees every node fall silent at
once, and must not evict them all for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.specs import Deployment
from corral.state import DeploymentStatus, Node, Placement, ReplicaStatus

# A node whose record has not changed for this long is not Ready: nothing new goes
# there, and its replicas are placed elsewhere.
NODE_GRACE_SECONDS = 10.0
# A node that heartbeats but reports its engine unreachable gets nothing new at once,
# but keeps its replicas this long (an engine restart should not reshuffle a cluster).
NOT_READY_EVICTION_SECONDS = 30.0


@dataclass(frozen=True)
class PlacedReplica:
    placement: Placement
    revision: int  # the KV revision it was read at (for compare-and-set)


@dataclass(frozen=True)
class Snapshot:
    deployments: dict[str, Deployment] = field(default_factory=dict)
    statuses: dict[str, tuple[DeploymentStatus, int]] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    # When the scheduler last saw each node's record change (absent: not since it started).
    node_last_seen: dict[str, float] = field(default_factory=dict)
    # Since when each node has reported ready=False.
    node_not_ready_since: dict[str, float] = field(default_factory=dict)
    # Since when the scheduler's own view of KV has been fresh without a gap; None: not now.
    feed_fresh_since: float | None = 0.0
    placements: dict[str, PlacedReplica] = field(default_factory=dict)  # key node.replica
    replica_statuses: dict[str, ReplicaStatus] = field(default_factory=dict)  # same key
    # Keys whose records could not be read (corrupt, or from a newer corral): left alone.
    unreadable_deployments: frozenset[str] = frozenset()

    def schedulable(self, name: str, now: float) -> bool:
        """Ready for new replicas: reports ready, and heard from within the grace period."""
        node = self.nodes.get(name)
        seen = self.node_last_seen.get(name)
        return (
            node is not None
            and node.ready
            and seen is not None
            and now - seen <= NODE_GRACE_SECONDS
        )

    def lost(self, name: str, now: float) -> bool:
        """Its replicas must be placed elsewhere. Never while the scheduler's view is stale."""
        if self.feed_fresh_since is None:
            return False
        heard = max(self.node_last_seen.get(name, float("-inf")), self.feed_fresh_since)
        if now - heard > NODE_GRACE_SECONDS:
            return True
        node = self.nodes.get(name)
        if node is not None and not node.ready:
            since = max(self.node_not_ready_since.get(name, now), self.feed_fresh_since)
            return now - since > NOT_READY_EVICTION_SECONDS
        return False
