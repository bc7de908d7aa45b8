"""The rollout arithmetic (rollout.py), table-driven as Kubernetes' rolling_test.go: for
1, 2, 4, 10 and 100 replicas and today's settings (25 % surge, 25 % unavailable), which
situation (old and new replicas placed and Running) leads to how many new replicas placed
and how many stopped; then the same rows through schedule(), so decide.py is held to it."""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import pytest

from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import Node, NodeCapacity, Placement, ReplicaState, ReplicaStatus
from corral_scheduler.decide import Plan, schedule
from corral_scheduler.rollout import Bounds, Step, resolve_bounds, rollout_step
from corral_scheduler.snapshot import PlacedReplica, Snapshot

NOW = 1000.0


@pytest.mark.parametrize(
    ("replicas", "max_surge", "max_unavailable"),
    [
        (0, 0, 1),  # both round to zero: one may go at a time, as in Kubernetes
        (1, 1, 0),  # ceil(0.25) = 1, floor(0.25) = 0
        (2, 1, 0),
        (3, 1, 0),
        (4, 1, 1),
        (5, 2, 1),  # ceil(1.25) = 2, floor(1.25) = 1
        (10, 3, 2),
        (100, 25, 25),
        (101, 26, 25),
    ],
)
def test_todays_settings_resolve_with_surge_rounded_up_and_unavailable_rounded_down(
    replicas: int, max_surge: int, max_unavailable: int
) -> None:
    assert resolve_bounds(replicas) == Bounds(max_surge, max_unavailable)


@pytest.mark.parametrize(
    ("replicas", "surge_setting", "unavailable_setting", "expected"),
    [
        (10, 2, 0, Bounds(2, 0)),  # counts are taken as they are
        (10, "0%", 1, Bounds(0, 1)),
        (10, "10%", "10%", Bounds(1, 1)),
        (3, "0%", "10%", Bounds(0, 1)),  # both round to zero: unavailable 1
        (10, "150%", "100%", Bounds(15, 10)),  # a surge may exceed 100 %
    ],
)
def test_later_settings_resolve_as_kubernetes_resolves_them(
    replicas: int, surge_setting: int | str, unavailable_setting: int | str, expected: Bounds
) -> None:
    assert resolve_bounds(replicas, surge_setting, unavailable_setting) == expected


