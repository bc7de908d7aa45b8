"""One active instance of a service (netmgr's and volmgr's cluster parts): a lease in
corral_leases, key `lease.<service>` (lease_key), compare-and-set.

The holder writes the record again every RENEW_SECONDS. A standby takes the lease
over only once the record has not changed (no new revision) for LEASE_SECONDS on its
own clock, so clocks of different hosts never need to agree. The holder gives up (stops
acting) when it could not renew for LEASE_SECONDS / 2, or at once when the record was
taken by another: by the time a standby takes over, the old holder has stopped. A
holder that stops cleanly deletes the record, so that a standby takes over at its next
try.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import anyio
import msgspec

from corral.contract.codec import decode, encode
from corral.natsio.kv import Bucket, Conflict

log = logging.getLogger(__name__)

LEASE_SECONDS: Final = 10.0
RENEW_SECONDS: Final = 2.0


def lease_key(service: str) -> str:
    """The key of `service`'s lease in corral_leases (e.g. lease.netmgr)."""
    return f"lease.{service}"


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    holder: str
    renewed_at: float = 0.0  # the holder's wall clock (for people; never compared)


class Lease:
    def __init__(
        self,
        bucket: Bucket,
        holder: str,
        *,
        service: str,
        lease_seconds: float = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self.holder = holder
        self.service = service
        self.key = lease_key(service)
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.clock = clock
        self.revision: int | None = None  # the record's revision while held
        self.renewed = 0.0
        self._seen: tuple[int, float] | None = None  # another's revision, first seen at

    @property
    def held(self) -> bool:
        return self.revision is not None

    def _record(self) -> bytes:
        return encode(LeaseRecord(holder=self.holder, renewed_at=time.time()))

    async def try_acquire(self) -> bool:
        """One attempt: True when this process holds the lease now."""
        now = self.clock()
        entry = await self.bucket.get(self.key)
        try:
            if entry is None or entry.value is None:
                revision = await self.bucket.create(self.key, self._record())
            else:
                holder = _holder(entry.value)
                # "": handed back by a clean stop (release), free to take at once
                if holder and holder != self.holder:
                    if self._seen is None or self._seen[0] != entry.revision:
                        self._seen = (entry.revision, now)
                        return False
                    if now - self._seen[1] < self.lease_seconds:
                        return False
                    log.info("the lease of %s (%s) expired; taking it over", holder, self.key)
                revision = await self.bucket.update(self.key, self._record(), entry.revision)
        except Conflict:
            return False
        self.revision = revision
        self.renewed = now
        self._seen = None
        return True

    async def acquire(self) -> None:
        """Wait until this process holds the lease."""
        while True:
            if await self.try_acquire():
                return
            await anyio.sleep(self.renew_seconds)

    async def keep(self, scope: anyio.CancelScope) -> None:
        """Renew the lease until it is lost, then cancel `scope` (what ran under it)."""
        while True:
            await anyio.sleep(self.renew_seconds)
            assert self.revision is not None
            try:
                self.revision = await self.bucket.update(self.key, self._record(), self.revision)
                self.renewed = self.clock()
                continue
            except Conflict:
                log.warning(
                    "the lease %s was taken by another %s; standing by", self.key, self.service
                )
            except Exception as error:
                if self.clock() - self.renewed < self.lease_seconds / 2:
                    log.warning("could not renew the lease %s (%s); retrying", self.key, error)
                    continue
                log.warning("could not renew the lease %s in time; standing by", self.key)
            self.revision = None
            scope.cancel()
            return

    async def release(self) -> None:
        """Hand the lease back (on a clean stop), shielded; failures are logged. The
        record stays, with no holder: the next to try takes it at once, and the service
        still shows as part of the cluster while it restarts or fails over (a node
        agent waits for netmgr's drain records while netmgr's lease record is there;
        docs/rollouts.md, "Graceful stops")."""
        revision, self.revision = self.revision, None
        if revision is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                handed_back = encode(LeaseRecord(holder="", renewed_at=time.time()))
                await self.bucket.update(self.key, handed_back, revision)
            except Exception as error:
                log.debug("could not release the lease %s: %s", self.key, error)


def _holder(raw: bytes) -> str:
    try:
        return decode(raw, LeaseRecord).holder
    except msgspec.DecodeError:
        return ""
