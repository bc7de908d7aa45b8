"""The pure deciding step: schedule(snapshot, now) -> Plan, with no I/O."""

from __future__ import annotations

import itertools

from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
    ResourceList,
    Resources,
)
from corral.contract.state import (
    DeploymentStatus,
    Node,
    NodeCapacity,
    OrphanReplica,
    Placement,
    ReplicaState,
    ReplicaStatus,
)
from corral.contract.time_budget import ENGINE_DOWN_EVICTION_SECONDS, NODE_LOST_SECONDS
from corral_scheduler.decide import Plan, schedule
from corral_scheduler.snapshot import PlacedReplica, Snapshot

NOW = 1000.0
GiB = 2**30


def deployment(
    name: str, replicas: int, image: str = "app:1", cpu: str | None = None
) -> Deployment:
    resources = Resources(requests=ResourceList(cpu=cpu)) if cpu else Resources()
    return Deployment(
        metadata=ObjectMeta(name=name, generation=1),
        spec=DeploymentSpec(
            replicas=replicas, template=ContainerTemplate(image=image, resources=resources)
        ),
    )


def node(name: str, cpu: int = 4000, memory: int = 8 * GiB, pods: int = 110) -> Node:
    return Node(name=name, capacity=NodeCapacity(cpu_millis=cpu, memory_bytes=memory, pods=pods))


def suffixes() -> itertools.count[int]:
    return itertools.count()


def decide(snapshot: Snapshot, now: float = NOW) -> Plan:
    counter = itertools.count()
    return schedule(snapshot, now, wall_time=5.0, new_suffix=lambda: f"{next(counter):05d}")


def cluster(
    deployments: list[Deployment],
    nodes: list[Node],
    placed: list[Placement] = (),  # type: ignore[assignment]
    running: set[str] = frozenset(),  # type: ignore[assignment]
    silent: set[str] = frozenset(),  # type: ignore[assignment]
) -> Snapshot:
    placements = {p.key: PlacedReplica(revision=i + 1, placement=p) for i, p in enumerate(placed)}
    statuses = {
        key: ReplicaStatus(
            replica=p.placement.replica,
            deployment=p.placement.deployment,
            node=p.placement.node,
            state=ReplicaState.RUNNING,
            template_hash=p.placement.template_hash,
        )
        for key, p in placements.items()
        if p.placement.replica in running
    }
    return Snapshot(
        deployments={d.key: d for d in deployments},
        nodes={n.name: n for n in nodes},
        node_last_seen={n.name: (NOW - 60 if n.name in silent else NOW - 1) for n in nodes},
        placements=placements,
        replica_statuses=statuses,
    )


def placed_on(plan: Plan) -> list[str]:
    return sorted(p.node for p in plan.place)


def as_placed(d: Deployment, node_name: str, replica: str, created_at: float = 1.0) -> Placement:
    template = d.spec.template
    return Placement(
        replica=replica,
        deployment=d.metadata.name,
        node=node_name,
        template=template,
        template_hash=template.template_hash(),
        generation=d.metadata.generation,
        cpu_millis=template.resources.requests.cpu_millis,
        memory_bytes=template.resources.requests.memory_bytes,
        created_at=created_at,
    )


def test_places_every_replica_and_spreads_them() -> None:
    plan = decide(cluster([deployment("web", 4)], [node("a"), node("b")]))
    assert placed_on(plan) == ["a", "a", "b", "b"]
    assert [p.replica for p in plan.place] == [f"web-0000{i}" for i in range(4)]
    ((status, _),) = plan.statuses
    assert (status.replicas, status.placed, status.ready, status.pending) == (4, 4, 0, 0)


def test_nothing_to_do_when_converged() -> None:
    web = deployment("web", 2)
    snapshot = cluster(
        [web], [node("a")], [as_placed(web, "a", "web-1"), as_placed(web, "a", "web-2")]
    )
    first = decide(snapshot)
    assert not first.place and not first.stop
    stored = {"default.web": (first.statuses[0][0], 7)}
    again = decide(Snapshot(**{**snapshot.__dict__, "statuses": stored}))
    assert again.is_empty()


def test_replicas_that_fit_nowhere_stay_pending_with_the_reason() -> None:
    plan = decide(
        cluster([deployment("big", 3, cpu="1500m")], [node("a", cpu=2000), node("b", cpu=1000)])
    )
    assert placed_on(plan) == ["a"]
    ((status, _),) = plan.statuses
    assert status.pending == 2
    assert status.pending_reason == "0/2 nodes are available: 2 Insufficient cpu"
    assert any(e.reason == "FailedScheduling" for e in plan.events)