@pytest.mark.parametrize(
    ("surge_setting", "unavailable_setting", "field"),
    [
        (0, 0, "maxUnavailable"),
        ("0%", "0%", "maxUnavailable"),
        (0, "0%", "maxUnavailable"),
        ("25", "25%", "maxSurge"),
        ("-1%", "25%", "maxSurge"),
        (-1, "25%", "maxSurge"),
        (True, "25%", "maxSurge"),
        ("25%", "101%", "maxUnavailable"),
        ("25%", "2.5%", "maxUnavailable"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    surge_setting: int | str, unavailable_setting: int | str, field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        resolve_bounds(10, surge_setting, unavailable_setting)


class Row(NamedTuple):
    """A situation and what one pass does about it."""

    replicas: int
    old: int  # placed with an old template
    old_ready: int  # of them Running
    new: int  # placed with the current template
    new_ready: int
    place: int  # new replicas to place
    stop_old_unready: int
    stop_old_ready: int
    stop_new: int  # beyond `replicas`
    why: str


TODAYS_ROLLOUT = [
    # 1 replica: surge 1, unavailable 0
    Row(1, 0, 0, 0, 0, 1, 0, 0, 0, "first placement"),
    Row(1, 1, 1, 0, 0, 1, 0, 0, 0, "rollout starts: surge one, keep the old one"),
    Row(1, 1, 1, 1, 0, 0, 0, 0, 0, "new one not Running yet: wait"),
    Row(1, 1, 1, 1, 1, 0, 0, 1, 0, "new one Running: the old one goes"),
    Row(1, 1, 0, 0, 0, 1, 1, 0, 0, "an old one that is not Running goes at once"),
    Row(1, 0, 0, 1, 1, 0, 0, 0, 0, "rolled out"),
    # 2 replicas: surge 1, unavailable 0
    Row(2, 2, 2, 0, 0, 1, 0, 0, 0, "rollout starts"),
    Row(2, 2, 2, 1, 0, 0, 0, 0, 0, "at the surge limit, nothing may go: wait"),
    Row(2, 2, 2, 1, 1, 0, 0, 1, 0, "one new Running: one old goes"),
    Row(2, 1, 1, 1, 1, 1, 0, 0, 0, "room again: the second new one"),
    Row(2, 1, 1, 2, 2, 0, 0, 1, 0, "both new Running: the last old goes"),
    Row(2, 2, 0, 0, 0, 1, 2, 0, 0, "old ones crash-looping go at once"),
    # 4 replicas: surge 1, unavailable 1
    Row(4, 4, 4, 0, 0, 1, 0, 1, 0, "rollout starts: one up, one down"),
    Row(4, 3, 3, 1, 0, 1, 0, 0, 0, "3 Running is the floor: place, stop nothing"),
    Row(4, 3, 3, 2, 2, 0, 0, 2, 0, "5 Running, floor 3: two old go"),
    Row(4, 1, 1, 2, 2, 2, 0, 0, 0, "3 placed of 5 allowed: two more new"),
    Row(4, 4, 2, 0, 0, 1, 2, 0, 0, "two old not Running go, the others stay"),
    Row(4, 0, 0, 6, 6, 0, 0, 0, 2, "scaled down after the rollout"),
    # 10 replicas: surge 3, unavailable 2 (the worked example in rollout.py)
    Row(10, 0, 0, 0, 0, 10, 0, 0, 0, "first placement"),
    Row(10, 10, 10, 0, 0, 3, 0, 2, 0, "rollout starts: three up, two down"),
    Row(10, 8, 8, 3, 0, 2, 0, 0, 0, "up to 13 placed; 8 Running is the floor"),
    Row(10, 8, 8, 5, 5, 0, 0, 5, 0, "13 Running, floor 8: five old go"),
    Row(10, 3, 3, 5, 5, 5, 0, 0, 0, "8 placed: five more new"),
    Row(10, 3, 3, 10, 7, 0, 0, 2, 0, "10 Running, floor 8: two old go"),
    Row(10, 1, 1, 10, 10, 0, 0, 1, 0, "the last old one goes"),
    Row(10, 8, 8, 5, 0, 0, 0, 0, 0, "a template that never runs: old ones keep serving"),
    Row(10, 0, 0, 12, 12, 0, 0, 0, 2, "scaled down"),
    # 100 replicas: surge 25, unavailable 25
    Row(100, 100, 100, 0, 0, 25, 0, 25, 0, "rollout starts: 25 up, 25 down"),
    Row(100, 75, 75, 25, 0, 25, 0, 0, 0, "up to 125 placed; 75 Running is the floor"),
    Row(100, 75, 75, 50, 50, 0, 0, 50, 0, "125 Running, floor 75: fifty old go"),
    Row(100, 25, 25, 50, 50, 50, 0, 0, 0, "75 placed: fifty more new"),
    Row(100, 25, 25, 100, 100, 0, 0, 25, 0, "the last old ones go"),
    Row(100, 75, 75, 50, 0, 0, 0, 0, 0, "a template that never runs: old ones keep serving"),
    Row(100, 100, 60, 0, 0, 25, 40, 0, 0, "forty old not Running go at once, no more"),
    Row(100, 40, 40, 100, 90, 0, 0, 40, 0, "130 Running, floor 75: 55 may go, 40 old do"),
    # scaled to zero during a rollout: everything goes
    Row(0, 3, 3, 1, 1, 0, 0, 3, 1, "scaled to zero"),
]


@pytest.mark.parametrize("row", TODAYS_ROLLOUT, ids=lambda row: f"{row.replicas}: {row.why}")
def test_todays_rollout_places_and_stops_as_the_table_says(row: Row) -> None:
    step = rollout_step(
        row.replicas,
        resolve_bounds(row.replicas),
        old=row.old,
        old_ready=row.old_ready,
        new=row.new,
        new_ready=row.new_ready,
    )
    assert step == Step(row.place, row.stop_old_unready, row.stop_old_ready, row.stop_new)


@pytest.mark.parametrize(
    ("bounds", "old", "old_ready", "new", "new_ready", "expected"),
    [
        # surge 0, unavailable 1 (replace in place): stop first, then place
        (Bounds(0, 1), 10, 10, 0, 0, Step(stop_old_ready=1)),
        (Bounds(0, 1), 9, 9, 0, 0, Step(place_new=1)),
        # surge 2, unavailable 0 (never below 10 Running)
        (Bounds(2, 0), 10, 10, 0, 0, Step(place_new=2)),
        (Bounds(2, 0), 10, 10, 2, 1, Step(stop_old_ready=1)),
    ],
)
def test_other_settings_drive_the_same_arithmetic(
    bounds: Bounds, old: int, old_ready: int, new: int, new_ready: int, expected: Step
) -> None:
    step = rollout_step(10, bounds, old=old, old_ready=old_ready, new=new, new_ready=new_ready)
    assert step == expected


@pytest.mark.parametrize(
    ("counts", "field"),
    [
        ({"old": 1, "old_ready": 2, "new": 0, "new_ready": 0}, "old_ready"),
        ({"old": 0, "old_ready": 0, "new": 1, "new_ready": -1}, "new_ready"),
    ],
)
def test_impossible_counts_are_refused_naming_the_count(counts: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        rollout_step(4, Bounds(1, 1), **counts)


# The same rows through schedule(): the deciding step does what the table says.

OLD_IMAGE, NEW_IMAGE = "app:1", "app:2"


def _deployment(replicas: int, image: str) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="web", generation=1),
        spec=DeploymentSpec(replicas=replicas, template=ContainerTemplate(image=image)),
    )


def _situation(row: Row) -> Snapshot:
    nodes = [
        Node(name=f"n{i}", capacity=NodeCapacity(cpu_millis=64000, memory_bytes=2**40, pods=110))
        for i in range(3)
    ]
    placements: dict[str, PlacedReplica] = {}
    statuses: dict[str, ReplicaStatus] = {}
    numbers = itertools.count()
    for image, count, running in (
        (OLD_IMAGE, row.old, row.old_ready),
        (NEW_IMAGE, row.new, row.new_ready),
    ):
        template = ContainerTemplate(image=image)
        for i in range(count):
            number = next(numbers)
            placement = Placement(
                replica=f"web-{number:05d}",
                deployment="web",
                node=f"n{number % 3}",
                template=template,
                template_hash=template.template_hash(),
                generation=1,
                created_at=float(number),
            )
            key = placement.key
            placements[key] = PlacedReplica(revision=number + 1, placement=placement)
            if i < running:
                statuses[key] = ReplicaStatus(
                    replica=placement.replica,
                    deployment="web",
                    node=placement.node,
                    state=ReplicaState.RUNNING,
                    template_hash=placement.template_hash,
                )
    return Snapshot(
        deployments={"default.web": _deployment(row.replicas, NEW_IMAGE)},
        nodes={n.name: n for n in nodes},
        node_last_seen={n.name: NOW - 1 for n in nodes},
        placements=placements,
        replica_statuses=statuses,
    )


def _decide(snapshot: Snapshot) -> Plan:
    counter = itertools.count(10_000)
    return schedule(snapshot, NOW, wall_time=5.0, new_suffix=lambda: f"{next(counter):05d}")


@pytest.mark.parametrize("row", TODAYS_ROLLOUT, ids=lambda row: f"{row.replicas}: {row.why}")
def test_the_deciding_step_places_and_stops_as_the_table_says(row: Row) -> None:
    snapshot = _situation(row)
    plan = _decide(snapshot)
    new_hash = ContainerTemplate(image=NEW_IMAGE).template_hash()
    assert len(plan.place) == row.place
    assert all(p.template_hash == new_hash for p in plan.place)
    stopped = [snapshot.placements[stop.key] for stop in plan.stop]
    old_stopped = [s for s in stopped if s.placement.template_hash != new_hash]
    old_ready_stopped = [
        s for s in old_stopped if snapshot.replica_statuses.get(s.placement.key) is not None
    ]
    assert len(old_stopped) - len(old_ready_stopped) == row.stop_old_unready
    assert len(old_ready_stopped) == row.stop_old_ready
    assert len(stopped) - len(old_stopped) == row.stop_new
    status = plan.statuses[0][0]
    assert status.placed == row.old + row.new + row.place - len(stopped)
    assert status.updated == row.new - row.stop_new + row.place


# --- a ReadWriteOncePod claim: the old replica stops before the new one is placed ------------


@pytest.mark.parametrize("replicas", [0, 1, 2, 4, 10])
@pytest.mark.parametrize(
    ("surge_setting", "unavailable_setting"), [("25%", "25%"), (3, 0), ("100%", "0%")]
)
def test_an_exclusive_template_resolves_to_no_surge_and_one_unavailable_whatever_the_settings(
    replicas: int, surge_setting: int | str, unavailable_setting: int | str
) -> None:
    bounds = resolve_bounds(replicas, surge_setting, unavailable_setting, exclusive=True)
    assert bounds == Bounds(max_surge=0, max_unavailable=1)


EXCLUSIVE = Bounds(max_surge=0, max_unavailable=1)


@pytest.mark.parametrize(
    ("old", "old_ready", "new", "new_ready", "expected"),
    [
        # the old replica Running: it stops first, nothing is placed beside it
        (1, 1, 0, 0, Step(place_new=0, stop_old_ready=1)),
        # the old one not Running: it stops too, still nothing beside it
        (1, 0, 0, 0, Step(place_new=0, stop_old_unready=1)),
        # the old one gone: the new one is placed
        (0, 0, 0, 0, Step(place_new=1)),
        # the new one placed, not Running yet: nothing more to do
        (0, 0, 1, 0, Step()),
    ],
)
def test_an_exclusive_rollout_of_one_replica_never_has_two_placed(
    old: int, old_ready: int, new: int, new_ready: int, expected: Step
) -> None:
    step = rollout_step(1, EXCLUSIVE, old=old, old_ready=old_ready, new=new, new_ready=new_ready)
    assert step == expected
    assert old + new + step.place_new - step.stop_old - step.stop_new <= 1
    assert step.place_new == 0 or old == 0  # placed only once no old one is left


# --- old replicas Running but not ready (readiness not passing): within maxUnavailable -------


@pytest.mark.parametrize(
    ("replicas", "bounds", "old", "running_unready", "new", "expected"),
    [
        # 3 old Running-unready, new never ready, unavailable 0: none stops
        (3, Bounds(1, 0), 3, 3, 1, Step()),
        # unavailable 1: one stops, and on the next pass (2 old left) no more
        (3, Bounds(1, 1), 3, 3, 1, Step(stop_old_unready=1)),
        (3, Bounds(1, 1), 2, 2, 2, Step()),
        # 3 old not Running (crashed, pending): all stop at once, as before
        (3, Bounds(1, 0), 3, 0, 1, Step(stop_old_unready=3)),
        # mixed: 2 not Running go; the 2 Running-unready are all the floor (3) has left
        (4, Bounds(1, 1), 4, 2, 1, Step(stop_old_unready=2)),
        # mixed: 1 not Running goes, of 7 Running-unready only the budget (7 - 6) goes
        (8, Bounds(2, 2), 8, 7, 0, Step(place_new=2, stop_old_unready=2)),
    ],
)
def test_old_replicas_running_but_not_ready_stop_only_within_max_unavailable(
    replicas: int, bounds: Bounds, old: int, running_unready: int, new: int, expected: Step
) -> None:
    step = rollout_step(
        replicas,
        bounds,
        old=old,
        old_ready=0,
        new=new,
        new_ready=0,
        old_running_unready=running_unready,
    )
    assert step == expected


def test_a_rollout_to_a_never_ready_template_never_stops_more_than_max_unavailable() -> None:
    """Pass after pass (new replicas never ready, old ones Running, readiness failing),
    the Running old replicas stopped never exceed maxUnavailable in all."""
    replicas, bounds = 8, resolve_bounds(8)  # surge 2, unavailable 2
    old, new = replicas, 0
    for _ in range(10):
        step = rollout_step(
            replicas, bounds, old=old, old_ready=0, new=new, new_ready=0, old_running_unready=old
        )
        old -= step.stop_old
        new += step.place_new - step.stop_new
    assert old == replicas - bounds.max_unavailable


def _running_unready(snapshot: Snapshot, keys: list[str]) -> Snapshot:
    statuses = dict(snapshot.replica_statuses)
    for key in keys:
        placed = snapshot.placements[key].placement
        statuses[key] = ReplicaStatus(
            replica=placed.replica,
            deployment="web",
            node=placed.node,
            state=ReplicaState.RUNNING,
            template_hash=placed.template_hash,
            ready=False,
        )
    return dataclasses.replace(snapshot, replica_statuses=statuses)


def test_the_deciding_step_keeps_old_replicas_whose_readiness_fails_within_the_budget() -> None:
    # 8 old placed, none ready: 7 Running with readiness failing, 1 not Running; 25 %:
    # unavailable 2, so at least 6 stay: the one not Running goes and 1 Running one.
    snapshot = _situation(Row(8, 8, 0, 0, 0, 0, 0, 0, 0, ""))
    old_hash = ContainerTemplate(image=OLD_IMAGE).template_hash()
    old_keys = sorted(
        k for k, p in snapshot.placements.items() if p.placement.template_hash == old_hash
    )
    snapshot = _running_unready(snapshot, old_keys[1:])
    plan = _decide(snapshot)
    stopped = {stop.key for stop in plan.stop}
    assert old_keys[0] in stopped  # the one not Running
    assert len(stopped & set(old_keys[1:])) == 1
