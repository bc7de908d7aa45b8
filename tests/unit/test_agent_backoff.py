from __future__ import annotations

from corral.contract.state import ReplicaState
from corral_node_agent.backoff import (
    ReplicaTrack,
    after_exit,
    after_failure,
    after_start,
    backoff_delay,
)


def test_delays_double_from_zero_and_cap_at_a_minute() -> None:
    assert [backoff_delay(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(100) == 60


def test_exits_grow_the_backoff() -> None:
    track = ReplicaTrack()
    track = after_exit(track, "c1", 1, started_at=100.0, finished_at=101.0, now=101.0)
    assert (track.failures, track.not_before, track.exit_code) == (1, 101.0, 1)
    track = after_exit(track, "c1", 2, started_at=102.0, finished_at=103.0, now=103.0)
    assert (track.failures, track.not_before, track.exit_code) == (2, 104.0, 2)
    track = after_exit(track, "c1", 2, started_at=105.0, finished_at=106.0, now=106.0)
    assert track.not_before == 108.0
    assert track.seen_exit == ("c1", 106.0)


def test_a_minute_of_running_resets_the_backoff() -> None:
    track = ReplicaTrack(failures=6)
    track = after_exit(track, "c1", 0, started_at=0.0, finished_at=61.0, now=61.0)
    assert track.failures == 1
    assert track.not_before == 61.0  # at once


def test_failures_wait_at_least_a_second_and_show_why() -> None:
    track = after_failure(ReplicaTrack(), ReplicaState.IMAGE_PULL_BACKOFF, "denied", now=10.0)
    assert track.phase == ReplicaState.IMAGE_PULL_BACKOFF
    assert track.message == "denied"
    assert track.not_before == 11.0
    track = after_failure(track, ReplicaState.IMAGE_PULL_BACKOFF, "denied", now=11.0)
    assert track.not_before == 13.0


def test_a_start_clears_the_error() -> None:
    track = after_failure(ReplicaTrack(), ReplicaState.FAILED, "boom", now=0.0)
    track = after_start(track, "c9")
    assert (track.phase, track.message, track.container_id) == (None, "", "c9")
