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

from corral.contract.time_budget import FENCED_STOP_GRACE_SECONDS, STOP_SECONDS
from corral_node_agent.local_record import LocalRecordFile, UnreadableLocalRecord
from corral_node_agent.ownership import classify
from corral_node_agent.runtime import ContainerState, ObservedContainer, Runtime, RuntimeFailure

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
    try:
        containers = await runtime.list_containers()
    except RuntimeFailure as error:
        log.error("node %s: cut off at start, and the engine fails: %s", node, error)
        return 0
    own = classify(
        containers,
        node=node,
        cluster_id=record.cluster_id,
        adopted=record.adopted,
        placements={},
        claimed=record.claimed,
    ).own
    log.warning(
        "node %s: no NATS for %gs since the agent started: removing its %d replicas "
        "(the scheduler has placed them elsewhere)",
        node,
        stop_after,
        len(own),
    )
    removed = 0

    async def remove(container: ObservedContainer) -> None:
        nonlocal removed
        try:
            if container.state == ContainerState.RUNNING:
                # Fenced: its stop signal first, but SIGKILL after at most
                # FENCED_STOP_GRACE_SECONDS, and no drain (docs/rollouts.md).
                await _stop_fenced(runtime, container)
            await runtime.remove_container(container.id)  # bounded by STOP
            removed += 1
        except RuntimeFailure as error:
            log.warning("removing %s failed: %s", container.id[:12], error)

    async with anyio.create_task_group() as tg:  # in parallel: the stop takes one STOP
        for container in own:
            tg.start_soon(remove, container)
    return removed


async def _stop_fenced(runtime: Runtime, container: ObservedContainer) -> None:
    grace = min(
        float(container.stop_timeout if container.stop_timeout is not None else STOP_SECONDS),
        FENCED_STOP_GRACE_SECONDS,
    )
    try:
        with anyio.move_on_after(grace + 1.0):  # the kill (the removal) follows anyway
            await runtime.stop_container(container.id, grace)
    except RuntimeFailure as error:
        log.warning("stopping %s failed: %s", container.id[:12], error)
