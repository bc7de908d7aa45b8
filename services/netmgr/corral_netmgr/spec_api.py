"""What netmgr's answers to apply and delete of Networks and Services add to the rules
every spec API follows (corral.natsio.spec_api; docs/api.md, "Durable specs").

Checks against the rest of the cluster (overlapping ranges, a node port taken) read
the mirrors under one lock, held by every apply and delete of both kinds: this
process is the only writer (the lease), so an allocation can never race another.
A decision waits (Busy) until every mirror it reads is current, and every write is
put into the kind's own mirror at once, so the next decision sees it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import anyio

from corral.contract.events import REASON_BUSY, Reply
from corral.contract.network_specs import Network, Service
from corral.natsio import spec_api
from corral.natsio.kv import Bucket, Entry, Mirror
from corral.natsio.spec_api import SpecPosition, no_stream
from corral_netmgr.allocator import AllocationError

T = TypeVar("T", Network, Service)


class SpecAPI(spec_api.SpecAPI[T]):
    """What the Network and Service APIs share: `kind`, its type, its bucket's mirror."""

    def __init__(
        self,
        mirror: Mirror[T],
        *,
        lock: anyio.Lock,
        views: Iterable[Mirror[Any]],
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
    ) -> None:
        """`views`: the mirrors a decision reads (it waits, Busy, until they are current);
        `progress`: the bucket of corral.natsio.spec_progress (corral_leases)."""
        super().__init__(mirror.bucket, progress, spec_position)
        self.mirror: Mirror[T] = mirror
        self.lock = lock
        self.views: list[Mirror[Any]] = [mirror, *views]

    def serialized(self) -> anyio.Lock:
        return self.lock

    def not_ready(self, name: str) -> Reply | None:
        """Busy while a mirror a decision reads has not replayed (or its watch broke)."""
        for mirror in self.views:
            if not mirror.current:
                return self.reply(
                    ok=False,
                    name=name,
                    reason=REASON_BUSY,
                    error=f"netmgr's view of {mirror.bucket.name} is not current yet; try again",
                )
        return None

    def settle(self, wanted: T, current: T | None) -> T | Reply:
        try:
            return self.decide(wanted, current)
        except AllocationError as error:
            return self.invalid(wanted.metadata.name, error.message, error.field)

    def decide(self, wanted: T, current: T | None) -> T:
        """The object to store for `wanted` (`current`: what is stored, if readable), with
        what the cluster allocates filled in; an AllocationError refuses it."""
        raise NotImplementedError

    # --- writing: into the bucket, and at once into the mirror ------------------------

    async def create(self, key: str, raw: bytes) -> int:
        revision = await super().create(key, raw)
        self.mirror.apply(Entry(key, raw, revision))
        return revision

    async def update(self, key: str, raw: bytes, revision: int) -> int:
        written = await super().update(key, raw, revision)
        self.mirror.apply(Entry(key, raw, written))
        return written

    async def remove(self, key: str, revision: int) -> int:
        marker = await super().remove(key, revision)
        self.mirror.apply(Entry(key, None, marker))
        return marker


__all__ = ["SpecAPI", "SpecPosition", "no_stream"]
