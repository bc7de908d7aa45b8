"""The automatic rollback (docs/rollouts.md, "Automatic rollback"; opt-in per Deployment:
`spec.autoRollback`, as Nomad's `auto_revert`).

When the rollout of the current revision N misses its progress deadline (the status's
Progressing condition False, ProgressDeadlineExceeded: progress.py) or one of its
replicas crash-loops (`crash_looping`: a replica of the current template whose agent
counted `crashLoopRestarts` restarts within `crashLoopWindowSeconds`, on the agent's own
clock), the scheduler writes the Deployment's spec back with the template of the last
revision that was fully available (`rollback_target`: the most recent with
`availableAt`, not the current one), by compare-and-set on the stored spec through the
deployment API's own store (`store`), one generation on, with the change cause
`automatic rollback from revision N: <why>`. The template gets a new revision number
(history.py), the status carries an AutoRollbackRecord and Progressing False RolledBack
until that rollout completes (progress.py), and a Warning event `RolledBack` says so.

Rules: never twice for the same failed revision (numbers are never reused, so a user
applying the failed template again makes a new one, which may be rolled back again);
never when no revision was fully available (a Warning event `NotRolledBack` says so);
never while paused; never the template a rollback itself put back (no ping-pong); and
never over a user: if the stored spec changed under the compare-and-set it is read
again, and a changed template (or a pause, or autoRollback turned off) ends it.

Work is per Deployment, in its own reconcile (control_loop.py): the crash-loop rule
reads only that Deployment's replica statuses. `corral_auto_rollback_seconds` records
the time from the decision to the rollout of the old template completing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from corral.contract.codec import decode, encode
from corral.contract.specs import CHANGE_CAUSE_ANNOTATION, AutoRollback, Deployment
from corral.contract.state import (
    CONDITION_PROGRESSING,
    REASON_NEW_REPLICAS_AVAILABLE,
    REASON_PROGRESS_DEADLINE_EXCEEDED,
    AutoRollbackRecord,
    DeploymentHistory,
    DeploymentRevision,
    DeploymentStatus,
)
from corral.contract.views import SchedulingStatus
from corral.natsio.kv import Bucket, Conflict
from corral_scheduler import metrics
from corral_scheduler.history import HistoryRecorder
from corral_scheduler.progress import is_complete

log = logging.getLogger(__name__)

REASON_CRASH_LOOP = "CrashLoop"
EVENT_ROLLED_BACK = "RolledBack"
EVENT_NOT_ROLLED_BACK = "NotRolledBack"
ATTEMPTS = 5  # compare-and-set attempts while only other fields change under it

Emit = Callable[[str, str, str, bool], Awaitable[None]]  # (key, reason, message, warning)
Store = Callable[[str, bytes, int], Awaitable[int]]  # (key, raw, revision) -> new revision


# --- pure ---------------------------------------------------------------------------------


def crash_looping(
    statuses: Iterable[SchedulingStatus], template_hash: str, rule: AutoRollback
) -> tuple[SchedulingStatus, int] | None:
    """The first replica of the current template (`template_hash`) whose restarts within
    the rule's window reach its count, with that count; None when none does."""
    for status in statuses:
        if status.template_hash != template_hash:
            continue
        restarts = status.restarts_within(rule.crash_loop_window_seconds)
        if restarts >= rule.crash_loop_restarts:
            return status, restarts
    return None


@dataclass(frozen=True)
class Failure:
    reason: str  # ProgressDeadlineExceeded or CrashLoop (AutoRollbackRecord.reason)
    why: str  # for people


