"""A Deployment's rolling update settings (issue 10): `strategy` (RollingUpdate with
maxSurge/maxUnavailable as counts or percentages, or Recreate), `minReadySeconds` and
`paused`. Table-driven: the arithmetic (rollout.py) over 1, 2, 4, 10 and 100 replicas,
a whole rollout simulated pass by pass within its bounds, then the same settings through
schedule() (decide.py), and the decoder's refusals naming the field."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    DeploymentStrategy,
    ObjectMeta,
    RollingUpdate,
)
from corral.contract.state import Node, NodeCapacity, Placement, ReplicaState, ReplicaStatus
from corral_scheduler.decide import Plan, schedule
from corral_scheduler.rollout import Bounds, Step, resolve_bounds, rollout_step
from corral_scheduler.snapshot import PlacedReplica, Snapshot

REPLICAS = [1, 2, 4, 10, 100]

# (maxSurge, maxUnavailable) -> the expected bounds for 1, 2, 4, 10, 100 replicas
BOUNDS_TABLE: list[tuple[int | str, int | str, list[Bounds]]] = [
    (0, 1, [Bounds(0, 1)] * 5),
    (1, 0, [Bounds(1, 0)] * 5),
    (2, 3, [Bounds(2, 3)] * 5),
    ("0%", "50%", [Bounds(0, 1), Bounds(0, 1), Bounds(0, 2), Bounds(0, 5), Bounds(0, 50)]),
    ("50%", "0%", [Bounds(1, 0), Bounds(1, 0), Bounds(2, 0), Bounds(5, 0), Bounds(50, 0)]),
    ("10%", "10%", [Bounds(1, 0), Bounds(1, 0), Bounds(1, 0), Bounds(1, 1), Bounds(10, 10)]),
    ("0%", "10%", [Bounds(0, 1), Bounds(0, 1), Bounds(0, 1), Bounds(0, 1), Bounds(0, 10)]),
    ("100%", "100%", [Bounds(1, 1), Bounds(2, 2), Bounds(4, 4), Bounds(10, 10), Bounds(100, 100)]),
    ("200%", 0, [Bounds(2, 0), Bounds(4, 0), Bounds(8, 0), Bounds(20, 0), Bounds(200, 0)]),
    (1, "33%", [Bounds(1, 0), Bounds(1, 0), Bounds(1, 1), Bounds(1, 3), Bounds(1, 33)]),
]


@pytest.mark.parametrize(("surge", "unavailable", "expected"), BOUNDS_TABLE)
def test_counts_and_percentages_resolve_as_kubernetes_resolves_them(
    surge: int | str, unavailable: int | str, expected: list[Bounds]
) -> None:
    assert [resolve_bounds(n, surge, unavailable) for n in REPLICAS] == expected


def _roll(replicas: int, bounds: Bounds, *, recreate: bool = False) -> list[tuple[int, int, int]]:
    """A whole rollout, pass by pass: each pass applies a step, and every new replica
    placed becomes Running before the next pass. Returns (old, new, running) after each
    pass's stops and places (the worst moment: before the new ones run)."""
    old, new, new_ready = replicas, 0, 0
    seen = []
    for _ in range(10 * replicas + 10):
        if old == 0 and new == replicas and new_ready == replicas:
            return seen
        step = rollout_step(
            replicas,
            bounds,
            old=old,
            old_ready=old,
            new=new,
            new_ready=new_ready,
            recreate=recreate,
        )
        old -= step.stop_old
        new += step.place_new - step.stop_new
        seen.append((old, new, old + new_ready))  # the new ones placed now are not Running
        new_ready = new
    raise AssertionError(f"no convergence: {seen[-3:]}")


