"""A Deployment's revisions: every template it has had gets a number, kept in
`corral_deployment_history[namespace.name]` (a DeploymentHistory) for `corral rollout
history` and `corral rollout undo`.

The scheduler owns the record, as it owns the Deployment: when it reconciles a
Deployment whose template hash is not the newest revision's, it records the template
(`recorded`, pure) after deciding. As Kubernetes numbers ReplicaSets: a new template
gets the highest number plus one; a template the history already holds (an undo, or
an apply of an earlier manifest) moves to that new number, so numbers are never
reused and the newest is always the current template. The change cause is the
Deployment's `kubernetes.io/change-cause` annotation at that moment (`corral set image`
and `corral rollout undo` set it). Old revisions beyond `spec.revisionHistoryLimit`
go, oldest first; the current one always stays. The record is also capped in size
(MAX_RECORD_BYTES, 256 KiB, under the KV's max value size): the oldest revisions go
until it fits, never the current one.

The scheduler records after deciding and committing, best-effort: a failed write
(NATS error, a Conflict three times) is logged and counted
(`corral_history_errors_total`) and tried again on a reconcile soon after; it never
holds up placements.

The scheduler records a new template before deciding the Deployment (the status
carries its revision number: `revision_of`); a failure there still lets the decision
go on. When a revision's rollout completes (every replica updated and available, no
old one), `mark_available` sets its `availableAt`: a revision that was fully
available, the only kind the automatic rollback returns to (auto_rollback.py).

A revision is recorded once the Deployment is stored, so a crash between the two is
repaired by the next reconcile; two template changes close together may be seen as
one (the later), as a ReplicaSet is made only for a template the controller saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from corral.contract.codec import decode, encode
from corral.contract.specs import CHANGE_CAUSE_ANNOTATION, Deployment
from corral.contract.state import DeploymentHistory, DeploymentRevision
from corral.natsio.kv import Bucket, Conflict

log = logging.getLogger(__name__)

ATTEMPTS = 3
# The encoded record's cap, under the KV's max value size: the oldest revisions go first
# (never the current one) until it fits.
MAX_RECORD_BYTES = 256 * 1024


def capped(history: DeploymentHistory, max_bytes: int = MAX_RECORD_BYTES) -> DeploymentHistory:
    """`history` without its oldest revisions until its encoding is at most `max_bytes`;
    the newest (current) revision always stays."""
    revisions = list(history.revisions)
    sizes = [len(encode(r)) for r in revisions]
    overhead = len(encode(history)) - sum(sizes)
    dropped = 0
    while dropped < len(revisions) - 1 and overhead + sum(sizes[dropped:]) > max_bytes:
        dropped += 1
    if not dropped:
        return history
    return DeploymentHistory(
        name=history.name, namespace=history.namespace, revisions=revisions[dropped:]
    )


def recorded(
    history: DeploymentHistory | None, deployment: Deployment, now: float
) -> DeploymentHistory | None:
    """The history with `deployment`'s template as its newest revision, trimmed to the
    Deployment's revisionHistoryLimit; None when nothing changes."""
    template = deployment.spec.template
    template_hash = template.template_hash()
    limit = deployment.spec.revision_history_limit
    revisions = [] if history is None else list(history.revisions)
    if revisions and revisions[-1].template_hash == template_hash:
        if len(revisions) <= limit + 1:
            return None  # recorded already, within the limit
        kept = revisions[-(limit + 1) :]
    else:
        number = max((r.revision for r in revisions), default=0) + 1
        cause = deployment.metadata.annotations.get(CHANGE_CAUSE_ANNOTATION, "")
        entry = DeploymentRevision(
            revision=number,
            template_hash=template_hash,
            template=template,
            change_cause=cause,
            created_at=now,
        )
        others = [r for r in revisions if r.template_hash != template_hash]
        kept = [*others[max(0, len(others) - limit) :], entry]
    return DeploymentHistory(
        name=deployment.metadata.name,
        namespace=deployment.metadata.namespace,
        revisions=kept,
    )


