"""Which replica status changes the scheduler decides ahead of a burst of placing: a
replica going down (from up, or first seen down), not one coming up or staying down."""

from __future__ import annotations

import pytest

from corral.contract.state import ReplicaState, ReplicaStatus
from corral_scheduler.prompt_changes import went_down

S = ReplicaState


def status(state: ReplicaState, ready: bool | None = None) -> ReplicaStatus:
    return ReplicaStatus(replica="web-1", deployment="web", node="a", state=state, ready=ready)


@pytest.mark.parametrize(
    ("old", "new", "prompt"),
    [
        (None, status(S.PENDING), False),
        (status(S.PENDING), status(S.RUNNING), False),
        (status(S.CREATING), status(S.RUNNING, ready=True), False),
        (status(S.RUNNING, ready=False), status(S.RUNNING, ready=True), False),
        (status(S.RUNNING), status(S.EXITED), True),
        (status(S.RUNNING), status(S.CRASH_LOOP), True),
        (status(S.PULLING), status(S.IMAGE_PULL_BACKOFF), True),
        (status(S.CREATING), status(S.FAILED), True),
        (status(S.RUNNING), status(S.TERMINATING), True),
        (status(S.RUNNING, ready=True), status(S.RUNNING, ready=False), True),
        (None, status(S.FAILED), True),
        (status(S.EXITED), status(S.CRASH_LOOP), False),  # down already: decided then
        (status(S.RUNNING), None, False),  # gone with its placement
    ],
)
def test_a_replica_going_down_is_prompt_and_one_coming_up_is_not(
    old: ReplicaStatus | None, new: ReplicaStatus | None, prompt: bool
) -> None:
    assert went_down("a.default.web-1", old, new) is prompt
