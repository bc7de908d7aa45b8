"""A Deployment's conditions (docs/rollouts.md, "Progress deadline and conditions"): pure.

`conditions(stored, seen, now)` takes the status the scheduler stored last and what one
decision saw of the rollout, and returns the Progressing and Available conditions, the
automatic-rollback record the status carries, the events to emit and when to decide
again (the moment the progress deadline would pass: a requeue of this one Deployment,
never a pass over the cluster). Kubernetes' rules (its deployment controller's
syncRolloutStatus and checkPausedConditions), with corral's `RolledBack`:

- paused: Progressing Unknown `DeploymentPaused`, no deadline; resumed: True
  `DeploymentResumed`, the deadline counting from then;
- a new revision: True `NewReplicaSetCreated`;
- complete (every replica of the current template and available, none of another,
  none pending): True `NewReplicaSetAvailable`, kept while it stays so (no deadline);
- progress (more updated, ready or available replicas, fewer old ones than the stored
  status says): True `ReplicaSetUpdated`, lastUpdateTime now;
- no progress for `progressDeadlineSeconds` since lastUpdateTime: False
  `ProgressDeadlineExceeded` (a Warning event), kept until progress or a new revision;
- the automatic rollback acted (`rolled_back`, for the revision it wrote): False
  `RolledBack` until that revision's rollout completes (no deadline meanwhile).

Times are the scheduler's clock (`now`). A lastUpdateTime in the future (another
scheduler's clock ahead of this one) counts from `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from corral.contract.state import (
    CONDITION_AVAILABLE,
    CONDITION_PROGRESSING,
    REASON_MINIMUM_AVAILABLE,
    REASON_MINIMUM_UNAVAILABLE,
    REASON_NEW_REPLICAS_AVAILABLE,
    REASON_NEW_REPLICAS_CREATED,
    REASON_PAUSED,
    REASON_PROGRESS_DEADLINE_EXCEEDED,
    REASON_REPLICAS_UPDATED,
    REASON_RESUMED,
    REASON_ROLLED_BACK,
    AutoRollbackRecord,
    DeploymentCondition,
    DeploymentStatus,
)

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"
# Decided again just past the deadline (a timer firing a hair early decides nothing).
DEADLINE_SLACK_SECONDS = 0.05


@dataclass(frozen=True)
class Seen:
    """What one decision saw of a Deployment's rollout (after its stops and placements)."""

    replicas: int  # desired
    updated: int  # of the current template, kept or placed now
    ready: int
    available: int  # ready for at least minReadySeconds
    old: int  # replicas of another template still placed
    pending: int  # desired but placed nowhere
    revision: int  # the current template's (0: not known)
    paused: bool = False
    deadline_seconds: float = 600.0
    max_unavailable: int = 0

    @property
    def complete(self) -> bool:
        return (
            self.updated >= self.replicas
            and self.available >= self.replicas
            and self.old == 0
            and self.pending == 0
        )


@dataclass(frozen=True)
class ConditionEvent:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Outcome:
    conditions: list[DeploymentCondition]
    auto_rollback: AutoRollbackRecord | None
    events: list[ConditionEvent] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until the progress deadline passes


def _condition(
    kind: str,
    status: str,
    reason: str,
    message: str,
    now: float,
    previous: DeploymentCondition | None,
) -> DeploymentCondition:
    """A new condition at `now`; its transition time kept when its status is the same."""
    transition = now
    if previous is not None and previous.status == status:
        transition = previous.last_transition_time
    return DeploymentCondition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_update_time=now,
        last_transition_time=transition,
    )


def progressed(stored: DeploymentStatus, seen: Seen) -> bool:
    """Kubernetes' DeploymentProgressing: more updated, ready or available replicas, or
    fewer old ones, than the stored status says."""
    stored_old = max(0, stored.placed - stored.updated)
    return (
        seen.updated > stored.updated
        or seen.ready > stored.ready
        or seen.available > stored.available
        or seen.old < stored_old
    )


def rollback_record(
    stored: DeploymentStatus | None, seen: Seen, rolled_back: AutoRollbackRecord | None
) -> AutoRollbackRecord | None:
    """The record the status carries: one just made for the current revision; else the
    stored one, until the revision changes to one that is not the rollback's."""
    if rolled_back is not None and rolled_back.to_revision == seen.revision:
        return rolled_back
    record = None if stored is None else stored.auto_rollback
    if record is not None and seen.revision and record.to_revision != seen.revision:
        return None  # a template change that is not a rollback
    return record


