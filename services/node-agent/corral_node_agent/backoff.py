"""What the agent remembers about each replica between passes, and the back-off.

A restart happens at once after the first exit, then after 1 s, 2 s, 4 s ...
capped at 60 s; a container that ran for 60 s or more starts the count afresh.
The same back-off spaces retries of failed pulls, creates and starts. Whether an exited
container restarts at all is its template's restartPolicy (restarts_after_exit).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from corral.contract.backoff import Backoff
from corral.contract.specs import MAX_CRASH_LOOP_RESTARTS, RestartPolicy
from corral.contract.state import ReplicaState

MAX_BACKOFF_SECONDS = 60.0
RESET_AFTER_RUNNING_SECONDS = 60.0


def backoff_delay(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failures already seen: 0, 1, 2, 4 ... 60."""
    return Backoff.after_failures(failures, first=1.0, most=MAX_BACKOFF_SECONDS)


@dataclass(frozen=True, slots=True)
class ReplicaTrack:
    """The agent's memory of one placed replica (never stored: rebuilt after a restart)."""

    restarts: int = 0
    failures: int = 0  # consecutive failures, which set the next delay
    not_before: float = 0.0  # no new attempt before this time
    phase: ReplicaState | None = None  # set by the executor: Pulling, ImagePullBackOff ...
    message: str = ""
    exit_code: int | None = None  # of the last exit
    seen_exit: tuple[str, float | None] | None = None  # (container id, finished_at) counted
    container_id: str = ""  # the container last seen or created for it
    # Removals that failed in a row, and when the next may be tried (apart from the
    # restart back-off: a crash-looping replica that is unplaced goes at once).
    removal_failures: int = 0
    removal_not_before: float = 0.0
    # When it was restarted (the agent's clock), the last MAX_CRASH_LOOP_RESTARTS, oldest
    # first: ReplicaStatus.restart_times (carried over from the stored status at start).
    restart_times: tuple[float, ...] = ()


def after_failure(
    track: ReplicaTrack, phase: ReplicaState, message: str, now: float
) -> ReplicaTrack:
    """A pull, create or start failed: show why, and wait before the next try."""
    failures = track.failures + 1
    return replace(
        track,
        failures=failures,
        not_before=now + max(1.0, backoff_delay(failures)),
        phase=phase,
        message=message,
    )


def after_removal_failure(track: ReplicaTrack, message: str, now: float) -> ReplicaTrack:
    """A removal failed: report it, and retry on its own back-off."""
    failures = track.removal_failures + 1
    return replace(
        track,
        removal_failures=failures,
        removal_not_before=now + max(1.0, backoff_delay(failures)),
        message=message,
    )


def after_exit(
    track: ReplicaTrack,
    container_id: str,
    exit_code: int | None,
    started_at: float | None,
    finished_at: float | None,
    now: float,
) -> ReplicaTrack:
    """A container exited: the next start waits for the back-off of the failures so far."""
    failures = track.failures
    if (
        started_at is not None
        and finished_at is not None
        and finished_at - started_at >= RESET_AFTER_RUNNING_SECONDS
    ):
        failures = 0
    return replace(
        track,
        failures=failures + 1,
        not_before=now + backoff_delay(failures),
        phase=None,
        message="",
        exit_code=exit_code,
        seen_exit=(container_id, finished_at),
        container_id=container_id,
    )


def restarts_after_exit(policy: RestartPolicy, exit_code: int | None) -> bool:
    """Whether a container that exited with `exit_code` is started again (Kubernetes'
    restartPolicy): Always yes, OnFailure after a non-zero exit (an unknown code counts
    as a failure), Never no."""
    if policy == "Never":
        return False
    if policy == "OnFailure":
        return exit_code != 0
    return True


def after_final_exit(
    track: ReplicaTrack, container_id: str, exit_code: int | None, finished_at: float | None
) -> ReplicaTrack:
    """A container exited for good (its restartPolicy starts it no more): remembered,
    with no back-off running."""
    return replace(
        track,
        not_before=0.0,
        phase=None,
        message="",
        exit_code=exit_code,
        seen_exit=(container_id, finished_at),
        container_id=container_id,
    )


def after_restart(track: ReplicaTrack, now: float) -> ReplicaTrack:
    """A restart happened at `now`: counted, and its time kept (the last few)."""
    times = (*track.restart_times, now)[-MAX_CRASH_LOOP_RESTARTS:]
    return replace(track, restarts=track.restarts + 1, restart_times=times)


def after_start(track: ReplicaTrack, container_id: str) -> ReplicaTrack:
    return replace(track, phase=None, message="", container_id=container_id)
