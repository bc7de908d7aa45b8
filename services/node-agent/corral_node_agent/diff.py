"""The pure heart of the agent: desired placements x observed containers -> actions.

`plan_actions` never touches the engine or NATS; the clock comes in as `now`.
A replica in `busy` (an action for it is in flight, or finished after the
containers were listed) is left alone this pass, so it is never created twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from corral.contract.state import Placement
from corral_node_agent.backoff import (
    ReplicaTrack,
    after_exit,
    after_final_exit,
    restarts_after_exit,
)
from corral_node_agent.mounts import empty_dirs_of
from corral_node_agent.runtime import ContainerState, ObservedContainer


@dataclass(frozen=True, slots=True)
class CreateContainer:
    """Pull the image when missing, create the container, start it."""

    replica: str
    placement: Placement
    restart: bool = False  # the replica's container vanished: its new one counts as a restart


@dataclass(frozen=True, slots=True)
class StartContainer:
    replica: str
    placement: Placement
    container_id: str
    restart: bool  # the container ran and exited before


@dataclass(frozen=True, slots=True)
class RemoveContainers:
    replica: str
    deployment: str
    container_ids: tuple[str, ...]
    reason: str
    # Its emptyDir volumes, removed right after its containers: set only when every
    # container of the replica goes (mounts.empty_dirs_of).
    volumes: tuple[str, ...] = ()
    # Its running containers, stopped gracefully before the removal (the replica is
    # going away: docs/rollouts.md, "Graceful stops"); none: removed at once.
    graceful: tuple[ObservedContainer, ...] = ()


Action = CreateContainer | StartContainer | RemoveContainers


@dataclass(frozen=True, slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    tracks: dict[str, ReplicaTrack] = field(default_factory=dict)
    # The container kept for each placed replica (None: none yet).
    kept: dict[str, ObservedContainer | None] = field(default_factory=dict)
    wake_at: float | None = None  # the earliest back-off that ends


def _preference(container: ObservedContainer) -> tuple[int, float]:
    """Keep the running one, else the latest started."""
    running = container.state == ContainerState.RUNNING
    return (1 if running else 0, container.started_at or 0.0)


def _empty_dirs(replica: str, group: Iterable[ObservedContainer]) -> tuple[str, ...]:
    return empty_dirs_of(replica, (volume for c in group for volume in c.volumes))


def _running(group: Iterable[ObservedContainer]) -> tuple[ObservedContainer, ...]:
    return tuple(c for c in group if c.state == ContainerState.RUNNING)


def group_by_replica(
    containers: Iterable[ObservedContainer],
) -> dict[str, list[ObservedContainer]]:
    groups: dict[str, list[ObservedContainer]] = {}
    for container in containers:
        groups.setdefault(container.replica, []).append(container)
    return groups


def remove_all(
    containers: Iterable[ObservedContainer],
    tracks: Mapping[str, ReplicaTrack],
    busy: frozenset[str] | set[str],
    reason: str,
    now: float,
) -> Plan:
    """Remove every container given (a node stopping its replicas), each replica on
    its own back-off when its removal keeps failing."""
    actions: list[Action] = []
    new_tracks: dict[str, ReplicaTrack] = {}
    wake_at: float | None = None
    for replica, group in sorted(group_by_replica(containers).items()):
        if replica in busy:
            continue
        track = tracks.get(replica, ReplicaTrack())
        new_tracks[replica] = track
        if now < track.removal_not_before:
            at = track.removal_not_before
            wake_at = at if wake_at is None else min(wake_at, at)
            continue
        ids = tuple(c.id for c in group)
        actions.append(
            RemoveContainers(
                replica,
                group[0].deployment,
                ids,
                reason,
                _empty_dirs(replica, group),
                graceful=_running(group),
            )
        )
    return Plan(actions=actions, tracks=new_tracks, wake_at=wake_at)


def plan_actions(
    placements: Mapping[str, Placement],
    containers: Iterable[ObservedContainer],
    tracks: Mapping[str, ReplicaTrack],
    busy: frozenset[str] | set[str],
    now: float,
) -> Plan:
    """What to do now. `placements` and `tracks` are keyed by replica name."""
    groups = group_by_replica(containers)
    actions: list[Action] = []
    new_tracks: dict[str, ReplicaTrack] = {}
    kept: dict[str, ObservedContainer | None] = {}
    wake_at: float | None = None

    def wake(at: float) -> None:
        nonlocal wake_at
        wake_at = at if wake_at is None else min(wake_at, at)

    for replica in sorted(set(placements) | set(groups)):
        placement = placements.get(replica)
        group = groups.get(replica, [])
        if placement is None:
            if group and replica not in busy:
                track = tracks.get(replica, ReplicaTrack())
                new_tracks[replica] = track  # a failing removal keeps its back-off
                if now < track.removal_not_before:
                    wake(track.removal_not_before)
                else:
                    actions.append(
                        RemoveContainers(
                            replica,
                            group[0].deployment,
                            tuple(c.id for c in group),
                            "not placed on this node",
                            _empty_dirs(replica, group),
                            graceful=_running(group),
                        )
                    )
            continue
        track = tracks.get(replica, ReplicaTrack())
        current = sorted(
            (c for c in group if c.template_hash == placement.template_hash),
            key=_preference,
            reverse=True,
        )
        keep = current[0] if current else None
        kept[replica] = keep
        if replica in busy:
            new_tracks[replica] = track
            continue
        stale = [c for c in group if c.template_hash != placement.template_hash]
        if stale or len(current) > 1:
            # Nothing new for this replica while an old container of it may still run.
            reason = "another template is placed" if stale else "duplicate container"
            ids = tuple(c.id for c in stale) + tuple(c.id for c in current[1:])
            if now < track.removal_not_before:
                wake(track.removal_not_before)
            else:
                # Its emptyDirs go too when none of its containers is kept (a new
                # template: a new emptyDir, as a new Pod's).
                gone = _empty_dirs(replica, group) if keep is None else ()
                actions.append(RemoveContainers(replica, placement.deployment, ids, reason, gone))
            if keep is None:
                track = replace(track, container_id="")
            new_tracks[replica] = track
            continue

        if keep is None:
            if now < track.not_before:
                wake(track.not_before)
            else:
                # It had a container, which vanished: the new one's start is a restart
                # (counted by the executor once that start happens).
                vanished = bool(track.container_id)
                actions.append(CreateContainer(replica, placement, restart=vanished))
        elif keep.state == ContainerState.RUNNING:
            track = replace(track, container_id=keep.id, phase=None, message="")
        elif keep.state == ContainerState.CREATED:
            track = replace(track, container_id=keep.id)
            if now < track.not_before:
                wake(track.not_before)
            else:
                actions.append(StartContainer(replica, placement, keep.id, restart=False))
        elif keep.state in (ContainerState.EXITED, ContainerState.DEAD) and not (
            restarts_after_exit(placement.template.restart_policy, keep.exit_code)
        ):
            # Exited for good (restartPolicy Never, or OnFailure after exit code 0): it
            # stays Exited with its exit code, and nothing is started again.
            if track.seen_exit != (keep.id, keep.finished_at):
                track = after_final_exit(track, keep.id, keep.exit_code, keep.finished_at)
        elif keep.state in (ContainerState.EXITED, ContainerState.DEAD):
            if track.seen_exit != (keep.id, keep.finished_at):
                track = after_exit(
                    track, keep.id, keep.exit_code, keep.started_at, keep.finished_at, now
                )
            if now < track.not_before:
                wake(track.not_before)
            else:
                actions.append(StartContainer(replica, placement, keep.id, restart=True))
        new_tracks[replica] = track
    return Plan(actions=actions, tracks=new_tracks, kept=kept, wake_at=wake_at)
