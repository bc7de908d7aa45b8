"""The node agent: one per node. Registers the node, heartbeats, and keeps the
engine's containers matching the placements of this node.

The loop (level-triggered): list the node's containers, diff them against the
placements (corral_node_agent.diff), hand the actions to the executor, write
the statuses that changed. A pass runs when a placement changes, when the
engine reports a container event, when an action ends or a back-off expires,
and at least every `resync_seconds`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup, TaskStatus

from corral import __version__
from corral.kv import Bucket, Mirror
from corral.state import Node, NodeCapacity, Placement
from corral_node_agent import metrics
from corral_node_agent.backoff import ReplicaTrack
from corral_node_agent.diff import Action, RemoveContainers, group_by_replica, plan_actions
from corral_node_agent.executor import EventSink, Executor
from corral_node_agent.node_record import NodeRecord
from corral_node_agent.replica_status import replica_status
from corral_node_agent.runtime import ContainerState, ObservedContainer, Runtime, RuntimeFailure
from corral_node_agent.status_book import StatusBook

log = logging.getLogger(__name__)

_ENGINE_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class AgentSettings:
    node_name: str
    labels: dict[str, str] = field(default_factory=dict)
    cpu_millis: int | None = None  # None: what the engine reports
    memory_bytes: int | None = None
    pods: int = 110
    heartbeat_seconds: float = 2.0
    resync_seconds: float = 10.0
    max_parallel: int = 8


class NodeAgent:
    def __init__(
        self,
        settings: AgentSettings,
        runtime: Runtime,
        *,
        placements: Bucket,
        nodes: Bucket,
        statuses: Bucket,
        events: EventSink,
        health: dict[str, bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.node = settings.node_name
        self.runtime = runtime
        self.clock = clock
        self.health = health if health is not None else {}
        self.placements: Mirror[Placement] = Mirror(
            placements, Placement, prefix=f"{self.node}.>", on_change=lambda _key: self.poke()
        )
        self.statuses = StatusBook(statuses, self.node, clock)
        self.record = NodeRecord(
            nodes,
            Node(
                name=self.node,
                labels=dict(settings.labels),
                capacity=NodeCapacity(
                    cpu_millis=settings.cpu_millis or 0,
                    memory_bytes=settings.memory_bytes or 0,
                    pods=settings.pods,
                ),
                runtime=runtime.name,
                ready=False,
                message="starting",
                agent_started_at=clock(),
                version=__version__,
            ),
            clock,
        )
        self.tracks: dict[str, ReplicaTrack] = {}
        self.executor = Executor(
            runtime,
            events,
            self.tracks,
            on_progress=self.poke,
            clock=clock,
            max_parallel=settings.max_parallel,
        )
        self.engine_ok = False
        self.capacity_known = False
        self.passes = 0
        self.fenced = False  # the first successful pass removed what is not placed here
        self._running = 0  # this agent's share of the replicas_running gauge
        self._in_flight: set[str] = set()
        self._settled: dict[str, int] = {}  # replica -> sequence number when its action ended
        self._sequence = 0
        self._wakeup: anyio.Event | None = None
        self._wake_at: float | None = None
        self._task_group: TaskGroup | None = None

    # Triggers.

    def poke(self) -> None:
        """Ask for a reconcile pass soon (cheap; many pokes make one pass)."""
        if self._wakeup is not None:
            self._wakeup.set()

    def _on_engine_change(self, replica: str) -> None:
        self.poke()

    # Running.

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._wakeup = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                await tg.start(self.placements.run)
                await self.statuses.load()
                self._seed_tracks()
                # Adoption and fencing before anything else: the first pass removes
                # what is no longer placed here before it creates anything.
                await self.reconcile_once()
                await tg.start(
                    self.record.heartbeat, self.settings.heartbeat_seconds, self._check_engine
                )
                tg.start_soon(self._follow_engine_events)
                tg.start_soon(self._reconcile_forever)
                task_status.started()
        finally:
            metrics.REPLICAS_RUNNING.dec(self._running)
            self._running = 0
            await self.runtime.close()

    def _seed_tracks(self) -> None:
        """Carry restart counts over from the statuses an earlier run wrote."""
        for replica in self.statuses.replicas():
            status = self.statuses.get(replica)
            if status is not None:
                self.tracks[replica] = ReplicaTrack(
                    restarts=status.restarts,
                    exit_code=status.exit_code,
                    container_id=status.container_id,
                )

    async def _reconcile_forever(self) -> None:
        while True:
            delay = self.settings.resync_seconds
            if not self.engine_ok:
                delay = min(delay, _ENGINE_RETRY_SECONDS)
            if self._wake_at is not None:
                delay = max(0.0, min(delay, self._wake_at - self.clock()))
            assert self._wakeup is not None
            with anyio.move_on_after(delay):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()
            try:
                await self.reconcile_once()
            except Exception:  # never die of one bad pass: the next one retries
                log.exception("reconcile pass of %s failed", self.node)
                await anyio.sleep(_ENGINE_RETRY_SECONDS)

    async def _follow_engine_events(self) -> None:
        while True:
            try:
                await self.runtime.watch(self.node, self._on_engine_change)
            except RuntimeFailure as error:
                log.info("engine events of %s interrupted: %s", self.node, error)
            except Exception:
                log.warning("engine events of %s failed", self.node, exc_info=True)
            await anyio.sleep(_ENGINE_RETRY_SECONDS)
            self.poke()  # events may have been missed meanwhile

    async def _check_engine(self) -> None:
        """Before each heartbeat: can the engine be reached, and what is its capacity?"""
        try:
            await self.runtime.ping()
            if not self.capacity_known:
                info = await self.runtime.info()
                self.record.update(
                    capacity=NodeCapacity(
                        cpu_millis=self.settings.cpu_millis or info.cpu_millis,
                        memory_bytes=self.settings.memory_bytes or info.memory_bytes,
                        pods=self.settings.pods,
                    )
                )
                self.capacity_known = True
        except RuntimeFailure as error:
            self._engine_down(str(error))
            return
        if not self.engine_ok:
            self.poke()
        self._engine_up()

    def _engine_down(self, message: str) -> None:
        if self.engine_ok or self.health.get("engine") is not False:
            log.warning("engine of %s unreachable: %s", self.node, message)
        self.engine_ok = False
        self.health["engine"] = False
        self.record.update(ready=False, message=f"container engine unreachable: {message}")

    def _engine_up(self) -> None:
        self.engine_ok = True
        self.health["engine"] = True
        self.record.update(ready=True, message="")

    # One pass.

    def _busy(self, listed_at: int) -> set[str]:
        for replica in [r for r, at in self._settled.items() if at <= listed_at]:
            del self._settled[replica]
        return self._in_flight | set(self._settled)

    async def reconcile_once(self) -> None:
        with metrics.RECONCILE_SECONDS.time():
            self._sequence += 1
            listed_at = self._sequence
            try:
                containers = await self.runtime.list_containers(self.node)
            except RuntimeFailure as error:
                self._engine_down(str(error))
                return
            self._engine_up()
            now = self.clock()
            busy = self._busy(listed_at)
            placements = {p.replica: p for p in self.placements.values() if p.node == self.node}
            plan = plan_actions(placements, containers, self.tracks, busy, now)
            self.tracks.clear()
            self.tracks.update(plan.tracks)
            self._wake_at = plan.wake_at
            self.passes += 1
            actions: list[Action] = plan.actions
            if not self.fenced:  # the first pass that reaches the engine removes first
                self.fenced = True
                async with anyio.create_task_group() as tg:
                    for removal in actions:
                        if isinstance(removal, RemoveContainers):
                            tg.start_soon(self.executor.execute, removal)
                actions = [a for a in actions if not isinstance(a, RemoveContainers)]
            for action in actions:
                self._dispatch(action)

            running = sum(
                1
                for kept in plan.kept.values()
                if kept is not None and kept.state == ContainerState.RUNNING
            )
            metrics.REPLICAS_RUNNING.inc(running - self._running)
            self._running = running
            with_containers = set(group_by_replica(containers))
            await self._write_statuses(placements, plan.kept, with_containers, busy, now)

    def _dispatch(self, action: Action) -> None:
        assert self._task_group is not None
        self._in_flight.add(action.replica)
        self._task_group.start_soon(self._execute, action)

    async def _execute(self, action: Action) -> None:
        try:
            await self.executor.execute(action)
        finally:
            self._in_flight.discard(action.replica)
            self._sequence += 1
            self._settled[action.replica] = self._sequence
            self.poke()

    async def _write_statuses(
        self,
        placements: dict[str, Placement],
        kept: dict[str, ObservedContainer | None],
        with_containers: set[str],
        busy: set[str],
        now: float,
    ) -> None:
        """Write the statuses that changed; delete those of replicas gone for good."""
        try:
            for replica, placement in placements.items():
                track = self.tracks.get(replica, ReplicaTrack())
                status = replica_status(placement, kept.get(replica), track, now)
                await self.statuses.write(status)
            for replica in self.statuses.replicas():
                if replica not in placements and replica not in with_containers:
                    if replica not in busy:
                        await self.statuses.delete(replica)
        except Exception:  # NATS trouble: the next pass writes what is still due
            log.warning("writing statuses of %s failed", self.node, exc_info=True)
