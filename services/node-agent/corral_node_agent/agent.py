"""The node agent: one per node. Registers the node, heartbeats, and keeps the
engine's containers matching the placements of this node.

The loop (level-triggered): list the engine's corral containers, sort out whose
they are (corral_node_agent.ownership), diff this node's own against the
placements (corral_node_agent.diff), hand the actions to the executor, write the
statuses that changed. A pass runs when a placement changes, when the engine
reports a container event, when an action ends or a back-off expires, and at
least every `resync_seconds`.

What a pass may do is decided by one pure state machine (corral_node_agent.safety,
docs/safety.md) from what the agent observes: is the store the cluster this node
belongs to, when did NATS last acknowledge a write, are the placements current,
did another agent take the node over. The guard loop below feeds it and acts on
its transitions; the pass only asks `permissions(mode)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from corral import __version__
from corral.contract import names, time_budget
from corral.contract.backoff import Backoff
from corral.contract.codec import encode
from corral.contract.events import HeartbeatAck, Reply
from corral.contract.sharing import TEMPLATES
from corral.contract.state import (
    Node,
    NodeCapacity,
    OrphanReplica,
    Placement,
    ReplicaState,
    ReplicaStatus,
)
from corral.natsio.kv import Bucket, Mirror, Wakeups, echo_key, keep_echoing
from corral_node_agent import metrics
from corral_node_agent.backoff import ReplicaTrack
from corral_node_agent.cut_off_clock import LastAckFile
from corral_node_agent.diff import (
    Action,
    Plan,
    RemoveContainers,
    group_by_replica,
    plan_actions,
    remove_all,
)
from corral_node_agent.drains import DrainBook
from corral_node_agent.executor import WAITING_FOR_NETWORK, EventSink, Executor
from corral_node_agent.heartbeat_link import HeartbeatLink, enough
from corral_node_agent.leftovers import LeftoverSweeper
from corral_node_agent.local_record import LocalRecordFile
from corral_node_agent.membership import Membership, PlacementShardsChanged
from corral_node_agent.mode_events import ModeEventBudget
from corral_node_agent.mounts import empty_dir_replica, is_volume_in_use, is_volume_wait
from corral_node_agent.networks_mode import NetworksChoice, NetworksMode
from corral_node_agent.node_record import NodeNameTaken, NodeRecord, Takeover
from corral_node_agent.ownership import Ownership, classify
from corral_node_agent.probes import Prober
from corral_node_agent.replica_status import replica_status
from corral_node_agent.runtime import (
    ENGINE_DEFAULT_GRACE_SECONDS,
    NETWORK_APPEARED,
    ContainerState,
    ObservedContainer,
    Runtime,
    RuntimeFailure,
)
from corral_node_agent.safety import (
    Budget,
    Displacement,
    Identity,
    Mode,
    Observation,
    decide_mode,
    doubts_placements,
    needs_new_watch,
    permissions,
)
from corral_node_agent.status_book import StatusBook
from corral_node_agent.volumes import VolumeBook
from corral_node_agent.watch_proof import WatchProof

if TYPE_CHECKING:  # a hollow cluster's; an agent process never imports it (nor its metric)
    from corral_node_agent.pass_gate import PassGate

log = logging.getLogger(__name__)

_ENGINE_RETRY_SECONDS = 1.0
_NATS_RETRY_SECONDS = (0.5, 10.0)  # first and longest wait between startup retries
_WATCH_START_SECONDS = 10.0
_MAX_ORPHANS_REPORTED = 100
DEFAULT_DRAIN_TIMEOUT_SECONDS = 10.0

__all__ = ["AgentSettings", "NodeAgent", "NodeNameTaken"]


# --placements-watch: how an agent follows its placements once read (AgentSettings); the
# first is the default (bench/README.md, "A node's placements read by sequence").
PLACEMENTS_WATCHES: Final = ("consumer", "reads")


@dataclass(frozen=True)
class AgentSettings:
    node_name: str
    labels: dict[str, str] = field(default_factory=dict)
    cpu_millis: int | None = None  # None: what the engine reports
    memory_bytes: int | None = None
    pods: int = 110
    heartbeat_seconds: float = time_budget.HEARTBEAT_SECONDS
    resync_seconds: float = 10.0
    max_parallel: int = 8
    max_pulls: int = 4  # image pulls at once (apart from the container operations)
    # When to stop starting things, and when to stop the replicas, once cut off (F).
    budget: Budget = field(default_factory=Budget)
    # Another agent's record that does not change for this long: that agent is gone.
    alive_window: float = time_budget.NODE_STALE_SECONDS
    # ... and for a record that names another (or an unknown) engine: past its own stop.
    takeover_window: float = time_budget.NODE_LOST_AFTER_STOP_SECONDS
    identity_check_seconds: float = 5.0
    # Leftovers of another node on this engine go when its record is silent this long.
    leftovers_after: float = time_budget.NODE_LOST_AFTER_STOP_SECONDS
    # The placements watch counts as stalled when a revision of this node's placements
    # a judge told of has not come through it for this long (or, when no judge tells,
    # the agent's echo is this late): corral_node_agent.watch_proof.
    stale_watch_after: float = 5 * time_budget.HEARTBEAT_SECONDS
    # How the placements are followed once read (--placements-watch): "consumer", a
    # watch's consumer kept for as long as the watch runs, or "reads", the bucket read by
    # sequence when told of a write (no consumer kept on the server).
    placements_watch: str = PLACEMENTS_WATCHES[0]
    # Where the agent records the cluster this node belongs to; None: in memory only.
    state_dir: Path | None = None
    # Who writes this node's record: random per process unless given (--agent-id), so a
    # supervisor restarting its own agent is recognised, and any other agent is refused.
    agent_id: str = field(default_factory=lambda: secrets.token_hex(8))
    # Whether replicas join corral networks: on, off, or auto (on once the cluster has
    # networks). corral_node_agent.networks_mode, docs/networking.md.
    networks: NetworksMode = NetworksMode.AUTO
    # How long a replica going away waits for its drain record before its stop signal
    # anyway (--drain-timeout; docs/rollouts.md, "Graceful stops").
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS


class NodeAgent:
    def __init__(
        self,
        settings: AgentSettings,
        runtime: Runtime,
        *,
        placements: Bucket,
        nodes: Bucket,
        statuses: Bucket,
        cluster: Bucket,
        events: EventSink,
        health: dict[str, bool] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        started_at: float | None = None,
        heartbeats: HeartbeatLink | None = None,
        networks: Bucket | None = None,
        attachments: Bucket | None = None,
        claim_statuses: Bucket | None = None,
        drains: Bucket | None = None,
        leases: Bucket | None = None,
        pass_gate: PassGate | None = None,
        placement_shards: int = 1,
    ) -> None:
        """`placements`: the bucket of this node's shard of the placements, of a cluster
        of `placement_shards` shards (corral.natsio.sharded.node_placements_bucket); a
        store whose identity says another number is not acted on (Membership)."""
        self.settings = settings
        # Shared by agents that share a process's cores (a hollow cluster's nodes): a
        # few passes at once, in turn, so that a burst of work for every node queues
        # behind the gate instead of making the process's event loop late for all of
        # them (their heartbeats, acks and guards). None: an agent with a machine of its
        # own passes whenever it is asked to (_pass_turn).
        self.pass_gate = pass_gate
        self._gate_wait: anyio.CancelScope | None = None  # a pass waiting at the gate
        self.node = settings.node_name
        self.runtime = runtime
        self.clock = clock
        self.monotonic = monotonic
        self.events = events
        self.health = health if health is not None else {}
        self.agent_id = settings.agent_id
        self._placements_bucket = placements
        self.membership = Membership(
            self.node, cluster, LocalRecordFile(settings.state_dir), placement_shards
        )
        self.membership.on_change = self._membership_changed
        self.last_ack_file = LastAckFile(settings.state_dir)
        self._noted_ack: float | None = None
        self.leftovers = LeftoverSweeper(
            nodes,
            runtime,
            silent_for=settings.leftovers_after,
            look_every=settings.heartbeat_seconds,
            monotonic=monotonic,
        )
        # Replaced by each watch's own (_watch_placements), which shares templates with
        # the process's other mirrors: a hollow cluster's nodes hold one template per
        # Deployment revision among them (corral.contract.sharing).
        self.placements: Mirror[Placement] = Mirror(placements, Placement)
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
                mode=Mode.STARTING.value,
            ),
            clock,
            monotonic,
            settings.alive_window,
            settings.takeover_window,
            link=heartbeats,
        )
        self.record.on_displaced = self._displaced
        self.record.on_acks = self._told
        self.watch_proof = WatchProof()
        self._mode_events = ModeEventBudget()  # mode changes reported as Events
        self._placement_wakeups: Wakeups | None = None  # the latest follow's
        self.tracks: dict[str, ReplicaTrack] = {}
        # This node's volume attachments (watched once a replica has volumes) and the
        # claims' statuses (a ReadWriteOncePod claim's access mode): docs/volumes.md.
        self.volumes = VolumeBook(
            self.node, attachments, claim_statuses, on_change=self._volumes_changed
        )
        # This node's drain records: a replica going away is signalled after its own
        # (docs/rollouts.md, "Graceful stops"). Without the bucket: stopped at once.
        self.drains = DrainBook(self.node, drains, leases)
        self._stop_scopes: dict[str, anyio.CancelScope] = {}  # replica -> its stop's
        self.graceful_stops = 0  # graceful stops begun (tests count them)
        self._empty_dirs_swept_at: float | None = None  # None: not yet since the start
        self._sweeping = False
        self.executor = Executor(
            runtime,
            events,
            self.tracks,
            on_progress=self.poke,
            clock=clock,
            max_parallel=settings.max_parallel,
            max_pulls=settings.max_pulls,
            volumes=self.volumes,
        )
        self.executor.may_start = self._may_start
        # The template's probes of each running replica (docs/rollouts.md, "Probes").
        self.prober = Prober(
            runtime,
            on_change=self.poke,
            on_restart=self._probe_restart,
            monotonic=monotonic,
            wall=clock,
        )
        self.networks_choice = NetworksChoice(settings.networks, networks, self.node)
        self.executor.uses_networks = self.networks_choice
        # What the safety state machine is fed (see _observe).
        # The cut-off clock runs from here until the first acknowledged write (the
        # process's start, when given: time spent reaching NATS counts too).
        self.started_at = monotonic() if started_at is None else started_at
        self.placements_current = False
        self.displacement = Displacement.NONE
        self.mode = Mode.STARTING
        self.engine_ok = False
        self._engine_message = "starting"
        self.engine_id = ""
        self.capacity_known = False
        self.passes = 0  # passes completed (tests wait on it)
        self.guard_looks = 0  # decisions of the guard (tests count them)
        self.watches = 0  # placements watches started
        # Watches kept through an isolation and proven current again, by the acks or by
        # an echo.
        self.watches_kept = {"acks": 0, "echo": 0}
        self.removal_failures = 0
        self._fence_pending = True  # the first ACTIVE pass removes before it creates
        self._watch_scope: anyio.CancelScope | None = None
        self._watching = False
        self._watch_started = 0.0
        # Since when the running watch may have missed changes (cut off): until a judge's
        # ack proves it current again (_confirm_kept_watch). None: not in doubt.
        self._doubted_since: float | None = None
        # The last proof of being heard when the doubt began (monotonic): a silence past F
        # since then is read afresh, whatever proves the watch.
        self._heard_before_doubt = 0.0
        self._isolations = 0  # times cut off: a watch begun before one is not installed
        self.watch_resets = 0  # watches that went on from a new consumer (then ended)
        self._decided = anyio.Event()  # active and fenced, or held: run() reports started
        # Written beside this node's placements and watched coming back (kv.echo_key).
        owner = "agent-" + hashlib.sha256(self.agent_id.encode()).hexdigest()[:12]
        self.echo_key = echo_key(owner, prefix=f"{self.node}.")
        self._running = 0  # this agent's share of the replicas_running gauge
        self._in_flight: set[str] = set()
        self._settled: dict[str, int] = {}  # replica -> sequence number when its action ended
        self._sequence = 0
        self._wakeup: anyio.Event | None = None
        self._wake_at: float | None = None
        # Set by every change the guard must see at once, and by the guard's own timer (a
        # loop callback: an asyncio Event, whose set() is documented for that).
        self._guard_wakeup = asyncio.Event()
        self._task_group: TaskGroup | None = None

    # Triggers.

    def poke(self) -> None:
        """Ask for a reconcile pass soon (cheap; many pokes make one pass)."""
        if self._wakeup is not None:
            self._wakeup.set()

    def _on_engine_change(self, replica: str) -> None:
        if replica == NETWORK_APPEARED:
            self._network_appeared()
        elif self.volumes.watching:
            # A container went: a replica waiting for it to let a volume go tries again.
            self._retry_waiting(is_volume_in_use)
        self.poke()

    def _volumes_changed(self) -> None:
        """An attachment of this node changed: the replicas waiting on volumes try again
        now, not at their back-off's end."""
        self._retry_waiting(is_volume_wait)
        self.poke()

    def _retry_waiting(self, waits_for: Callable[[str], bool]) -> None:
        for name, track in list(self.tracks.items()):
            if track.phase == ReplicaState.CREATING and waits_for(track.message):
                self.tracks[name] = replace(track, not_before=0.0)

    def _network_appeared(self) -> None:
        """A replica waiting for a network tries again now, not at its back-off's end."""
        for name, track in list(self.tracks.items()):
            if track.phase == ReplicaState.CREATING and track.message.startswith(
                WAITING_FOR_NETWORK
            ):
                self.tracks[name] = replace(track, not_before=0.0)

    # Running.

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Raises NodeNameTaken when another live agent runs this node's name."""
        self._wakeup = anyio.Event()
        self.membership.load_local()
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                self.volumes.spawn = tg.start_soon
                self.drains.spawn = tg.start_soon
                # The guard and the passes run from the start: a restarted agent that
                # cannot reach NATS still stops its replicas at F (docs/safety.md).
                tg.start_soon(self._guard)
                tg.start_soon(self._reconcile_forever)
                await self._first_engine_look()
                tg.start_soon(self._watch_engine)
                tg.start_soon(self._follow_engine_events)
                check_identity = partial(self.membership.check, from_leader=True)
                await self._retrying("checking the cluster identity", check_identity)
                self._stop_if_shards_changed()
                try:
                    await self._retrying("reading the node record", self.record.claim)
                except NodeNameTaken as error:
                    await self._refused(error)
                    raise
                self.health["node_name"] = True
                await tg.start(self.record.heartbeat, self.settings.heartbeat_seconds)
                tg.start_soon(
                    partial(
                        keep_echoing,
                        self._placements_bucket,
                        self.echo_key,
                        interval=self._echo_interval(),
                        wall_clock=self.clock,
                        when=self._echoing,
                    )
                )
                tg.start_soon(self._check_identity_forever)
                await self._settled_at_start()
                task_status.started()
        finally:
            metrics.REPLICAS_RUNNING.dec(self._running)
            self._running = 0
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.record.release()
            await self.runtime.close()

    async def _settled_at_start(self) -> None:
        """Started means decided: active with its first fencing pass done and its
        ready record written, or held, handed over or retired (bounded: a store that
        does not answer leaves the agent starting, and it says so)."""
        with anyio.move_on_after(_WATCH_START_SECONDS):
            await self._decided.wait()
            if self.mode == Mode.ACTIVE:
                with anyio.fail_after(_WATCH_START_SECONDS):
                    await self.record.write()

    async def _retrying(self, doing: str, step: Callable[[], Awaitable[object]]) -> None:
        """Run a startup step until it succeeds, backing off: a NATS hiccup is no crash."""
        first, longest = _NATS_RETRY_SECONDS
        delays = Backoff(first=first, most=longest)
        while True:
            try:
                await step()
                return
            except NodeNameTaken:
                raise
            except Exception as error:  # TimeoutError, a dropped connection ...
                delay = delays.next()
                log.warning(
                    "%s for %s failed (%s); retrying in %gs", doing, self.node, error, delay
                )
                await anyio.sleep(delay)

    # The cluster this node belongs to.

    @property
    def identity(self) -> Identity:
        return self.membership.identity

    @property
    def cluster_id(self) -> str:
        return self.membership.cluster_id

    @property
    def adopted(self) -> frozenset[str]:
        return self.membership.adopted

    def _may_start(self) -> bool:
        """Right before a create or start: still Active, with current placements."""
        return self.mode == Mode.ACTIVE and self.placements_current

    def _membership_changed(self) -> None:
        if self.executor.cluster_id != self.membership.cluster_id:
            # Another store (adopted): revisions told of the old one say nothing of it.
            # Counted as told now, so the watch is not judged unproven at once.
            self.watch_proof = WatchProof(told_at=self.monotonic())
            if not self.placements_current:
                self._stop_watch()  # a watch kept through an isolation: read afresh
        self.executor.cluster_id = self.membership.cluster_id
        self._wake_guard()
        self.poke()

    async def _check_identity_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.identity_check_seconds)
            try:
                await self.membership.check()
            except Exception as error:  # timeouts: the cut-off clock speaks for them
                log.debug("identity check of %s failed: %s", self.node, error)
            self._stop_if_shards_changed()
            self._wake_guard()  # the identity may have changed: decide now

    def _stop_if_shards_changed(self) -> None:
        """The store keeps this node's placements in another bucket than the one this
        agent watches (its cluster's number of shards is not the one the agent was
        started for): stop, leaving the containers running; started again, it reads it."""
        if self.membership.shards_changed:
            raise PlacementShardsChanged(self.membership.shards_changed)

    # The guard: feeds the safety state machine and acts on its transitions.

    def _observe(self) -> Observation:
        return Observation(
            now=self.monotonic(),
            started_at=self.started_at,
            last_ack=self.record.last_acked,
            identity=self.identity,
            placements_current=self.placements_current,
            displacement=self.displacement,
        )

    def _wake_guard(self) -> None:
        """Something the safety state machine is fed changed: decide now."""
        self._guard_wakeup.set()

    async def _guard(self) -> None:
        budget = self.settings.budget
        interval = max(0.02, min(0.25, budget.isolated_after / 4))
        while True:
            self._guard_wakeup = asyncio.Event()
            self.guard_looks += 1
            acked = self.record.last_acked
            if acked is not None and acked != self._noted_ack:
                self._noted_ack = acked
                self.last_ack_file.save(acked)  # a restarted agent counts on from here
            mode = decide_mode(self._observe(), budget)
            if mode != self.mode:
                await self._enter(mode)
            if mode == Mode.SYNCING and not self._watching:
                self._watching = True
                assert self._task_group is not None
                if self._kept_watch() is not None:
                    self._task_group.start_soon(self._confirm_kept_watch)
                else:
                    self._task_group.start_soon(self._watch_placements)
            if mode == Mode.ACTIVE and self._watch_is_stale():
                log.warning(
                    "the placements watch of %s stopped delivering (a revision the judges "
                    "told of, or its echo, did not come): reading the placements afresh",
                    self.node,
                )
                self._stop_watch()
            # A timer sets the event when the sleep is over: no cancel scope to time out
            # (a scope's timeout is delivered as a cancellation, about every other
            # second per idle agent: a share of a hollow cluster's work).
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self._guard_sleep(mode, interval), self._guard_wakeup.set)
            try:
                await self._guard_wakeup.wait()
            finally:
                timer.cancel()

    def _guard_sleep(self, mode: Mode, interval: float) -> float:
        """How long the guard may sleep. While Active or Syncing (the steady state) it
        sleeps until the first moment the mode could change with time alone: no write
        acknowledged for `isolated_after` or F, the echo late (and, when the agent notes
        its acknowledged writes on disk, one heartbeat, to note the next); everything
        else it acts on wakes it (_wake_guard): the identity read, the watch current or
        broken, a takeover. In the other modes it looks every `interval`, for the
        acknowledged write that moves it on. So an idle agent decides about once per
        `isolated_after` instead of four times a second, and each time limit is met on
        time rather than up to one interval late."""
        if mode not in (Mode.ACTIVE, Mode.SYNCING):
            return interval
        now = self.monotonic()
        budget = self.settings.budget
        acked = self.record.last_acked
        since = acked if acked is not None else self.started_at
        deadlines = [since + budget.isolated_after, since + budget.stop_after]
        if mode == Mode.ACTIVE:
            deadlines.append(self._stale_watch_deadline())
        if self.last_ack_file.path is not None:
            deadlines.append(now + self.settings.heartbeat_seconds)
        # A little past the deadline: the state machine's limits are strict (">").
        return max(0.02, min(deadlines) - now + 0.01)

    # Proving the placements watch current (docs/safety.md, "Placements must be current").

    def _told(self, acks: list[HeartbeatAck], sent: float) -> None:
        """A beat's acks (the beat sent at `sent`): the newest revision of this node's
        placements they name is owed by the watch (watch_proof). Only a beat every judge
        answered, each naming a revision, can prove a kept watch (WatchProof.proves):
        a judge behind the others, or one that did not hear the beat, may not know the
        writes of another."""
        revision = max((ack.placements_revision for ack in acks), default=-1)
        complete = enough(acks) and all(ack.placements_revision >= 0 for ack in acks)
        if self.watch_proof.told(revision, self.monotonic(), sent if complete else None):
            self._wake_guard()  # a deadline earlier than the guard's sleep
        if revision > self.placements.delivered and self._placement_wakeups is not None:
            self._placement_wakeups.wake(revision)  # its republished headers were lost

    def _echo_interval(self) -> float:
        """How often the echo key is written while no judge tells the placements'
        revision: often enough that a current watch always brings one back well within
        `stale_watch_after` (2.5 echoes per window), and no more often than the
        heartbeat (every 2 s with the defaults)."""
        return max(self.settings.heartbeat_seconds, self.settings.stale_watch_after / 2.5)

    def _told_within(self) -> float:
        """No revision told for this long (two beats' acks): the agent echoes."""
        return 2 * self.settings.heartbeat_seconds

    def _echoing(self) -> bool:
        """No judge told this node's placements' revision lately (no acks, or only
        judges that do not say): its watch is proven by an echo key instead."""
        return not self.watch_proof.telling(self.monotonic(), self._told_within())

    def _stale_watch_deadline(self) -> float:
        """When the watch counts as stalled while the agent's writes still succeed
        (_watch_is_stale): `stale_watch_after` after a judge told a revision the watch has
        not delivered since; or, while no judge tells, after the echo last came back
        (counted from when echoing began: an echo of an earlier spell says nothing)."""
        limit = self.settings.stale_watch_after
        # The echo proves the watch from its start, or from the end of the last revision
        # told (later than now while judges tell), whichever is later.
        told_at = self.watch_proof.told_at
        echo_since = self._watch_started
        if told_at is not None:
            echo_since = max(echo_since, told_at + self._told_within())
        if self._echoing():
            seen = self.placements.echoes.get(self.echo_key)
            if seen is not None:
                echo_since = max(echo_since, seen.seen_at)
        deadlines = [echo_since + limit]
        owed = self.watch_proof.owed_since(self.placements.delivered)
        if owed is not None:
            deadlines.append(owed + limit)
        return min(deadlines)

    def _watch_is_stale(self) -> bool:
        """The watch stalled: a revision a judge told of has not come through it for
        `stale_watch_after`, or (no judge tells) its own echo key, written beside its
        placements, did not come back in time."""
        return self.monotonic() > self._stale_watch_deadline()

    async def _enter(self, mode: Mode) -> None:
        before, self.mode = self.mode, mode
        if mode != Mode.ACTIVE:
            self.prober.stop()  # probes kill only while Active (verdicts are kept)
        if permissions(mode).remove_all:
            self._fence_stops()
            if self._gate_wait is not None:
                self._gate_wait.cancel()  # its removals go now (_pass_turn)
        elif mode == Mode.ACTIVE:
            self.drains.resume()
        if needs_new_watch(mode):
            self._stop_watch()
        elif doubts_placements(mode):
            # Cut off: the watch runs on, but may miss changes from now until proven by
            # an ack to a beat sent after this (the latest isolation, never an earlier one).
            self.placements_current = False
            self._doubted_since = self.monotonic()
            acked = self.record.last_acked
            self._heard_before_doubt = acked if acked is not None else self.started_at
        if mode in (Mode.ISOLATED, Mode.STOPPING):
            self._isolations += 1
        metrics.MODE_ENTRIES.labels(mode=mode.value).inc()
        message = self._mode_message(mode)
        level = logging.INFO if mode in (Mode.ACTIVE, Mode.SYNCING) else logging.WARNING
        log.log(
            level, "node %s: %s -> %s%s", self.node, before, mode, f": {message}" * bool(message)
        )
        if mode in (Mode.HELD, Mode.HANDED_OVER, Mode.RETIRED):
            self._decided.set()
        self.record.update(mode=mode.value)
        self._report_readiness()
        if mode not in (Mode.ACTIVE, Mode.SYNCING, Mode.STARTING) or before in (
            Mode.ISOLATED,
            Mode.STOPPING,
            Mode.HELD,
        ):
            # The modes an agent flaps between are budgeted; one that asks for action
            # (Stopping, Held, handed over, retired: rare) is always reported.
            flap = mode in (Mode.ISOLATED, Mode.SYNCING, Mode.ACTIVE)
            held = self._mode_events.take(self.monotonic(), spend_only=not flap)
            if held is None:
                metrics.MODE_EVENTS_HELD.inc()
            else:
                text = message or f"{before} -> {mode}"
                if held:
                    text += f" ({held} earlier mode changes not reported: see the agent's log)"
                await self.events.emit(
                    "node",
                    self.node,
                    mode.value,
                    text,
                    warning=mode not in (Mode.ACTIVE, Mode.SYNCING),
                )
        self.poke()

    def _mode_message(self, mode: Mode) -> str:
        budget = self.settings.budget
        match mode:
            case Mode.HELD:
                return self.membership.problem
            case Mode.ISOLATED:
                return (
                    f"no heartbeat heard by the schedulers (nor record write acknowledged "
                    f"by NATS) for over {budget.isolated_after:g}s: "
                    f"starting nothing; replicas stop at {budget.stop_after:g}s"
                )
            case Mode.STOPPING:
                return (
                    f"cut off from NATS for over {budget.stop_after:g}s: removing this "
                    "node's replicas (the scheduler has placed them elsewhere)"
                )
            case Mode.HANDED_OVER:
                return "another node agent on this engine runs this node now: touching nothing"
            case Mode.RETIRED:
                return (
                    "another node agent on another engine runs this node now: removing "
                    "this engine's copies of its replicas"
                )
        return ""

    def _report_readiness(self) -> None:
        """Ready (the scheduler places replicas here): the engine answers and the agent
        acts on current placements."""
        if not self.engine_ok:
            self.record.update(ready=False, message=self._engine_message)
            return
        message = self._mode_message(self.mode)
        if self.mode in (Mode.STARTING, Mode.SYNCING):
            message = "reading its placements"
        self.record.update(ready=self.mode == Mode.ACTIVE, message=message)

    def _displaced(self, takeover: Takeover) -> None:
        log.error(
            "another node agent (agent %s, %s engine) now writes the record of node %s: "
            "this agent (agent %s) stops acting on its placements",
            takeover.agent_id,
            "the same" if takeover.same_engine else "another",
            self.node,
            self.agent_id,
        )
        self.displacement = (
            Displacement.SAME_ENGINE if takeover.same_engine else Displacement.OTHER_ENGINE
        )
        self.placements_current = False
        self.health["node_name"] = False
        self._wake_guard()
        self.poke()

    async def _refused(self, error: NodeNameTaken) -> None:
        """Refused at start: another live agent runs this name. On another engine, this
        engine's containers of the node are copies of what it runs: remove them."""
        self.health["node_name"] = False
        if error.same_engine or not self.cluster_id or self.identity != Identity.RECOGNISED:
            return
        try:
            own = self._ownership(await self.runtime.list_containers(), {}).own
            for container in own:
                await self.runtime.remove_container(container.id)
            if own:
                log.warning(
                    "node %s runs on another engine: removed this engine's %d copies",
                    self.node,
                    len(own),
                )
        except RuntimeFailure as failure:
            log.error("removing this engine's copies of node %s failed: %s", self.node, failure)

    # The placements watch: kept through an isolation when the acks prove it current,
    # read afresh otherwise.

    def _stop_watch(self) -> None:
        self.placements_current = False
        self._doubted_since = None
        if self._watch_scope is not None:
            self._watch_scope.cancel()
            self._watch_scope = None

    async def _watch_placements(self) -> None:
        """Check the identity, watch, read the statuses, check the identity again; only
        then are the placements current (a store swapped meanwhile is never acted on)."""
        assert self._task_group is not None
        scope: anyio.CancelScope | None = None  # the new watch's, once started
        try:
            # From the leader, as every identity read the agent then acts on: a replica
            # cut off from it could still say a wiped store's old id.
            await self.membership.check(from_leader=True)
            if self.identity != Identity.RECOGNISED:
                return
            mirror = Mirror(
                self._placements_bucket,
                Placement,
                prefix=names.placement_prefix(self.node),
                on_change=lambda _k: self.poke(),
                clock=self.monotonic,
                share=TEMPLATES.share,
            )
            started = self.monotonic()
            proof = self.watch_proof
            told = proof.mark()  # revisions told until now: in the replay
            isolations = self._isolations
            with anyio.fail_after(_WATCH_START_SECONDS):
                scope = await self._task_group.start(self._follow, mirror)
                await self.statuses.load()
            await self.membership.check(from_leader=True)
            if (
                self.identity != Identity.RECOGNISED
                or self.mode != Mode.SYNCING
                or self._isolations != isolations  # cut off meanwhile: its snapshot is old
                or not mirror.current  # it ended already
            ):
                scope.cancel()
                return
            self._stop_watch()
            self._watch_scope = scope
            self.placements = mirror
            self._seed_tracks()
            self.watches += 1
            metrics.PLACEMENT_WATCHES.labels(how="new").inc()
            self._watch_started = started
            proof.restarted(told)
            self._fence_pending = True
            self.placements_current = True
            self.poke()
        except Exception as error:
            if scope is not None and scope is not self._watch_scope:
                scope.cancel()  # started, never the agent's (the statuses' read failed)
            log.info("watching the placements of %s failed: %s", self.node, error)
            await anyio.sleep(_ENGINE_RETRY_SECONDS)
        finally:
            self._watching = False
            self._wake_guard()  # Syncing goes on to Active, or starts another watch

    async def _follow(
        self,
        mirror: Mirror[Placement],
        *,
        task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Feed `mirror` from one watch. A watch that fails or ends is never resumed
        here: the placements are no longer current, and the guard starts a new one."""
        started = False
        wakeups = Wakeups()
        with anyio.CancelScope() as scope:
            try:
                # Only this node's placements, never the whole bucket: a subject-filtered
                # watch (one consumer whose filter is the node's key prefix). With
                # --placements-watch reads, that consumer only for the snapshot, then
                # (Bucket.follow) every change read in the bucket's order from after the
                # last one read, when the bucket tells of a write of the node's keys or an
                # ack names a revision not read yet (_told).
                prefix = names.placement_prefix(self.node)
                if self.settings.placements_watch == "consumer":
                    feed = self._placements_bucket.watch(prefix)
                else:
                    self._placement_wakeups = wakeups
                    # Its snapshot is read without a consumer only from the stream's leader
                    # (one replica) and a store not older than what this agent has read or
                    # been told of its keys (a store that went back is not acted on:
                    # Bucket.snapshot).
                    floor = max(self.watch_proof.mark(), self.placements.delivered)
                    feed = self._placements_bucket.follow(prefix, wakeups, floor=floor)
                async for entry in feed:
                    if entry is None:
                        if not started:
                            started = True
                            mirror.current = True
                            task_status.started(scope)
                        else:
                            # The watch went on from a new consumer, from after the last
                            # entry it delivered: delete markers purged in between were
                            # skipped, and no proof (acks, echo) would tell. It ends here;
                            # the placements are read afresh (Bucket.watch).
                            self.watch_resets += 1
                            log.info(
                                "the placements watch of %s went on from a new consumer: "
                                "reading the placements afresh",
                                self.node,
                            )
                            break
                        continue
                    mirror.apply(entry, from_watch=True)
            except Exception as error:
                if not started:
                    raise
                log.warning("placements watch of %s broke: %s", self.node, error)
            if not started:
                raise RuntimeError("the placements watch ended before its snapshot")
            mirror.current = False
            if mirror is self.placements:
                self.placements_current = False
                self._wake_guard()

    def _kept_watch(self) -> float | None:
        """Since when the running watch is in doubt, when it runs on through an
        isolation (None: no such watch; a new one is needed)."""
        if self._watch_scope is None or not self.placements.current:
            return None
        return self._doubted_since

    async def _confirm_kept_watch(self) -> None:
        """Back from an isolation with the watch still running: the placements are
        current again once the store is still this node's and the watch is proven to
        have missed nothing since the isolation began, by either of:

        - a beat sent after the isolation began that every judge answered, each naming
          a revision of this node's placements, the newest of which the watch has
          delivered (WatchProof.proves): free, the acks come anyway;
        - no such beat within a heartbeat (a judge's own view catching up after the
          same outage says -1): the agent writes its echo key once and the watch
          delivers it back; the watch is in order, so it delivered every change of
          this node's keys written before it, as a new watch's snapshot would.

        Read afresh instead when the agent was silent past F after all (an ack that
        came just after it), when the echo's revision is not past what the watch had
        delivered (the store went back), on any failure, or when nothing proves it
        within `stale_watch_after`; and a watch that went on from a new consumer has
        ended already (_follow). Either proof costs no consumer: when an outage leaves
        every agent cut off at once, a new watch (and statuses read) per agent was
        thousands of JetStream requests."""
        echo_revision: int | None = None
        echo_written = False
        try:
            since = self._kept_watch()
            if since is None:
                return
            await self.membership.check(from_leader=True)
            began = self.monotonic()
            while self.mode == Mode.SYNCING and self._kept_watch() == since:
                afresh = ""
                delivered = self.placements.delivered
                by_acks = self.watch_proof.proves(since, delivered)
                by_echo = echo_revision is not None and delivered >= echo_revision
                if self.identity != Identity.RECOGNISED:
                    afresh = "the store is not this node's"
                elif (self.record.last_acked or 0.0) - self._heard_before_doubt > (
                    self.settings.budget.stop_after
                ):
                    afresh = "it was cut off past F"
                elif by_acks or by_echo:
                    self._doubted_since = None
                    how = "acks" if by_acks else "echo"
                    self.watches_kept[how] += 1
                    metrics.PLACEMENT_WATCHES.labels(how=f"kept_by_{how}").inc()
                    self._fence_pending = True
                    self.placements_current = True
                    log.info("the placements watch of %s is current again (%s)", self.node, how)
                    self.poke()
                    return
                elif self.monotonic() > began + self.settings.stale_watch_after:
                    afresh = "nothing proved it current"
                if afresh:
                    log.info(
                        "reading the placements of %s afresh after the isolation: %s",
                        self.node,
                        afresh,
                    )
                    self._stop_watch()
                    return
                if not echo_written and self.monotonic() > began + self.settings.heartbeat_seconds:
                    echo_written = True
                    with anyio.fail_after(self.settings.stale_watch_after):
                        echo_revision = await self._placements_bucket.put(
                            self.echo_key, encode(self.clock())
                        )
                    if echo_revision <= delivered:
                        echo_revision = None
                        log.info(
                            "reading the placements of %s afresh after the isolation: the "
                            "store is behind what its watch delivered",
                            self.node,
                        )
                        self._stop_watch()
                        return
                    continue
                await anyio.sleep(self.settings.heartbeat_seconds / 10)
        except Exception as error:  # the identity read or the echo failed
            log.info(
                "proving the placements watch of %s current failed (%s): reading afresh",
                self.node,
                error,
            )
            self._stop_watch()  # the new watch's own retries take it from here
        finally:
            self._watching = False
            self._wake_guard()  # Syncing goes on to Active, or starts a new watch
            if echo_written and not self._echoing():
                # Written once for the proof; the echo loop (kv.keep_echoing) does not
                # know it. On its revision when known: an echo written since stays.
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    try:
                        await self._placements_bucket.delete(self.echo_key, echo_revision)
                    except Exception as error:
                        log.debug("echo of %s not deleted: %s", self.node, error)

    def _seed_tracks(self) -> None:
        """Carry restart counts over from the statuses an earlier run wrote."""
        for replica in self.statuses.replicas():
            status = self.statuses.get(replica)
            if status is not None and replica not in self.tracks:
                self.tracks[replica] = ReplicaTrack(
                    restarts=status.restarts,
                    restart_times=tuple(status.restart_times),
                    exit_code=status.exit_code,
                    container_id=status.container_id,
                )

    # The engine.

    async def _first_engine_look(self) -> None:
        """The engine's id and capacity before the node is claimed (bounded: an engine
        that does not answer is down, and the node starts without them)."""
        with anyio.move_on_after(max(2.0, self.settings.heartbeat_seconds * 2)):
            await self._check_engine()

    async def _watch_engine(self) -> None:
        """Engine health beside the heartbeat, never in its way."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)  # as NodeRecord.heartbeat
            await self._check_engine()

    async def _check_engine(self) -> None:
        try:
            await self.runtime.ping()
            if not self.capacity_known:
                info = await self.runtime.info()
                self.engine_id = info.engine_id
                self.record.update(
                    capacity=NodeCapacity(
                        cpu_millis=self.settings.cpu_millis or info.cpu_millis,
                        memory_bytes=self.settings.memory_bytes or info.memory_bytes,
                        pods=self.settings.pods,
                    ),
                    engine_id=info.engine_id,
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
        self.prober.stop()  # nothing to probe through, or kill with: verdicts are kept
        self.health["engine"] = False
        self._engine_message = f"container engine unreachable: {message}"
        self._report_readiness()

    def _engine_up(self) -> None:
        self.engine_ok = True
        self.health["engine"] = True
        self._engine_message = ""
        self._report_readiness()

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

    # Passes.

    async def _reconcile_forever(self) -> None:
        while True:
            delay = self.settings.resync_seconds
            if not self.engine_ok:
                delay = min(delay, _ENGINE_RETRY_SECONDS)
            if self._wake_at is not None:
                delay = max(0.0, min(delay, self._wake_at - self.clock()))
            assert self._wakeup is not None
            # A timer wakes the resync, as it does the guard: a scope's timeout would be
            # delivered as a cancellation every resync of every idle agent.
            wakeup = self._wakeup
            timer = asyncio.get_running_loop().call_later(delay, wakeup.set)
            try:
                await wakeup.wait()
            finally:
                timer.cancel()
            async with self._pass_turn():
                # Reset once this pass's turn has come: what asked for a pass while it
                # waited is seen by this one, not by one more after it.
                self._wakeup = anyio.Event()
                try:
                    await self.reconcile_once()
                except Exception:  # never die of one bad pass: the next one retries
                    log.exception("reconcile pass of %s failed", self.node)
                    failed = True
                else:
                    failed = False
            if failed:
                await anyio.sleep(_ENGINE_RETRY_SECONDS)

    @contextlib.asynccontextmanager
    async def _pass_turn(self) -> AsyncIterator[None]:
        """This pass's turn at the shared pass gate. A pass that removes every replica
        (Stopping, Retired: permissions(mode).remove_all) never waits for one: the time
        budget counts on those removals (Stopping's at F, docs/safety.md), and a queue
        of other nodes' passes must not delay them. One that waits when its agent
        enters such a mode stops waiting and goes at once."""
        gate = self.pass_gate
        while gate is not None and not permissions(self.mode).remove_all:
            with anyio.CancelScope() as waiting:
                self._gate_wait = waiting
                try:
                    await gate.__aenter__()
                finally:
                    self._gate_wait = None
            if waiting.cancelled_caught:
                # It entered a removing mode meanwhile: it goes now, unless the mode
                # has moved on before this task ran again (then it waits again).
                continue
            try:
                yield
            finally:
                await gate.__aexit__()
            return
        yield

    def _busy(self, listed_at: int) -> set[str]:
        for replica in [r for r, at in self._settled.items() if at <= listed_at]:
            del self._settled[replica]
        return self._in_flight | set(self._settled)

    def _ownership(
        self, containers: list[ObservedContainer], placements: dict[str, Placement]
    ) -> Ownership:
        return classify(
            containers,
            node=self.node,
            cluster_id=self.cluster_id,
            adopted=self.adopted,
            placements=placements,
            claimed=self.membership.claimed,
        )

    async def reconcile_once(self) -> None:
        with metrics.RECONCILE_SECONDS.time():
            await self._reconcile()
            self.passes += 1
        if self.mode == Mode.ACTIVE and not self._fence_pending:
            self._decided.set()

    async def _reconcile(self) -> None:
        mode = self.mode
        allowed = permissions(mode)
        self._sequence += 1
        listed_at = self._sequence
        try:
            containers = await self.runtime.list_containers()
        except RuntimeFailure as error:
            self._engine_down(str(error))
            return
        self._engine_up()
        now = self.clock()
        mirror = self.placements
        placements = (
            {p.replica: p for p in mirror.values() if p.node == self.node} if allowed.create else {}
        )
        owned = self._ownership(containers, placements)
        self._report_containers(owned)
        if self.adopted and allowed.create:
            adopted_own = {c.id for c in owned.own if c.cluster in self.adopted}
            self.membership.note_claimed(adopted_own, {c.id for c in containers})
        if allowed.remove_all:
            plan = remove_all(
                owned.own, self.tracks, self._busy(listed_at), f"node {mode.lower()}", now
            )
            self._keep_tracks(plan, set())
            self.prober.stop()
            for action in plan.actions:
                self._dispatch(action)
            self._count_running({})
            return
        if not allowed.create:
            self.prober.stop()
            return
        if owned.other_nodes:
            await self.leftovers.sweep(owned.other_nodes, self.engine_id)
        # A placement that does not decode is neither placed nor deleted: its
        # replica is left alone (never removed, restarted, or given a status).
        unreadable = {names.split_placement_key(key)[2] for key in mirror.unreadable}
        held = self._busy(listed_at) | unreadable
        plan = plan_actions(placements, owned.own, self.tracks, held, now)
        self._keep_tracks(plan, unreadable)
        actions: list[Action] = plan.actions
        if self._fence_pending:
            # Fencing: what is no longer placed here goes before anything is created.
            # A removal that fails is retried on its back-off and reported; it never
            # stops the node (the diff never replaces a replica whose old container
            # may still run).
            # Graceful stops run on their own tasks (_stop_gracefully), never awaited.
            removals = [a for a in actions if isinstance(a, RemoveContainers) and not a.graceful]
            async with anyio.create_task_group() as tg:
                for removal in removals:
                    tg.start_soon(self._execute_now, removal)
            actions = [a for a in actions if a not in removals]
            self._fence_pending = False
        for action in actions:
            self._dispatch(action)
        self._sweep_empty_dirs_when_due(set(placements) | held, now)
        assert self._task_group is not None
        self.prober.sync(placements, plan.kept, self._task_group)
        self._count_running(plan.kept)
        with_containers = set(group_by_replica(owned.own))
        await self._write_statuses(placements, plan.kept, with_containers, held, now)

    def _sweep_empty_dirs_when_due(self, keep: set[str], now: float) -> None:
        """Leftover emptyDir volumes of this node that no container uses (their removal
        failed, or an agent stopped before it): looked for on the first pass that acts,
        then each resync while this agent has replicas with volumes. Those of replicas
        still placed (or busy) are kept: a container made again mounts them again."""
        if self._sweeping or not self.cluster_id:
            return
        if self._empty_dirs_swept_at is not None:
            if not (self.volumes.used or self.executor.volume_leftovers):
                return
            if now < self._empty_dirs_swept_at + self.settings.resync_seconds:
                return
        self._empty_dirs_swept_at = now
        self._sweeping = True
        assert self._task_group is not None
        self._task_group.start_soon(self._sweep_empty_dirs, frozenset(keep), self.cluster_id)

    async def _sweep_empty_dirs(self, keep: frozenset[str], cluster_id: str) -> None:
        self.executor.volume_leftovers = False
        labels = {
            names.LABEL_MANAGED: "true",
            names.LABEL_CLUSTER: cluster_id,
            names.LABEL_NODE: self.node,
        }
        try:
            for volume in await self.runtime.unused_volumes(labels):
                replica = empty_dir_replica(volume, cluster_id)
                if replica is not None and replica not in keep:
                    await self.runtime.remove_volume(volume)
                    log.info("removed the leftover emptyDir volume %s", volume)
        except RuntimeFailure as error:
            self.executor.volume_leftovers = True
            log.info("sweeping the emptyDir volumes of %s failed: %s", self.node, error)
        finally:
            self._sweeping = False

    def _keep_tracks(self, plan: Plan, unreadable: set[str]) -> None:
        kept_tracks = {r: t for r, t in self.tracks.items() if r in unreadable}
        self.tracks.clear()
        self.tracks.update(kept_tracks)
        self.tracks.update(plan.tracks)
        self._wake_at = plan.wake_at
        self.removal_failures = sum(1 for track in plan.tracks.values() if track.removal_failures)
        self.record.update(failing_removals=self.removal_failures)

    def _count_running(self, kept: dict[str, ObservedContainer | None]) -> None:
        running = sum(
            1
            for container in kept.values()
            if container and container.state == ContainerState.RUNNING
        )
        metrics.REPLICAS_RUNNING.inc(running - self._running)
        self._running = running

    def _report_containers(self, owned: Ownership) -> None:
        orphans = [
            OrphanReplica(
                deployment=c.deployment,
                namespace=c.namespace,
                replica=c.replica,
                template_hash=c.template_hash,
                running=c.state == ContainerState.RUNNING,
            )
            for c in sorted(owned.orphans, key=lambda c: c.replica)[:_MAX_ORPHANS_REPORTED]
        ]
        self.record.update(foreign_containers=len(owned.foreign), orphans=orphans)

    def _dispatch(self, action: Action) -> None:
        assert self._task_group is not None
        self._in_flight.add(action.replica)
        if isinstance(action, RemoveContainers) and action.graceful:
            self._task_group.start_soon(self._stop_gracefully, action)
        else:
            self._task_group.start_soon(self._execute, action)

    # Graceful stops (docs/rollouts.md, "Graceful stops").

    async def _stop_gracefully(self, action: RemoveContainers) -> None:
        """A replica going away, its containers running: Terminating (out of every
        endpoint), its drain record (or the drain timeout), its stop signal, SIGKILL
        after its grace, then the removal. On its own task, never in the executor's
        create slots; the replica is busy meanwhile, so no pass stops it twice. A
        fenced agent waits for no drain and gives at most FENCED_STOP_GRACE_SECONDS."""
        replica = action.replica
        self.graceful_stops += 1
        try:
            if not permissions(self.mode).remove_all:
                await self._drain(action)
            with anyio.CancelScope() as scope:
                self._stop_scopes[replica] = scope
                async with anyio.create_task_group() as tg:
                    for container in action.graceful:
                        tg.start_soon(self._stop_container, container)
            if scope.cancelled_caught:
                log.warning("%s on %s: fenced while stopping; killing it", replica, self.node)
            await self.executor.execute(action)  # the removal, as any other
        finally:
            self._stop_scopes.pop(replica, None)
            self._settled_now(replica)

    async def _drain(self, action: RemoveContainers) -> None:
        """Write Terminating, then wait for the drain record, bounded by the drain
        timeout (counted from the Terminating status of the same container that an
        earlier run of the agent wrote: a restarted agent resumes the wait)."""
        first = action.graceful[0]
        key = names.placement_key(self.node, first.namespace, action.replica)
        previous = self.statuses.get(action.replica)
        message = f"stopping: {action.reason}"
        if previous is not None:
            status = msgspec.structs.replace(
                previous, state=ReplicaState.TERMINATING, message=message, container_id=first.id
            )
        else:
            status = ReplicaStatus(
                replica=action.replica,
                deployment=first.deployment,
                node=self.node,
                namespace=first.namespace,
                state=ReplicaState.TERMINATING,
                template_hash=first.template_hash,
                container_id=first.id,
                started_at=first.started_at,
                message=message,
            )
        since = self.clock()
        if (
            previous is not None
            and previous.state == ReplicaState.TERMINATING
            and previous.container_id == first.id
        ):
            since = min(since, previous.updated_at)
        try:
            with anyio.move_on_after(time_budget.STOP_SECONDS):
                await self.statuses.write(status)
        except Exception:  # NATS trouble: no drain comes either; the timeout stops it
            log.warning("writing Terminating for %s failed", action.replica, exc_info=True)
        timeout = since + self.settings.drain_timeout - self.clock()
        if await self.drains.wait(key, timeout) or permissions(self.mode).remove_all:
            return
        log.warning("%s on %s: no drain record within the drain timeout", action.replica, self.node)
        try:
            await self.events.emit(
                "deployment",
                action.deployment,
                "DrainTimeout",
                f"{action.replica} on {self.node}: no drain record within "
                f"{self.settings.drain_timeout:g}s; stopping it anyway",
                warning=True,
                namespace=first.namespace,
            )
        except Exception:
            log.warning("reporting the drain timeout of %s failed", action.replica)

    def _grace(self, container: ObservedContainer) -> float:
        grace = float(
            container.stop_timeout
            if container.stop_timeout is not None
            else ENGINE_DEFAULT_GRACE_SECONDS
        )
        if permissions(self.mode).remove_all:  # fenced: the removal ends within STOP
            grace = min(grace, time_budget.FENCED_STOP_GRACE_SECONDS)
        return grace

    async def _stop_container(self, container: ObservedContainer) -> None:
        try:
            await self.runtime.stop_container(container.id, self._grace(container))
        except RuntimeFailure as error:  # the removal (a kill) follows anyway
            log.warning("stopping %s failed: %s", container.replica, error)
        except Exception:  # a bug or a surprise: never the agent's end, the removal follows
            log.exception("stopping %s failed", container.replica)

    def _fence_stops(self) -> None:
        """Fenced: stops waiting for a drain go on now, and those already signalled
        with a longer grace are killed now (the removal)."""
        self.drains.cut_short()
        for scope in self._stop_scopes.values():
            scope.cancel()

    async def _execute(self, action: Action) -> None:
        try:
            await self.executor.execute(action)
        finally:
            self._settled_now(action.replica)

    async def _execute_now(self, action: Action) -> None:
        self._in_flight.add(action.replica)
        try:
            await self.executor.execute(action)
        finally:
            self._settled_now(action.replica)

    def _settled_now(self, replica: str) -> None:
        self._in_flight.discard(replica)
        self._sequence += 1
        self._settled[replica] = self._sequence
        self.poke()

    async def _write_statuses(
        self,
        placements: dict[str, Placement],
        kept: dict[str, ObservedContainer | None],
        with_containers: set[str],
        busy: set[str],
        now: float,
    ) -> None:
        """Write the statuses that changed (together, in one round trip); delete those
        of replicas gone for good. Bounded, and only while Active (the deletes are cut
        short when the agent leaves it): a pass stuck on writes to a NATS that went away
        must never delay the next decision (docs/safety.md)."""
        try:
            with anyio.move_on_after(time_budget.STOP_SECONDS):
                if self.mode != Mode.ACTIVE:
                    return
                statuses = [
                    replica_status(
                        placement,
                        kept.get(replica),
                        self.tracks.get(replica, ReplicaTrack()),
                        now,
                        probes=self.prober.view(replica, kept.get(replica)),
                        last_probe_failure=self.prober.last_failure.get(replica, ""),
                        previous=self.statuses.get(replica),
                    )
                    for replica, placement in placements.items()
                ]
                # Together: one round trip for the pass's changes (StatusBook.write_all).
                await self.statuses.write_all(statuses, go_on=lambda: self.mode == Mode.ACTIVE)
                for replica in self.statuses.replicas():
                    if replica not in placements and replica not in with_containers:
                        if replica not in busy and self.mode == Mode.ACTIVE:
                            await self.statuses.delete(replica)
        except Exception:  # NATS trouble: the next pass writes what is still due
            log.warning("writing statuses of %s failed", self.node, exc_info=True)

    async def _probe_restart(
        self, placement: Placement, container: ObservedContainer, why: str
    ) -> bool:
        """A liveness (or startup) probe failed its threshold: kill the container, and
        the next passes restart it through the restart path, on its back-off. Only
        while Active with the engine up; False when not killed (the runner probes on
        and retries at the next threshold)."""
        if self.mode != Mode.ACTIVE or not self.engine_ok:
            log.info(
                "%s on %s: %s; not killed (node %s)",
                placement.replica,
                self.node,
                why,
                self.mode if self.engine_ok else "engine down",
            )
            return False
        log.info("%s on %s: %s; restarting it", placement.replica, self.node, why)
        try:
            await self.runtime.kill_container(container.id)
        except RuntimeFailure as error:
            log.warning("killing %s failed: %s", placement.replica, error)
            return False
        try:
            await self.events.emit(
                "deployment",
                placement.deployment,
                "Unhealthy",
                f"{placement.replica} on {self.node}: {why}",
                warning=True,
                namespace=placement.namespace,
            )
        except Exception:
            log.warning("reporting the probe failure of %s failed", placement.replica)
        self.poke()
        return True

    # Operator decisions (corral node adopt|reset).

    async def decide(self, verb: str, raw: bytes) -> Reply:
        """Adopt or reset the containers of another cluster on this node; never raises."""
        reply = await self.membership.decide(verb, raw, self._remove_cluster)
        if reply.ok:
            await self.events.emit(
                "node", self.node, verb.capitalize(), reply.message, warning=True
            )
            self.poke()
        return reply

    async def _remove_cluster(self, cluster_id: str) -> tuple[int, list[str]]:
        removed, failures = 0, []
        try:
            containers = await self.runtime.list_containers()
        except RuntimeFailure as error:
            return 0, [str(error)]
        for container in containers:
            if (
                container.managed
                and container.cluster == cluster_id
                and container.node == self.node
            ):
                try:
                    await self.runtime.remove_container(container.id)
                    removed += 1
                except RuntimeFailure as error:
                    failures.append(f"{container.id[:12]}: {error}")
        return removed, failures
