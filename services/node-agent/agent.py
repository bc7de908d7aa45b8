"""The node agent: one per node. Registers the node, heartbeats, and keeps the
engine's containers matching the placements of this node.

The loop (level-triggered): list the node's containers, diff them against the
placements (corral_node_agent.diff), hand the actions to the executor, write
the statuses that changed. A pass runs when a placement changes, when the
engine reports a container event, when an action ends or a back-off expires,
and at least every `resync_seconds`.

Fencing: the agent acts on placements only while "fenced": its placements
watch delivered a current snapshot and every container no longer placed here
is removed. It starts unfenced, and becomes unfenced again when it loses NATS
(or its heartbeats fail) for longer than `fence_grace_seconds`; then it only
removes, until a new watch delivered its snapshot and the removals succeeded.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup, TaskStatus

from corral import __version__, names
from corral.kv import Bucket, Mirror
from corral.state import Node, NodeCapacity, Placement
from corral_node_agent import metrics
from corral_node_agent.backoff import ReplicaTrack
from corral_node_agent.diff import Action, RemoveContainers, group_by_replica, plan_actions
from corral_node_agent.executor import EventSink, Executor
from corral_node_agent.node_record import NodeNameTaken, NodeRecord
from corral_node_agent.replica_status import replica_status
from corral_node_agent.runtime import ContainerState, ObservedContainer, Runtime, RuntimeFailure
from corral_node_agent.status_book import StatusBook

log = logging.getLogger(__name__)

_ENGINE_RETRY_SECONDS = 1.0
_NATS_RETRY_SECONDS = (0.5, 10.0)  # first and longest wait between startup retries
_WATCH_START_SECONDS = 10.0

__all__ = ["AgentSettings", "NodeAgent", "NodeNameTaken"]


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
    max_pulls: int = 4  # image pulls at once (apart from the container operations)
    fence_grace_seconds: float = 10.0  # cut off from NATS longer than this: fence again
    # Who writes this node's record: random per process unless given (--agent-id), so a
    # supervisor restarting its own agent is recognised, and any other agent is refused.
    agent_id: str = field(default_factory=lambda: secrets.token_hex(8))


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
        is_connected: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.node = settings.node_name
        self.runtime = runtime
        self.clock = clock
        self.health = health if health is not None else {}
        self.is_connected = is_connected  # the NATS connection's state, when known
        self.agent_id = settings.agent_id
        self._placements_bucket = placements
        self.placements: Mirror[Placement] = self._new_mirror()
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
                agent_id=self.agent_id,
            ),
            clock,
        )
        self.record.on_displaced = self._displaced
        self.tracks: dict[str, ReplicaTrack] = {}
        self.executor = Executor(
            runtime,
            events,
            self.tracks,
            on_progress=self.poke,
            clock=clock,
            max_parallel=settings.max_parallel,
            max_pulls=settings.max_pulls,
        )
        self.engine_ok = False
        self.capacity_known = False
        self.passes = 0  # passes completed (tests wait on it)
        # Fenced: the placements are current and what is not placed here is removed;
        # only then are containers created or started.
        self.fenced = False
        self.cut_off = False  # lost NATS past the grace: a new watch is due
        self.displaced = False  # another agent took this node's record over
        self.watches = 0  # placements watches started
        self._lost_since: float | None = None
        self._watch_scope: anyio.CancelScope | None = None
        self._watch_broken = False
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
        """Raises NodeNameTaken when another live agent runs this node's name."""
        self._wakeup = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                # Before anything touches a container: is this node name ours?
                await self._retrying("reading the node record", self.record.claim)
                self.health["node_name"] = True
                await self._retrying("watching the placements", self._watch_placements)
                await self._retrying("reading the stored statuses", self.statuses.load)
                self._seed_tracks()
                # Adoption and fencing before anything else: the first pass removes
                # what is no longer placed here before it creates anything.
                try:
                    await self.reconcile_once()
                except Exception:  # the loop below tries again
                    log.exception("first reconcile pass of %s failed", self.node)
                await tg.start(
                    self.record.heartbeat, self.settings.heartbeat_seconds, self._check_engine
                )
                tg.start_soon(self._follow_engine_events)
                tg.start_soon(self._reconcile_forever)
                tg.start_soon(self._watch_connection)
                task_status.started()
        finally:
            metrics.REPLICAS_RUNNING.dec(self._running)
            self._running = 0
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.record.release()
            await self.runtime.close()

    async def _retrying(self, doing: str, step: Callable[[], Awaitable[object]]) -> None:
        """Run a startup step until it succeeds, backing off: a NATS hiccup is no crash."""
        delay, longest = _NATS_RETRY_SECONDS
        while True:
            try:
                await step()
                return
            except NodeNameTaken:
                raise
            except Exception as error:  # TimeoutError, a dropped connection ...
                log.warning(
                    "%s for %s failed (%s); retrying in %gs", doing, self.node, error, delay
                )
            await anyio.sleep(delay)
            delay = min(longest, delay * 2)

    # The placements watch (restarted after a partition).

    def _new_mirror(self) -> Mirror[Placement]:
        return Mirror(
            self._placements_bucket,
            Placement,
            prefix=f"{self.node}.>",
            on_change=lambda _key: self.poke(),
        )

    async def _watch_placements(self) -> None:
        """Start a new placements watch; returns once its snapshot is in, then uses it."""
        assert self._task_group is not None
        mirror = self._new_mirror()
        with anyio.fail_after(_WATCH_START_SECONDS):
            scope: anyio.CancelScope = await self._task_group.start(self._follow, mirror)
        old, self._watch_scope = self._watch_scope, scope
        self.placements = mirror
        self._watch_broken = False
        self.watches += 1
        if old is not None:
            old.cancel()
        self.poke()

    async def _follow(
        self,
        mirror: Mirror[Placement],
        *,
        task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        with anyio.CancelScope() as scope:
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(mirror.run)
                    started = True
                    task_status.started(scope)
            except Exception:
                if not started:
                    raise
                log.warning("placements watch of %s broke", self.node, exc_info=True)
                if mirror is self.placements:
                    self._watch_broken = True

    async def _watch_connection(self) -> None:
        """Unfence after losing NATS past the grace; watch again once it is back."""
        grace = self.settings.fence_grace_seconds
        interval = min(0.5, max(0.05, grace / 4))
        while True:
            await anyio.sleep(interval)
            if self.displaced:
                continue
            now = self.clock()
            connected = self.is_connected() if self.is_connected is not None else True
            beat = self.record.last_written
            beating = beat is not None and now - beat <= max(
                grace, 2 * self.settings.heartbeat_seconds
            )
            if not (connected and beating) or self._watch_broken:
                if self._lost_since is None:
                    self._lost_since = now
                if (now - self._lost_since > grace or self._watch_broken) and not self.cut_off:
                    log.warning(
                        "node %s cut off from NATS for over %gs: only removing until "
                        "its placements are current again",
                        self.node,
                        grace,
                    )
                    self.cut_off = True
                    self.fenced = False
                if not self._watch_broken:
                    continue
            if self.cut_off:
                try:
                    await self._watch_placements()
                except Exception as error:
                    log.info("watching the placements of %s again failed: %s", self.node, error)
                    continue
                log.info("node %s is back: placements current, fencing", self.node)
                self.cut_off = False
            self._lost_since = None

    def _displaced(self, other: str) -> None:
        log.error(
            "another node agent (agent %s) now writes the record of node %s: this agent "
            "(agent %s) stops acting on its placements; give one of them another --node-name",
            other,
            self.node,
            self.agent_id,
        )
        self.displaced = True
        self.fenced = False
        self.health["node_name"] = False

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
        if self.displaced:  # another agent runs this node now
            return
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
            mirror = self.placements
            snapshot_current = not self.cut_off
            # A placement that does not decode is neither placed nor deleted: its
            # replica is left alone (never removed, restarted, or given a status).
            unreadable = {names.split_placement_key(key)[1] for key in mirror.unreadable}
            held = self._busy(listed_at) | unreadable
            placements = {p.replica: p for p in mirror.values() if p.node == self.node}
            plan = plan_actions(placements, containers, self.tracks, held, now)
            kept_tracks = {r: t for r, t in self.tracks.items() if r in unreadable}
            self.tracks.clear()
            self.tracks.update(kept_tracks)
            self.tracks.update(plan.tracks)
            self._wake_at = plan.wake_at
            actions: list[Action] = plan.actions
            if not self.fenced:
                # Fencing: remove what is no longer placed here before anything else,
                # and act on placements only once they are current and that succeeded.
                removals = [a for a in actions if isinstance(a, RemoveContainers)]
                results: list[bool] = []

                async def remove(removal: RemoveContainers) -> None:
                    results.append(await self.executor.execute(removal))

                async with anyio.create_task_group() as tg:
                    for removal in removals:
                        tg.start_soon(remove, removal)
                if all(results) and snapshot_current and mirror is self.placements:
                    self.fenced = not self.cut_off and not self.displaced
                actions = (
                    []
                    if not self.fenced
                    else [a for a in actions if not isinstance(a, RemoveContainers)]
                )
                if not self.fenced:
                    retry_at = now + _ENGINE_RETRY_SECONDS
                    self._wake_at = (
                        retry_at if plan.wake_at is None else min(plan.wake_at, retry_at)
                    )
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
            await self._write_statuses(placements, plan.kept, with_containers, held, now)
            self.passes += 1

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