class HistoryRecorder:
    """Keeps `corral_deployment_history` current for the Deployments the loop reconciles.
    Remembers the template hash recorded per key, so a reconcile that changes no
    template reads nothing."""

    def __init__(self, bucket: Bucket, wall_clock: Callable[[], float]) -> None:
        self.bucket = bucket
        self.wall_clock = wall_clock
        # key -> (template hash recorded newest, the limit it was trimmed to)
        self._recorded: dict[str, tuple[str, int]] = {}
        # key -> (the newest template hash, its revision number, its availableAt is set)
        self._newest: dict[str, tuple[str, int, bool]] = {}

    def revision_of(self, key: str, template_hash: str) -> int | None:
        """The revision number of `key`'s newest template, when that is `template_hash`
        and this recorder has recorded or read it; None otherwise (record first)."""
        found = self._newest.get(key)
        if found is None or found[0] != template_hash:
            return None
        return found[1]

    def known_available(self, key: str, revision: int) -> bool:
        """This recorder knows `revision` (the newest of `key`) has availableAt set."""
        found = self._newest.get(key)
        return found is not None and found[1] == revision and found[2]

    def _remember(self, key: str, history: DeploymentHistory | None) -> None:
        if history is not None and history.revisions:
            newest = history.revisions[-1]
            self._newest[key] = (newest.template_hash, newest.revision, newest.available_at > 0)

    async def read(self, key: str) -> tuple[DeploymentHistory | None, int]:
        """The stored history of `key` (None: none, or unreadable) and its KV revision
        (0: none)."""
        entry = await self.bucket.get(key)
        if entry is None or entry.value is None:
            return None, 0
        try:
            return decode(entry.value, DeploymentHistory), entry.revision
        except Exception:
            log.warning("the history of %s cannot be read", key)
            return None, entry.revision

    async def mark_available(self, key: str, revision: int, at: float) -> None:
        """Set `availableAt` of `key`'s revision `revision` (its rollout completed at `at`)
        unless it is set already or the revision is gone. Compare-and-set, retried."""
        for _ in range(ATTEMPTS):
            history, stored_at = await self.read(key)
            entry = None if history is None else history.find(revision)
            if history is None or entry is None or entry.available_at > 0:
                if history is not None:
                    self._remember(key, history)
                return
            revisions = [
                msgspec.structs.replace(r, available_at=at) if r.revision == revision else r
                for r in history.revisions
            ]
            marked = msgspec.structs.replace(history, revisions=revisions)
            try:
                await self.bucket.update(key, encode(marked), stored_at)
            except Conflict:
                continue
            self._remember(key, marked)
            return
        raise Conflict(f"the history of {key} kept changing")

    async def record(self, key: str, deployment: Deployment) -> None:
        done = (deployment.spec.template.template_hash(), deployment.spec.revision_history_limit)
        if self._recorded.get(key) == done:
            return
        for _ in range(ATTEMPTS):
            entry = await self.bucket.get(key)
            history: DeploymentHistory | None = None
            if entry is not None and entry.value:
                try:
                    history = decode(entry.value, DeploymentHistory)
                except Exception:  # unreadable: started again from this template
                    log.warning("the history of %s cannot be read; starting it again", key)
            changed = recorded(history, deployment, self.wall_clock())
            if changed is not None:
                changed = capped(changed)
            else:
                self._remember(key, history)
            try:
                if changed is None:
                    pass
                elif entry is None or entry.value is None:
                    await self.bucket.create(key, encode(changed))
                else:
                    await self.bucket.update(key, encode(changed), entry.revision)
            except Conflict:
                continue
            if changed is not None:
                self._remember(key, changed)
            self._recorded[key] = done
            return
        raise Conflict(f"the history of {key} kept changing")

    async def forget(self, key: str) -> None:
        """The Deployment is gone: so is its history."""
        self._recorded.pop(key, None)
        self._newest.pop(key, None)
        entry = await self.bucket.get(key)
        if entry is not None and entry.value is not None:
            try:
                await self.bucket.delete(key, entry.revision)
            except Conflict:
                pass  # written meanwhile: the next reconcile of the key sees it
