"""A Deployment's Progressing and Available conditions (corral_scheduler.progress, pure;
docs/rollouts.md "Progress deadline and conditions"), table-driven, and through the
deciding step (decide.schedule_deployment): the status carries them, its revision and
`available`, the deadline is a requeue at the moment it passes, with a Warning event."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest

from corral.contract.specs import ContainerTemplate, Deployment
from corral.contract.state import (
    CONDITION_AVAILABLE,
    CONDITION_PROGRESSING,
    REASON_MINIMUM_AVAILABLE,
    REASON_MINIMUM_UNAVAILABLE,
    REASON_NEW_REPLICAS_AVAILABLE,
    REASON_NEW_REPLICAS_CREATED,
    REASON_PAUSED,
    REASON_PROGRESS_DEADLINE_EXCEEDED,
    REASON_REPLICAS_UPDATED,
    REASON_RESUMED,
    REASON_ROLLED_BACK,
    AutoRollbackRecord,
    DeploymentCondition,
    DeploymentStatus,
    Node,
    NodeCapacity,
    Placement,
    ReplicaState,
    ReplicaStatus,
)
from corral_scheduler.decide import Usage, schedule_deployment
from corral_scheduler.progress import Seen, conditions
from corral_scheduler.snapshot import PlacedReplica, Snapshot

NOW = 1000.0
DEADLINE = 60.0


def progressing(reason: str, status: str = "True", at: float = 900.0) -> DeploymentCondition:
    return DeploymentCondition(
        type=CONDITION_PROGRESSING,
        status=status,
        reason=reason,
        last_update_time=at,
        last_transition_time=at,
    )


def stored(
    reason: str | None,
    *,
    status: str = "True",
    at: float = 900.0,
    revision: int = 2,
    placed: int = 4,
    updated: int = 1,
    ready: int = 3,
    available: int = 3,
    record: AutoRollbackRecord | None = None,
) -> DeploymentStatus:
    return DeploymentStatus(
        name="web",
        replicas=3,
        placed=placed,
        updated=updated,
        ready=ready,
        available=available,
        revision=revision,
        conditions=[] if reason is None else [progressing(reason, status, at)],
        auto_rollback=record,
    )


# A rollout of revision 2 under way: 1 new placed (not ready), 3 old ready.
UNDER_WAY = Seen(
    replicas=3,
    updated=1,
    ready=3,
    available=3,
    old=3,
    pending=0,
    revision=2,
    deadline_seconds=DEADLINE,
    max_unavailable=0,
)
DONE = replace(UNDER_WAY, updated=3, ready=3, available=3, old=0)
RECORD = AutoRollbackRecord(from_revision=2, to_revision=3, reason="CrashLoop", message="boom")


def case(
    before: DeploymentStatus | None,
    reason: str,
    status: str = "True",
    *,
    seen: Seen = UNDER_WAY,
    now: float = NOW,
    moved: bool = True,
    requeue: float | None = DEADLINE,
) -> tuple[DeploymentStatus | None, Seen, float, str, str, bool, float | None]:
    """A row of the table below: the stored status, then the condition expected (its
    reason and status; `moved`: lastUpdateTime is `now`) and the requeue (None: no timer),
    for a rollout UNDER_WAY seen at NOW unless told."""
    return before, seen, now, reason, status, moved, requeue


@pytest.mark.parametrize(
    ("before", "seen", "now", "reason", "status", "moved", "requeue"),
    [
        # A first status, and a new revision: NewReplicaSetCreated, the deadline ahead.
        case(None, REASON_NEW_REPLICAS_CREATED),
        case(stored(REASON_NEW_REPLICAS_AVAILABLE, revision=1), REASON_NEW_REPLICAS_CREATED),
        # Progress (one more updated, one more ready, one old fewer): lastUpdateTime moves.
        case(stored(REASON_NEW_REPLICAS_CREATED, updated=0), REASON_REPLICAS_UPDATED),
        case(stored(REASON_REPLICAS_UPDATED, ready=2, available=2), REASON_REPLICAS_UPDATED),
        case(stored(REASON_REPLICAS_UPDATED, placed=5), REASON_REPLICAS_UPDATED),
        # No progress, deadline not passed: unchanged, decided again when it passes.
        case(
            stored(REASON_REPLICAS_UPDATED, at=960.0),
            REASON_REPLICAS_UPDATED,
            moved=False,
            requeue=20.0,
        ),
        # Passed (at 940 + 60 <= 1000): False ProgressDeadlineExceeded, no further timer.
        case(
            stored(REASON_REPLICAS_UPDATED, at=940.0),
            REASON_PROGRESS_DEADLINE_EXCEEDED,
            "False",
            requeue=None,
        ),
        # Exceeded stays exceeded without progress; progress makes it True again.
        case(
            stored(REASON_PROGRESS_DEADLINE_EXCEEDED, status="False"),
            REASON_PROGRESS_DEADLINE_EXCEEDED,
            "False",
            moved=False,
            requeue=None,
        ),
        case(
            stored(REASON_PROGRESS_DEADLINE_EXCEEDED, status="False", updated=0),
            REASON_REPLICAS_UPDATED,
        ),
        # Complete: NewReplicaSetAvailable, no deadline; kept once so.
        case(
            stored(REASON_REPLICAS_UPDATED), REASON_NEW_REPLICAS_AVAILABLE, seen=DONE, requeue=None
        ),
        case(
            stored(REASON_NEW_REPLICAS_AVAILABLE, updated=3, placed=3),
            REASON_NEW_REPLICAS_AVAILABLE,
            seen=replace(DONE, ready=2, available=2),
            now=NOW + 10_000,
            moved=False,
            requeue=None,
        ),
        # Paused: Unknown, no deadline even long after; resumed: True, the deadline again.
        case(
            stored(REASON_REPLICAS_UPDATED, at=0.0),
            REASON_PAUSED,
            "Unknown",
            seen=replace(UNDER_WAY, paused=True),
            requeue=None,
        ),
        case(
            stored(REASON_PAUSED, status="Unknown", at=0.0),
            REASON_PAUSED,
            "Unknown",
            seen=replace(UNDER_WAY, paused=True),
            moved=False,
            requeue=None,
        ),
        case(stored(REASON_PAUSED, status="Unknown", at=0.0), REASON_RESUMED),
        # A stored time in this scheduler's future counts from now.
        case(stored(REASON_REPLICAS_UPDATED, at=5000.0), REASON_REPLICAS_UPDATED),
        # The automatic rollback wrote revision 3: False RolledBack, no deadline, until
        # its rollout completes.
        case(
            stored(REASON_PROGRESS_DEADLINE_EXCEEDED, status="False"),
            REASON_ROLLED_BACK,
            "False",
            seen=replace(UNDER_WAY, revision=3),
            requeue=None,
        ),
        case(
            stored(REASON_ROLLED_BACK, status="False", revision=3, record=RECORD, at=0.0),
            REASON_ROLLED_BACK,
            "False",
            seen=replace(UNDER_WAY, revision=3),
            moved=False,
            requeue=None,
        ),
        case(
            stored(REASON_ROLLED_BACK, status="False", revision=3, record=RECORD),
            REASON_NEW_REPLICAS_AVAILABLE,
            seen=replace(DONE, revision=3),
            requeue=None,
        ),
    ],
)
def test_the_progressing_condition_follows_kubernetes_rules(
    before: DeploymentStatus | None,
    seen: Seen,
    now: float,
    reason: str,
    status: str,
    moved: bool,
    requeue: float | None,
) -> None:
    rolled_back = RECORD if seen.revision == 3 else None
    outcome = conditions(before, seen, now, rolled_back=rolled_back)
    found = outcome.conditions[0]
    assert (found.type, found.reason, found.status) == (CONDITION_PROGRESSING, reason, status)
    assert (found.last_update_time == now) is moved
    if requeue is None:
        assert outcome.requeue_after is None
    else:
        assert outcome.requeue_after == pytest.approx(requeue, abs=0.1)
    warned = [e for e in outcome.events if e.reason == REASON_PROGRESS_DEADLINE_EXCEEDED]
    assert bool(warned) is (reason == REASON_PROGRESS_DEADLINE_EXCEEDED and moved)
    assert all(e.warning for e in warned)


def test_the_transition_time_stays_while_the_status_stays_true() -> None:
    before = stored(REASON_NEW_REPLICAS_CREATED, updated=0, at=900.0)
    found = conditions(before, UNDER_WAY, NOW).conditions[0]
    assert (found.last_update_time, found.last_transition_time) == (NOW, 900.0)


@pytest.mark.parametrize(
    ("available", "max_unavailable", "status", "reason"),
    [
        (3, 0, "True", REASON_MINIMUM_AVAILABLE),
        (2, 0, "False", REASON_MINIMUM_UNAVAILABLE),
        (2, 1, "True", REASON_MINIMUM_AVAILABLE),
        (1, 1, "False", REASON_MINIMUM_UNAVAILABLE),
        (0, 3, "True", REASON_MINIMUM_AVAILABLE),
    ],
)
def test_available_says_whether_replicas_minus_max_unavailable_are_available(
    available: int, max_unavailable: int, status: str, reason: str
) -> None:
    seen = replace(UNDER_WAY, available=available, max_unavailable=max_unavailable)
    found = conditions(None, seen, NOW).conditions[1]
    assert (found.type, found.status, found.reason) == (CONDITION_AVAILABLE, status, reason)


def test_the_rollback_record_stays_until_a_template_change_that_is_not_the_rollback() -> None:
    before = stored(REASON_NEW_REPLICAS_AVAILABLE, revision=3, record=RECORD)
    assert conditions(before, replace(DONE, revision=3), NOW).auto_rollback == RECORD
    assert conditions(before, replace(UNDER_WAY, revision=4), NOW).auto_rollback is None
    fresh = conditions(
        stored(REASON_PROGRESS_DEADLINE_EXCEEDED, status="False"),
        replace(UNDER_WAY, revision=3),
        NOW,
        rolled_back=RECORD,
    )
    assert fresh.auto_rollback == RECORD


# --- through the deciding step --------------------------------------------------------


def template(version: str, **more: Any) -> ContainerTemplate:
    return msgspec.convert({"image": "app:1", "env": {"V": version}, **more}, ContainerTemplate)


def deployment(version: str, **spec: Any) -> Deployment:
    return msgspec.convert(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "generation": 1},
            "spec": {"replicas": 2, "template": msgspec.to_builtins(template(version)), **spec},
        },
        Deployment,
    )


def view(spec: Deployment, status: DeploymentStatus | None, running: dict[str, str]) -> Snapshot:
    """`running`: replica -> the version its Running container has (one node)."""
    placements: dict[str, PlacedReplica] = {}
    statuses: dict[str, ReplicaStatus] = {}
    for replica, version in running.items():
        placement = Placement(
            replica=replica,
            deployment="web",
            node="n1",
            template=template(version),
            template_hash=template(version).template_hash(),
            generation=1,
        )
        placements[placement.key] = PlacedReplica(placement=placement, revision=1)
        statuses[placement.key] = ReplicaStatus(
            replica=replica,
            deployment="web",
            node="n1",
            state=ReplicaState.RUNNING,
            template_hash=placement.template_hash,
            started_at=0.0,
        )
    node = Node(name="n1", capacity=NodeCapacity(cpu_millis=64_000, memory_bytes=2**36))
    return Snapshot(
        deployments={spec.key: spec},
        statuses={} if status is None else {spec.key: (status, 7)},
        nodes={"n1": node},
        node_last_seen={"n1": NOW},
        feed_fresh_since=0.0,
        placements=placements,
        replica_statuses=statuses,
    )


def decide(snapshot: Snapshot, wall_time: float, revision: int) -> Any:
    names = iter(f"x{i}" for i in range(100))
    return schedule_deployment(
        snapshot,
        "default.web",
        NOW,
        usage={"n1": Usage()},
        taken_names=set(),
        ready_nodes={"n1"},
        wall_time=wall_time,
        new_suffix=lambda: next(names),
        revision=revision,
    )


def test_a_decision_writes_the_revision_available_count_and_conditions() -> None:
    spec = deployment("1")
    plan = decide(view(spec, None, {"web-a": "1", "web-b": "1"}), NOW, revision=4)
    status = plan.statuses[0][0]
    assert (status.revision, status.available, status.ready) == (4, 2, 2)
    assert status.condition(CONDITION_PROGRESSING) is not None
    assert status.condition(CONDITION_AVAILABLE) is not None


def test_a_stalled_rollout_is_decided_again_when_its_deadline_passes_and_then_fails() -> None:
    spec = deployment("2", progressDeadlineSeconds=30)
    start = decide(view(spec, None, {"web-a": "1", "web-b": "1"}), NOW, revision=2)
    first = start.statuses[0][0]
    assert first.condition(CONDITION_PROGRESSING).reason == REASON_NEW_REPLICAS_CREATED
    assert start.deadline_in == pytest.approx(30, abs=0.1)
    # The new replica never runs: no progress. 29 s on: still counting, 1 s to go.
    stalled = {"web-a": "1", "web-b": "1"}
    early = decide(view(spec, first, stalled), NOW + 29, revision=2)
    assert early.deadline_in == pytest.approx(1, abs=0.1)
    late = decide(view(spec, first, stalled), NOW + 30.1, revision=2)
    failed = late.statuses[0][0].condition(CONDITION_PROGRESSING)
    assert (failed.status, failed.reason) == ("False", REASON_PROGRESS_DEADLINE_EXCEEDED)
    assert [(e.reason, e.warning) for e in late.events if e.warning] == [
        (REASON_PROGRESS_DEADLINE_EXCEEDED, True)
    ]
    assert late.deadline_in is None


@pytest.mark.parametrize(
    ("strategy", "status"),
    [({"type": "Recreate"}, "False"), ({"rollingUpdate": {"maxUnavailable": 1}}, "True")],
)
def test_available_needs_every_replica_under_recreate_and_allows_max_unavailable_otherwise(
    strategy: dict[str, Any], status: str
) -> None:
    spec = deployment("1", strategy=strategy)
    plan = decide(view(spec, None, {"web-a": "1"}), NOW, revision=1)  # 1 of 2 available
    found = plan.statuses[0][0].condition(CONDITION_AVAILABLE)
    assert found is not None and found.status == status
