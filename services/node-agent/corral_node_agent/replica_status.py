"""The pure mapping from what the agent sees of a replica to its ReplicaStatus."""

from __future__ import annotations

import msgspec

from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral_node_agent.backoff import ReplicaTrack, backoff_delay, restarts_after_exit
from corral_node_agent.probes import ProbeView
from corral_node_agent.runtime import ContainerState, ObservedContainer


def replica_status(
    placement: Placement,
    container: ObservedContainer | None,
    track: ReplicaTrack,
    now: float,
    probes: ProbeView | None = None,
    last_probe_failure: str = "",
    previous: ReplicaStatus | None = None,
) -> ReplicaStatus:
    """The status as it should read now (updated_at is left 0: the writer stamps it).
    `probes`: what the probes of its running container say (corral_node_agent.probes);
    with a readiness probe it is not ready until they say so, except that a container
    already running when the agent began keeps `previous`'s `ready` (same container)
    until its first verdict."""
    state = ReplicaState.PENDING
    message = ""
    started_at: float | None = None
    if container is not None and container.state == ContainerState.RUNNING:
        state = ReplicaState.RUNNING
        started_at = container.started_at
    elif track.phase is not None:
        state, message = track.phase, track.message
    elif container is not None and container.state in (ContainerState.EXITED, ContainerState.DEAD):
        if track.not_before > now and track.failures > 1:
            state = ReplicaState.CRASH_LOOP
            delay = backoff_delay(track.failures - 1)
            message = f"back-off {delay:g}s restarting failed container"
        else:
            state = ReplicaState.EXITED
            policy = placement.template.restart_policy
            if not restarts_after_exit(policy, container.exit_code):
                message = (
                    f"exited with code {container.exit_code}; not restarted "
                    f"(restartPolicy {policy})"
                )
        if container.error:
            message = f"{message}: {container.error}" if message else container.error
    elif container is not None:
        state = ReplicaState.CREATING
    running = state == ReplicaState.RUNNING
    current = probes if running and probes is not None else None
    ready: bool | None = None
    if placement.template.readiness_probe is not None:
        ready = bool(current is not None and current.ready)
        if (
            current is not None
            and current.pending
            and previous is not None
            and previous.container_id == current.container_id
            and previous.ready is not None
        ):
            ready = previous.ready
    return ReplicaStatus(
        replica=placement.replica,
        deployment=placement.deployment,
        node=placement.node,
        namespace=placement.namespace,  # its key is the placement's (names.placement_key)
        state=state,
        template_hash=placement.template_hash,
        container_id=container.id if container is not None else track.container_id,
        exit_code=track.exit_code,
        restarts=track.restarts,
        restart_times=list(track.restart_times),
        message=message,
        started_at=started_at,
        # Addresses once Running (netmgr's endpoints take Running replicas only).
        ips=dict(container.ips) if container is not None and state == ReplicaState.RUNNING else {},
        image_ports=list(container.image_ports) if container is not None else [],
        ready=ready,
        probes=dict(current.results) if current is not None else {},
        last_probe_failure=last_probe_failure,
    )


def same_status(a: ReplicaStatus | None, b: ReplicaStatus | None) -> bool:
    """Equal but for the time stamp: no write is needed."""
    if a is None or b is None:
        return a is b
    return msgspec.structs.replace(a, updated_at=0.0) == msgspec.structs.replace(b, updated_at=0.0)
