"""Replacements for lost nodes are rate-limited, and none is made while most nodes are
lost at once (corral_scheduler.evictions; docs/time-budget.md, "Many nodes lost at
once"): a burst of up to a tenth of the nodes (at least 3) at once, refilled over a
minute; none while at least 3 nodes and 55 % of all are lost; an operator's release is
never held."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from corral.contract.state import Node, NodeCapacity
from corral.contract.time_budget import ENGINE_DOWN_EVICTION_SECONDS, NODE_LOST_SECONDS
from corral.natsio.kv import write_record
from corral_scheduler.evictions import (
    REFILL_SECONDS,
    EvictionGate,
    burst_for,
    disrupted,
)
from corral_scheduler.snapshot import Loss
from tests.unit.test_scheduler_control_loop import (
    Cluster,
    placed_and_running,
    release,
    running,
)

# --- the gate alone -------------------------------------------------------------------


def test_the_burst_is_a_tenth_of_the_nodes_and_at_least_three() -> None:
    assert [burst_for(n) for n in (1, 2, 10, 30, 31, 5000)] == [3, 3, 3, 3, 4, 500]


@pytest.mark.parametrize(
    ("lost", "nodes", "expected"),
    [
        (2, 2, False),  # fewer than 3 lost: never a disruption
        (2, 3, False),
        (3, 3, True),
        (5, 10, False),  # half
        (6, 10, True),  # 55 % and more
        (2750, 5000, True),
        (2749, 5000, False),
    ],
)
def test_a_disruption_is_three_nodes_and_55_percent_of_them_lost(
    lost: int, nodes: int, expected: bool
) -> None:
    assert disrupted(lost, nodes) is expected


def test_lost_nodes_are_admitted_in_the_order_they_were_lost_as_the_bucket_allows() -> None:
    gate = EvictionGate()
    for node in ("a", "b", "c", "d"):
        gate.judged(node, True)
    assert gate.admit(100.0, 20) == ["a", "b", "c"]  # a burst of 3 at 20 nodes
    assert gate.waiting == 1
    assert gate.admit(100.0 + REFILL_SECONDS / 3 - 0.1, 20) == []  # not a token yet
    assert gate.admit(100.0 + REFILL_SECONDS / 3 + 0.1, 20) == ["d"]
    assert gate.admitted == {"a", "b", "c", "d"}


def test_a_node_back_is_neither_lost_nor_admitted_and_lost_again_waits_again() -> None:
    gate = EvictionGate()
    gate.judged("a", True)
    assert gate.admit(0.0, 20) == ["a"]
    gate.judged("a", False)
    assert gate.lost == set() and gate.admitted == set()
    gate.judged("a", True)
    assert "a" not in gate.admitted and gate.waiting == 1
    assert gate.admit(1.0, 20) == ["a"]  # 2 tokens were left


def test_during_a_disruption_nothing_is_admitted_and_afterwards_the_waiting_are() -> None:
    gate = EvictionGate()
    for node in "abcdef":
        gate.judged(node, True)
    assert gate.admit(0.0, 10) == [] and gate.paused  # 6 of 10
    for node in "bcd":
        gate.judged(node, False)  # they came back: 3 of 10 lost
    assert gate.admit(1.0, 10) == ["a", "e", "f"] and not gate.paused


# --- through the control loop ---------------------------------------------------------

NODES = tuple(f"n{index}" for index in range(10))
CAPACITY = NodeCapacity(cpu_millis=4000, memory_bytes=2**33)  # as Cluster.heartbeat's


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def _ten_nodes_one_replica_each(cluster: Cluster) -> None:
    await cluster.apply("web", len(NODES))
    await placed_and_running(cluster, *NODES)
    assert cluster.placed_on() == sorted(NODES)


async def test_most_nodes_lost_at_once_keep_their_replicas_until_released_or_back() -> None:
    async with running() as cluster:
        await _ten_nodes_one_replica_each(cluster)
        alive = NODES[6:]  # n0..n5 fall silent together: 6 of 10
        await cluster.tick(NODE_LOST_SECONDS + 3, beating=alive)
        loop = cluster.loop
        assert loop.evictions.paused
        assert loop.evictions.lost == set(NODES[:6])
        assert _gauge("corral_replacements_paused") == 1
        assert _gauge("corral_nodes_lost_waiting") == 6
        # Judged lost all the same (not schedulable), but nothing was replaced.
        assert not loop.ready_nodes & set(NODES[:6])
        assert cluster.placed_on() == sorted(NODES)
        # An operator's release is never held: n0's replica moves.
        assert (await release(cluster, "n0")).ok
        await cluster.tick(2, beating=alive)
        placed = cluster.placed_on()
        assert "n0" not in placed and len(placed) == len(NODES)
        assert set(NODES[1:6]) <= set(placed)  # the others kept theirs
        # n1..n3 come back: 2 of 9 judged nodes lost, no disruption; n4 and n5 are
        # replaced now, each within the burst.
        await cluster.tick(2, beating=(*alive, "n1", "n2", "n3"))
        assert not loop.evictions.paused
        placed = cluster.placed_on()
        assert "n4" not in placed and "n5" not in placed and len(placed) == len(NODES)
        assert _gauge("corral_replacements_paused") == 0


async def test_a_few_nodes_lost_are_replaced_at_once_and_more_as_the_bucket_refills() -> None:
    async with running() as cluster:
        await _ten_nodes_one_replica_each(cluster)
        lost = NODES[:4]  # 4 of 10: no disruption, but one more than the burst of 3
        alive = NODES[4:]
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=alive)
        evictions = cluster.loop.evictions
        assert not evictions.paused and evictions.lost == set(lost)
        assert evictions.admitted == set(lost[:3]) and evictions.waiting == 1
        placed = cluster.placed_on()
        assert len(placed) == len(NODES) and not set(lost[:3]) & set(placed)
        assert lost[3] in placed  # waits for a token: REFILL_SECONDS / 3
        await cluster.tick(REFILL_SECONDS / 3 + 1, beating=alive)
        assert lost[3] not in cluster.placed_on()


async def test_a_lost_node_waiting_keeps_its_replica_and_its_loss_counts_once_admitted() -> None:
    # The decision reads only admitted losses (Snapshot.evictable); the judgement is raw.
    async with running() as cluster:
        await _ten_nodes_one_replica_each(cluster)
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=NODES[6:])
        view = cluster.loop.view_of("default.web")
        now = cluster.clock.now
        assert view.loss("n0", now) is None
        assert cluster.loop._liveness_view().loss("n0", now) is Loss.SILENT


async def test_a_node_whose_engine_is_down_past_e_is_admitted_and_replaced() -> None:
    async with running() as cluster:
        await _ten_nodes_one_replica_each(cluster)
        alive = NODES[1:]
        down = Node(name="n0", capacity=CAPACITY, ready=False, message="engine down")
        for _ in range(int(ENGINE_DOWN_EVICTION_SECONDS) + 2):  # n0 beats, its engine down
            entry = await cluster.nodes.get("n0")
            await write_record(cluster.nodes, "n0", down, None if entry is None else entry.revision)
            await cluster.tick(1, beating=alive)
        assert cluster.loop.evictions.admitted == {"n0"}
        placed = cluster.placed_on()
        assert "n0" not in placed and len(placed) == len(NODES)
