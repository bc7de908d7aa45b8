"""Ranking the nodes for one Deployment's new replicas (decide._NodePicker): the loop over
every node is written out for speed, and must rank exactly as its definition does
(`_misfit`, `_selector_misfit`, the volume rules, `_rank`), without copying the usage of
nodes it does not pick."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.contract.state import Node, NodeCapacity
from corral_scheduler.decide import Usage, _misfit, _NodePicker, _selector_misfit, _UsageCopy
from corral_scheduler.snapshot import Snapshot

NAMES = [f"n{i}" for i in range(8)]

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


class Misfits:
    """A stand-in for volume_fit.VolumeFit: the nodes its rules exclude."""

    block = ""

    def __init__(self, excluded: set[str]) -> None:
        self.excluded = excluded

    def misfit(self, node: str) -> str:
        return "volume" if node in self.excluded else ""


@settings(max_examples=300, deadline=None)
@given(
    nodes=st.dictionaries(st.sampled_from(NAMES), st.tuples(capacities, labels), min_size=1),
    used=st.dictionaries(st.sampled_from(NAMES), usages),
    spread=st.dictionaries(st.sampled_from(NAMES), st.integers(0, 3)),
    ready=st.sets(st.sampled_from(NAMES)),
    cpu=st.integers(0, 2000),
    memory=st.integers(0, 2**32),
    selector=st.dictionaries(st.sampled_from(["zone", "disk"]), st.sampled_from(["a", "b"])),
    excluded=st.none() | st.sets(st.sampled_from(NAMES)),
)
def test_the_written_out_ranking_is_the_definitions_and_copies_no_usage(
    nodes: dict[str, tuple[NodeCapacity, dict[str, str]]],
    used: dict[str, Usage],
    spread: dict[str, int],
    ready: set[str],
    cpu: int,
    memory: int,
    selector: dict[str, str],
    excluded: set[str] | None,
) -> None:
    snapshot = Snapshot(
        nodes={
            name: Node(name=name, capacity=capacity, labels=node_labels)
            for name, (capacity, node_labels) in nodes.items()
        }
    )
    ready &= set(nodes)
    usage = _UsageCopy(used)
    fit = None if excluded is None else Misfits(excluded)
    picker = _NodePicker(
        snapshot,
        ready,
        usage,
        Counter(spread),
        cpu,
        memory,
        fit,  # type: ignore[arg-type]
        selector=selector,
    )
    assert dict(usage) == {}  # nothing copied: ranking only reads
    reference = sorted(
        picker._rank(name)
        for name in ready
        if not _misfit(snapshot.nodes[name], usage[name], cpu, memory)
        and not _selector_misfit(snapshot.nodes[name], selector)
        and (fit is None or not fit.misfit(name))
    )
    assert sorted(picker.heap) == reference
