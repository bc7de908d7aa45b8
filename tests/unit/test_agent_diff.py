from __future__ import annotations

from corral.contract.state import ReplicaState
from corral_node_agent.backoff import ReplicaTrack
from corral_node_agent.diff import (
    CreateContainer,
    RemoveContainers,
    StartContainer,
    plan_actions,
    remove_all,
)
from corral_node_agent.replica_status import replica_status
from corral_node_agent.runtime import ContainerState
from tests.unit.agent_helpers import container, placement

NOW = 1000.0


def test_a_missing_container_is_created() -> None:
    p = placement("web-a1")
    plan = plan_actions({"web-a1": p}, [], {}, set(), NOW)
    assert plan.actions == [CreateContainer("web-a1", p)]
    assert plan.kept == {"web-a1": None}


def test_a_running_container_of_the_placed_template_is_left_alone() -> None:
    p = placement("web-a1")
    plan = plan_actions({"web-a1": p}, [container("web-a1")], {}, set(), NOW)
    assert plan.actions == []
    assert plan.tracks["web-a1"].container_id == "id-web-a1"
    status = replica_status(p, plan.kept["web-a1"], plan.tracks["web-a1"], NOW)
    assert status.state == ReplicaState.RUNNING
    assert status.started_at == 100.0


def test_an_unplaced_container_is_removed() -> None:
    running = container("old-x1")
    plan = plan_actions({}, [running], {}, set(), NOW)
    assert plan.actions == [
        RemoveContainers(
            "old-x1", "web", ("id-old-x1",), "not placed on this node", graceful=(running,)
        )
    ]
    assert plan.kept == {}  # tracked only for the back-off of its removal


def test_only_the_running_containers_of_a_replica_going_away_stop_gracefully() -> None:
    exited = container("old-x1", state=ContainerState.EXITED, exit_code=0)
    plan = plan_actions({}, [exited], {}, set(), NOW)
    assert plan.actions == [
        RemoveContainers("old-x1", "web", ("id-old-x1",), "not placed on this node")
    ]
    running = container("old-x1")
    stopping = remove_all([running, exited], {}, set(), "node stopping", NOW)
    assert stopping.actions[0].graceful == (running,)  # type: ignore[union-attr]


def test_a_failing_removal_is_retried_on_its_back_off_not_at_every_pass() -> None:
    failed = ReplicaTrack(removal_failures=2, removal_not_before=NOW + 2)
    plan = plan_actions({}, [container("old-x1")], {"old-x1": failed}, set(), NOW)
    assert plan.actions == [] and plan.wake_at == NOW + 2
    assert plan.tracks["old-x1"] == failed
    later = plan_actions({}, [container("old-x1")], {"old-x1": failed}, set(), NOW + 2)
    assert [type(a) for a in later.actions] == [RemoveContainers]


def test_a_crash_loop_back_off_never_delays_the_removal_of_an_unplaced_replica() -> None:
    crashing = ReplicaTrack(failures=6, not_before=NOW + 60)
    plan = plan_actions({}, [container("old-x1")], {"old-x1": crashing}, set(), NOW)
    assert [type(a) for a in plan.actions] == [RemoveContainers]


def test_a_container_of_another_template_is_removed_before_a_new_one_is_created() -> None:
    p = placement("web-a1")
    stale = container("web-a1", template_hash="0000000000")
    plan = plan_actions({"web-a1": p}, [stale], {}, set(), NOW)
    assert plan.actions == [
        RemoveContainers("web-a1", "web", ("id-web-a1",), "another template is placed")
    ]
    # Next pass, once it is gone: created, and not counted as a restart.
    plan = plan_actions({"web-a1": p}, [], plan.tracks, set(), NOW)
    assert plan.actions == [CreateContainer("web-a1", p)]
    assert plan.tracks["web-a1"].restarts == 0


def test_duplicates_keep_the_running_one() -> None:
    p = placement("web-a1")
    running = container("web-a1", container_id="run")
    exited = container(
        "web-a1", container_id="dead", state=ContainerState.EXITED, exit_code=1, started_at=500
    )
    plan = plan_actions({"web-a1": p}, [exited, running], {}, set(), NOW)
    assert plan.actions == [RemoveContainers("web-a1", "web", ("dead",), "duplicate container")]
    assert plan.kept["web-a1"] == running


