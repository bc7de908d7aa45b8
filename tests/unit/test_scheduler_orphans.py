"""Orphan adoption in the deciding step: containers a node keeps from an adopted earlier
cluster are placed again, where they run and under their own name, when a Deployment of
their name and current template needs replicas."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import Node, NodeCapacity, OrphanReplica, Placement
from corral_scheduler.decide import Plan, schedule, schedule_deployment
from corral_scheduler.snapshot import PlacedReplica, Snapshot

NOW = 500.0


def web(replicas: int, image: str = "web:1") -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="web", generation=1),
        spec=DeploymentSpec(replicas=replicas, template=ContainerTemplate(image=image)),
    )


CURRENT = web(1).spec.template.template_hash()
OLD = web(1, image="web:0").spec.template.template_hash()


def node(name: str, *orphans: OrphanReplica, pods: int = 110, mode: str = "") -> Node:
    capacity = NodeCapacity(cpu_millis=4000, memory_bytes=2**33, pods=pods)
    return Node(name=name, capacity=capacity, orphans=list(orphans), mode=mode)


def orphan(replica: str, template_hash: str = CURRENT, deployment: str = "web") -> OrphanReplica:
    return OrphanReplica(
        deployment=deployment, replica=replica, template_hash=template_hash, running=True
    )


def snapshot(
    deployments: list[Deployment], nodes: list[Node], placed: Sequence[Placement] = ()
) -> Snapshot:
    return Snapshot(
        deployments={d.key: d for d in deployments},
        nodes={n.name: n for n in nodes},
        node_last_seen={n.name: NOW - 1 for n in nodes},
        placements={p.key: PlacedReplica(p, revision=i + 1) for i, p in enumerate(placed)},
    )


def decide(s: Snapshot) -> Plan:
    counter = itertools.count()
    return schedule(s, NOW, wall_time=1.0, new_suffix=lambda: f"n{next(counter):04d}")


def test_new_replicas_first_claim_orphans_of_their_name_and_template_where_they_run() -> None:
    a = node(
        "a",
        orphan("web-kept1"),
        orphan("web-stale", template_hash=OLD),
        orphan("api-other", deployment="api"),
    )
    plan = decide(snapshot([web(3)], [a, node("b")]))
    placed = sorted((p.node, p.replica) for p in plan.place)
    assert ("a", "web-kept1") in placed
    assert len(placed) == 3
    assert all(name not in {"web-stale", "api-other"} for _, name in placed)
    claimed = next(p for p in plan.place if p.replica == "web-kept1")
    assert claimed.template_hash == CURRENT and claimed.deployment == "web"
    assert any(e.reason == "Adopted" and "1 orphan" in e.message for e in plan.events)


def test_orphans_are_claimed_only_as_far_as_replicas_are_needed() -> None:
    a = node("a", orphan("web-o1"), orphan("web-o2"), orphan("web-o3"))
    plan = decide(snapshot([web(2)], [a]))
    assert sorted(p.replica for p in plan.place) == ["web-o1", "web-o2"]


def test_a_deployment_at_its_count_claims_no_orphan() -> None:
    d = web(1)
    running = Placement(
        replica="web-live1",
        deployment="web",
        node="b",
        template=d.spec.template,
        template_hash=CURRENT,
        generation=1,
    )
    plan = decide(snapshot([d], [node("a", orphan("web-o1")), node("b")], [running]))
    assert not plan.place


def test_orphans_on_nodes_that_take_nothing_new_stay_unclaimed() -> None:
    held = node("a", orphan("web-o1"), mode="Held")
    full = node("c", orphan("web-o3"), pods=0)
    silent = node("d", orphan("web-o4"))
    s = snapshot([web(1)], [held, full, silent, node("b")])
    s = dataclasses.replace(s, node_last_seen={**s.node_last_seen, "d": NOW - 60})
    plan = decide(s)
    assert [(p.node, p.replica) for p in plan.place] == [("b", "web-n0000")]


def test_an_orphan_whose_name_is_placed_elsewhere_is_not_placed_twice() -> None:
    d = web(2, image="web:1")
    elsewhere = Placement(
        replica="web-o1",
        deployment="web",
        node="b",
        template=d.spec.template,
        template_hash=CURRENT,
        generation=1,
    )
    plan = decide(snapshot([d], [node("a", orphan("web-o1")), node("b")], [elsewhere]))
    assert [p.replica for p in plan.place] == ["web-n0000"]


def decide_one(s: Snapshot, ready: set[str]) -> Plan:
    """One Deployment's decision (`schedule_deployment`, as the control loop makes it)."""
    counter = itertools.count()
    return schedule_deployment(
        s,
        "default.web",
        NOW,
        usage={},
        taken_names=set(),
        ready_nodes=ready,
        wall_time=1.0,
        new_suffix=lambda: f"n{next(counter):04d}",
    )


def test_one_deployments_decision_looks_for_orphans_only_on_the_nodes_named_as_holding_them() -> (
    None
):
    held_elsewhere = node("b", orphan("web-o2"))
    s = snapshot([web(2)], [node("a", orphan("web-o1")), held_elsewhere, node("c")])
    ready = {"a", "b", "c"}
    every_node = decide_one(s, ready)
    assert sorted((p.node, p.replica) for p in every_node.place) == [
        ("a", "web-o1"),
        ("b", "web-o2"),
    ]
    # Named: the same plan; a holder not ready or unknown is skipped, as before.
    named = dataclasses.replace(s, orphan_holders=frozenset({"a", "b", "gone"}))
    assert decide_one(named, ready).place == every_node.place
    assert [p.replica for p in decide_one(named, {"a", "c"}).place] == ["web-o1", "web-n0000"]
    # Only the named nodes are looked at: an orphan on a node not named stays unclaimed.
    only_a = dataclasses.replace(s, orphan_holders=frozenset({"a"}))
    assert [p.replica for p in decide_one(only_a, ready).place] == ["web-o1", "web-n0000"]