def test_no_nodes_means_pending() -> None:
    plan = decide(cluster([deployment("web", 1)], []))
    assert plan.statuses[0][0].pending_reason == "no nodes are registered"


def test_silent_nodes_get_nothing_and_lose_their_replicas() -> None:
    web = deployment("web", 2)
    snapshot = cluster(
        [web],
        [node("a"), node("dead")],
        [as_placed(web, "dead", "web-1"), as_placed(web, "a", "web-2")],
        silent={"dead"},
    )
    plan = decide(snapshot)
    assert [s.key for s in plan.stop] == ["dead.default.web-1"]
    assert "not ready" in plan.stop[0].reason
    assert placed_on(plan) == ["a"]


def test_pods_capacity_is_respected() -> None:
    plan = decide(cluster([deployment("web", 5)], [node("a", pods=2), node("b", pods=1)]))
    assert placed_on(plan) == ["a", "a", "b"]
    assert plan.statuses[0][0].pending == 2
    assert "Too many replicas" in plan.statuses[0][0].pending_reason


def test_scale_down_stops_unready_then_crowded_then_newest() -> None:
    web = deployment("web", 2)
    placed = [
        as_placed(web, "a", "web-1", created_at=1),
        as_placed(web, "a", "web-2", created_at=2),
        as_placed(web, "b", "web-3", created_at=3),
        as_placed(web, "b", "web-4", created_at=4),
    ]
    plan = decide(
        cluster([web], [node("a"), node("b")], placed, running={"web-1", "web-2", "web-3"})
    )
    assert not plan.place
    assert sorted(s.key for s in plan.stop) == ["a.default.web-2", "b.default.web-4"]


def test_deleted_deployment_stops_all_and_forgets_status() -> None:
    web = deployment("web", 1)
    snapshot = cluster([], [node("a")], [as_placed(web, "a", "web-1")])
    snapshot = Snapshot(
        **{**snapshot.__dict__, "statuses": {"web": (DeploymentStatus(name="web"), 3)}}
    )
    plan = decide(snapshot)
    assert [s.key for s in plan.stop] == ["a.default.web-1"]
    assert plan.forget_statuses == [("web", 3)]


def test_new_template_rolls_out_with_surge_and_keeps_old_until_new_are_ready() -> None:
    old = deployment("web", 2, image="app:1")
    new = deployment("web", 2, image="app:2")
    placed = [as_placed(old, "a", "web-1"), as_placed(old, "b", "web-2")]
    plan = decide(cluster([new], [node("a"), node("b")], placed, running={"web-1", "web-2"}))
    # maxSurge 1, maxUnavailable 0 for 2 replicas: one new, no old stopped yet
    assert len(plan.place) == 1 and plan.place[0].template.image == "app:2"
    assert not plan.stop
    # once the new one runs, one old one goes
    placed.append(plan.place[0])
    plan2 = decide(
        cluster(
            [new], [node("a"), node("b")], placed, running={"web-1", "web-2", plan.place[0].replica}
        )
    )
    assert len(plan2.stop) == 1 and plan2.stop[0].reason == "replaced by a new template"


def test_replica_names_never_collide() -> None:
    web = deployment("web", 2)
    existing = as_placed(web, "a", "web-00000")
    plan = decide(cluster([web], [node("a")], [existing]))
    assert [p.replica for p in plan.place] == ["web-00001"]


def test_long_names_are_cut_to_a_dns_label() -> None:
    name = "a" * 63
    plan = decide(cluster([deployment(name, 1)], [node("n")]))
    assert len(plan.place[0].replica) <= 63


def test_a_stale_view_of_nats_evicts_nothing() -> None:
    web = deployment("web", 1)
    snapshot = cluster([web], [node("a")], [as_placed(web, "a", "web-1")], silent={"a"})
    stale = Snapshot(**{**snapshot.__dict__, "feed_fresh_since": None})
    assert not decide(stale).stop
    # once the view is fresh again, the node gets a whole grace period from then
    fresh_now = Snapshot(**{**snapshot.__dict__, "feed_fresh_since": NOW - 1})
    assert not decide(fresh_now).stop
    assert decide(fresh_now, now=NOW + NODE_LOST_SECONDS).stop


def test_nodes_not_heard_from_since_the_scheduler_started_get_nothing_new() -> None:
    snapshot = cluster([deployment("web", 1)], [node("a")])
    unheard = Snapshot(**{**snapshot.__dict__, "node_last_seen": {}})
    plan = decide(unheard)
    assert not plan.place
    assert "not ready" in plan.statuses[0][0].pending_reason


