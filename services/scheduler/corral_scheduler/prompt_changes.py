"""Which changes the scheduler decides ahead of a burst of placing.

The controller's work queue has a prompt lane (corral.natsio.workqueue): while a
hundred Deployments applied at once are placed, one after another, a key in that lane
is taken at the next turn, not after the burst. The scheduler puts there what must not
wait: a node judged lost or back (ControlLoop._judge_node), and a replica going down
(`went_down`). A replica coming up waits its turn in the other lane, where the many
statuses of one Deployment are counted in one decision rather than one decision each.

A node is prompt when it is one of few whose loss was judged lately (`NodeChanges`).
When many are (more than the larger of DISRUPTION_NODES and DISRUPTION_SHARE of the
nodes, within DISRUPTION_SECONDS), that is a disruption (the cores overloaded, a
partition): replacing thousands of replicas at the next turn would load the nodes and
the store further, as the nodes come back. Their Deployments then take their turn
behind the work queued before, as they did before the lane existed (bench/README.md,
"A prompt lane; the simulator first; 5,001 nodes and 100,000 replicas").
"""

from __future__ import annotations

from typing import Final

from corral.contract.state import ReplicaState, ReplicaStatus
from corral.contract.time_budget import NODE_LOST_SECONDS

# Nodes whose judgement changed within DISRUPTION_SECONDS: at most the larger of these
# two is "few" (nodes that fall silent together are judged over about a heartbeat).
DISRUPTION_NODES: Final = 3
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


def went_down(key: str, old: ReplicaStatus | None, new: ReplicaStatus | None) -> bool:
    """A replica's status that turned down (exited, crashing, failed) from anything else,
    or a Running replica that was ready and is not any more (its readiness probe failed):
    a change its Deployment must decide on soon. A replica coming up is not, readiness
    probe or not (its status says ready=false until the probe first passes)."""
    if new is None:
        return False
    if new.state in _DOWN:
        return old is None or old.state not in _DOWN
    lost_readiness = new.state == ReplicaState.RUNNING and new.ready is False
    return (
        lost_readiness
        and old is not None
        and old.state == ReplicaState.RUNNING
        and old.ready is not False
    )


class NodeChanges:
    """The nodes whose loss was judged (lost, or back) lately: when, on the loop's clock."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}  # node -> its last such judgement (oldest first)

    def few(self, node: str, now: float, nodes: int) -> bool:
        """`node`'s loss was judged now: is it one of few nodes (its Deployments prompt),
        rather than of a disruption? `nodes`: the nodes judged. A node counts once
        however often it flaps."""
        at = self._at
        at.pop(node, None)
        at[node] = now
        for oldest, when in list(at.items()):
            if when >= now - DISRUPTION_SECONDS:
                break
            del at[oldest]
        return len(at) <= max(DISRUPTION_NODES, DISRUPTION_SHARE * nodes)
