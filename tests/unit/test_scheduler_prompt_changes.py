"""Which changes the scheduler decides ahead of a burst of placing: a replica going down
(from up, or first seen down), not one coming up or staying down; a node judged lost
or back when few nodes change at once, not in a disruption."""

from __future__ import annotations

import pytest

from corral.contract.state import ReplicaState, ReplicaStatus
from corral_scheduler.prompt_changes import DISRUPTION_SECONDS, NodeChanges, went_down

S = ReplicaState


def status(state: ReplicaState, ready: bool | None = None) -> ReplicaStatus:
    return ReplicaStatus(replica="web-1", deployment="web", node="a", state=state, ready=ready)


@pytest.mark.parametrize(
    ("old", "new", "prompt"),
    [
        (None, status(S.PENDING), False),
        (None, status(S.PENDING, ready=False), False),  # a readiness probe: not ready yet
        (status(S.PENDING), status(S.RUNNING), False),
        (status(S.CREATING), status(S.RUNNING, ready=True), False),
        (status(S.CREATING, ready=False), status(S.RUNNING, ready=False), False),
        (status(S.RUNNING, ready=False), status(S.RUNNING, ready=True), False),
        (status(S.RUNNING), status(S.EXITED), True),
        (status(S.RUNNING, ready=True), status(S.CRASH_LOOP, ready=False), True),
        (status(S.PULLING), status(S.IMAGE_PULL_BACKOFF), True),
        (status(S.CREATING), status(S.FAILED), True),
        (status(S.RUNNING), status(S.TERMINATING), False),  # stopped by a decision
        (status(S.RUNNING, ready=True), status(S.RUNNING, ready=False), True),
        (status(S.RUNNING), status(S.RUNNING, ready=False), True),  # served, and not now
        (None, status(S.FAILED), True),
        (status(S.EXITED), status(S.CRASH_LOOP), False),  # down already: decided then
        (status(S.RUNNING), None, False),  # gone with its placement
    ],
)
def test_a_replica_going_down_is_prompt_and_one_coming_up_is_not(
    old: ReplicaStatus | None, new: ReplicaStatus | None, prompt: bool
) -> None:
    assert went_down("a.default.web-1", old, new) is prompt


def test_a_few_nodes_judged_are_prompt_and_more_at_once_are_a_disruption() -> None:
    changes = NodeChanges()
    verdicts = [changes.few(f"n{n}", 10.0, nodes=100) for n in range(5)]
    assert verdicts == [True, True, True, False, False]
    # the window passes: one node alone is prompt again
    assert changes.few("n9", 10.0 + DISRUPTION_SECONDS + 0.1, nodes=100)


def test_a_node_that_flaps_counts_once() -> None:
    changes = NodeChanges()
    assert all(changes.few("flapping", 10.0 + n * 0.1, nodes=10) for n in range(10))
    assert changes.few("lost", 11.0, nodes=10)  # 2 nodes, not 11 judgements


def test_in_a_large_cluster_a_share_of_its_nodes_is_still_few() -> None:
    changes = NodeChanges()
    verdicts = [changes.few(f"n{n}", 10.0 + n * 0.01, nodes=5_000) for n in range(60)]
    assert verdicts == [True] * 50 + [False] * 10  # 1 % of 5,000
