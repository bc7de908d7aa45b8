"""The nodes in order of how much of their room their placements take, kept per change.

A decision that places a few replicas needs the few least-allocated nodes that fit, not
a ranking of every node (decide._NodePicker). This index keeps each node in order of
its allocation, per class of capacity, and is updated when a node's usage or capacity
changes (the control loop's books): O(log nodes) per change, and a decision reads the
head of each class.

Within one class (the same CPU and memory capacity, each at least 1) a node's rank for
any replica's request is decided by one exact integer,

    used_cpu * memory_capacity + used_memory * cpu_capacity,

since the rank's load, (used_cpu + cpu) / cpu_capacity + (used_memory + memory) /
memory_capacity, is that integer divided by the product of the capacities plus a term
the same for every node of the class. Across classes a decision merges the heads by
that load. The picker computes the load exactly as the ranking of every node does, so
the order of its picks is the same (a property test holds them to it).
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedList

from corral.contract.state import NodeCapacity

# A class of capacity: (CPU, memory), each at least 1 (as the load divides by them).
CapacityClass = tuple[int, int]


def capacity_class(capacity: NodeCapacity) -> CapacityClass:
    return (max(capacity.cpu_millis, 1), max(capacity.memory_bytes, 1))


def allocation(capacity: CapacityClass, cpu_millis: int, memory_bytes: int) -> int:
    """The exact integer that orders the nodes of one class by their load."""
    cpu_capacity, memory_capacity = capacity
    return cpu_millis * memory_capacity + memory_bytes * cpu_capacity


class NodeRanking:
    """Every node with a record, in order of allocation within its class of capacity.

    Not thread-safe: read by decisions made on the event loop that updates it (a
    decision made in a thread ranks every node instead).
    """

    def __init__(self) -> None:
        self._classes: dict[CapacityClass, SortedList] = {}
        self._entries: dict[str, tuple[CapacityClass, tuple[int, str]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node: object) -> bool:
        return node in self._entries

    def update(
        self, node: str, capacity: NodeCapacity | None, cpu_millis: int, memory_bytes: int
    ) -> None:
        """Place `node` by its capacity and what its placements take now; a capacity of
        None (no record) takes it out."""
        self._remove(node)
        if capacity is None:
            return
        klass = capacity_class(capacity)
        entry = (allocation(klass, cpu_millis, memory_bytes), node)
        found = self._classes.get(klass)
        if found is None:
            found = self._classes[klass] = SortedList()
        found.add(entry)
        self._entries[node] = (klass, entry)

    def _remove(self, node: str) -> None:
        known = self._entries.pop(node, None)
        if known is None:
            return
        klass, entry = known
        entries = self._classes[klass]
        entries.remove(entry)
        if not entries:
            del self._classes[klass]

    def classes(self) -> Iterator[SortedList]:
        """Each class's nodes, least allocated first: entries (allocation, node name)."""
        return iter(self._classes.values())
