"""An immutable view of the cluster, the only input of the deciding step.

Node liveness is judged by the scheduler's own clock (monotonic seconds), from
when it saw each node's record change, and only while its own view of NATS is
known to be fresh (every watch a judgement depends on proved current by its echo
key, see control_loop.py): a scheduler cut off from NATS, or whose nodes watch
stalled, sees every node fall silent at once, and must not evict them all for it.

The rules follow from the time budget (corral.contract.time_budget, docs/time-budget.md):

    node silent (fresh view) for     "Fast" replicas        "AfterStop" replicas
    <= R                             kept                   kept
    R < silence <= R'                replaced               kept (its agent stops them at F)
    > R'                             replaced               replaced
    released by an operator          replaced at once       replaced at once
    engine down (heartbeating) > E   replaced               kept (the copies may still run)
    not ready because Held           kept                   kept (its agent keeps them running)

R = NODE_LOST_SECONDS, R' = NODE_LOST_AFTER_STOP_SECONDS, E = ENGINE_DOWN_EVICTION_SECONDS.
"""

from __future__ import annotations

import enum
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from corral.contract.specs import DEFAULT_NETWORK, ContainerTemplate, Deployment
from corral.contract.state import DeploymentStatus, Node, Placement
from corral.contract.time_budget import (
    ENGINE_DOWN_EVICTION_SECONDS,
    NODE_LOST_AFTER_STOP_SECONDS,
    NODE_LOST_SECONDS,
)
from corral.contract.views import SchedulingStatus
from corral_scheduler.volume_fit import NO_VOLUMES, VolumeView

# Agent safety modes (Node.mode) in which the agent starts nothing: no new replicas go
# there. "Held" waits for an operator's decision (`corral node adopt|reset`).
NO_NEW_REPLICAS_MODES = frozenset({"Held", "Isolated", "Stopping", "HandedOver", "Retired"})
# Modes in which the agent reports ready=False on purpose while it keeps every
# replica running: not an engine that is down, so its replicas are never replaced
# for it (they still run; a replacement would be a second copy for as long as the
# operator takes to decide). Silence still counts.
KEEPS_REPLICAS_MODES = frozenset({"Held"})


class Loss(enum.StrEnum):
    """Why a node's replicas are placed elsewhere (a bounded set: metric labels)."""

    RELEASED = "node released"
    SILENT = "node lost"
    ENGINE_DOWN = "node engine down"


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
    replica_statuses: dict[str, SchedulingStatus] = field(default_factory=dict)  # same key
    # Keys whose records could not be read (corrupt, or from a newer corral): left alone.
    unreadable_deployments: frozenset[str] = frozenset()
    # Nodes an operator released (`corral node release`): gone for good.
    released: frozenset[str] = frozenset()
    # The corral networks that exist (records in corral_networks, which netmgr owns).
    # `default` always counts as existing: netmgr makes it when it starts.
    networks: AbstractSet[str] = frozenset()
    # Claims, their status and the nodes' room (volmgr's records; volume_fit.py): only
    # those of the claims the templates decided name.
    volumes: VolumeView = NO_VOLUMES
    # The nodes whose records list orphans of the Deployment decided (the scheduler's
    # incremental index: its decision then looks at those, not at every node); None:
    # not known, every node's orphans are looked at.
    orphan_holders: AbstractSet[str] | None = None

    def missing_network(self, template: ContainerTemplate) -> str | None:
        """The first network `template` names that does not exist, or None."""
        for network in template.networks:
            if network != DEFAULT_NETWORK and network not in self.networks:
                return network
        return None

    def schedulable(self, name: str, now: float) -> bool:
        """Ready for new replicas: reports ready, heard from within R, not released, and
        its agent is in a mode that starts replicas."""
        node = self.nodes.get(name)
        seen = self.node_last_seen.get(name)
        return (
            node is not None
            and node.ready
            and node.mode not in NO_NEW_REPLICAS_MODES
            and name not in self.released
            and seen is not None
            and now - seen <= NODE_LOST_SECONDS
        )

    def silence(self, name: str, now: float) -> float | None:
        """How long the node has been silent, counted only while the view is fresh;
        None while it is not (no judgement then)."""
        if self.feed_fresh_since is None:
            return None
        heard = max(self.node_last_seen.get(name, float("-inf")), self.feed_fresh_since)
        return now - heard

    def loss(self, name: str, now: float, *, after_stop: bool = False) -> Loss | None:
        """Why the node's replicas must be placed elsewhere now, or None to keep them.

        `after_stop`: for a Deployment that must never run two copies ("AfterStop").
        """
        if name in self.released:
            return Loss.RELEASED
        silence = self.silence(name, now)
        if silence is None:
            return None
        if silence > (NODE_LOST_AFTER_STOP_SECONDS if after_stop else NODE_LOST_SECONDS):
            return Loss.SILENT
        node = self.nodes.get(name)
        if (
            not after_stop
            and node is not None
            and not node.ready
            and node.mode not in KEEPS_REPLICAS_MODES
        ):
            assert self.feed_fresh_since is not None
            since = max(self.node_not_ready_since.get(name, now), self.feed_fresh_since)
            if now - since > ENGINE_DOWN_EVICTION_SECONDS:
                return Loss.ENGINE_DOWN
        return None

    def lost(self, name: str, now: float, *, after_stop: bool = False) -> bool:
        return self.loss(name, now, after_stop=after_stop) is not None

    def next_change(self, name: str, now: float) -> float:
        """The earliest moment from `now` on after which the node's judgement (whether it
        is schedulable, its loss for Fast and for AfterStop replicas) changes with time
        alone: its silence passing R or R', its engine down for E. Anything else (a sign
        of life, a record change, a release, the view going stale or fresh) comes with
        an event or a tick. inf: nothing changes with time alone."""
        if name in self.released:
            return INF  # lost for good until the release ends (an event)
        seen = self.node_last_seen.get(name)
        fresh = self.feed_fresh_since
        # Each moment after which a rule's strict comparison flips.
        soonest = INF
        if seen is not None:
            soonest = _first_due(seen + NODE_LOST_SECONDS, now, soonest)  # schedulable
        if fresh is None:
            return soonest  # no loss is judged on a stale view
        heard = fresh if seen is None or seen < fresh else seen
        soonest = _first_due(heard + NODE_LOST_SECONDS, now, soonest)
        soonest = _first_due(heard + NODE_LOST_AFTER_STOP_SECONDS, now, soonest)
        node = self.nodes.get(name)
        if node is not None and not node.ready and node.mode not in KEEPS_REPLICAS_MODES:
            since = max(self.node_not_ready_since.get(name, now), fresh)
            soonest = _first_due(since + ENGINE_DOWN_EVICTION_SECONDS, now, soonest)
        return soonest


INF = float("inf")


def _first_due(moment: float, now: float, soonest: float) -> float:
    """`soonest`, or `moment` when it is sooner and not past (`now` itself counts: a
    comparison that holds now flips right after it)."""
    return moment if now <= moment < soonest else soonest
