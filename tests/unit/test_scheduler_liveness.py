"""When a node's replicas are replaced: the time budget's rules in the pure deciding
step (corral.contract.time_budget; R = NODE_LOST_SECONDS, R' = NODE_LOST_AFTER_STOP_SECONDS)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Literal

import pytest

from corral.contract.names import placement_key
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import Node, NodeCapacity, Placement
from corral.contract.time_budget import (
    CUT_OFF_STOP_SECONDS,
    ENGINE_DOWN_EVICTION_SECONDS,
    NODE_LOST_AFTER_STOP_SECONDS,
    NODE_LOST_SECONDS,
    STOP_SECONDS,
)
from corral_scheduler.decide import Plan, schedule
from corral_scheduler.snapshot import PlacedReplica, Snapshot

NOW = 10_000.0
R = NODE_LOST_SECONDS
R_AFTER_STOP = NODE_LOST_AFTER_STOP_SECONDS
E = ENGINE_DOWN_EVICTION_SECONDS
Replacement = Literal["Fast", "AfterStop"]


def deployment(replacement: Replacement) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="db", generation=1),
        spec=DeploymentSpec(
            replicas=1, template=ContainerTemplate(image="db:1"), replacement=replacement
        ),
    )


def node(name: str, *, ready: bool = True, mode: str = "") -> Node:
    capacity = NodeCapacity(cpu_millis=4000, memory_bytes=2**33)
    return Node(name=name, capacity=capacity, ready=ready, mode=mode)


def placed(d: Deployment, node_name: str) -> Placement:
    template = d.spec.template
    return Placement(
        replica="db-aaaaa",
        deployment=d.metadata.name,
        node=node_name,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


def snapshot(
    replacement: Replacement,
    *,
    silent_for: float = 0.5,
    engine_down_for: float | None = None,
    released: bool = False,
    fresh: bool = True,
    mode: str = "",
) -> Snapshot:
    """db has its replica on node "old" (its agent in `mode`, not ready for
    `engine_down_for` seconds); node "spare" is Ready and empty."""
    d = deployment(replacement)
    old = node("old", ready=engine_down_for is None, mode=mode)
    return Snapshot(
        deployments={d.key: d},
        nodes={"old": old, "spare": node("spare")},
        node_last_seen={"old": NOW - silent_for, "spare": NOW - 0.5},
        node_not_ready_since={} if engine_down_for is None else {"old": NOW - engine_down_for},
        feed_fresh_since=NOW - 1000 if fresh else None,
        placements={
            placement_key("old", "default", "db-aaaaa"): PlacedReplica(placed(d, "old"), revision=7)
        },
        released=frozenset({"old"}) if released else frozenset(),
    )


def decide(s: Snapshot) -> Plan:
    counter = itertools.count()
    return schedule(s, NOW, wall_time=1.0, new_suffix=lambda: f"{next(counter):05d}")


# (replacement, how the node "old" is, replaced?, the bounded cause)
TABLE = [
    ("Fast", {"silent_for": R - 0.5}, False, None),
    ("Fast", {"silent_for": R + 0.5}, True, "node lost"),
    ("AfterStop", {"silent_for": R + 0.5}, False, None),
    ("AfterStop", {"silent_for": R_AFTER_STOP - 0.5}, False, None),
    ("AfterStop", {"silent_for": R_AFTER_STOP + 0.5}, True, "node lost"),
    ("Fast", {"silent_for": R + 1, "released": True}, True, "node released"),
    ("AfterStop", {"silent_for": R + 1, "released": True}, True, "node released"),
    ("Fast", {"silent_for": 1000, "fresh": False}, False, None),
    ("AfterStop", {"silent_for": 1000, "fresh": False}, False, None),
    ("Fast", {"engine_down_for": E + 1}, True, "node engine down"),
    ("AfterStop", {"engine_down_for": E + 1}, False, None),
    ("Fast", {"engine_down_for": E - 1}, False, None),
    # Held: not ready on purpose (the store is not its own); it keeps every replica
    # running, so they are never replaced for it, however long it waits ...
    ("Fast", {"engine_down_for": E + 1, "mode": "Held"}, False, None),
    ("Fast", {"engine_down_for": 100 * E, "mode": "Held"}, False, None),
    ("AfterStop", {"engine_down_for": 100 * E, "mode": "Held"}, False, None),
    # ... but a Held node that falls silent is lost like any other.
    ("Fast", {"silent_for": R + 0.5, "engine_down_for": E + 1, "mode": "Held"}, True, "node lost"),
]


@pytest.mark.parametrize(("replacement", "state", "replaced", "cause"), TABLE)
def test_a_nodes_replicas_are_replaced_as_the_time_budget_says(
    replacement: Replacement, state: dict[str, float], replaced: bool, cause: str | None
) -> None:
    plan = decide(snapshot(replacement, **state))  # type: ignore[arg-type]
    if replaced:
        assert [(s.key, s.revision, s.cause) for s in plan.stop] == [
            ("old.default.db-aaaaa", 7, cause)
        ]
        assert [(p.node, p.deployment) for p in plan.place] == [("spare", "db")]
    else:
        assert not plan.stop and not plan.place


def test_the_budget_keeps_never_two_copies_past_the_agents_own_stop() -> None:
    assert R < CUT_OFF_STOP_SECONDS < CUT_OFF_STOP_SECONDS + STOP_SECONDS < R_AFTER_STOP


def test_a_released_node_gets_nothing_new_even_while_its_record_is_there() -> None:
    s = snapshot("Fast", silent_for=R + 1, released=True)
    fresh_record = dataclasses.replace(s, node_last_seen={"old": NOW, "spare": NOW})
    assert not fresh_record.schedulable("old", NOW)
    assert fresh_record.schedulable("spare", NOW)


def test_a_node_silent_for_longer_than_r_gets_nothing_new() -> None:
    s = snapshot("Fast", silent_for=R + 0.5)
    assert not s.schedulable("old", NOW) and s.schedulable("spare", NOW)


@pytest.mark.parametrize("mode", ["Held", "Stopping", "Isolated", "Retired", "HandedOver"])
def test_a_node_whose_agent_starts_nothing_gets_nothing_new(mode: str) -> None:
    s = snapshot("Fast")
    held = dataclasses.replace(s, nodes={**s.nodes, "spare": node("spare", mode=mode)})
    assert not held.schedulable("spare", NOW)
    assert held.schedulable("old", NOW)


def test_stops_of_lost_nodes_are_counted_under_a_bounded_label() -> None:
    plan = decide(snapshot("Fast", silent_for=R + 0.5))
    (stop,) = plan.stop
    assert stop.label == "node lost" and "old" not in stop.label  # no node name in metrics
    assert "node old" in stop.reason  # but people are told which node