def test_busy_replicas_are_left_alone() -> None:
    p = placement("web-a1")
    track = ReplicaTrack(restarts=3)
    plan = plan_actions(
        {"web-a1": p}, [container("gone-b2")], {"web-a1": track}, {"web-a1", "gone-b2"}, NOW
    )
    assert plan.actions == []
    assert plan.tracks["web-a1"] is track


def test_an_exit_restarts_at_once_then_backs_off() -> None:
    p = placement("web-a1")
    exited = container(
        "web-a1", state=ContainerState.EXITED, exit_code=3, started_at=990.0, finished_at=999.0
    )
    plan = plan_actions({"web-a1": p}, [exited], {}, set(), NOW)
    assert plan.actions == [StartContainer("web-a1", p, "id-web-a1", restart=True)]
    track = plan.tracks["web-a1"]
    # The restart is counted by the executor once the start happens, not by the plan.
    assert (track.restarts, track.failures, track.exit_code) == (0, 1, 3)

    # It exits again at once: the next start waits one second.
    again = container(
        "web-a1", state=ContainerState.EXITED, exit_code=3, started_at=1000.0, finished_at=1000.5
    )
    plan = plan_actions({"web-a1": p}, [again], plan.tracks, set(), NOW + 0.5)
    assert plan.actions == []
    assert plan.wake_at == NOW + 1.5
    status = replica_status(p, plan.kept["web-a1"], plan.tracks["web-a1"], NOW + 0.5)
    assert status.state == ReplicaState.CRASH_LOOP
    assert status.exit_code == 3
    assert status.restarts == 0

    # The same exit seen again later does not grow the back-off; its end restarts it.
    plan = plan_actions({"web-a1": p}, [again], plan.tracks, set(), NOW + 1.6)
    assert plan.actions == [StartContainer("web-a1", p, "id-web-a1", restart=True)]
    assert plan.tracks["web-a1"].failures == 2
    assert plan.tracks["web-a1"].restarts == 0


def test_a_created_but_unstarted_container_is_started() -> None:
    p = placement("web-a1")
    created = container("web-a1", state=ContainerState.CREATED, started_at=None)
    plan = plan_actions({"web-a1": p}, [created], {}, set(), NOW)
    assert plan.actions == [StartContainer("web-a1", p, "id-web-a1", restart=False)]


def test_a_failed_pull_waits_for_its_backoff_and_shows() -> None:
    p = placement("web-a1", "nope/missing:1")
    track = ReplicaTrack(
        failures=1, not_before=NOW + 1, phase=ReplicaState.IMAGE_PULL_BACKOFF, message="denied"
    )
    plan = plan_actions({"web-a1": p}, [], {"web-a1": track}, set(), NOW)
    assert plan.actions == []
    assert plan.wake_at == NOW + 1
    status = replica_status(p, None, plan.tracks["web-a1"], NOW)
    assert (status.state, status.message) == (ReplicaState.IMAGE_PULL_BACKOFF, "denied")
    plan = plan_actions({"web-a1": p}, [], {"web-a1": track}, set(), NOW + 1)
    assert plan.actions == [CreateContainer("web-a1", p)]


def test_a_pulling_replica_shows_pulling() -> None:
    p = placement("web-a1")
    track = ReplicaTrack(phase=ReplicaState.PULLING, message="pulling corral-test/busybox:1")
    plan = plan_actions({"web-a1": p}, [], {"web-a1": track}, {"web-a1"}, NOW)
    assert plan.actions == []
    status = replica_status(p, None, plan.tracks["web-a1"], NOW)
    assert status.state == ReplicaState.PULLING


def test_a_container_removed_behind_the_agents_back_is_recreated_as_a_restart() -> None:
    p = placement("web-a1")
    track = ReplicaTrack(container_id="id-web-a1")
    plan = plan_actions({"web-a1": p}, [], {"web-a1": track}, set(), NOW)
    assert plan.actions == [CreateContainer("web-a1", p, restart=True)]
    assert plan.tracks["web-a1"].restarts == 0  # counted when the new container starts


def test_many_replicas_each_get_their_action() -> None:
    placements = {f"web-{i}": placement(f"web-{i}") for i in range(5)}
    containers = [container("web-0"), container("web-1"), container("orphan-9")]
    plan = plan_actions(placements, containers, {}, set(), NOW)
    creates = sorted(a.replica for a in plan.actions if isinstance(a, CreateContainer))
    removes = [a.replica for a in plan.actions if isinstance(a, RemoveContainers)]
    assert creates == ["web-2", "web-3", "web-4"]
    assert removes == ["orphan-9"]
