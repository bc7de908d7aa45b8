"""Writes this node's ReplicaStatus records, compare-and-set, only when they change."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import msgspec

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.state import ReplicaStatus
from corral.natsio.kv import Bucket, Conflict, write_record
from corral_node_agent.replica_status import same_status

log = logging.getLogger(__name__)
_LOAD_TIMEOUT = 10.0


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

    async def load(self) -> None:
        """Read the statuses already stored for this node (an earlier run of the agent)."""
        self.written.clear()
        legacy: list[tuple[str, ReplicaStatus, int]] = []
        with anyio.fail_after(_LOAD_TIMEOUT):
            async for entry in self.bucket.watch(names.placement_prefix(self.node)):
                if entry is None:
                    break
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
        """Store status unless it is already what is stored; True when written."""
        key = status.key
        known = self.written.get(status.replica)
        if known is not None and same_status(known[0], status):
            return False
        stamped = msgspec.structs.replace(status, updated_at=self.clock())
        revision = None if known is None else known[1]
        for _ in range(3):
            try:
                new_revision = await write_record(self.bucket, key, stamped, revision)
            except Conflict:
                entry = await self.bucket.get(key)  # re-read, then retry
                revision = None if entry is None or entry.value is None else entry.revision
                continue
            self.written[status.replica] = (stamped, new_revision)
            return True
        log.warning("status %s kept conflicting; will retry next pass", key)
        self.written.pop(status.replica, None)
        return False

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
