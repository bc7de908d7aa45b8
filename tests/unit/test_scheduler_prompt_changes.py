"""Which changes the scheduler decides ahead of a burst of placing: a replica going down
(from anything else), not one coming up, staying down or first seen; the Deployments
of a node judged lost or back while few were lately, not in a disruption."""

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
        (None, status(S.FAILED), False),  # first seen (a scheduler starting): in turn
        (status(S.EXITED), status(S.CRASH_LOOP), False),  # down already: decided then
        (status(S.RUNNING), None, False),  # gone with its placement
    ],
)
def test_a_replica_going_down_is_prompt_and_one_coming_up_is_not(
    old: ReplicaStatus | None, new: ReplicaStatus | None, prompt: bool
) -> None:
    assert went_down("a.default.web-1", old, new) is prompt


def test_the_deployments_of_a_few_nodes_are_prompt_and_more_at_once_a_disruption() -> None:
    changes = NodeChanges()
    nodes = [{f"app-{n}-{k}" for k in range(8)} for n in range(4)]  # 8 Deployments each
    verdicts = [changes.few(keys, 10.0, of=100) for keys in nodes]
    assert verdicts == [True, True, False, False]  # 16 of at most 20; 24 would be more
    # the window passes: a node alone is prompt again
    assert changes.few(nodes[3], 10.0 + DISRUPTION_SECONDS + 0.1, of=100)


def test_a_node_holding_more_than_the_bound_alone_is_still_prompt() -> None:
    assert NodeChanges().few({f"app-{k}" for k in range(50)}, 10.0, of=100)


def test_a_deployment_counts_once_however_many_of_its_nodes_flap() -> None:
    changes = NodeChanges()
    assert all(changes.few({"web", "db"}, 10.0 + n * 0.1, of=10) for n in range(30))


def test_in_a_cluster_of_many_deployments_a_share_of_them_is_still_few() -> None:
    changes = NodeChanges()
    verdicts = [changes.few({f"app-{n}"}, 10.0 + n * 0.01, of=5_000) for n in range(60)]
    assert verdicts == [True] * 50 + [False] * 10  # 1 % of 5,000