def test_a_node_whose_engine_is_down_keeps_its_replicas_for_a_while() -> None:
    web = deployment("web", 1)
    sick = Node(name="a", capacity=NodeCapacity(cpu_millis=4000, memory_bytes=GiB), ready=False)
    snapshot = cluster([web], [sick, node("b")], [as_placed(web, "a", "web-1")])
    since = Snapshot(**{**snapshot.__dict__, "node_not_ready_since": {"a": NOW - 5}})
    assert not decide(since).stop
    assert not decide(since).place  # nothing new goes there either: b would take new ones
    # still heartbeating, still not ready: after the eviction grace its replicas move
    later_now = NOW - 5 + ENGINE_DOWN_EVICTION_SECONDS + 1
    heartbeating = {"a": later_now - 1, "b": later_now - 1}
    later = decide(Snapshot(**{**since.__dict__, "node_last_seen": heartbeating}), now=later_now)
    assert [s.key for s in later.stop] == ["a.default.web-1"]
    assert "not ready" in later.stop[0].reason
    assert [p.node for p in later.place] == ["b"]


def test_replicas_of_an_unreadable_deployment_are_left_alone() -> None:
    web = deployment("web", 1)
    snapshot = cluster([], [node("a", pods=1)], [as_placed(web, "a", "web-1")])
    unreadable = Snapshot(
        **{
            **snapshot.__dict__,
            "unreadable_deployments": frozenset({"default.web"}),
            "statuses": {"default.web": (DeploymentStatus(name="web"), 4)},
        }
    )
    plan = decide(unreadable)
    assert not plan.stop and not plan.forget_statuses


def selected(name: str, replicas: int, selector: dict[str, str]) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, generation=1),
        spec=DeploymentSpec(
            replicas=replicas, template=ContainerTemplate(image="app:1", node_selector=selector)
        ),
    )


def labelled(name: str, **labels: str) -> Node:
    return Node(
        name=name,
        labels=labels,
        capacity=NodeCapacity(cpu_millis=4000, memory_bytes=8 * GiB, pods=110),
    )


def test_a_node_selector_places_only_on_nodes_whose_labels_include_every_pair() -> None:
    nodes = [
        labelled("a", disk="ssd", zone="1"),
        labelled("b", disk="hdd", zone="1"),
        labelled("c", zone="1"),
        labelled("d", disk="ssd", zone="2"),
    ]
    table: list[tuple[dict[str, str], list[str], str]] = [
        ({}, ["a", "b", "c", "d"], ""),
        ({"disk": "ssd"}, ["a", "a", "d", "d"], ""),
        ({"disk": "ssd", "zone": "2"}, ["d", "d", "d", "d"], ""),
        ({"zone": "1"}, ["a", "b", "c", "a"], ""),
        ({"disk": "nvme"}, [], "no node has labels disk=nvme"),
        ({"disk": "hdd", "zone": "2"}, [], "no node has labels disk=hdd,zone=2"),
    ]
    for selector, where, reason in table:
        plan = decide(cluster([selected("web", 4, selector)], nodes))
        # spread: four replicas over three matching nodes put two on one of them
        assert set(placed_on(plan)) == set(where), (selector, placed_on(plan))
        assert len(plan.place) == len(where), selector
        ((status, _),) = plan.statuses
        assert status.pending == 4 - len(where), selector
        assert status.pending_reason == reason, selector
        if reason:
            assert any(e.reason == "FailedScheduling" and reason in e.message for e in plan.events)


def test_a_node_selector_counts_nodes_without_the_labels_beside_the_other_reasons() -> None:
    nodes = [labelled("a", disk="ssd"), labelled("b")]
    big = Deployment(
        metadata=ObjectMeta(name="big", generation=1),
        spec=DeploymentSpec(
            replicas=2,
            template=ContainerTemplate(
                image="app:1",
                node_selector={"disk": "ssd"},
                resources=Resources(requests=ResourceList(cpu="3")),
            ),
        ),
    )
    plan = decide(cluster([big], nodes))
    assert placed_on(plan) == ["a"]
    ((status, _),) = plan.statuses
    assert status.pending_reason == (
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) without labels disk=ssd"
    )


def test_an_orphan_on_a_node_without_the_selected_labels_is_not_adopted() -> None:
    web = selected("web", 1, {"disk": "ssd"})
    orphan = OrphanReplica(
        deployment="web", replica="web-old", template_hash=web.spec.template.template_hash()
    )
    nodes = [
        Node(
            name="b",
            capacity=NodeCapacity(cpu_millis=4000, memory_bytes=8 * GiB, pods=110),
            orphans=[orphan],
        ),
        labelled("a", disk="ssd"),
    ]
    plan = decide(cluster([web], nodes))
    assert [(p.node, p.replica) for p in plan.place] == [("a", "web-00000")]
