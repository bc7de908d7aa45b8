"""Which changes the scheduler decides ahead of a burst of placing.

The controller's work queue has a prompt lane (corral.natsio.workqueue): while a
hundred Deployments applied at once are placed, one after another, a key in that lane
is taken at the next turn, not after the burst. The scheduler puts there what must not
wait: a node judged lost or back (ControlLoop._judge_node), and a replica going down
(`went_down`). A replica coming up waits its turn in the other lane, where the many
statuses of one Deployment are counted in one decision rather than one decision each.

A node is prompt when it is one of few whose judgement changed lately (`NodeChanges`).
When many change at once (more than DISRUPTION_NODES, or DISRUPTION_SHARE of the
nodes, within DISRUPTION_SECONDS), that is a disruption (the cores overloaded, a
partition): replacing thousands of replicas at the next turn would load the nodes and
the store further, as the nodes come back. Their Deployments then take their turn
behind the work queued before, as they did before the lane existed (bench/README.md,
"A prompt lane; the simulator first").
"""

from __future__ import annotations

from collections import deque
from typing import Final

from corral.contract.state import ReplicaState, ReplicaStatus
from corral.contract.time_budget import NODE_LOST_SECONDS

# Nodes whose judgement changed within DISRUPTION_SECONDS: at most the larger of these
# two is "few" (nodes that fall silent together are judged over about a heartbeat).
DISRUPTION_NODES: Final = 3
DISRUPTION_SHARE: Final = 0.01
DISRUPTION_SECONDS: Final = NODE_LOST_SECONDS

_COMING_UP: Final = frozenset(
    {ReplicaState.PENDING, ReplicaState.PULLING, ReplicaState.CREATING, ReplicaState.RUNNING}
)


def _up(status: ReplicaStatus) -> bool:
    """Coming up or serving: placed and not failed, its readiness not failing."""
    return status.state in _COMING_UP and status.ready is not False


def went_down(key: str, old: ReplicaStatus | None, new: ReplicaStatus | None) -> bool:
    """A replica's status that turned down (exited, crashing, failed, terminating, not
    ready) from up or from nothing: a change its Deployment must decide on soon."""
    return new is not None and not _up(new) and (old is None or _up(old))


class NodeChanges:
    """The moments at which nodes' judgements changed lately (the loop's clock)."""

    def __init__(self) -> None:
        self._at: deque[float] = deque()

    def few(self, now: float, nodes: int) -> bool:
        """One more node's judgement changed now: is it one of few (its Deployments
        prompt), rather than of a disruption? `nodes`: the nodes judged."""
        at = self._at
        at.append(now)
        while at and at[0] < now - DISRUPTION_SECONDS:
            at.popleft()
        return len(at) <= max(DISRUPTION_NODES, DISRUPTION_SHARE * nodes)
