"""Whose is each container on this node's engine? (pure; docs/safety.md)

An agent lists every container corral manages on its engine and sorts them:

    own          this cluster, this node: reconciled against the placements
    orphans      an adopted earlier cluster, this node, no placement claims them yet:
                 kept running and reported; a placement of the same replica and
                 Deployment claims one, and it is own from then on (`claimed`)
    foreign      another cluster (or a corral without cluster ids): never touched
    other_nodes  this cluster, another node's name: left alone (a renamed node's
                 leftovers are handled at start, see agent.py)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from corral.contract.state import Placement
from corral_node_agent.runtime import ObservedContainer


@dataclass(frozen=True, slots=True)
class Ownership:
    own: list[ObservedContainer] = field(default_factory=list)
    orphans: list[ObservedContainer] = field(default_factory=list)
    foreign: list[ObservedContainer] = field(default_factory=list)
    other_nodes: list[ObservedContainer] = field(default_factory=list)


def classify(
    containers: Iterable[ObservedContainer],
    *,
    node: str,
    cluster_id: str,
    adopted: Collection[str],
    placements: Mapping[str, Placement],
    claimed: Collection[str] = frozenset(),
) -> Ownership:
    result = Ownership()
    for container in containers:
        if not container.managed:
            continue  # the runtime lists only corral's; never touch anything else
        if container.cluster == cluster_id and cluster_id:
            (result.own if container.node == node else result.other_nodes).append(container)
        elif container.cluster in adopted and container.cluster and container.node == node:
            placed = placements.get(container.replica)
            now_claimed = placed is not None and placed.deployment == container.deployment
            mine = now_claimed or container.id in claimed
            (result.own if mine else result.orphans).append(container)
        else:
            result.foreign.append(container)
    return result
