"""What netmgr's answers to apply and delete of Networks and Services add to the rules
every spec API follows (corral.natsio.spec_api; docs/api.md, "Durable specs").

Checks against the rest of the cluster (overlapping ranges, a node port taken) read
the mirrors under one lock, held by every apply and delete of both kinds: this
process is the only writer (the lease), so an allocation can never race another.
A decision waits (Busy) until every mirror it reads is current, and every write is
put into the kind's own mirror at once, so the next decision sees it.
"""

from __future__ import annotations

from typing import TypeVar

from corral.contract.events import Reply
from corral.contract.network_specs import Network, Service
from corral.natsio import spec_api
from corral.natsio.spec_api import SpecPosition, no_stream
from corral_netmgr.allocator import AllocationError

T = TypeVar("T", Network, Service)


class SpecAPI(spec_api.LockedSpecAPI[T]):
    """What the Network and Service APIs share: `kind`, its type, its bucket's mirror."""

    service = "netmgr"

    def settle(self, wanted: T, current: T | None) -> T | Reply:
        try:
            return self.decide(wanted, current)
        except AllocationError as error:
            return self.invalid(wanted.metadata.name, error.message, error.field)

    def decide(self, wanted: T, current: T | None) -> T:
        """The object to store for `wanted` (`current`: what is stored, if readable), with
        what the cluster allocates filled in; an AllocationError refuses it."""
        raise NotImplementedError


__all__ = ["SpecAPI", "SpecPosition", "no_stream"]
