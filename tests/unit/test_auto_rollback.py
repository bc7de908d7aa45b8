"""The automatic rollback (corral_scheduler.auto_rollback; docs/rollouts.md "Automatic
rollback"): the crash-loop rule, when a rollout has failed, which revision to return
to (pure tables), and the compare-and-set write on in-memory buckets: the spec back at
the old template one generation on with its change cause, an event, never twice for
one failed revision, never without a fully available revision, never over a user;
and the history's availableAt (corral_scheduler.history)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from corral.contract.codec import decode, encode
from corral.contract.specs import CHANGE_CAUSE_ANNOTATION, AutoRollback, Deployment
from corral.contract.state import (
    CONDITION_PROGRESSING,
    REASON_NEW_REPLICAS_AVAILABLE,
    REASON_PROGRESS_DEADLINE_EXCEEDED,
    REASON_REPLICAS_UPDATED,
    AutoRollbackRecord,
    DeploymentCondition,
    DeploymentHistory,
    DeploymentRevision,
    DeploymentStatus,
    ReplicaState,
    ReplicaStatus,
)
from corral.natsio.kv import MemoryBucket
from corral_scheduler.auto_rollback import (
    EVENT_NOT_ROLLED_BACK,
    EVENT_ROLLED_BACK,
    REASON_CRASH_LOOP,
    AutoRollbacks,
    crash_looping,
    failure,
    rollback_target,
)
from corral_scheduler.history import HistoryRecorder

RULE = AutoRollback(crash_loop_restarts=3, crash_loop_window_seconds=60)
KEY = "default.web"


def deployment(version: str, *, auto: bool = True, **spec: Any) -> Deployment:
    more: dict[str, Any] = {"autoRollback": {"crashLoopRestarts": 3}} if auto else {}
    return msgspec.convert(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "generation": 5},
            "spec": {
                "replicas": 2,
                "template": {"image": f"app:{version}"},
                **more,
                **spec,
            },
        },
        Deployment,
    )


def hash_of(version: str) -> str:
    return deployment(version).spec.template.template_hash()


def replica(version: str, restarts: list[float], updated_at: float = 100.0) -> ReplicaStatus:
    return ReplicaStatus(
        replica=f"web-{version}",
        deployment="web",
        node="n1",
        state=ReplicaState.EXITED,
        template_hash=hash_of(version),
        restart_times=restarts,
        updated_at=updated_at,
    )


@pytest.mark.parametrize(
    ("statuses", "found"),
    [
        ([replica("2", [50.0, 70.0, 90.0])], "web-2"),  # 3 within 60 s of 100
        ([replica("2", [30.0, 70.0, 90.0])], None),  # only 2 within the window
        ([replica("2", [70.0, 90.0])], None),
        ([replica("1", [91.0, 92.0, 93.0])], None),  # an old template's replica
        ([replica("2", [1.0]), replica("2", [41.0, 42.0, 43.0, 99.0])], "web-2"),
        # the window ends at the status's own updatedAt (the agent's clock), not ours
        ([replica("2", [50.0, 70.0, 90.0], updated_at=200.0)], None),
    ],
)
def test_a_crash_loop_is_restarts_within_the_window_of_a_current_template_replica(
    statuses: list[ReplicaStatus], found: str | None
) -> None:
    got = crash_looping(statuses, hash_of("2"), RULE)
    assert (None if got is None else got[0].replica) == found


def revision(number: int, version: str, available_at: float = 0.0) -> DeploymentRevision:
    spec = deployment(version)
    return DeploymentRevision(
        revision=number,
        template_hash=spec.spec.template.template_hash(),
        template=spec.spec.template,
        available_at=available_at,
    )


def history(*revisions: DeploymentRevision) -> DeploymentHistory:
    return DeploymentHistory(name="web", revisions=list(revisions))


@pytest.mark.parametrize(
    ("revisions", "current", "target"),
    [
        ((revision(1, "1", 10.0), revision(2, "2")), 2, 1),
        # the most recent fully available one, not an older one
        ((revision(1, "1", 10.0), revision(2, "2", 20.0), revision(3, "3")), 3, 2),
        # one never fully available is skipped
        ((revision(1, "1", 10.0), revision(2, "2"), revision(3, "3")), 3, 1),
        # none was: nothing to return to
        ((revision(1, "1"), revision(2, "2")), 2, None),
        ((revision(1, "1", 10.0),), 1, None),  # not the current one
        ((), 1, None),
    ],
)
def test_the_rollback_returns_to_the_most_recent_fully_available_revision(
    revisions: tuple[DeploymentRevision, ...], current: int, target: int | None
) -> None:
    current_hash = next((r.template_hash for r in revisions if r.revision == current), "")
    got = rollback_target(history(*revisions), current, current_hash)
    assert (None if got is None else got.revision) == target


def status(reason: str, *, revision: int = 2, record: AutoRollbackRecord | None = None) -> Any:
    condition = DeploymentCondition(
        type=CONDITION_PROGRESSING,
        status="False" if reason == REASON_PROGRESS_DEADLINE_EXCEEDED else "True",
        reason=reason,
        message="revision 2 has not progressed for 2s",
    )
    return DeploymentStatus(
        name="web", revision=revision, conditions=[condition], auto_rollback=record
    )


LOOPING = [replica("2", [91.0, 92.0, 93.0])]


@pytest.mark.parametrize(
    ("spec", "stored", "statuses", "reason"),
    [
        (
            deployment("2"),
            status(REASON_PROGRESS_DEADLINE_EXCEEDED),
            [],
            REASON_PROGRESS_DEADLINE_EXCEEDED,
        ),
        (deployment("2"), status(REASON_REPLICAS_UPDATED), LOOPING, REASON_CRASH_LOOP),
        (deployment("2"), status(REASON_REPLICAS_UPDATED), [], None),
        (deployment("2", auto=False), status(REASON_PROGRESS_DEADLINE_EXCEEDED), LOOPING, None),
        (deployment("2", paused=True), status(REASON_PROGRESS_DEADLINE_EXCEEDED), LOOPING, None),
        (
            deployment("2", autoRollback={"onCrashLoop": False}),
            status(REASON_REPLICAS_UPDATED),
            LOOPING,
            None,
        ),
        (
            deployment("2", autoRollback={"onProgressDeadline": False}),
            status(REASON_PROGRESS_DEADLINE_EXCEEDED),
            [],
            None,
        ),
        # complete: not a rollout any more
        (deployment("2"), status(REASON_NEW_REPLICAS_AVAILABLE), LOOPING, None),
        # the template a rollback put back is not rolled back by itself
        (
            deployment("2"),
            status(
                REASON_PROGRESS_DEADLINE_EXCEEDED,
                record=AutoRollbackRecord(from_revision=1, to_revision=2, reason="CrashLoop"),
            ),
            LOOPING,
            None,
        ),
    ],
)
def test_a_rollout_has_failed_on_a_missed_deadline_or_a_crash_loop_when_opted_in(
    spec: Deployment, stored: DeploymentStatus, statuses: list[ReplicaStatus], reason: str | None
) -> None:
    got = failure(spec, stored, 2, statuses)
    assert (None if got is None else got.reason) == reason


# --- writing it back --------------------------------------------------------------------


class Setup:
    def __init__(self, revisions: tuple[DeploymentRevision, ...]) -> None:
        self.deployments = MemoryBucket("deployments")
        self.histories = MemoryBucket("history")
        self.events: list[tuple[str, str, str, bool]] = []
        self.recorder = HistoryRecorder(self.histories, lambda: 500.0)
        self.rollbacks = AutoRollbacks(
            self.deployments,
            self.recorder,
            self.emit,
            wall_clock=lambda: 500.0,
            monotonic=lambda: 10.0,
        )
        self.revisions = revisions

    async def emit(self, key: str, reason: str, message: str, warning: bool) -> None:
        self.events.append((key, reason, message, warning))

    async def start(self, spec: Deployment) -> None:
        await self.deployments.create(KEY, encode(spec))
        await self.histories.create(KEY, encode(history(*self.revisions)))

    async def stored(self) -> Deployment:
        entry = await self.deployments.get(KEY)
        assert entry is not None and entry.value is not None
        return decode(entry.value, Deployment)


async def test_a_failed_rollout_is_written_back_to_the_last_fully_available_template() -> None:
    setup = Setup((revision(1, "1", 10.0), revision(2, "2")))
    await setup.start(deployment("2"))
    done = await setup.rollbacks.consider(
        KEY, deployment("2"), status(REASON_REPLICAS_UPDATED), 2, LOOPING
    )
    assert done
    back = await setup.stored()
    assert back.spec.template == deployment("1").spec.template
    assert back.metadata.generation == 6
    assert back.metadata.annotations[CHANGE_CAUSE_ANNOTATION].startswith(
        "automatic rollback from revision 2: replica web-2 restarted 3 times"
    )
    assert [(e[1], e[3]) for e in setup.events] == [(EVENT_ROLLED_BACK, True)]
    record = setup.rollbacks.record_for(KEY, 3)  # the old template's new number
    assert record is not None
    assert (record.from_revision, record.to_revision, record.reason) == (2, 3, REASON_CRASH_LOOP)
    # Never twice for the same failed revision (a reconcile on the old view meanwhile).
    again = await setup.rollbacks.consider(
        KEY, deployment("2"), status(REASON_REPLICAS_UPDATED), 2, LOOPING
    )
    assert not again
    assert (await setup.stored()).metadata.generation == 6


async def test_no_fully_available_revision_means_no_rollback_and_an_event_saying_so() -> None:
    setup = Setup((revision(1, "1"), revision(2, "2")))
    await setup.start(deployment("2"))
    done = await setup.rollbacks.consider(
        KEY, deployment("2"), status(REASON_PROGRESS_DEADLINE_EXCEEDED), 2, []
    )
    assert not done
    assert (await setup.stored()).spec.template == deployment("2").spec.template
    assert [(e[1], e[3]) for e in setup.events] == [(EVENT_NOT_ROLLED_BACK, True)]
    assert "no revision was fully available" in setup.events[0][2]


async def test_a_user_apply_racing_the_rollback_wins() -> None:
    setup = Setup((revision(1, "1", 10.0), revision(2, "2")))
    await setup.start(deployment("2"))
    attempts: list[int] = []

    async def store(key: str, raw: bytes, stored_at: int) -> int:
        # The user applies version 3 just before the rollback's write lands.
        attempts.append(stored_at)
        if len(attempts) == 1:
            await setup.deployments.update(KEY, encode(deployment("3")), stored_at)
        return await setup.deployments.update(key, raw, stored_at)

    setup.rollbacks.store = store
    done = await setup.rollbacks.consider(
        KEY, deployment("2"), status(REASON_REPLICAS_UPDATED), 2, LOOPING
    )
    assert not done
    assert len(attempts) == 1  # tried once, read again, saw the user's template
    assert (await setup.stored()).spec.template == deployment("3").spec.template
    assert setup.rollbacks.user_won == 1
    assert not [e for e in setup.events if e[1] == EVENT_ROLLED_BACK]


async def test_a_change_of_other_fields_under_the_rollback_is_read_again_and_kept() -> None:
    setup = Setup((revision(1, "1", 10.0), revision(2, "2")))
    await setup.start(deployment("2"))
    attempts: list[int] = []

    async def store(key: str, raw: bytes, stored_at: int) -> int:
        attempts.append(stored_at)
        if len(attempts) == 1:  # a scale meanwhile: the template is still the failed one
            await setup.deployments.update(KEY, encode(deployment("2", replicas=5)), stored_at)
        return await setup.deployments.update(key, raw, stored_at)

    setup.rollbacks.store = store
    assert await setup.rollbacks.consider(
        KEY, deployment("2"), status(REASON_REPLICAS_UPDATED), 2, LOOPING
    )
    back = await setup.stored()
    assert len(attempts) == 2
    assert (back.spec.replicas, back.spec.template) == (5, deployment("1").spec.template)


async def test_a_completed_rollout_marks_its_revision_available_once() -> None:
    bucket = MemoryBucket("history")
    recorder = HistoryRecorder(bucket, lambda: 42.0)
    await recorder.record(KEY, deployment("1"))
    assert recorder.revision_of(KEY, hash_of("1")) == 1
    assert not recorder.known_available(KEY, 1)
    await recorder.mark_available(KEY, 1, 77.0)
    found, _ = await recorder.read(KEY)
    assert found is not None and found.revisions[0].available_at == 77.0
    assert recorder.known_available(KEY, 1)
    await recorder.mark_available(KEY, 1, 99.0)  # kept: the first completion
    found, _ = await recorder.read(KEY)
    assert found is not None and found.revisions[0].available_at == 77.0


async def test_a_template_a_rollback_put_back_is_not_rolled_back_even_without_its_record() -> None:
    # Revision 3 is the old template the rollback wrote (a scheduler started since: the
    # status has no record of it); it failing too does not bounce back to anything.
    back = msgspec.structs.replace(
        revision(3, "1"), change_cause="automatic rollback from revision 2: boom"
    )
    setup = Setup((revision(1, "0", 5.0), revision(2, "2"), back))
    await setup.start(deployment("1"))
    done = await setup.rollbacks.consider(
        KEY, deployment("1"), status(REASON_PROGRESS_DEADLINE_EXCEEDED, revision=3), 3, []
    )
    assert not done
    assert (await setup.stored()).spec.template == deployment("1").spec.template
    assert setup.events == []