def failure(
    deployment: Deployment,
    status: DeploymentStatus,
    revision: int,
    statuses: Iterable[SchedulingStatus],
) -> Failure | None:
    """Why the rollout of the current revision `revision` must be rolled back, or None:
    not opted in, paused, the revision not known, its rollout complete, or the template a
    rollback itself put back."""
    rule = deployment.spec.auto_rollback
    if rule is None or deployment.spec.paused or not revision:
        return None
    record = status.auto_rollback
    if record is not None and record.to_revision == revision:
        return None
    progressing = status.condition(CONDITION_PROGRESSING)
    if progressing is not None and progressing.reason == REASON_NEW_REPLICAS_AVAILABLE:
        return None  # complete: not a rollout any more
    if (
        rule.on_progress_deadline
        and status.revision == revision
        and progressing is not None
        and progressing.reason == REASON_PROGRESS_DEADLINE_EXCEEDED
    ):
        return Failure(REASON_PROGRESS_DEADLINE_EXCEEDED, progressing.message)
    if rule.on_crash_loop:
        found = crash_looping(statuses, deployment.spec.template.template_hash(), rule)
        if found is not None:
            replica, restarts = found
            why = (
                f"replica {replica.replica} restarted {restarts} times within "
                f"{rule.crash_loop_window_seconds}s (crash loop)"
            )
            return Failure(REASON_CRASH_LOOP, why)
    return None


def rollback_target(
    history: DeploymentHistory | None, revision: int, template_hash: str
) -> DeploymentRevision | None:
    """The revision to return to: the most recent one that was fully available
    (`availableAt`), neither the current revision nor its template; None when none was."""
    if history is None:
        return None
    found = [
        entry
        for entry in history.revisions
        if entry.available_at > 0
        and entry.revision != revision
        and entry.template_hash != template_hash
    ]
    return max(found, key=lambda entry: entry.revision, default=None)


ROLLBACK_CAUSE = "automatic rollback from revision "


def change_cause(from_revision: int, why: str) -> str:
    return f"{ROLLBACK_CAUSE}{from_revision}: {why}"


def rolled_back(
    deployment: Deployment, target: DeploymentRevision, from_revision: int, why: str
) -> Deployment:
    """`deployment` with `target`'s template, one generation on, its change cause saying
    why."""
    annotations = dict(deployment.metadata.annotations)
    annotations[CHANGE_CAUSE_ANNOTATION] = change_cause(from_revision, why)
    metadata = msgspec.structs.replace(
        deployment.metadata,
        generation=deployment.metadata.generation + 1,
        annotations=annotations,
    )
    spec = msgspec.structs.replace(deployment.spec, template=target.template)
    return msgspec.structs.replace(deployment, metadata=metadata, spec=spec)


# --- the scheduler's part ---------------------------------------------------------------


@dataclass
class _Active:
    record: AutoRollbackRecord
    started: float  # monotonic, at the decision


