"""Which changes the scheduler decides ahead of a burst of placing.

The controller's work queue has a prompt lane (corral.natsio.workqueue): while a
hundred Deployments applied at once are placed, one after another, a key in that lane
is taken at the next turn, not after the burst. The scheduler puts there what must not
wait: a node judged lost or back (ControlLoop._judge_node), and a replica going down
(`went_down`). A replica coming up waits its turn in the other lane, where the many
statuses of one Deployment are counted in one decision rather than one decision each.

A node's Deployments are prompt while few Deployments were made prompt by nodes
judged lost or back lately (`NodeChanges`: the first node's always; then up to the
larger of DISRUPTION_DEPLOYMENTS and DISRUPTION_SHARE of the Deployments within
DISRUPTION_SECONDS). Counting Deployments, not nodes: in a cluster of few, wide
Deployments the first three nodes lost already touch most of them. More is a
disruption (the cores overloaded, a partition): replacing thousands of replicas at the
next turn would load the nodes and the store further, as the nodes come back. Their
Deployments then take their turn behind the work queued before, as they did before the
lane existed (bench/README.md, "A prompt lane; the simulator first; 5,001 nodes and
100,000 replicas").
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from corral.contract.state import ReplicaState
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.contract.views import SchedulingStatus

# Deployments made prompt by node judgements within DISRUPTION_SECONDS: at most the
# larger of these two is "few" (nodes that fall silent together are judged over about
# a heartbeat; a node of a large cluster holds replicas of a score of Deployments).
DISRUPTION_DEPLOYMENTS: Final = 20
DISRUPTION_SHARE: Final = 0.01
DISRUPTION_SECONDS: Final = NODE_LOST_SECONDS

# A replica in one of these states is down: it exited, crashes, cannot get its image,
# or the engine refused it. (Terminating is not: a replica stops because a decision
# stopped it, and what replaces it was decided then.)
_DOWN: Final = frozenset(
    {
        ReplicaState.EXITED,
        ReplicaState.CRASH_LOOP,
        ReplicaState.IMAGE_PULL_BACKOFF,
        ReplicaState.FAILED,
    }
)


def went_down(key: str, old: SchedulingStatus | None, new: SchedulingStatus | None) -> bool:
    """A replica's status that turned down (exited, crashing, failed) from anything else,
    or a Running replica that was ready and is not any more (its readiness probe failed):
    its Deployment's availability, a rollout's progress and the automatic rollback see
    it at the next turn. A replica coming up is not, readiness probe or not (its status
    says ready=false until the probe first passes); nor is a status seen for the first
    time (a scheduler starting replays every status: they take their turn)."""
    if new is None or old is None:
        return False
    if new.state in _DOWN:
        return old.state not in _DOWN
    lost_readiness = new.state == ReplicaState.RUNNING and new.ready is False
    return lost_readiness and old.state == ReplicaState.RUNNING and old.ready is not False


class NodeChanges:
    """The Deployments made prompt lately by nodes judged lost or back: when, on the
    loop's clock (oldest first)."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def few(self, deployments: Collection[str], now: float, of: int) -> bool:
        """A node was judged lost or back now, with replicas of `deployments`: are they
        prompt (few so far), rather than part of a disruption? `of`: the Deployments
        in all. A Deployment counts once however many of its nodes are judged."""
        at = self._at
        while at:
            oldest = next(iter(at))
            if at[oldest] >= now - DISRUPTION_SECONDS:
                break
            del at[oldest]
        more = sum(1 for key in deployments if key not in at)
        if at and len(at) + more > max(DISRUPTION_DEPLOYMENTS, DISRUPTION_SHARE * of):
            return False
        for key in deployments:
            at.pop(key, None)
            at[key] = now
        return True