@pytest.mark.parametrize("replicas", REPLICAS)
@pytest.mark.parametrize(("surge", "unavailable", "_"), BOUNDS_TABLE)
def test_a_whole_rollout_stays_within_its_bounds(
    replicas: int, surge: int | str, unavailable: int | str, _: Any
) -> None:
    bounds = resolve_bounds(replicas, surge, unavailable)
    for old, new, running in _roll(replicas, bounds):
        assert old + new <= replicas + bounds.max_surge
        assert running >= replicas - bounds.max_unavailable


@pytest.mark.parametrize("replicas", REPLICAS)
def test_recreate_stops_every_old_replica_before_placing_a_new_one(replicas: int) -> None:
    passes = _roll(replicas, resolve_bounds(replicas, 0, "100%"), recreate=True)
    assert passes == [(0, 0, 0), (0, replicas, 0)]


RECREATE = [
    # (replicas, old, old_ready, new, new_ready) -> Step
    ((4, 4, 4, 0, 0), Step(stop_old_ready=4)),
    ((4, 4, 1, 0, 0), Step(stop_old_unready=3, stop_old_ready=1)),
    ((4, 2, 2, 2, 2), Step(stop_old_ready=2)),  # switched to Recreate mid-rollout
    ((2, 1, 1, 3, 3), Step(stop_old_ready=1, stop_new=1)),
    ((4, 0, 0, 0, 0), Step(place_new=4)),  # none old left: the new ones
    ((4, 0, 0, 4, 0), Step()),
]


@pytest.mark.parametrize(("counts", "expected"), RECREATE)
def test_recreate_places_nothing_while_an_old_replica_is_placed(
    counts: tuple[int, int, int, int, int], expected: Step
) -> None:
    replicas, old, old_ready, new, new_ready = counts
    bounds = resolve_bounds(replicas, 0, "100%")
    step = rollout_step(
        replicas, bounds, old=old, old_ready=old_ready, new=new, new_ready=new_ready, recreate=True
    )
    assert step == expected


PAUSED = [
    # (replicas, old, old_ready, new, new_ready) -> Step
    ((4, 4, 4, 0, 0), Step()),  # a template change is held
    ((4, 4, 2, 0, 0), Step()),  # old ones not Running are not stopped for it either
    ((4, 3, 3, 1, 0), Step()),  # paused mid-rollout: held where it is
    ((6, 4, 4, 0, 0), Step(place_old=2)),  # a scale-up: with the old template
    ((2, 3, 3, 1, 1), Step(stop_any=2)),  # a scale-down: the excess, old or new
    ((4, 0, 0, 2, 2), Step(place_new=2)),  # nothing old: plain scaling
]


@pytest.mark.parametrize(("counts", "expected"), PAUSED)
def test_a_paused_deployment_holds_the_rollout_and_still_scales(
    counts: tuple[int, int, int, int, int], expected: Step
) -> None:
    replicas, old, old_ready, new, new_ready = counts
    step = rollout_step(
        replicas,
        resolve_bounds(replicas),
        old=old,
        old_ready=old_ready,
        new=new,
        new_ready=new_ready,
        paused=True,
    )
    assert step == expected


# --- the same settings through schedule() ------------------------------------------------

NOW = 1000.0
WALL = 50_000.0
OLD, NEW = ContainerTemplate(image="app:1"), ContainerTemplate(image="app:2")


def _spec(replicas: int, **settings: Any) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="web", generation=2),
        spec=DeploymentSpec(replicas=replicas, template=NEW, **settings),
    )


