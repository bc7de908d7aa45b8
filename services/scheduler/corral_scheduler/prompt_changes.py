"""Which changes the scheduler decides ahead of a burst of placing.

The controller's work queue has a prompt lane (corral.natsio.workqueue): while a
hundred Deployments applied at once are placed, one after another, a key in that lane
is taken at the next turn, not after the burst. The scheduler puts there what must not
wait: a node judged lost or back (ControlLoop._judge_node), and a replica going down
(`went_down`). A replica coming up waits its turn in the other lane, where the many
statuses of one Deployment are counted in one decision: queued promptly, each would be
a decision of its own, and at 40,000 replicas those decisions took a quarter of the
placing's time (bench/README.md, "A prompt lane").
"""

from __future__ import annotations

from typing import Final

from corral.contract.state import ReplicaState, ReplicaStatus

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
