"""What many decoded records hold alike, held once in a process.

A scheduler mirrors every Placement and ReplicaStatus (the view of it it reads):
100,000 of each at 100,000 replicas. Each one decoded from the store holds copies of
its own of what is the same for many: a Placement its replica's whole
ContainerTemplate (image, command, env, resources, probes: 1-3 KiB), both their
Deployment's name, namespace and template hash, and their node's name (about 60 bytes
a string). bench/bench_mirror_memory.py measures it: a Placement held 1,270 bytes with
a thin template and 3,071 with a full one, about 220-235 once shared here; a
ReplicaStatus 1,356 bytes, 1,129-1,177 (the scheduler's view of it 549, 321-370).

A Mirror given `share=` passes each value it decodes through it:

- `TEMPLATES.share` (the scheduler's and agents' placements) and
  `ENDPOINTS_TEMPLATES.share` (netmgr's placement views): the template becomes the one
  already held for its Deployment revision (namespace, Deployment, template hash) when
  the two are equal, and the names are interned;
- `intern_replica_names` (the scheduler's and netmgr's replica statuses, volmgr's
  placement views): the names the record has are interned.

Only an equal template is shared (msgspec compares field by field): a record whose hash
names another template (written by hand, or by a corral that hashed otherwise) keeps
its own. A template held only by the pool is dropped at the next sweep, which comes
when the pool has doubled since the last one: the pool holds what the process's records
hold, and a few revisions more. Interned strings go when nothing holds them any more
(not on Python 3.12, which keeps them for good: these names are few, a Deployment's,
a node's, a revision's; a Mirror interns its keys, one per replica, only where they go:
corral.natsio.kv.INTERN_KEYS).
Each change is made in place, with equal values (nothing a reader can tell apart), on
a record just decoded (or just written) that nothing else holds yet. A pool is used
from one thread: the thread of the mirrors that share it (the event loop's).
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any, Final, Generic, TypeVar

import msgspec

from corral.contract.state import Placement
from corral.contract.views import EndpointsPlacement

# The pool's size at which it first looks for templates nothing else holds.
FIRST_SWEEP: Final = 256

# The names a replica's records repeat: its Deployment's, and its node's.
REPLICA_NAMES: Final = ("namespace", "deployment", "node", "template_hash")

R = TypeVar("R", bound=msgspec.Struct)
P = TypeVar("P", Placement, EndpointsPlacement)


@cache
def _names_of(kind: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(name for name in REPLICA_NAMES if name in kind.__struct_fields__)


def intern_replica_names(record: R) -> R:
    """`record` (just decoded) holding the one copy of each name it repeats (those of
    REPLICA_NAMES its type has: a view may hold fewer)."""
    for name in _names_of(type(record)):
        msgspec.structs.force_setattr(record, name, sys.intern(getattr(record, name)))
    return record


class TemplatePool(Generic[P]):
    """The templates of the Deployment revisions this process's placements (of one
    type: full records, or netmgr's views) hold."""

    def __init__(self, first_sweep: int = FIRST_SWEEP) -> None:
        self._templates: dict[tuple[str, str, str], Any] = {}
        self._first_sweep = first_sweep
        self._sweep_at = first_sweep
        self.shared = 0  # placements given a template held already

    def __len__(self) -> int:
        return len(self._templates)

    def share(self, placement: P) -> P:
        """`placement` (just decoded or written) holding its revision's template if it
        holds an equal copy, and the one copy of each name."""
        intern_replica_names(placement)
        key = (placement.namespace, placement.deployment, placement.template_hash)
        known = self._templates.get(key)
        if known is None:
            self._templates[key] = placement.template
            if len(self._templates) >= self._sweep_at:
                self.sweep()
        elif known is not placement.template and known == placement.template:
            msgspec.structs.force_setattr(placement, "template", known)
            self.shared += 1
        return placement

    def sweep(self) -> None:
        """Drop the templates nothing but the pool holds: those whose reference count is
        what this Python reads of an object only a dict holds (POOL_ONLY). A count read
        too high keeps a template a sweep longer; one read too low only stops its
        sharing: what a record holds never changes."""
        templates = self._templates
        for key, count in _references(templates):
            if count <= POOL_ONLY:
                templates.pop(key, None)
        self._sweep_at = max(self._first_sweep, 2 * len(templates))


def _references(held_by: dict[Any, Any]) -> list[tuple[Any, int]]:
    """Each key of `held_by` and the reference count of its value, read the same way
    for the pool's templates and for POOL_ONLY's measure."""
    counts = []
    for key in list(held_by):
        value = held_by.get(key)
        if value is not None:
            counts.append((key, sys.getrefcount(value)))
    return counts


# The count `_references` reads of an object nothing but its dict holds, measured on
# this Python at import (CPython 3.11: the dict, `value` and getrefcount's argument).
POOL_ONLY: Final = _references({0: object()})[0][1]


# The process's pools: every mirror of full Placements shares TEMPLATES (a hollow
# cluster's nodes too, whose placements of one revision are then one template among
# them all); netmgr's mirror of placement views ENDPOINTS_TEMPLATES.
TEMPLATES: Final[TemplatePool[Placement]] = TemplatePool()
ENDPOINTS_TEMPLATES: Final[TemplatePool[EndpointsPlacement]] = TemplatePool()