def _snapshot(
    deployment: Deployment,
    old: int,
    new: int,
    *,
    new_started: float = WALL - 3600,
    old_running: int | None = None,
) -> Snapshot:
    nodes = [
        Node(name=f"n{i}", capacity=NodeCapacity(cpu_millis=64000, memory_bytes=2**40, pods=110))
        for i in range(2)
    ]
    placements: dict[str, PlacedReplica] = {}
    statuses: dict[str, ReplicaStatus] = {}
    numbers = itertools.count()
    running_old = old if old_running is None else old_running
    for template, count, running, started in (
        (OLD, old, running_old, WALL - 3600),
        (NEW, new, new, new_started),
    ):
        for i in range(count):
            number = next(numbers)
            placement = Placement(
                replica=f"web-{number:05d}",
                deployment="web",
                node=f"n{number % 2}",
                template=template,
                template_hash=template.template_hash(),
                generation=1,
                created_at=float(number),
            )
            placements[placement.key] = PlacedReplica(revision=number + 1, placement=placement)
            if i < running:
                statuses[placement.key] = ReplicaStatus(
                    replica=placement.replica,
                    deployment="web",
                    node=placement.node,
                    state=ReplicaState.RUNNING,
                    template_hash=placement.template_hash,
                    started_at=started,
                )
    return Snapshot(
        deployments={"default.web": deployment},
        nodes={n.name: n for n in nodes},
        node_last_seen={n.name: NOW - 1 for n in nodes},
        placements=placements,
        replica_statuses=statuses,
    )


def _decide(snapshot: Snapshot) -> Plan:
    counter = itertools.count(10_000)
    return schedule(snapshot, NOW, wall_time=WALL, new_suffix=lambda: f"{next(counter):05d}")


def _counts(snapshot: Snapshot, plan: Plan) -> tuple[int, int, int]:
    """(new-template placed, old stopped, new-template stopped) by this plan."""
    stopped = [snapshot.placements[stop.key].placement for stop in plan.stop]
    new_hash = NEW.template_hash()
    placed_new = sum(1 for p in plan.place if p.template_hash == new_hash)
    stopped_new = sum(1 for p in stopped if p.template_hash == new_hash)
    return placed_new, len(stopped) - stopped_new, stopped_new


def test_the_deployments_own_bounds_drive_its_rollout() -> None:
    no_surge = DeploymentStrategy(rolling_update=RollingUpdate(max_surge=0, max_unavailable=1))
    deployment = _spec(4, strategy=no_surge)
    snapshot = _snapshot(deployment, old=4, new=0)
    assert _counts(snapshot, _decide(snapshot)) == (0, 1, 0)  # one down first, nothing up
    snapshot = _snapshot(deployment, old=3, new=0)
    assert _counts(snapshot, _decide(snapshot)) == (1, 0, 0)  # then one up, 4 placed
    surge_all = DeploymentStrategy(
        rolling_update=RollingUpdate(max_surge="100%", max_unavailable=0)
    )
    snapshot = _snapshot(_spec(4, strategy=surge_all), old=4, new=0)
    assert _counts(snapshot, _decide(snapshot)) == (4, 0, 0)  # all up, none down


def test_recreate_through_schedule_stops_all_old_then_places() -> None:
    deployment = _spec(3, strategy=DeploymentStrategy(type="Recreate"))
    snapshot = _snapshot(deployment, old=3, new=0, old_running=2)
    plan = _decide(snapshot)
    assert _counts(snapshot, plan) == (0, 3, 0)
    snapshot = _snapshot(deployment, old=0, new=0)
    assert _counts(snapshot, _decide(snapshot)) == (3, 0, 0)


@pytest.mark.parametrize(
    ("running_for", "old_stopped", "ready", "requeue"),
    [
        (3.0, 0, 3, 7.05),  # new ones Running 3 s of 10: not available, decided again at 10
        (10.0, 1, 3, None),  # 10 s: available, the old ones may go
        (60.0, 1, 3, None),
    ],
)
def test_min_ready_seconds_holds_new_replicas_back_until_they_have_run_that_long(
    running_for: float, old_stopped: int, ready: int, requeue: float | None
) -> None:
    no_surge = DeploymentStrategy(rolling_update=RollingUpdate(max_surge=1, max_unavailable=0))
    deployment = _spec(3, strategy=no_surge, min_ready_seconds=10)
    snapshot = _snapshot(deployment, old=3, new=1, new_started=WALL - running_for)
    plan = _decide(snapshot)
    assert _counts(snapshot, plan)[1] == old_stopped
    status = plan.statuses[0][0]
    assert status.ready == ready  # 3 old Running (+1 new available - 1 old stopped)
    assert plan.requeue_after == (pytest.approx(requeue) if requeue is not None else None)