@dataclass
class AutoRollbacks:
    """Decides and writes automatic rollbacks, one Deployment at a time (its reconcile)."""

    deployments: Bucket
    history: HistoryRecorder
    emit: Emit
    wall_clock: Callable[[], float]
    monotonic: Callable[[], float]
    # How specs are stored: the deployment API's (main.py wires DeploymentAPI.update).
    store: Store | None = None
    # key -> the failed revisions decided on (rolled back, or refused for want of a target).
    decided: dict[str, set[int]] = field(default_factory=dict)
    # key -> the rollback whose rollout has not completed yet.
    active: dict[str, _Active] = field(default_factory=dict)
    user_won: int = 0  # rollbacks given up: the template changed under the compare-and-set

    def record_for(self, key: str, revision: int) -> AutoRollbackRecord | None:
        """The rollback that wrote `revision` of `key`, while its rollout runs."""
        found = self.active.get(key)
        if found is None or not revision or found.record.to_revision != revision:
            return None
        return found.record

    def observe(self, key: str, status: DeploymentStatus) -> None:
        """The status just decided: a rollback whose template's rollout completed is
        timed (corral_auto_rollback_seconds) and done; a newer template ends it too."""
        found = self.active.get(key)
        if found is None or not status.revision:
            return
        to = found.record.to_revision
        if status.revision == to and is_complete(status):
            metrics.ROLLBACK_SECONDS.observe(max(0.0, self.monotonic() - found.started))
            del self.active[key]
        elif status.revision > to:
            del self.active[key]

    def forget(self, key: str) -> None:
        self.decided.pop(key, None)
        self.active.pop(key, None)

    async def consider(
        self,
        key: str,
        deployment: Deployment,
        status: DeploymentStatus,
        revision: int,
        statuses: Iterable[SchedulingStatus],
    ) -> bool:
        """Roll `key` back when its current revision `revision` has failed; True when the
        spec was written back."""
        failed = failure(deployment, status, revision, statuses)
        if failed is None or revision in self.decided.get(key, ()):
            return False
        started = self.monotonic()
        template_hash = deployment.spec.template.template_hash()
        history, _ = await self.history.read(key)
        decided = self.decided.setdefault(key, set())
        current = None if history is None else history.find(revision)
        if current is not None and current.change_cause.startswith(ROLLBACK_CAUSE):
            # A rollback's own template (written before this scheduler started, so its
            # record is not in the status): never rolled back by itself.
            decided.add(revision)
            return False
        target = rollback_target(history, revision, template_hash)
        if target is None:
            decided.add(revision)
            await self.emit(
                key,
                EVENT_NOT_ROLLED_BACK,
                f"revision {revision} failed ({failed.why}), but no revision was fully "
                "available: nothing rolled back",
                True,
            )
            return False
        written = await self._write(key, template_hash, target, revision, failed)
        if written is None:
            return False
        decided.add(revision)
        to = self.history.revision_of(key, target.template_hash)
        try:
            await self.history.record(key, written)
            to = self.history.revision_of(key, target.template_hash)
        except Exception:
            log.warning("the history of %s could not be recorded after a rollback", key)
        if to is None:  # as history.recorded numbers it: the highest plus one
            known = [] if history is None else history.revisions
            to = 1 + max((entry.revision for entry in known), default=0)
        record = AutoRollbackRecord(
            from_revision=revision,
            to_revision=to,
            reason=failed.reason,
            message=failed.why,
            at=self.wall_clock(),
        )
        self.active[key] = _Active(record, started)
        metrics.ROLLBACKS.labels(failed.reason).inc()
        await self.emit(
            key,
            EVENT_ROLLED_BACK,
            f"automatic rollback from revision {revision} to the template of revision "
            f"{target.revision} (now revision {to}): {failed.why}",
            True,
        )
        return True

    async def _write(
        self,
        key: str,
        template_hash: str,
        target: DeploymentRevision,
        revision: int,
        failed: Failure,
    ) -> Deployment | None:
        """Compare-and-set the stored spec to `target`'s template while it still holds the
        failed template (`template_hash`); None when it does not (a user changed it, paused
        the Deployment or turned autoRollback off: they win) or it kept changing."""
        store = self.store or self.deployments.update
        for _ in range(ATTEMPTS):
            entry = await self.deployments.get(key)
            if entry is None or entry.value is None:
                return None
            try:
                current = decode(entry.value, Deployment)
            except Exception:
                return None
            if (
                current.spec.template.template_hash() != template_hash
                or current.spec.paused
                or current.spec.auto_rollback is None
            ):
                self.user_won += 1
                log.info("%s changed under its automatic rollback: not rolled back", key)
                return None
            written = rolled_back(current, target, revision, failed.why)
            try:
                await store(key, encode(written), entry.revision)
            except Conflict:
                continue  # read again, decide again
            return written
        return None


__all__ = [
    "EVENT_NOT_ROLLED_BACK",
    "EVENT_ROLLED_BACK",
    "REASON_CRASH_LOOP",
    "AutoRollbacks",
    "Failure",
    "change_cause",
    "crash_looping",
    "failure",
    "rollback_target",
    "rolled_back",
]
