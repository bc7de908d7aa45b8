"""Before the agent reaches NATS: an agent process that starts during a partition
still stops its replicas at F, counted from its own start (docs/safety.md).

The service runtime connects to NATS and prepares its buckets before the agent
proper runs; a restarted agent that cannot get that far would otherwise leave its
replicas running for the whole partition while the scheduler replaces them. This
watch runs beside that setup, from the process's first moment: if the agent has
not started within F, it removes this node's own containers, found through the
node's local record of its cluster (nothing at all when there is none).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

from corral.contract.time_budget import FENCED_STOP_GRACE_SECONDS
from corral_node_agent.local_record import LocalRecord, LocalRecordFile, UnreadableLocalRecord
from corral_node_agent.ownership import classify
from corral_node_agent.runtime import (
    ENGINE_DEFAULT_GRACE_SECONDS,
    ContainerState,
    ObservedContainer,
    Runtime,
    RuntimeFailure,
)

log = logging.getLogger(__name__)


async def stop_if_never_started(
    runtime: Runtime,
    local: LocalRecordFile,
    node: str,
    started: anyio.Event,
    *,
    stop_after: float,
    counting_from: float,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Wait for `started`; F after `counting_from` (monotonic) without it, remove this
    node's own containers, all at once. Returns how many were removed."""
    with anyio.move_on_after(max(0.0, stop_after - (monotonic() - counting_from))):
        await started.wait()
    if started.is_set():
        return 0
    try:
        record = local.load()
    except UnreadableLocalRecord as error:
        log.error("node %s: cut off at start, but %s: removing nothing", node, error)
        return 0
    if record is None:
        return 0  # this node never belonged to a cluster: nothing is its own
    log.warning(
        "node %s: no NATS for %gs since the agent started: removing its replicas "
        "(the scheduler has placed them elsewhere)",
        node,
        stop_after,
    )
    # Fenced: each one's stop signal first, but SIGKILL after at most
    # FENCED_STOP_GRACE_SECONDS, and no drain (docs/rollouts.md).
    removed, failed = await remove_own(runtime, record, node, most_grace=FENCED_STOP_GRACE_SECONDS)
    log.warning("node %s: removed %d replicas, %d not", node, len(removed), len(failed))
    return len(removed)


async def remove_own(
    runtime: Runtime, record: LocalRecord, node: str, *, most_grace: float | None = None
) -> tuple[list[ObservedContainer], list[str]]:
    """Stop and remove this node's own containers (of the cluster its local record names,
    `classify`), all at once: a running one gets its stop signal and its own grace period
    (capped at `most_grace`), then the removal kills it. Returns those removed and what
    failed, in words; never raises for the engine."""
    try:
        containers = await runtime.list_containers()
    except RuntimeFailure as error:
        return [], [f"the engine fails: {error}"]
    own = classify(
        containers,
        node=node,
        cluster_id=record.cluster_id,
        adopted=record.adopted,
        placements={},
        claimed=record.claimed,
    ).own
    removed: list[ObservedContainer] = []
    failed: list[str] = []

    async def remove(container: ObservedContainer) -> None:
        try:
            if container.state == ContainerState.RUNNING:
                await _stop(runtime, container, most_grace)
            await runtime.remove_container(container.id)  # bounded by STOP
            removed.append(container)
        except RuntimeFailure as error:
            log.warning("removing %s failed: %s", container.id[:12], error)
            failed.append(f"{container.name} ({container.id[:12]}): {error}")

    async with anyio.create_task_group() as tg:  # in parallel: the stop takes one grace
        for container in own:
            tg.start_soon(remove, container)
    return removed, failed


async def _stop(runtime: Runtime, container: ObservedContainer, most_grace: float | None) -> None:
    own = container.stop_timeout
    grace = float(own if own is not None else ENGINE_DEFAULT_GRACE_SECONDS)
    if most_grace is not None:
        grace = min(grace, most_grace)
    try:
        with anyio.move_on_after(grace + 1.0):  # the kill (the removal) follows anyway
            await runtime.stop_container(container.id, grace)
    except RuntimeFailure as error:
        log.warning("stopping %s failed: %s", container.id[:12], error)
