"""Volume-aware placement (docs/volumes.md, "Replicas with volumes"), the pure rules:
every row of the table, the reasons in Kubernetes' words inside "0/N nodes are available",
the room a decision takes itself, ReadWriteOncePod rollouts, and a template without
volumes never reading any of it."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from corral.contract.specs import (
    ClaimSource,
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
    Volume,
    VolumeMount,
)
from corral.contract.state import (
    Node,
    NodeCapacity,
    OrphanReplica,
    Placement,
    ReplicaState,
    ReplicaStatus,
)
from corral.contract.volume_state import ClaimStatus, NodeVolumes
from corral_scheduler.decide import Plan, Usage, schedule, schedule_deployment
from corral_scheduler.snapshot import PlacedReplica, Snapshot
from corral_scheduler.volume_fit import ClaimFacts, VolumeView

MiB = 2**20
NODES = ("n1", "n2", "n3")


def deployment(
    name: str = "app", claims: tuple[str, ...] = ("data",), replicas: int = 3, image: str = "app:1"
) -> Deployment:
    volumes = [
        Volume(name=f"v{i}", persistent_volume_claim=ClaimSource(claim_name=c))
        for i, c in enumerate(claims)
    ]
    mounts = [VolumeMount(name=f"v{i}", mount_path=f"/v{i}") for i in range(len(claims))]
    return Deployment(
        metadata=ObjectMeta(name=name, generation=1),
        spec=DeploymentSpec(
            replicas=replicas,
            template=ContainerTemplate(image=image, volumes=volumes, volume_mounts=mounts),
        ),
    )


def bound(
    node: str = "", volume: str = "pv-1", modes: tuple[str, ...] = ("ReadWriteOnce",)
) -> ClaimStatus:
    return ClaimStatus(
        name="data", phase="Bound", volume=volume, node=node, access_modes=list(modes)
    )


def waiting(request: int = 200 * MiB, name: str = "data") -> ClaimStatus:
    return ClaimStatus(
        name=name,
        phase="Pending",
        wait_for_first_consumer=True,
        request_bytes=request,
        reason="WaitForFirstConsumer",
    )


def node(name: str, pods: int = 110) -> Node:
    return Node(name=name, capacity=NodeCapacity(cpu_millis=4000, memory_bytes=2**33, pods=pods))


def ready_volmgr(capacity: int) -> NodeVolumes:
    return NodeVolumes(node="?", ready=True, loop_devices=True, capacity_bytes=capacity)


def decide(
    d: Deployment,
    claims: Mapping[str, ClaimFacts],
    *,
    node_volumes: Mapping[str, NodeVolumes] | None = None,
    storage_taken: Mapping[str, int] | None = None,
    nodes: Mapping[str, Node] | None = None,
    ready: tuple[str, ...] = NODES,
    placements: Mapping[str, PlacedReplica] | None = None,
    replica_statuses: Mapping[str, ReplicaStatus] | None = None,
    volumes: Any = None,
) -> Plan:
    nodes = dict(nodes or {name: node(name) for name in NODES})
    view = Snapshot(
        deployments={d.key: d},
        nodes=nodes,
        node_last_seen={name: 0.0 for name in nodes},
        placements=dict(placements or {}),
        replica_statuses=dict(replica_statuses or {}),
        volumes=volumes
        if volumes is not None
        else VolumeView(dict(claims), dict(node_volumes or {}), dict(storage_taken or {})),
    )
    counter = itertools.count()
    usage: dict[str, Usage] = {}
    for placed in view.placements.values():
        usage.setdefault(placed.placement.node, Usage()).pods += 1
    return schedule_deployment(
        view,
        d.key,
        0.0,
        usage=usage,
        taken_names=set(),
        ready_nodes=set(ready),
        wall_time=1.0,
        new_suffix=lambda: f"{next(counter):05d}",
    )


def outcome(plan: Plan) -> tuple[list[str], int, str]:
    """(nodes placed on, pending count, pending reason)."""
    ((status, _),) = plan.statuses
    return sorted(p.node for p in plan.place), status.pending, status.pending_reason


def facts(status: ClaimStatus | None = None, **kwargs: Any) -> dict[str, ClaimFacts]:
    return {"default.data": ClaimFacts(status=status, **kwargs)}


# --- the table, row by row ----------------------------------------------------------------

NOT_FOUND = {"default.data": ClaimFacts(exists=False)}


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param({}, 'persistentvolumeclaim "data" not found', id="no-record"),
        pytest.param(NOT_FOUND, 'persistentvolumeclaim "data" not found', id="not-exists"),
        pytest.param(
            facts(ClaimStatus(name="data", phase="Terminating", volume="pv-1", node="n1")),
            'persistentvolumeclaim "data" is being deleted',
            id="terminating",
        ),
        pytest.param(
            facts(
                ClaimStatus(
                    name="data",
                    reason="NoMatchingVolume",
                    message='no volume of class "" fits: 2 volumes too small (largest 40Mi)',
                )
            ),
            'persistentvolumeclaim "data" is not bound: no volume of class "" fits: '
            "2 volumes too small (largest 40Mi)",
            id="pending",
        ),
        pytest.param(facts(None), 'persistentvolumeclaim "data" is not bound', id="no-status-yet"),
        pytest.param(
            facts(ClaimStatus(name="data", phase="Lost", message="volume pv-1 was deleted")),
            'persistentvolumeclaim "data" is not bound: volume pv-1 was deleted',
            id="lost",
        ),
    ],
)
def test_a_claim_that_cannot_be_used_places_nothing_and_says_why(
    claims: dict[str, ClaimFacts], reason: str
) -> None:
    assert outcome(decide(deployment(), claims)) == ([], 3, reason)


def test_every_claim_of_the_template_is_checked_in_order() -> None:
    claims = {
        "default.data": ClaimFacts(status=bound("n1")),
        "default.logs": ClaimFacts(exists=False),
    }
    placed = outcome(decide(deployment(claims=("data", "logs")), claims))
    assert placed == ([], 3, 'persistentvolumeclaim "logs" not found')


def test_a_claim_of_another_namespace_is_not_this_ones() -> None:
    d = deployment()
    other = {"team.data": ClaimFacts(status=bound("n1"))}
    assert outcome(decide(d, other))[2] == 'persistentvolumeclaim "data" not found'


def test_waiting_for_first_consumer_goes_only_to_a_ready_volume_manager_with_room() -> None:
    offered = {
        "n1": ready_volmgr(1000 * MiB),  # 900Mi taken: 100Mi left, 200Mi asked
        "n2": NodeVolumes(node="n2", ready=False, capacity_bytes=10_000 * MiB),
        "n3": ready_volmgr(1000 * MiB),
    }
    placed = outcome(
        decide(
            deployment(), facts(waiting()), node_volumes=offered, storage_taken={"n1": 900 * MiB}
        )
    )
    assert placed == (["n3", "n3", "n3"], 0, "")  # and all of them where its volume will be


def test_waiting_for_first_consumer_without_room_anywhere_names_each_nodes_reason() -> None:
    offered = {"n1": ready_volmgr(1000 * MiB), "n2": NodeVolumes(node="n2", ready=False)}
    placed = outcome(
        decide(
            deployment(), facts(waiting()), node_volumes=offered, storage_taken={"n1": 900 * MiB}
        )
    )
    assert placed == (
        [],
        3,
        "0/3 nodes are available: 1 node(s) did not have enough free storage, "
        "2 node(s) had no volume manager running",
    )


def test_waiting_for_first_consumer_already_used_goes_where_it_is_used_without_room() -> None:
    users = {"n2": {"app-old": 1}}
    placed = outcome(decide(deployment(), facts(waiting(), users=users), node_volumes={}))
    assert placed == (["n2", "n2", "n2"], 0, "")


def test_one_decision_counts_the_room_its_own_claims_take() -> None:
    # two claims of 600Mi each: n1 offers 1Gi (one fits, not both), n2 2Gi
    claims = {
        "default.data": ClaimFacts(status=waiting(600 * MiB)),
        "default.logs": ClaimFacts(status=waiting(600 * MiB, "logs")),
    }
    offered = {"n1": ready_volmgr(1024 * MiB), "n2": ready_volmgr(2048 * MiB)}
    placed = outcome(decide(deployment(claims=("data", "logs")), claims, node_volumes=offered))
    assert placed == (["n2", "n2", "n2"], 0, "")


def test_one_pass_counts_the_room_each_deployment_took_for_the_next() -> None:
    a, b = deployment("a", ("one",), 1), deployment("b", ("two",), 1)
    view = VolumeView(
        claims={
            "default.one": ClaimFacts(status=waiting(600 * MiB, "one")),
            "default.two": ClaimFacts(status=waiting(600 * MiB, "two")),
        },
        node_volumes={"n1": ready_volmgr(1024 * MiB), "n2": ready_volmgr(1024 * MiB)},
    )
    snapshot = Snapshot(
        deployments={a.key: a, b.key: b},
        nodes={"n1": node("n1"), "n2": node("n2")},
        node_last_seen={"n1": 0.0, "n2": 0.0},
        volumes=view,
    )
    counter = itertools.count()
    plan = schedule(snapshot, 0.0, wall_time=1.0, new_suffix=lambda: f"{next(counter):05d}")
    assert sorted(p.node for p in plan.place) == ["n1", "n2"]


def test_a_claim_bound_on_a_node_places_only_there() -> None:
    placed = outcome(decide(deployment(), facts(bound("n2"))))
    assert placed == (["n2", "n2", "n2"], 0, "")


def test_a_claim_bound_on_a_full_node_counts_the_affinity_conflict_beside_the_resources() -> None:
    nodes = {"n1": node("n1"), "n2": node("n2", pods=1), "n3": node("n3")}
    placed = outcome(decide(deployment(), facts(bound("n2")), nodes=nodes))
    assert placed == (
        ["n2"],
        2,
        "0/3 nodes are available: 1 Too many replicas, 2 node(s) had volume node affinity conflict",
    )


def test_a_claim_bound_on_a_node_that_is_not_ready_waits_for_it() -> None:
    placed = outcome(decide(deployment(replicas=1), facts(bound("n2")), ready=("n1", "n3")))
    assert placed == (
        [],
        1,
        "0/3 nodes are available: 2 node(s) had volume node affinity conflict, 1 node(s) not ready",
    )


def test_a_node_local_volume_not_used_yet_puts_every_new_replica_on_one_node() -> None:
    placed, pending, _ = outcome(decide(deployment(), facts(bound(""))))
    assert pending == 0 and len(set(placed)) == 1 and len(placed) == 3


def test_a_node_local_volume_goes_where_a_replica_already_uses_it() -> None:
    placed = outcome(decide(deployment(), facts(bound(""), users={"n3": {"other-x": 1}})))
    assert placed == (["n3", "n3", "n3"], 0, "")


def test_a_read_write_once_docker_volume_goes_where_it_is_in_use_and_says_so() -> None:
    shared = facts(bound(""), node_local=False, users={"n1": {"other-x": 1}})
    assert outcome(decide(deployment(), shared)) == (["n1", "n1", "n1"], 0, "")
    placed = outcome(decide(deployment(), shared, ready=("n2", "n3")))
    assert placed == (
        [],
        3,
        '0/3 nodes are available: 2 node(s) had volume "pv-1" in use elsewhere '
        "(ReadWriteOnce), 1 node(s) not ready",
    )


def test_a_read_write_once_docker_volume_not_used_yet_goes_to_one_node() -> None:
    placed, pending, _ = outcome(decide(deployment(), facts(bound(""), node_local=False)))
    assert pending == 0 and len(set(placed)) == 1


@pytest.mark.parametrize("mode", ["ReadWriteMany", "ReadOnlyMany"])
def test_a_shared_docker_volume_many_nodes_may_mount_spreads_as_usual(mode: str) -> None:
    shared = facts(
        bound("", modes=("ReadWriteOnce", mode)), node_local=False, users={"n1": {"x": 1}}
    )
    assert outcome(decide(deployment(), shared)) == (["n1", "n2", "n3"], 0, "")


def test_a_claim_whose_volume_is_being_deleted_places_nothing_and_says_why() -> None:
    for status in (bound("n1"), bound(""), bound("", modes=("ReadWriteMany",))):
        deleting = facts(status, volume_deleting=True, users={"n1": {"app-old": 1}})
        assert outcome(decide(deployment(), deleting)) == (
            [],
            3,
            'persistentvolumeclaim "data"\'s volume is being deleted',
        )


def test_a_volume_with_no_source_and_no_node_goes_first_where_a_volume_manager_has_its_room() -> (
    None
):
    offered = {
        "n1": ready_volmgr(1000 * MiB),  # 900Mi taken: 100Mi left, the volume is 200Mi
        "n2": NodeVolumes(node="n2", ready=False, capacity_bytes=10_000 * MiB),
        "n3": ready_volmgr(1000 * MiB),
    }
    made_by_hand = facts(bound(""), first_use_bytes=200 * MiB)
    placed = outcome(
        decide(deployment(), made_by_hand, node_volumes=offered, storage_taken={"n1": 900 * MiB})
    )
    assert placed == (["n3", "n3", "n3"], 0, "")  # all of them where its volume will be
    placed = outcome(
        decide(
            deployment(),
            made_by_hand,
            node_volumes=offered,
            storage_taken={"n1": 900 * MiB, "n3": 900 * MiB},
        )
    )
    assert placed == (
        [],
        3,
        "0/3 nodes are available: 2 node(s) did not have enough free storage, "
        "1 node(s) had no volume manager running",
    )
    # used already: it is (or is being) made there, no room is asked again
    used = facts(bound(""), first_use_bytes=200 * MiB, users={"n2": {"app-old": 1}})
    assert outcome(decide(deployment(), used, node_volumes={})) == (["n2", "n2", "n2"], 0, "")


def test_one_pass_counts_the_room_a_volume_with_no_source_took_for_the_next_deployment() -> None:
    a, b = deployment("a", ("one",), 1), deployment("b", ("two",), 1)
    view = VolumeView(
        claims={
            "default.one": ClaimFacts(status=bound(""), first_use_bytes=600 * MiB),
            "default.two": ClaimFacts(status=waiting(600 * MiB, "two")),
        },
        node_volumes={"n1": ready_volmgr(1024 * MiB), "n2": ready_volmgr(1024 * MiB)},
    )
    snapshot = Snapshot(
        deployments={a.key: a, b.key: b},
        nodes={"n1": node("n1"), "n2": node("n2")},
        node_last_seen={"n1": 0.0, "n2": 0.0},
        volumes=view,
    )
    counter = itertools.count()
    plan = schedule(snapshot, 0.0, wall_time=1.0, new_suffix=lambda: f"{next(counter):05d}")
    assert sorted(p.node for p in plan.place) == ["n1", "n2"]


def test_read_write_once_pod_places_nothing_while_a_placement_uses_the_claim() -> None:
    exclusive = facts(bound("", modes=("ReadWriteOncePod",)), users={"n1": {"other-x": 1}})
    placed = outcome(decide(deployment(replicas=1), exclusive))
    assert placed == (
        [],
        1,
        'persistentvolumeclaim "data" is in use by replica other-x (ReadWriteOncePod)',
    )


def test_read_write_once_pod_places_one_replica_only() -> None:
    # stored before the API refused it (or the claim became exclusive since): one runs
    exclusive = facts(bound("", modes=("ReadWriteOncePod",)))
    placed, pending, reason = outcome(decide(deployment(replicas=2), exclusive))
    assert (len(placed), pending) == (1, 1)
    assert (
        reason == 'persistentvolumeclaim "data" is in use by replica app-00000 (ReadWriteOncePod)'
    )


def test_read_write_once_pod_as_the_claim_asks_holds_while_it_waits_for_a_consumer() -> None:
    asked = facts(waiting(), access_modes=("ReadWriteOncePod",), users={"n1": {"other-x": 1}})
    assert outcome(decide(deployment(replicas=1), asked))[2] == (
        'persistentvolumeclaim "data" is in use by replica other-x (ReadWriteOncePod)'
    )


def test_an_orphan_is_adopted_only_where_its_claim_allows() -> None:
    d = deployment(replicas=1)
    template_hash = d.spec.template.template_hash()
    orphan = OrphanReplica(
        deployment="app", replica="app-orph1", template_hash=template_hash, running=True
    )
    nodes = {name: node(name) for name in NODES}
    nodes["n1"] = Node(name="n1", capacity=nodes["n1"].capacity, orphans=[orphan])
    plan = decide(d, facts(bound("n2")), nodes=nodes)
    assert [(p.node, p.replica != "app-orph1") for p in plan.place] == [("n2", True)]
    plan = decide(d, facts(bound("n1")), nodes=nodes)
    assert [(p.node, p.replica) for p in plan.place] == [("n1", "app-orph1")]


# --- ReadWriteOncePod rollouts: the old replica stops before the new one is placed ---------


def placed_replica(
    d: Deployment, node_name: str, replica: str, template: ContainerTemplate
) -> tuple[str, PlacedReplica]:
    p = Placement(
        replica=replica,
        deployment=d.metadata.name,
        node=node_name,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
        created_at=1.0,
    )
    return p.key, PlacedReplica(placement=p, revision=1)


@pytest.mark.parametrize("old_running", [True, False])
def test_a_read_write_once_pod_update_stops_the_old_replica_first_then_places_the_new(
    old_running: bool,
) -> None:
    old = deployment(replicas=1, image="app:1")
    new = deployment(replicas=1, image="app:2")
    key, placed = placed_replica(new, "n1", "app-old11", old.spec.template)
    statuses = {}
    if old_running:
        statuses[key] = ReplicaStatus(
            replica="app-old11",
            deployment="app",
            node="n1",
            state=ReplicaState.RUNNING,
            template_hash=old.spec.template.template_hash(),
        )
    in_use = facts(bound("", modes=("ReadWriteOncePod",)), users={"n1": {"app-old11": 1}})
    plan = decide(new, in_use, placements={key: placed}, replica_statuses=statuses)
    assert ([s.key for s in plan.stop], plan.place) == ([key], [])
    # the stop committed: nothing uses the claim any more, so the new one is placed
    plan = decide(new, facts(bound("", modes=("ReadWriteOncePod",))))
    assert [p.template_hash for p in plan.place] == [new.spec.template.template_hash()]


def test_a_read_write_once_update_of_a_shared_claim_still_surges() -> None:
    old = deployment(replicas=1, image="app:1")
    new = deployment(replicas=1, image="app:2")
    key, placed = placed_replica(new, "n1", "app-old11", old.spec.template)
    statuses = {
        key: ReplicaStatus(
            replica="app-old11",
            deployment="app",
            node="n1",
            state=ReplicaState.RUNNING,
            template_hash=old.spec.template.template_hash(),
        )
    }
    plan = decide(
        new,
        facts(bound("n1"), users={"n1": {"app-old11": 1}}),
        placements={key: placed},
        replica_statuses=statuses,
    )
    assert (plan.stop, [p.node for p in plan.place]) == ([], ["n1"])  # surge 1, as before


# --- a template without volumes reads none of it -------------------------------------------


class Untouchable(VolumeView):
    def __getattribute__(self, name: str) -> Any:
        raise AssertionError(f"a template without volumes read volumes.{name}")


def test_a_template_without_volumes_never_reads_the_storage_view() -> None:
    plain = Deployment(
        metadata=ObjectMeta(name="web", generation=1),
        spec=DeploymentSpec(replicas=3, template=ContainerTemplate(image="app:1")),
    )
    plan = decide(plain, {}, volumes=Untouchable())
    assert outcome(plan) == (["n1", "n2", "n3"], 0, "")
