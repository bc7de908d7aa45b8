"""Writes this node's ReplicaStatus records, compare-and-set, only when they change: a
pass's changes together, pipelined (many in flight, each still conditional)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import anyio
import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.state import ReplicaStatus
from corral.natsio.kv import Bucket, Conflict, Create, Entry, Update, Write, write_many
from corral_node_agent.replica_status import same_status

log = logging.getLogger(__name__)
_LOAD_TIMEOUT = 10.0
# Rounds of a write that conflicts (another writer changed the key): read, try again.
_WRITE_ATTEMPTS = 3


class StatusBook:
    """The statuses this agent last wrote (replica -> (status, revision)); the agent owns
    them. Each is stored under its placement's key (names.placement_key: node, the
    Deployment's namespace, replica); replica names are unique in the cluster.

    Statuses stored before keys carried the namespace (<node>.<replica>) are moved to
    their new key when loaded (`load`), compare-and-set, so nothing is lost."""

    def __init__(self, bucket: Bucket, node: str, clock: Callable[[], float] = time.time) -> None:
        self.bucket = bucket
        self.node = node
        self.clock = clock
        self.written: dict[str, tuple[ReplicaStatus, int]] = {}
        # Replicas whose last write may have committed unseen (cut short, timed out, the
        # connection lost): `written` may not be what is stored, so their next status is
        # written even if it equals `written` (its compare-and-set then tells).
        self.uncertain: set[str] = set()

    def _stored(self, status: ReplicaStatus) -> bool:
        """Whether `status` is known to be what is stored already (no write needed)."""
        known = self.written.get(status.replica)
        return (
            known is not None
            and status.replica not in self.uncertain
            and same_status(known[0], status)
        )

    async def load(self) -> None:
        """Read the statuses already stored for this node (an earlier run of the agent):
        at once when the bucket can (Bucket.snapshot, from a store not older than what
        this book wrote), with a watch otherwise."""
        floor = max((revision for _, revision in self.written.values()), default=0)
        self.written.clear()
        self.uncertain.clear()
        legacy: list[tuple[str, ReplicaStatus, int]] = []
        with anyio.fail_after(_LOAD_TIMEOUT):
            prefix = names.placement_prefix(self.node)
            snapshot = await self.bucket.snapshot(prefix, floor=floor)
            for entry in snapshot.entries if snapshot else await _watched(self.bucket, prefix):
                if entry.value is None:
                    continue
                try:
                    status = decode(entry.value, ReplicaStatus)
                except msgspec.DecodeError:
                    log.warning("ignoring undecodable status %s", entry.key)
                    continue
                if names.is_legacy_placement_key(entry.key):
                    legacy.append((entry.key, status, entry.revision))
                else:
                    self.written[status.replica] = (status, entry.revision)
        for key, status, revision in legacy:
            await self._move(key, status, revision)

    async def _move(self, old_key: str, status: ReplicaStatus, revision: int) -> None:
        """Copy a status from its key of before namespaces to its key now, then delete
        the old one (on its revision: a newer write there is left for the next load)."""
        if status.replica not in self.written:
            await self.write(msgspec.structs.replace(status, node=self.node))
        try:
            await self.bucket.delete(old_key, revision)
        except Conflict:
            log.warning("status %s changed while moving it; the next start moves it", old_key)

    def get(self, replica: str) -> ReplicaStatus | None:
        found = self.written.get(replica)
        return None if found is None else found[0]

    def replicas(self) -> list[str]:
        return list(self.written)

    async def write(self, status: ReplicaStatus) -> bool:
        """Store status unless it is already what is stored; True when written (one
        status: `write_all`, whose rules hold for it)."""
        return await self.write_all([status]) == 1

    async def write_all(
        self, statuses: Iterable[ReplicaStatus], *, go_on: Callable[[], bool] = lambda: True
    ) -> int:
        """Store each status that is not already what is stored (stamped with the book's
        clock; a new key created, a known one compare-and-set on its revision), the
        writes sent together (kv.write_many: one round trip for a pass's changes, not
        one per replica). A write that conflicts is read again and retried in the next
        round, up to _WRITE_ATTEMPTS rounds, while `go_on()` (the agent still acts on
        its placements); one that still conflicts is forgotten (the next pass reads it).
        Another failure is raised once what committed is recorded. Until its outcome is
        recorded a write is `uncertain`: cut short, it is written again next pass.
        Returns how many were written."""
        due: dict[str, ReplicaStatus] = {}
        revisions: dict[str, int | None] = {}
        for status in statuses:
            if self._stored(status):
                continue
            known = self.written.get(status.replica)
            due[status.replica] = msgspec.structs.replace(status, updated_at=self.clock())
            revisions[status.replica] = None if known is None else known[1]
        self.uncertain.update(due)
        written = 0
        failure: BaseException | None = None
        for attempt in range(_WRITE_ATTEMPTS):
            if not due or (attempt and not go_on()):
                return written  # what is left stays uncertain: written next pass
            writes: list[Write] = []
            for replica, stamped in due.items():
                raw, revision = encode(stamped), revisions[replica]
                key = stamped.key
                writes.append(Create(key, raw) if revision is None else Update(key, raw, revision))
            outcomes = await write_many(self.bucket, writes)
            conflicted: dict[str, ReplicaStatus] = {}
            for (replica, stamped), outcome in zip(due.items(), outcomes, strict=True):
                if outcome.ok:
                    assert outcome.revision is not None
                    self.written[replica] = (stamped, outcome.revision)
                    self.uncertain.discard(replica)
                    written += 1
                elif outcome.conflict:
                    conflicted[replica] = stamped
                elif failure is None:
                    failure = outcome.error
            if failure is not None:
                raise failure
            for replica, stamped in conflicted.items():
                entry = await self.bucket.get(stamped.key)  # re-read, then retry
                revisions[replica] = (
                    None if entry is None or entry.value is None else entry.revision
                )
            due = conflicted
        for replica, stamped in due.items():
            log.warning("status %s kept conflicting; will retry next pass", stamped.key)
            self.written.pop(replica, None)  # not known: the next write reads it afresh
            self.uncertain.discard(replica)
        return written

    async def delete(self, replica: str) -> None:
        """Delete the stored status. It is forgotten only once the delete succeeded:
        when NATS fails, the next pass tries again."""
        known = self.written.get(replica)
        if known is None:
            return  # none stored that this agent knows of
        key = known[0].key
        revision = known[1]
        try:
            await self.bucket.delete(key, revision)
        except Conflict:  # re-read, then delete what is there now
            entry = await self.bucket.get(key)
            if entry is not None and entry.value is not None:
                try:
                    await self.bucket.delete(key, entry.revision)
                except Conflict:
                    log.warning("status %s changed while deleting; next pass retries", key)
                    self.written[replica] = (known[0], entry.revision)
                    return
        self.written.pop(replica, None)
        self.uncertain.discard(replica)


async def _watched(bucket: Bucket, prefix: str) -> list[Entry]:
    """The prefix's current entries, read with a watch."""
    entries: list[Entry] = []
    async for entry in bucket.watch(prefix):
        if entry is None:
            break  # the watch's consumer is deleted as it closes
        entries.append(entry)
    return entries