def test_min_ready_seconds_gates_the_status_ready_count_of_a_plain_deployment() -> None:
    deployment = _spec(2, min_ready_seconds=30)
    snapshot = _snapshot(deployment, old=0, new=2, new_started=WALL - 5)
    plan = _decide(snapshot)
    assert plan.statuses[0][0].ready == 0
    assert plan.requeue_after == pytest.approx(25.05)


def test_paused_through_schedule_holds_the_template_and_scales_with_the_old_one() -> None:
    snapshot = _snapshot(_spec(4, paused=True), old=4, new=0, old_running=3)
    plan = _decide(snapshot)
    assert (plan.place, plan.stop) == ([], [])
    assert plan.statuses[0][0].updated == 0
    snapshot = _snapshot(_spec(6, paused=True), old=4, new=0)
    plan = _decide(snapshot)
    assert [p.template_hash for p in plan.place] == [OLD.template_hash()] * 2
    assert [p.template for p in plan.place] == [OLD, OLD]
    snapshot = _snapshot(_spec(3, paused=True), old=4, new=0)
    assert len(_decide(snapshot).stop) == 1
    snapshot = _snapshot(_spec(4, paused=False), old=4, new=0)  # resumed: it rolls
    assert _counts(snapshot, _decide(snapshot)) == (1, 1, 0)


# --- the contract: defaults omitted, bad input refused naming the field --------------------


def _document(**spec: Any) -> bytes:
    return json.dumps(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 2, "template": {"image": "app:1"}, **spec},
        }
    ).encode()


def test_defaults_are_omitted_so_stored_deployments_and_hashes_are_unchanged() -> None:
    plain = decode_payload(_document(), Deployment)
    assert b"strategy" not in encode(plain) and b"paused" not in encode(plain)
    assert plain.spec.strategy.type == "RollingUpdate" and plain.spec.min_ready_seconds == 0
    set_ = decode_payload(
        _document(strategy={"type": "Recreate"}, minReadySeconds=5, paused=True), Deployment
    )
    assert set_.spec.template.template_hash() == plain.spec.template.template_hash()
    assert decode_payload(encode(set_), Deployment) == set_


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}, "rollingUpdate"),
        (
            {"strategy": {"rollingUpdate": {"maxSurge": "0%", "maxUnavailable": "0%"}}},
            "rollingUpdate",
        ),
        ({"strategy": {"type": "Recreate", "rollingUpdate": {}}}, "rollingUpdate"),
        ({"strategy": {"rollingUpdate": {"maxSurge": "25"}}}, "rollingUpdate.maxSurge"),
        ({"strategy": {"rollingUpdate": {"maxSurge": "2.5%"}}}, "rollingUpdate.maxSurge"),
        ({"strategy": {"rollingUpdate": {"maxSurge": -1}}}, "rollingUpdate.maxSurge"),
        (
            {"strategy": {"rollingUpdate": {"maxUnavailable": "101%"}}},
            "rollingUpdate.maxUnavailable",
        ),
        ({"strategy": {"rollingUpdate": {"maxUnavailable": -2}}}, "rollingUpdate.maxUnavailable"),
        ({"strategy": {"type": "Rolling"}}, "type"),
    ],
)
def test_bad_strategies_are_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload) as refused:
        decode_payload(_document(**spec), Deployment)
    assert refused.value.field == f"spec.strategy.{field}"


@pytest.mark.parametrize(
    ("spec", "field"),
    [({"minReadySeconds": -1}, "minReadySeconds"), ({"paused": "yes"}, "paused")],
)
def test_bad_settings_are_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload) as refused:
        decode_payload(_document(**spec), Deployment)
    assert refused.value.field == f"spec.{field}"