def conditions(
    stored: DeploymentStatus | None,
    seen: Seen,
    now: float,
    *,
    rolled_back: AutoRollbackRecord | None = None,
) -> Outcome:
    record = rollback_record(stored, seen, rolled_back)
    events: list[ConditionEvent] = []
    requeue: float | None = None
    previous = None if stored is None else stored.condition(CONDITION_PROGRESSING)
    new_revision = stored is None or (seen.revision != 0 and stored.revision != seen.revision)
    rolled_back_now = record is not None and (stored is None or stored.auto_rollback != record)
    revision = f"revision {seen.revision}" if seen.revision else "the new template"

    def make(status: str, reason: str, message: str) -> DeploymentCondition:
        return _condition(CONDITION_PROGRESSING, status, reason, message, now, previous)

    if seen.paused:
        if previous is not None and previous.reason == REASON_PAUSED:
            progressing = previous
        else:
            progressing = make(UNKNOWN, REASON_PAUSED, "Deployment is paused")
    elif rolled_back_now and record is not None:
        progressing = make(
            FALSE,
            REASON_ROLLED_BACK,
            f"automatic rollback from revision {record.from_revision} to "
            f"{record.to_revision}: {record.message or record.reason}",
        )
    elif new_revision:
        progressing = make(TRUE, REASON_NEW_REPLICAS_CREATED, f"{revision} is rolling out")
        requeue = seen.deadline_seconds
    elif previous is None:  # a status written before conditions existed
        if seen.complete:
            progressing = make(TRUE, REASON_NEW_REPLICAS_AVAILABLE, f"{revision} is available")
        else:
            progressing = make(TRUE, REASON_REPLICAS_UPDATED, f"{revision} is progressing")
            requeue = seen.deadline_seconds
    elif previous.reason == REASON_PAUSED:
        progressing = make(TRUE, REASON_RESUMED, "Deployment is resumed")
        requeue = seen.deadline_seconds
    elif seen.complete:
        if previous.reason == REASON_NEW_REPLICAS_AVAILABLE and previous.status == TRUE:
            progressing = previous
        else:
            progressing = make(TRUE, REASON_NEW_REPLICAS_AVAILABLE, f"{revision} is available")
    elif (
        previous.reason == REASON_NEW_REPLICAS_AVAILABLE
        and seen.updated >= seen.replicas
        and seen.old == 0
    ):
        progressing = previous  # complete before, no rollout since: no deadline (as Kubernetes)
    elif previous.reason == REASON_ROLLED_BACK:
        progressing = previous
        if stored is not None and progressed(stored, seen):
            progressing = msgspec.structs.replace(previous, last_update_time=now)
    elif stored is not None and progressed(stored, seen):
        progressing = make(TRUE, REASON_REPLICAS_UPDATED, f"{revision} is progressing")
        requeue = seen.deadline_seconds
    elif previous.reason in (REASON_PROGRESS_DEADLINE_EXCEEDED, REASON_NEW_REPLICAS_AVAILABLE):
        progressing = previous
    else:  # True and rolling out, no progress this time: the deadline
        progressing = previous
        since = previous.last_update_time
        if since > now:  # another scheduler's clock ahead of ours: count from now
            since = now
            progressing = msgspec.structs.replace(previous, last_update_time=now)
        if now >= since + seen.deadline_seconds:
            message = f"{revision} has not progressed for {seen.deadline_seconds:g}s"
            progressing = make(FALSE, REASON_PROGRESS_DEADLINE_EXCEEDED, message)
            events.append(ConditionEvent(REASON_PROGRESS_DEADLINE_EXCEEDED, message, True))
        else:
            requeue = since + seen.deadline_seconds - now
    if requeue is not None:
        requeue += DEADLINE_SLACK_SECONDS

    previous_available = None if stored is None else stored.condition(CONDITION_AVAILABLE)
    minimum = max(0, seen.replicas - seen.max_unavailable)
    if seen.available >= minimum:
        status, reason = TRUE, REASON_MINIMUM_AVAILABLE
        message = "Deployment has minimum availability"
    else:
        status, reason = FALSE, REASON_MINIMUM_UNAVAILABLE
        message = f"Deployment does not have minimum availability ({minimum} replicas)"
    if (
        previous_available is not None
        and previous_available.status == status
        and previous_available.reason == reason
        and previous_available.message == message
    ):
        available = previous_available
    else:
        available = _condition(
            CONDITION_AVAILABLE, status, reason, message, now, previous_available
        )
    return Outcome(
        conditions=[progressing, available],
        auto_rollback=record,
        events=events,
        requeue_after=requeue,
    )


def is_complete(status: DeploymentStatus) -> bool:
    """The status says its revision's rollout completed (and nothing rolls out since)."""
    found = status.condition(CONDITION_PROGRESSING)
    return found is not None and found.reason == REASON_NEW_REPLICAS_AVAILABLE


__all__ = ["ConditionEvent", "Outcome", "Seen", "conditions", "is_complete", "progressed"]
