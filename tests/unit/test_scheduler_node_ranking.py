"""Ranking the nodes for one Deployment's new replicas (decide._NodePicker): the loop over
every node is written out for speed, and must rank exactly as its definition does
(`_misfit`, `_selector_misfit`, the volume rules, `_rank`), without copying the usage of
nodes it does not pick; picks read off the head of the control loop's ranking of nodes
(node_ranking.py) must be the picks of ranking every node."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.contract.state import Node, NodeCapacity
from corral_scheduler.decide import Usage, _misfit, _NodePicker, _selector_misfit, _UsageCopy
from corral_scheduler.node_ranking import NodeRanking
from corral_scheduler.snapshot import Snapshot

capacities = st.builds(
    NodeCapacity,
    cpu_millis=st.integers(0, 4000),
    memory_bytes=st.integers(0, 2**33),
    pods=st.integers(0, 4),
)
labels = st.dictionaries(st.sampled_from(["zone", "disk"]), st.sampled_from(["a", "b"]))
usages = st.builds(
    Usage,
    cpu_millis=st.integers(0, 4000),
    memory_bytes=st.integers(0, 2**33),
    pods=st.integers(0, 4),
)


def ranking_of(snapshot: Snapshot, used: dict[str, Usage]) -> NodeRanking:
    ranking = NodeRanking()
    for name, node in snapshot.nodes.items():
        found = used.get(name) or Usage()
        ranking.update(name, node.capacity, found.cpu_millis, found.memory_bytes)
    return ranking


# Few classes of capacity (as real clusters have), so that nodes share one.
class_capacities = st.sampled_from(
    [
        NodeCapacity(cpu_millis=4000, memory_bytes=2**33, pods=4),
        NodeCapacity(cpu_millis=2000, memory_bytes=2**32, pods=3),
        NodeCapacity(cpu_millis=0, memory_bytes=0, pods=2),
    ]
)
# Usage in coarse steps: ties in load (broken by name) come up often.
coarse_usages = st.builds(
    Usage,
    cpu_millis=st.integers(0, 8).map(lambda n: n * 500),
    memory_bytes=st.integers(0, 8).map(lambda n: n * 2**30),
    pods=st.integers(0, 3),
)
MANY = [f"n{i:02}" for i in range(24)]


class Misfits:
    """A stand-in for volume_fit.VolumeFit: the nodes its rules exclude."""

    block = ""

    def __init__(self, excluded: set[str]) -> None:
        self.excluded = excluded

    def misfit(self, node: str) -> str:
        return "volume" if node in self.excluded else ""


@settings(max_examples=400, deadline=None)
@given(
    nodes=st.dictionaries(
        st.sampled_from(MANY), st.tuples(capacities | class_capacities, labels), min_size=1
    ),
    used=st.dictionaries(st.sampled_from(MANY), coarse_usages | usages),
    spread=st.dictionaries(st.sampled_from(MANY), st.integers(0, 3)),
    ready=st.sets(st.sampled_from(MANY)),
    cpu=st.sampled_from([0, 100, 500, 1000]) | st.integers(0, 2000),
    memory=st.sampled_from([0, 2**28, 2**30]) | st.integers(0, 2**32),
    selector=st.dictionaries(st.sampled_from(["zone", "disk"]), st.sampled_from(["a", "b"])),
    excluded=st.none() | st.sets(st.sampled_from(MANY)),
    picks=st.integers(1, 12),
)
def test_the_ranking_is_the_definitions_and_picks_off_the_kept_ranking_are_the_same(
    nodes: dict[str, tuple[NodeCapacity, dict[str, str]]],
    used: dict[str, Usage],
    spread: dict[str, int],
    ready: set[str],
    cpu: int,
    memory: int,
    selector: dict[str, str],
    excluded: set[str] | None,
    picks: int,
) -> None:
    snapshot = Snapshot(
        nodes={
            name: Node(name=name, capacity=capacity, labels=node_labels)
            for name, (capacity, node_labels) in nodes.items()
        }
    )
    ready &= set(nodes)

    def picker(ranking: NodeRanking | None) -> tuple[_NodePicker, _UsageCopy]:
        usage = _UsageCopy(used)
        fit = None if excluded is None else Misfits(excluded)
        made = _NodePicker(
            snapshot,
            ready,
            usage,
            Counter(spread),
            cpu,
            memory,
            fit,  # type: ignore[arg-type]
            selector=selector,
            ranking=ranking,
        )
        return made, usage

    every, usage = picker(None)
    assert dict(usage) == {}  # nothing copied: ranking only reads
    reference = sorted(
        every._rank(name)
        for name in ready
        if not _misfit(snapshot.nodes[name], usage[name], cpu, memory)
        and not _selector_misfit(snapshot.nodes[name], selector)
        and (excluded is None or name not in excluded)
    )
    assert sorted(every.heap) == reference
    kept, _ = picker(ranking_of(snapshot, used))
    assert [kept.pick() for _ in range(picks)] == [every.pick() for _ in range(picks)]


def test_the_ranking_follows_a_nodes_usage_and_capacity_and_forgets_it() -> None:
    ranking = NodeRanking()
    big = NodeCapacity(cpu_millis=4000, memory_bytes=2**33)
    small = NodeCapacity(cpu_millis=2000, memory_bytes=2**33)
    ranking.update("a", big, 1000, 0)
    ranking.update("b", big, 0, 0)
    ranking.update("c", small, 0, 0)
    assert [[name for _, name in entries] for entries in ranking.classes()] == [["b", "a"], ["c"]]
    ranking.update("b", big, 2000, 0)  # b takes more now
    ranking.update("c", big, 500, 0)  # c's capacity changed: another class
    assert [[name for _, name in entries] for entries in ranking.classes()] == [["c", "a", "b"]]
    ranking.update("a", None, 0, 0)  # its record is gone
    assert "a" not in ranking and len(ranking) == 2


@settings(max_examples=300, deadline=None)
@given(
    used=st.lists(coarse_usages, min_size=20, max_size=60),
    big=st.lists(st.booleans(), min_size=60, max_size=60),
    spread=st.dictionaries(st.integers(0, 59), st.integers(1, 2), max_size=5),
    cpu=st.sampled_from([0, 100, 500]),
    memory=st.sampled_from([0, 2**28, 2**30]),
    picks=st.integers(1, 30),
)
def test_many_ready_nodes_of_two_classes_are_picked_as_ranking_every_node_picks(
    used: list[Usage],
    big: list[bool],
    spread: dict[int, int],
    cpu: int,
    memory: int,
    picks: int,
) -> None:
    """Every node ready and with room for pods: the order within a class decides."""
    capacities = [
        NodeCapacity(cpu_millis=8000, memory_bytes=2**34, pods=110),
        NodeCapacity(cpu_millis=4000, memory_bytes=2**33, pods=110),
    ]
    names = [f"n{i:02}" for i in range(len(used))]
    snapshot = Snapshot(
        nodes={name: Node(name=name, capacity=capacities[big[i]]) for i, name in enumerate(names)}
    )
    base = {name: usage for name, usage in zip(names, used, strict=True)}
    ranking = ranking_of(snapshot, base)
    spreads = {names[i]: count for i, count in spread.items() if i < len(names)}

    def picked(ranked: NodeRanking | None) -> list[str | None]:
        picker = _NodePicker(
            snapshot,
            set(names),
            _UsageCopy(base),
            Counter(spreads),
            cpu,
            memory,
            ranking=ranked,
        )
        return [picker.pick() for _ in range(picks)]

    assert picked(ranking) == picked(None)


def test_loads_too_large_to_tell_apart_still_tie_by_name() -> None:
    """A class whose loads round to one value though the allocations differ (capacities
    far beyond any machine's): the ranking's order (by allocation) is then not the order
    by name among equal loads, and every such node is looked at before a pick."""
    capacity = NodeCapacity(cpu_millis=2**40, memory_bytes=2**60, pods=110)
    used = {  # allocations b < c < a, loads all 0.5 once rounded
        "b": Usage(cpu_millis=2**39, memory_bytes=0, pods=1),
        "c": Usage(cpu_millis=2**39, memory_bytes=1, pods=1),
        "a": Usage(cpu_millis=2**39, memory_bytes=2, pods=1),
    }
    snapshot = Snapshot(nodes={name: Node(name=name, capacity=capacity) for name in used})
    ranking = ranking_of(snapshot, used)
    assert [name for entries in ranking.classes() for _, name in entries] == ["b", "c", "a"]

    def first(ranked: NodeRanking | None) -> str | None:
        return _NodePicker(
            snapshot, set(used), _UsageCopy(used), Counter(), 0, 0, ranking=ranked
        ).pick()

    assert first(None) == "a"
    assert first(ranking) == "a"
