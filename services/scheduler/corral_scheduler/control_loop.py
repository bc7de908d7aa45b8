"""The scheduler's control loop: mirrors of the cluster state in KV, and a controller
(corral.natsio.controller) that decides ONE Deployment per reconcile, for the keys a
change affects (docs/architecture.md, "The controller runtime"):

- a Deployment change enqueues its key; a placement or replica-status change its
  Deployment's; a status change of a Deployment that is gone, that key (to forget it);
- a Network record appearing (or going) enqueues the Deployments whose template names
  it (`deployments_by_network`): one waiting for it is placed at once;
- a claim's record or status changing enqueues the Deployments whose template names it
  (`deployments_by_claim`); the nodes where a claim is used changing (`claim_users`, kept
  per placement change) enqueues them too; a node's volume manager or the room taken on
  it changing (NodeVolumes, VolumeStatus) enqueues the pending Deployments with claims
  (docs/volumes.md, "Replicas with volumes");
- a node's record changing shape (joined, left, capacity, readiness, orphans) or the
  node judged lost / back / schedulable enqueues the Deployments with placements on it
  (`deployments_by_node`, an incremental Index) and the owners of its orphans; a node
  becoming schedulable, or a placement on one going (capacity freed), enqueues the
  Deployments with pending replicas;
- every RESYNC_SECONDS every key is enqueued again (a safety net: level-triggered).

What a decision needs of the whole cluster is kept per change from the placements
feed, never rebuilt: usage per node (cpu, memory, pods), the replica names taken, the
placements of each Deployment (`placements_by_deployment`). The deciding step stays
pure (decide.schedule_deployment); one worker decides and commits key after key, so
every decision sees the room the previous one took.

Liveness is judged incrementally. Every node judged notes the moment its judgement
next changes with time alone (its silence passing R or R', its engine down for E:
Snapshot.next_change) in a heap; a pass judges only the nodes whose moment has come,
and the loop wakes just after the earliest one (`next_wake`), so a node is judged lost
when its silence passes R, not up to a tick later. A sign of life only moves a node's
moment later, so its entry comes early and the node is judged again then; a record
change, or a node heard after a silence, judges it at once. What changes every node's
judgement at once (the view going fresh or stale, a release) makes the next pass judge
every node, as does every FULL_JUDGEMENT_SECONDS (a safety net). A pass enqueues the
Deployments of the nodes whose state changed; the housekeeping runs at most once per
tick (TICK_SECONDS). With 5,001 nodes the pass of every node each tick was on the
stack in 16 % of the scheduler's samples as the nodes dropped out (bench/README.md,
"Judging liveness incrementally").
Liveness is judged only on a fresh view. The loop writes an echo key (corral.natsio.kv
echo_key) every second into every bucket a judgement depends on: corral_nodes
(who is alive), corral_placements or each of its shards (what runs where) and
corral_leases (the nodes an operator released). Each must come back through that
bucket's own watch: while any is late or its watch is broken, the view is stale and
no node is judged lost, since a stalled nodes watch would otherwise make every node
look silent.

Nodes prove themselves alive by heartbeats on core NATS (corral_scheduler.heartbeats,
docs/time-budget.md): a node is heard when a heartbeat of it arrives or its record
changes (an agent not acknowledged by every judge writes its record instead). The
heartbeat feed has its own echo and gap checks, and is part of the view: while it is
stale, no node is judged lost either.

The loop also forgets what no longer exists: the liveness clocks of nodes that have
neither record nor placements, metric series of deleted Deployments, finished
releases, and echo keys whose owner died (no new revision for ECHO_GC_SECONDS on
this scheduler's clock; deleted compare-and-set on the revision seen, so an owner
that wrote meanwhile keeps its key).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import heapq
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Final

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.client import Client as NATS

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.network_specs import Network
from corral.contract.sharing import TEMPLATES, intern_replica_names
from corral.contract.specs import Deployment, claim_names
from corral.contract.state import DeploymentStatus, Node, Placement
from corral.contract.time_budget import ECHO_LATE_SECONDS, NODE_LOST_SECONDS
from corral.contract.views import SchedulingStatus
from corral.contract.volume_specs import PersistentVolume, PersistentVolumeClaim
from corral.contract.volume_state import (
    CLAIM_BOUND,
    CLAIM_PENDING,
    VOLUME_DELETING,
    ClaimStatus,
    NodeVolumes,
    VolumeStatus,
)
from corral.natsio.bus import EventPublisher
from corral.natsio.controller import ChangeFeed, Controller, Index, Result, indexed_under, owners
from corral.natsio.gc_policy import GcPolicy, collect_now
from corral.natsio.kv import Bucket, Conflict, Entry, Mirror, echo_key, keep_echoing
from corral.natsio.request_thread import serve_in_thread
from corral.natsio.sharded import ShardedMirror, shard_buckets
from corral_scheduler import metrics
from corral_scheduler.apply_plan import PlanApplier
from corral_scheduler.auto_rollback import AutoRollbacks
from corral_scheduler.decide import Plan, Usage, schedule_deployment
from corral_scheduler.heartbeats import HeartbeatJudge
from corral_scheduler.history import HistoryRecorder
from corral_scheduler.node_api import RELEASE_PREFIX, NodeRelease
from corral_scheduler.node_ranking import NodeRanking
from corral_scheduler.progress import is_complete
from corral_scheduler.prompt_changes import NodeChanges, went_down
from corral_scheduler.snapshot import INF, Loss, PlacedReplica, Snapshot
from corral_scheduler.volume_fit import (
    NO_VOLUMES,
    ClaimFacts,
    VolumeView,
)

log = logging.getLogger(__name__)

TICK_SECONDS: Final = 1.0
# A node heard after a silence longer than this (new, or back) is judged at once, not at
# the next pass: a node heard within R of its last sign keeps its judgement.
HEARD_AGAIN_SECONDS: Final = NODE_LOST_SECONDS
# A pass due for a judgement runs this long after its moment (the rules compare
# strictly: at the moment itself nothing has changed yet)...
JUDGE_AFTER_SECONDS: Final = 0.001
# ...but at least this long after the previous pass: nodes fall due spread over a
# heartbeat, and a pass judges together those due meanwhile.
JUDGE_MIN_WAIT_SECONDS: Final = 0.05
# Every node is judged again this often even when none is due (a safety net: the
# incremental judgement depends on nothing it does).
FULL_JUDGEMENT_SECONDS: Final = 10.0
ECHO_SECONDS: Final = 1.0
# An echo not back within ECHO_LATE_SECONDS makes the view stale (time_budget: each pass
# judges the view before the nodes, so a stall is noticed before a live node's silence
# can pass R).
# Echo keys of other owners that have not changed for this long are deleted.
ECHO_GC_SECONDS: Final = 60.0
# Another scheduler whose echo in corral_nodes came back within this long is a judge
# every agent must be heard by (corral_scheduler.heartbeats).
JUDGE_ALIVE_SECONDS: Final = 2 * ECHO_LATE_SECONDS
# A placements echo later than this: the acks name no placements revision (-1), and
# agents prove their watches by their own echoes (_placements_revision_of). Twice the
# lateness that makes the view stale: a burst of placements that delays the echo a
# little does not set every agent writing echoes into the same lagging bucket.
TELL_LATE_SECONDS: Final = 2 * ECHO_LATE_SECONDS
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as Kubernetes: no vowels, no look-alikes

assert ECHO_SECONDS + ECHO_LATE_SECONDS < NODE_LOST_SECONDS, "a stalled watch would lose nodes"


def next_wake(now: float, due: float, tick: float = TICK_SECONDS) -> float:
    """How long the loop waits before its next pass: until just after `due` (the earliest
    moment a node's judgement changes, on the loop's clock; inf: none), at most a tick,
    and never less than JUDGE_MIN_WAIT_SECONDS."""
    return min(tick, max(JUDGE_MIN_WAIT_SECONDS, due - now + JUDGE_AFTER_SECONDS))


# Replica names need to be unlikely to repeat, not secret (the decision checks every
# name against those taken): a generator seeded once from the OS, not a system call per
# character (secrets.choice was 2.6 % of the scheduler's CPU while placing).
_SUFFIXES = random.Random()


def random_suffix() -> str:
    return "".join(_SUFFIXES.choices(_SUFFIX_ALPHABET, k=5))


# Every key is enqueued again this often: a safety net, nothing depends on it.
RESYNC_SECONDS: Final = 30.0
# Deployments decided and committed at once. More than one is safe (reservations,
# below) but measured no faster on 2 cores: the event loop is the bottleneck, and
# more writes in flight stall it longer (bench/bench_reconcile.py, bench/README.md).
WORKERS: Final = 1
# A Deployment whose plan conflicted is decided again after this long (fresher state).
CONFLICT_RETRY_SECONDS: Final = 0.05
HISTORY_RETRY_SECONDS: Final = 5.0  # a history write that failed (history.py), tried again


class DecideIn(enum.StrEnum):
    """Where the pure decision (decide.schedule_deployment) runs.

    LOOP: in the event loop, one Deployment per reconcile (a bounded slice: the loop
    yields before each). THREAD: in one worker thread, on copies of what it reads
    (node records, liveness clocks, usage per node), while the loop keeps serving
    requests and applying watches; the plan is committed on the loop. With the GIL the
    thread only takes turns with the loop (every sys.getswitchinterval(), 5 ms), so a
    long decision no longer holds the loop in one piece, at the cost of a hand-off per
    reconcile (bench/README.md, "Deciding off the event loop", has the numbers).
    """

    LOOP = "loop"
    THREAD = "thread"


# The default (`corral-scheduler --decide-in`); tests may run every ControlLoop in the
# other mode (CORRAL_TEST_DECIDE_IN, tests/conftest.py).
DECIDE_IN: DecideIn = DecideIn.LOOP


class ControlLoop:
    def __init__(
        self,
        buckets: dict[str, Bucket],
        events: EventPublisher | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        resync_seconds: float = RESYNC_SECONDS,
        workers: int = WORKERS,
        nc: NATS | None = None,
        decide_in: DecideIn | None = None,
        gc_policy: GcPolicy | None = None,
        heartbeats_url: str | None = None,
        placement_shards: int = 1,
    ) -> None:
        """`heartbeats_url`: judge heartbeats on a thread of their own, with its own
        connection to these NATS servers (None: on this loop, through `nc`).
        `placement_shards`: the cluster's (Cluster.placement_shards); `buckets` has
        every shard's bucket."""
        self.monotonic = monotonic
        self.decide_in = DecideIn(DECIDE_IN if decide_in is None else decide_in)
        self.gc_policy = gc_policy  # None: Python's own collections (tests)
        # One decision at a time, from its view to its reservations (as on the loop,
        # where a decision is one step): the next one sees the room this one took.
        self._deciding = anyio.Lock()
        self._decider = anyio.CapacityLimiter(1)  # the one thread decisions run in
        self.redecided = 0  # thread decisions redone on the loop (a name taken meanwhile)
        self.wall_clock = wall_clock
        self.events = events
        self.owner = f"scheduler-{uuid.uuid4().hex[:12]}"
        self.node_last_seen: dict[str, float] = {}
        self.node_not_ready_since: dict[str, float] = {}
        self._nodes: dict[str, Node] = {}  # each node's record, as the mirror has it
        self._node_shapes: dict[str, Node] = {}  # each node's record without its heartbeat
        self._node_revisions: dict[str, int] = {}  # the record's revision last seen
        # Each node's judged state: (schedulable, loss for Fast, loss for AfterStop).
        self._node_states: dict[str, tuple[bool, Loss | None, Loss | None]] = {}
        self.ready_nodes: set[str] = set()  # the schedulable nodes, as last judged
        self._nodes_replayed = False
        self.changed_at: dict[str, float] = {}
        self._wake = anyio.Event()
        # The earliest moment a node's judgement may change with time alone (the heap's
        # head after the last pass: never later than the true moment).
        self.next_judgement_at = INF
        # (moment, node): when each judged node's judgement next changes with time alone,
        # and the moment that counts per node (an entry with another is void: a sooner
        # one replaced it, or it was judged since).
        self._judge_due: list[tuple[float, str]] = []
        self._judge_due_at: dict[str, float] = {}
        self._judge_every_node = True  # the next pass judges every node (see module doc)
        self._next_full_judgement = -INF
        self._next_housekeeping = -INF
        self.feed_fresh_since: float | None = None
        self.controller = Controller(
            "scheduler",
            self.reconcile,
            # Deciding is synchronous and counts what it places at once (reserved, below),
            # so each decision sees the room the others took; their commits overlap.
            workers=workers,
            resync_seconds=resync_seconds,
            resync_keys=self._every_key,
            clock=monotonic,
        )
        self.deployments = Mirror(
            buckets[names.DEPLOYMENTS_BUCKET], Deployment, on_change=self._deployment_changed
        )
        self.statuses = Mirror(buckets[names.DEPLOYMENT_STATUS_BUCKET], DeploymentStatus)
        self.nodes = Mirror(
            buckets[names.NODES_BUCKET], Node, on_change=self._node_changed, clock=monotonic
        )
        # Deployment key -> the nodes whose records list orphans of it: a decision looks
        # at those, not at every node's record (decide._orphans_of).
        self.orphan_holders = Index(
            ChangeFeed(self.nodes),
            by=lambda key, node: {
                names.object_key(o.namespace, o.deployment) for o in node.orphans
            },
        )
        # Grouped by node: each heartbeat ack tells the node the newest revision of its
        # placements, which its agent's watch must deliver (docs/safety.md). One watch
        # per shard of the placements (corral.natsio.sharded), each with its echo.
        self.placements = ShardedMirror(
            shard_buckets(buckets, placement_shards),
            Placement,
            clock=monotonic,
            share=TEMPLATES.share,  # one template per Deployment revision, not per replica
        )
        self.replica_statuses = Mirror(
            buckets[names.REPLICA_STATUS_BUCKET], SchedulingStatus, share=intern_replica_names
        )
        self.releases = Mirror(
            buckets[names.LEASES_BUCKET],
            NodeRelease,
            prefix=f"{RELEASE_PREFIX}>",
            on_change=self._changed,
            clock=monotonic,
        )
        # The cluster-wide facts a decision needs, kept per change of one placement.
        placement_changes = ChangeFeed(self.placements)
        self.placements_by_deployment = Index(
            placement_changes, by=lambda key, p: (p.deployment_key,)
        )
        self.deployments_by_node = Index(
            placement_changes, by=lambda key, p: (p.node,), primary=lambda key, p: p.deployment_key
        )
        self.usage: dict[str, Usage] = {}  # node -> what its placements reserve
        # Every node with a record in order of its usage (node_ranking.py): a decision
        # on this loop places a few replicas off its head instead of ranking every node.
        self.node_ranking = NodeRanking()
        self.taken_names: dict[str, int] = {}  # replica name -> placements with it
        # Placements decided but not committed yet, by key: counted in `usage` and
        # `taken_names` from the decision on, so a decision made meanwhile (another
        # worker) sees their room taken; the commit's own change is not counted again.
        self._reserved: dict[str, Placement] = {}
        placement_changes.subscribe(self._count_placement)
        self.pending: set[str] = set()  # Deployments with replicas placed nowhere
        # The Deployments made prompt lately by nodes judged lost or back (a disruption
        # when many: prompt_changes.py).
        self._node_changes = NodeChanges()
        # How many times room may have appeared for pending replicas (_wake_pending): a
        # decision that saw none, committed after such a wake, is made again (reconcile).
        self.room_wakes = 0
        status_changes = ChangeFeed(self.statuses)
        status_changes.subscribe(self._status_changed)
        # What enqueues which Deployments.
        controller = self.controller
        deployment_changes = ChangeFeed(self.deployments)
        controller.watch(deployment_changes)
        controller.watch(placement_changes, owners(lambda key, p: p.deployment_key))
        # A replica going down is decided ahead of a burst of placing (the work queue's
        # prompt lane): its Deployment's availability, rollout and automatic rollback do
        # not wait until a hundred Deployments applied at once are placed (the agent
        # restarts the container itself). Replicas coming up are counted in turn: a
        # Deployment decided once for many of them, not once each (bench/README.md,
        # "A prompt lane; the simulator first; 5,001 nodes and 100,000 replicas").
        controller.watch(
            ChangeFeed(self.replica_statuses),
            owners(lambda key, s: names.object_key(s.namespace, s.deployment)),
            prompt=went_down,
        )
        controller.watch(status_changes, self._orphaned_status)
        # Networks (read only: netmgr owns them). A Deployment naming one that does not
        # exist stays pending; the network's appearance decides again exactly the
        # Deployments that name it.
        self.networks = Mirror(buckets[names.NETWORKS_BUCKET], Network)
        self.deployments_by_network = Index(
            deployment_changes, by=lambda key, d: d.spec.template.networks
        )
        controller.watch(ChangeFeed(self.networks), indexed_under(self.deployments_by_network))
        # Storage (read only: volmgr owns it). A Deployment naming a claim that does not
        # exist, or is not bound, stays pending; the claim's (or its status's) change
        # decides again exactly the Deployments that name it.
        self.claims = Mirror(buckets[names.CLAIMS_BUCKET], PersistentVolumeClaim)
        self.claim_statuses = Mirror(buckets[names.CLAIM_STATUS_BUCKET], ClaimStatus)
        self.volumes = Mirror(buckets[names.VOLUMES_BUCKET], PersistentVolume)
        self.volume_statuses = Mirror(buckets[names.VOLUME_STATUS_BUCKET], VolumeStatus)
        self.node_volumes = Mirror(buckets[names.NODE_VOLUMES_BUCKET], NodeVolumes)
        self.deployments_by_claim = Index(deployment_changes, by=_claim_keys)
        by_claim = indexed_under(self.deployments_by_claim)
        controller.watch(ChangeFeed(self.claims), by_claim)
        claim_status_changes = ChangeFeed(self.claim_statuses)
        claim_status_changes.subscribe(self._claim_status_changed)
        controller.watch(claim_status_changes, by_claim)
        ChangeFeed(self.volumes).subscribe(self._volume_changed)
        ChangeFeed(self.volume_statuses).subscribe(self._volume_status_changed)
        ChangeFeed(self.node_volumes).subscribe(self._node_volumes_changed)
        # Claim key -> node -> replica -> placements using it there (reservations too),
        # kept per placement change (`_count`), never rebuilt.
        self.claim_users: dict[str, dict[str, dict[str, int]]] = {}
        # Node -> bytes of its room taken: the volumes corral made there (countsRoom), and
        # claims whose first replica is placed there whose volume is not made there yet
        # (waiting for their first consumer, or bound to a volume with no source and no
        # node yet: `_claim_room`).
        self.storage_taken: dict[str, int] = {}
        self._claim_room: dict[str, tuple[str, int]] = {}  # claim -> (node, bytes) taken
        self._node_volumes: dict[str, NodeVolumes] = {}
        # The watches liveness depends on, each with this scheduler's echo key in it.
        # This scheduler's echo key in the buckets it echoes in without a prefix (nodes,
        # placements), made once: acks read it on every heartbeat.
        self.own_echo = echo_key(self.owner)
        self.echo_watches: list[tuple[Mirror[Any], str]] = [
            (self.nodes, self.own_echo),  # first: what acks read (may_vouch)
            *((shard, self.own_echo) for shard in self.placements.shards),
            (self.releases, echo_key(self.owner, prefix=RELEASE_PREFIX)),
        ]
        # (bucket, echo key) -> revision being deleted (one key may be in every shard)
        self._collecting: dict[tuple[str, str], int] = {}
        self.applier = PlanApplier(self.placements, self.statuses)
        # Each Deployment's revisions (history.py); None: not kept (tests without the bucket).
        history_bucket = buckets.get(names.DEPLOYMENT_HISTORY_BUCKET)
        self.history = (
            None if history_bucket is None else HistoryRecorder(history_bucket, wall_clock)
        )
        # The automatic rollback (auto_rollback.py): needs the history. Its `store` is the
        # deployment API's (main.py); without one, the bucket's compare-and-set.
        self.rollbacks = (
            None
            if self.history is None
            else AutoRollbacks(
                self.deployments.bucket,
                self.history,
                self._emit_one,
                wall_clock=wall_clock,
                monotonic=monotonic,
            )
        )
        # Heartbeats on core NATS (None: judged from record changes only, as in tests
        # that drive the loop without NATS).
        self.nc = nc
        self.heartbeats_url = heartbeats_url
        self.heartbeats = None if nc is None else self.make_judge()
        # How the heartbeat thread asks this loop to judge a node heard again (None: none).
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self.passes = 0  # ticks
        self.reconciles = 0

    # --- watching ---------------------------------------------------------------------

    def wake(self) -> None:
        """Tick now (e.g. a node was released): its liveness is judged at once."""
        self._wake.set()

    def _changed(self, _key: str) -> None:
        """A release began or ended: every node is judged at once (released() changed)."""
        self._judge_every_node = True
        self._wake.set()

    def _deployment_changed(self, key: str) -> None:
        self.changed_at.setdefault(key, self.monotonic())

    def _count_placement(self, key: str, old: Placement | None, new: Placement | None) -> None:
        if old is None and new is not None and self._reserved.pop(key, None) is not None:
            return  # a reservation committed: counted since it was decided
        self._count(old, new)
        if new is not None and new.node not in self._node_states:
            # A node known by its placements only (no record seen): judged from now on.
            self._judge_node(new.node, self._liveness_view(), self.monotonic())
        if old is not None and new is None and old.node in self.ready_nodes:
            self._wake_pending(self.pending)  # room freed where replicas may go

    def _rank_node(self, node: str) -> None:
        """Keep `node_ranking` at the node's record and usage now."""
        record = self._nodes.get(node)
        usage = self.usage.get(node) or Usage()
        capacity = None if record is None else record.capacity
        self.node_ranking.update(node, capacity, usage.cpu_millis, usage.memory_bytes)

    def _count(self, old: Placement | None, new: Placement | None) -> None:
        # Usage records are replaced, never changed in place: a shallow copy of `usage`
        # is a snapshot (what a decision in a thread reads).
        if old is not None:
            usage = self.usage.get(old.node)
            if usage is not None:
                if usage.pods <= 1:
                    del self.usage[old.node]
                else:
                    self.usage[old.node] = Usage(
                        usage.cpu_millis - old.cpu_millis,
                        usage.memory_bytes - old.memory_bytes,
                        usage.pods - 1,
                    )
            left = self.taken_names.get(old.replica, 0) - 1
            if left > 0:
                self.taken_names[old.replica] = left
            else:
                self.taken_names.pop(old.replica, None)
            if old.template.volumes:
                self._use_claims(old, -1)
        if new is not None:
            usage = self.usage.get(new.node) or Usage()
            self.usage[new.node] = Usage(
                usage.cpu_millis + new.cpu_millis,
                usage.memory_bytes + new.memory_bytes,
                usage.pods + 1,
            )
            self.taken_names[new.replica] = self.taken_names.get(new.replica, 0) + 1
            if new.template.volumes:
                self._use_claims(new, +1)
        for placement in (old, new):
            if placement is not None and (placement.cpu_millis or placement.memory_bytes):
                self._rank_node(placement.node)

    # --- storage (volmgr's records, read only) ----------------------------------------

    def _use_claims(self, placement: Placement, sign: int) -> None:
        """Count (sign +1) or uncount a placement under the claims its template names; a
        claim used on a node more or one less enqueues the Deployments that name it."""
        for claim in claim_names(placement.template):
            key = names.object_key(placement.namespace, claim)
            per_node = self.claim_users.setdefault(key, {})
            replicas = per_node.setdefault(placement.node, {})
            count = replicas.get(placement.replica, 0) + sign
            if count > 0:
                replicas[placement.replica] = count
            else:
                replicas.pop(placement.replica, None)
            if not replicas:
                del per_node[placement.node]
                if not per_node:
                    del self.claim_users[key]
            if (sign > 0 and len(replicas) == 1 and count == 1) or not replicas:
                # Its nodes changed: its first consumer takes room; the pending
                # Deployments naming it (waiting for its node, or for none to use it,
                # ReadWriteOncePod) decide again. Placed ones read it when they next place.
                self._refresh_claim_room(key)
                self._wake_pending(self.deployments_by_claim.get(key) & self.pending)

    def _claim_status_changed(
        self, key: str, old: ClaimStatus | None, new: ClaimStatus | None
    ) -> None:
        self._refresh_claim_room(key)

    def _refresh_claim_room(self, claim: str) -> None:
        """A claim waiting for its first consumer (or bound to a volume with no source and
        no node yet), once a placement uses it, takes its `requestBytes` (its volume's
        size) of that node's room until volmgr makes the volume there (its VolumeStatus
        then counts): the next decisions see the room taken."""
        status = self.claim_statuses.get(claim)
        users = self.claim_users.get(claim)
        want: tuple[str, int] | None = None
        if users and status is not None:
            if status.phase == CLAIM_PENDING and status.wait_for_first_consumer:
                need = status.request_bytes
            else:
                need = self.first_use_bytes(status)
            if need > 0:
                want = (min(users), need)
        have = self._claim_room.get(claim)
        if have == want:
            return
        if have is not None:
            self._take_room(have[0], -have[1])
            del self._claim_room[claim]
        if want is not None:
            self._take_room(*want)
            self._claim_room[claim] = want
        if have is not None:  # room freed (or moved): those waiting for room look again
            self._wake_pending(self.pending_with_claims())

    def _take_room(self, node: str, size: int) -> None:
        taken = self.storage_taken.get(node, 0) + size
        if taken:
            self.storage_taken[node] = taken
        else:
            self.storage_taken.pop(node, None)

    def _volume_status_changed(
        self, key: str, old: VolumeStatus | None, new: VolumeStatus | None
    ) -> None:
        """A volume corral made on a node (countsRoom) takes its size of that node's
        room; the first use's reservation of its claim goes once it has a node; a volume
        becoming Deleting (or no longer) decides again the Deployments naming its claim."""
        claims = {status.claim for status in (old, new) if status is not None and status.claim}
        for claim in claims:
            self._refresh_claim_room(claim)
        if _deleting(old) != _deleting(new):
            for claim in claims:
                self.controller.enqueue_all(self.deployments_by_claim.get(claim))
        before = _room_of(old)
        after = _room_of(new)
        if before == after:
            return
        if before is not None:
            self._take_room(before[0], -before[1])
        if after is not None:
            self._take_room(*after)
        self._wake_pending(self.pending_with_claims())

    def _volume_changed(
        self, key: str, old: PersistentVolume | None, new: PersistentVolume | None
    ) -> None:
        """Whether a volume is node-local (or has no source) decides where its claim's
        replicas may go."""
        status = self.volume_statuses.get(key)
        if status is not None and status.claim:
            self._refresh_claim_room(status.claim)
            self.controller.enqueue_all(self.deployments_by_claim.get(status.claim))

    def _node_volumes_changed(
        self, key: str, old: NodeVolumes | None, new: NodeVolumes | None
    ) -> None:
        if new is None:
            self._node_volumes.pop(key, None)
        else:
            self._node_volumes[key] = new
        if _offer(old) != _offer(new):
            self._wake_pending(self.pending_with_claims())

    def _wake_pending(self, keys: Iterable[str]) -> None:
        """Room may have appeared for pending replicas: decide `keys` (pending Deployments)
        again. Counted: a Deployment decided before this wake and committed after it was
        not yet in `pending` when it came, so its reconcile decides it again."""
        self.room_wakes += 1
        self.controller.enqueue_all(keys)

    def pending_with_claims(self) -> list[str]:
        """The Deployments with pending replicas whose templates name claims: those a
        node's room or volume manager may be waited on by (O(pending))."""
        found = []
        for key in self.pending:
            deployment = self.deployments.get(key)
            if deployment is not None and deployment.spec.template.volumes:
                found.append(key)
        return found

    def volume_view(self, deployment: Deployment) -> VolumeView:
        """What deciding `deployment` reads of storage: the claims its template names
        (facts and the nodes using them), every node's volume manager and room taken.
        The live books, not copies (`decide` copies them for a decision in a thread)."""
        keys = _claim_keys(deployment.key, deployment)
        claims = {key: self.claim_facts(key) for key in keys}
        return VolumeView(claims, self._node_volumes, self.storage_taken)

    def claim_facts(self, key: str) -> ClaimFacts:
        """What placement needs of claim `key` (<namespace>.<claim>)."""
        spec = self.claims.get(key)
        status = self.claim_statuses.get(key)
        node_local = True  # unknown: the safe side (one node)
        deleting = False
        if status is not None and status.volume:
            volume = self.volumes.get(status.volume)
            if volume is not None:
                node_local = volume.spec.node_local
            deleting = _deleting(self.volume_statuses.get(status.volume))
        return ClaimFacts(
            exists=spec is not None or key in self.claims.unreadable,
            access_modes=() if spec is None else tuple(spec.spec.access_modes),
            status=status,
            node_local=node_local,
            users=self.claim_users.get(key, {}),
            volume_deleting=deleting,
            first_use_bytes=self.first_use_bytes(status),
        )

    def first_use_bytes(self, status: ClaimStatus | None) -> int:
        """A bound claim whose volume has no source (an image corral makes on the node of
        its first use) and no node yet: that volume's size, the room its first replica's
        node must offer; else 0 (docs/volumes.md, "Replicas with volumes")."""
        if status is None or status.phase != CLAIM_BOUND or status.node or not status.volume:
            return 0
        volume = self.volumes.get(status.volume)
        if volume is None or volume.spec.source != "provisioned" or volume.spec.node:
            return 0
        volume_status = self.volume_statuses.get(status.volume)
        if volume_status is not None and volume_status.node:
            return 0
        return volume.spec.size_bytes

    def exclusive_claim(self, deployment: Deployment) -> str | None:
        """The ReadWriteOncePod claim `deployment`'s template names (its spec's or its
        bound volume's access modes say so), or None: at most one replica may use it."""
        template = deployment.spec.template
        if not template.volumes:
            return None
        view = self.volume_view(deployment)
        namespace = deployment.metadata.namespace
        for claim in claim_names(template):
            facts = view.claims[names.object_key(namespace, claim)]
            if facts.exclusive:
                return claim
        return None

    def _status_changed(
        self, key: str, old: DeploymentStatus | None, new: DeploymentStatus | None
    ) -> None:
        if new is not None and new.pending > 0:
            self.pending.add(key)
        else:
            self.pending.discard(key)
        if new is not None:
            metrics.REPLICAS_DESIRED.labels(new.name).set(new.replicas)
            metrics.REPLICAS_READY.labels(new.name).set(new.ready)
            metrics.REPLICAS_PENDING.labels(new.name).set(new.pending)
        elif old is not None:  # a deleted Deployment's status is gone: so are its series
            for gauge in (
                metrics.REPLICAS_DESIRED,
                metrics.REPLICAS_READY,
                metrics.REPLICAS_PENDING,
            ):
                try:
                    gauge.remove(old.name)
                except KeyError:
                    pass

    def _orphaned_status(
        self, key: str, old: DeploymentStatus | None, new: DeploymentStatus | None
    ) -> tuple[str, ...]:
        """A status whose Deployment is gone enqueues its key, to be forgotten (one of a
        live Deployment is this scheduler's own write: nothing to decide)."""
        return () if key in self.deployments.items else (key,)

    def _every_key(self) -> set[str]:
        keys = set(self.deployments.items) | set(self.deployments.unreadable)
        keys |= set(self.statuses.items)
        keys |= set(self.placements_by_deployment.values())
        return keys

    def _node_changed(self, key: str) -> None:
        now = self.monotonic()
        node = self.nodes.get(key)
        revision = self.nodes.revision(key)
        changed = revision is None or revision != self._node_revisions.get(key)
        if revision is None:
            self._node_revisions.pop(key, None)
        else:
            self._node_revisions[key] = revision
        # A change seen live, not the replay of what was stored (nor a watch restart
        # replaying a record already seen: that is no sign of life).
        if self._nodes_replayed and changed:
            self.node_last_seen[key] = now
        old = self._node_shapes.get(key)
        if node is None:
            self._nodes.pop(key, None)
            self._rank_node(key)
            self._node_shapes.pop(key, None)
            self.node_not_ready_since.pop(key, None)
        else:
            self._nodes[key] = node
            if old is None or old.capacity != node.capacity:
                self._rank_node(key)
            if node.ready:
                self.node_not_ready_since.pop(key, None)
            else:
                self.node_not_ready_since.setdefault(key, now)
            shape = msgspec.structs.replace(node, heartbeat_at=0.0)
            if old == shape:
                # A mere heartbeat: only its liveness may have changed.
                self._judge_node(key, self._liveness_view(), now)
                return
            self._node_shapes[key] = shape
        # A node joined, left or changed: its Deployments, its orphans' owners, and (it
        # may have room now) the pending ones decide again.
        self.controller.enqueue_all(self.deployments_by_node.get(key))
        for record in (old, node):
            if record is not None:
                self.controller.enqueue_all(
                    names.object_key(o.namespace, o.deployment) for o in record.orphans
                )
        self._wake_pending(self.pending)
        self._judge_node(key, self._liveness_view(), now)

    def make_judge(self) -> HeartbeatJudge:
        """The judge of heartbeats, wired to this loop's liveness books: called on this
        loop, or (heartbeats_url) on a thread of its own, where it only sets a node's
        clock and reads plain values (services/scheduler/README.md, "Requests and
        heartbeats on threads of their own")."""
        threaded = self.heartbeats_url is not None
        return HeartbeatJudge(
            self.owner,
            on_heard=self._heard_on_thread if threaded else self._heard,
            record_of=self._record_of,
            judges=self.judges_alive,
            may_ack=self.may_vouch,
            placements_revision_of=self._placements_revision_of,
            monotonic=self.monotonic,
        )

    def _heard(self, node: str, now: float) -> None:
        """A heartbeat of `node` arrived: it is alive now (judged again if that changes
        anything)."""
        self.node_last_seen[node] = now
        self._judge_node(node, self._liveness_view(), now)

    def _heard_on_thread(self, node: str, now: float) -> None:
        """`_heard` on the heartbeat thread: the clock set (a dict item: atomic), and a
        node heard after a silence (new, or back) judged on this loop at once; the others
        are judged when their moment comes, where only time passing changes them.

        The silence is measured up to the clock read after the write, not up to `now`
        (read before it): a pass that ran in between read the old clock, and judged the
        node lost when it ran past `before` + R, which that later read is past too. So
        such a node is always judged again at once, never left lost until the next pass
        of every node while it beats."""
        before = self.node_last_seen.get(node)
        self.node_last_seen[node] = now
        if before is None or self.monotonic() - before > HEARD_AGAIN_SECONDS:
            loop = self._event_loop
            if loop is not None:
                loop.call_soon_threadsafe(self._judge_heard, node)

    def _judge_heard(self, node: str) -> None:
        self._judge_node(node, self._liveness_view(), self.monotonic())

    def _placements_revision_of(self, node: str) -> int:
        """What an ack tells a node of its placements (docs/safety.md, "Placements must
        be current"): the newest revision of them this scheduler saw or wrote, while its
        own placements watch is current and its echo back within TELL_LATE_SECONDS;
        otherwise -1 (it does not say), so that the agent proves its watch by its own
        echo, not by a revision that may be behind another scheduler's writes. Of the
        node's shard of the placements: revisions of other shards say nothing of it.
        Called on the heartbeat thread too: it reads plain values, as may_vouch does."""
        shard = self.placements.shard_of_node(node)
        age = shard.echo_age(self.own_echo)
        if not shard.current or age is None or age > TELL_LATE_SECONDS:
            return -1
        return shard.newest(node)

    def _record_of(self, node: str) -> tuple[Node | None, int | None]:
        return self._nodes.get(node), self._node_revisions.get(node)

    def judges_alive(self) -> int:
        """This scheduler and the others whose echo in corral_nodes came back lately:
        an agent counts itself heard only when that many judges acknowledged it."""
        now = self.monotonic()
        own = self.own_echo
        others = sum(
            1
            # a copy at once (C): the heartbeat thread counts while the watch changes it
            for key, seen in list(self.nodes.echoes.items())
            if key != own
            and key.rsplit(".", 1)[-1].startswith("scheduler-")
            and now - seen.seen_at <= JUDGE_ALIVE_SECONDS
        )
        return 1 + others

    def _liveness_view(self) -> Snapshot:
        """What judging a node's liveness reads (the live books, not copies)."""
        return Snapshot(
            nodes=self._nodes,
            node_last_seen=self.node_last_seen,
            node_not_ready_since=self.node_not_ready_since,
            feed_fresh_since=self.feed_fresh_since,
            released=self.released(),
        )

    def _judge_node(self, name: str, view: Snapshot, now: float) -> None:
        """Judge one node now; when its state changed, enqueue the Deployments it
        affects (those placed there; when it became schedulable, the pending ones and
        the owners of its orphans). Notes when its judgement next changes with time
        alone, when that is sooner than the moment noted for it."""
        at = view.next_change(name, now)
        if at < self._judge_due_at.get(name, INF):
            self._judge_due_at[name] = at
            heapq.heappush(self._judge_due, (at, name))
            # Between passes too (a record change, a node heard again): the next wait
            # ends by then (one under way ends at the tick, at most a second away).
            self.next_judgement_at = min(self.next_judgement_at, at)
        schedulable = view.schedulable(name, now)
        state = (
            schedulable,
            view.loss(name, now, after_stop=False),
            view.loss(name, now, after_stop=True),
        )
        known = self._node_states.get(name)
        if known == state:
            return
        self._node_states[name] = state
        if schedulable:
            self.ready_nodes.add(name)
        else:
            self.ready_nodes.discard(name)
        # A node judged lost or back: its replicas are replaced (or kept) ahead of a
        # burst, unless many Deployments were lately (a disruption: prompt_changes.py).
        # Its first judgement (a scheduler starting, a node joining) and a readiness
        # flip take their turn.
        judged_loss = known is not None and known[1:] != state[1:]
        deployments = self.deployments_by_node.get(name)
        prompt = judged_loss and self._node_changes.few(
            deployments, now, len(self.deployments.items)
        )
        self.controller.enqueue_all(deployments, prompt=prompt)
        if schedulable and (known is None or not known[0]):
            self._wake_pending(self.pending)
            node = self._nodes.get(name)
            if node is not None:
                self.controller.enqueue_all(
                    names.object_key(o.namespace, o.deployment) for o in node.orphans
                )

    def _forget_judgement(self, name: str) -> None:
        self._node_states.pop(name, None)
        self.ready_nodes.discard(name)
        self._judge_due_at.pop(name, None)  # its entry in the heap is void

    def judge_nodes(self, now: float) -> None:
        """Judge every node's liveness now (O(nodes)), noting afresh when each one's
        judgement next changes with time alone; forget the states of nodes no longer
        known (neither record nor placements nor release)."""
        view = self._liveness_view()
        known = set(self._nodes) | set(self.deployments_by_node.values()) | view.released
        self._judge_due = []
        self._judge_due_at = {}
        for name in known:
            self._judge_node(name, view, now)
        self.next_judgement_at = self._judge_due[0][0] if self._judge_due else INF
        for name in [name for name in self._node_states if name not in known]:
            self._forget_judgement(name)

    def judge_due_nodes(self, now: float) -> int:
        """Judge the nodes whose judgement may have changed with time alone by now (their
        moment passed: the rules compare strictly), each noting its next moment; returns
        how many were judged. A node no longer known is forgotten instead."""
        heap, due_at = self._judge_due, self._judge_due_at
        view: Snapshot | None = None
        judged = 0
        while heap and heap[0][0] < now:
            at, name = heapq.heappop(heap)
            if due_at.get(name) != at:
                continue  # void: replaced by a sooner entry, or judged since
            del due_at[name]
            if view is None:
                view = self._liveness_view()
            if name in self._nodes or name in self.deployments_by_node or name in view.released:
                self._judge_node(name, view, now)
                judged += 1
            else:
                self._forget_judgement(name)
        self.next_judgement_at = heap[0][0] if heap else INF
        return judged

    def may_vouch(self) -> bool:
        """Whether this judge acknowledges heartbeats now. An ack says the node was heard
        (true whenever a heartbeat arrives), its record as the nodes watch has it and the
        judges alive (echo keys in that same watch): so that watch and the heartbeat feed
        must be fresh, not the others. A placements watch lagging behind a burst of
        placements stops losses being judged and replicas being placed, but acknowledging
        on makes agents write no records: were every agent to write its record each
        beat, the nodes watch would lag too, and the view stay stale (5,000 hollow nodes
        did so; services/scheduler/README.md, "Judging liveness on a fresh view only")."""
        return self._late_watch(self.monotonic(), self.echo_watches[:1]) is None

    def _late_watch(
        self, now: float, watches: list[tuple[Mirror[Any], str]] | None = None
    ) -> str | None:
        """Why the view is stale now (a watch broken, an echo late), or None: fresh.
        `watches`: only these (default: every watch the view depends on), and the
        heartbeat feed."""
        for mirror, key in self.echo_watches if watches is None else watches:
            where = f"{mirror.bucket.name}/{mirror.prefix}"
            if not mirror.current:
                return f"watch of {where} is not current ({mirror.last_error or 'starting'})"
            age = mirror.echo_age(key, now)
            if age is None or age > ECHO_LATE_SECONDS:
                return f"echo in {where} is late"
        if self.heartbeats is not None:
            return self.heartbeats.late(now)
        return None

    def update_feed(self, now: float) -> bool:
        """Judge whether the view is fresh now; True when it is."""
        late = self._late_watch(now)
        if late is None and self.feed_fresh_since is None:
            self.feed_fresh_since = now
            self._judge_every_node = True  # every node's silence counts from now
            log.info("view of NATS is fresh; node liveness judged from now on")
        elif late is not None and self.feed_fresh_since is not None:
            self.feed_fresh_since = None
            self._judge_every_node = True  # no loss is judged on a stale view
            log.warning("view of NATS is stale (%s); no node is judged lost meanwhile", late)
        return late is None

    def network_names(self) -> frozenset[str]:
        """The networks that exist: their records, readable or not (one that does not
        decode exists all the same)."""
        return frozenset(self.networks.items) | frozenset(self.networks.unreadable)

    def released(self) -> frozenset[str]:
        return frozenset(release.node for release in self.releases.values())

    def snapshot(self) -> Snapshot:
        return Snapshot(
            deployments={d.key: d for d in self.deployments.values()},
            statuses=dict(self.statuses.items),
            nodes={key: node for key, (node, _) in self.nodes.items.items()},
            node_last_seen=dict(self.node_last_seen),
            node_not_ready_since=dict(self.node_not_ready_since),
            feed_fresh_since=self.feed_fresh_since,
            placements={
                key: PlacedReplica(placement=placement, revision=revision)
                for key, (placement, revision) in self.placements.items.items()
            },
            replica_statuses={
                key: status for key, (status, _) in self.replica_statuses.items.items()
            },
            unreadable_deployments=frozenset(self.deployments.unreadable),
            released=self.released(),
            networks=self.network_names(),
            volumes=VolumeView(
                {key: self.claim_facts(key) for key in self.deployments_by_claim.values()},
                dict(self._node_volumes),
                dict(self.storage_taken),
            ),
        )

    def silence(self, node: str, now: float) -> float | None:
        """How long `node` has been silent on this scheduler's clock (None: view stale)."""
        if self.feed_fresh_since is None:
            return None
        heard = max(self.node_last_seen.get(node, float("-inf")), self.feed_fresh_since)
        return now - heard

    async def echo_once(self) -> None:
        """Write every echo key once (the loop does it every ECHO_SECONDS)."""
        for mirror, key in self.echo_watches:
            await mirror.bucket.put(key, encode(self.wall_clock()))

    async def start(self, tg: TaskGroup, *, echoes: bool = True) -> None:
        """Start the watches (returning once each has replayed) and the echo writers."""
        if self.heartbeats is not None and self.heartbeats_url is not None:
            # Heard before the view can be fresh: no node is judged on a feed not there.
            self._event_loop = asyncio.get_running_loop()
            await tg.start(
                serve_in_thread,
                self.heartbeats_url,
                f"corral-{self.owner}-heartbeats",
                self._judge_heartbeats,
            )
        elif self.heartbeats is not None and self.nc is not None:
            await tg.start(self.heartbeats.run, self.nc)
            tg.start_soon(self.heartbeats.keep_echoing, self.nc)
        await tg.start(self.nodes.run)
        self._nodes_replayed = True
        for mirror in (
            self.placements,
            self.replica_statuses,
            self.statuses,
            self.networks,
            self.claims,
            self.claim_statuses,
            self.volumes,
            self.volume_statuses,
            self.node_volumes,
            self.deployments,
            self.releases,
        ):
            await tg.start(mirror.run)
        if echoes:
            for mirror, key in self.echo_watches:
                tg.start_soon(self._echo, mirror.bucket, key)

    async def _judge_heartbeats(
        self,
        nc: NATS,
        js: object,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """On the heartbeat thread: judge and acknowledge, and echo, on its connection."""
        judge = self.heartbeats
        assert judge is not None
        async with anyio.create_task_group() as tg:
            await tg.start(judge.run, nc)
            tg.start_soon(judge.keep_echoing, nc)
            task_status.started()

    async def _echo(self, bucket: Bucket, key: str) -> None:
        await keep_echoing(bucket, key, interval=ECHO_SECONDS, wall_clock=self.wall_clock)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await self.start(tg)
            await tg.start(self.controller.run)
            task_status.started()
            while True:
                with anyio.move_on_after(self.wait_seconds()):
                    await self._wake.wait()
                self._wake = anyio.Event()
                try:
                    await self.tick()
                except Exception:  # a bad tick must not stop the scheduler
                    log.exception("scheduler tick failed; retrying")
                    await anyio.sleep(TICK_SECONDS)

    def wait_seconds(self) -> float:
        """How long to wait for the next pass from now (a wake() comes sooner)."""
        return next_wake(self.monotonic(), self.next_judgement_at)

    # --- a pass: the nodes due, then (once a second) the housekeeping ----------------------

    async def tick(self) -> None:
        """A pass: judge the nodes due (every node when something changed them all, and
        every FULL_JUDGEMENT_SECONDS), then at most once per TICK_SECONDS the housekeeping
        (collections, forgotten nodes, releases ended, echoes of gone owners)."""
        now = self.monotonic()
        fresh = self.update_feed(now)
        metrics.VIEW_FRESH.set(1 if fresh else 0)
        try:
            if self._judge_every_node or now >= self._next_full_judgement:
                self.judge_nodes(now)
                # Only once it is done: a pass that failed part-way is made again.
                self._judge_every_node = False
                self._next_full_judgement = now + FULL_JUDGEMENT_SECONDS
            else:
                self.judge_due_nodes(now)
        except BaseException:
            # Nodes taken off the heap and not judged have no moment now.
            self._judge_every_node = True
            raise
        self.passes += 1
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + TICK_SECONDS
        metrics.NODES.set(len(self._nodes))
        metrics.NODES_READY.set(len(self.ready_nodes))
        metrics.NODES_RELEASED.set(len(self.releases.items))
        collect_now(self.gc_policy, now)  # and the long pauses noted, logged
        self._forget_nodes()
        await self._settle_releases()
        if fresh:
            await self._collect_echoes(now)

    async def run_pass(self) -> int:
        """A tick, then reconcile every queued key (what the workers do when running);
        returns how many reconciles ran. For tests and benchmarks that drive the loop
        without its workers."""
        await self.tick()
        return await self.drain()

    async def drain(self) -> int:
        """Reconcile the keys queued now, those they queue and those due by now (a
        requeue after a conflict, a back-off), until none is ready."""
        queue = self.controller.queue
        count = 0
        while True:
            key: str | None = None
            with anyio.move_on_after(0):  # a key ready (or due by now), else stop
                key = await queue.get()
            if key is None:
                break
            try:
                await self.controller.process(key)
            finally:
                queue.done(key)
            count += 1
            await anyio.lowlevel.checkpoint()
        return count

    # --- one key: decide one Deployment, commit its plan --------------------------------

    def view_of(self, key: str) -> Snapshot:
        """The part of the cluster deciding Deployment `key` reads: it, its status, its
        placements and their replica statuses, and the nodes (the live books)."""
        deployment = self.deployments.get(key)
        status = self.statuses.items.get(key)
        volumes = NO_VOLUMES
        if deployment is not None and deployment.spec.template.volumes:
            volumes = self.volume_view(deployment)
        placements: dict[str, PlacedReplica] = {}
        replica_statuses: dict[str, SchedulingStatus] = {}
        for placement_key in self.placements_by_deployment.get(key):
            found = self.placements.items.get(placement_key)
            if found is None:
                continue
            placements[placement_key] = PlacedReplica(placement=found[0], revision=found[1])
            replica_status = self.replica_statuses.get(placement_key)
            if replica_status is not None:
                replica_statuses[placement_key] = replica_status
        return Snapshot(
            deployments={} if deployment is None else {key: deployment},
            statuses={} if status is None else {key: status},
            nodes=self._nodes,
            node_last_seen=self.node_last_seen,
            node_not_ready_since=self.node_not_ready_since,
            feed_fresh_since=self.feed_fresh_since,
            placements=placements,
            replica_statuses=replica_statuses,
            unreadable_deployments=(
                frozenset({key}) if key in self.deployments.unreadable else frozenset()
            ),
            released=self.released(),
            networks=self.network_names(),
            volumes=volumes,
            orphan_holders=self.orphan_holders.get(key),
        )

    async def reconcile(self, key: str) -> Result | None:
        # A worker takes a ready key without awaiting: yield here, so that a resync of
        # thousands of keys that decide nothing never holds the event loop (requests).
        await anyio.lowlevel.checkpoint()
        self.reconciles += 1
        now = self.monotonic()
        # Losses are judged in this decision: on the view's freshness as of now, not as
        # of the last tick (a stall noticed late must not make a node look lost).
        self.update_feed(now)
        result: Result | None = None
        # Before deciding: the status carries the current template's revision (a new
        # template's costs one read and write; a failure never holds the decision up).
        if not await self._record_revision(key):
            result = Result(requeue_after=HISTORY_RETRY_SECONDS, prompt=False)
        wakes_before = self.room_wakes
        async with self._deciding:
            plan = await self.decide(key, now)
            for placement in plan.place:
                self._reserved[placement.key] = placement
                self._count(None, placement)
        if not plan.is_empty():
            try:
                committed = await self.applier.commit(plan)
            finally:
                for placement in plan.place:  # what did not commit frees its room again
                    if self._reserved.pop(placement.key, None) is not None:
                        self._count(placement, None)
            metrics.PLANS.inc()
            metrics.PLACEMENTS.inc(len(committed.placed))
            for stop in committed.stopped:
                metrics.STOPS.labels(stop.label).inc()
            metrics.CONFLICTS.inc(committed.conflicts)
            await self._emit(plan)
            if committed.errors:
                raise committed.errors[0]  # retried with back-off
            if committed.retry:
                result = Result(requeue_after=CONFLICT_RETRY_SECONDS)  # from fresher state
        if self.room_wakes != wakes_before and key in self.pending:
            # Room appeared (a node ready, replicas gone) while this decision, which left
            # replicas pending, was made or committed: the wake enqueued the Deployments
            # pending then, and this one's status said so only now. Decide it again.
            self.controller.enqueue(key)
        since = self.changed_at.pop(key, None)
        if since is not None:
            metrics.SCHEDULING_LATENCY.observe(self.monotonic() - since)
        if not await self._after_decision(key, plan):
            result = Result(requeue_after=HISTORY_RETRY_SECONDS, prompt=False)
        # A replica reaches its minReadySeconds then; the progress deadline passes then.
        for wait in (plan.requeue_after, plan.deadline_in):
            if wait is not None:
                if result is None or result.requeue_after is None or wait < result.requeue_after:
                    result = Result(requeue_after=wait, prompt=False)
        return result

    def _revision(self, key: str, deployment: Deployment | None = None) -> int:
        """The current template's revision as the history recorder knows it (0: not), of
        `deployment` (default: the mirror's)."""
        if deployment is None:
            deployment = self.deployments.get(key)
        if self.history is None or deployment is None:
            return 0
        return self.history.revision_of(key, deployment.spec.template.template_hash()) or 0

    async def _after_decision(self, key: str, plan: Plan) -> bool:
        """What follows a decision, per Deployment: a completed rollout's revision marked
        fully available in the history (history.py), and the automatic rollback
        (auto_rollback.py). False when a history write failed (retried soon)."""
        if self.history is None or key in self.deployments.unreadable:
            return True
        deployment = self.deployments.get(key)
        if deployment is None:
            if self.rollbacks is not None:
                self.rollbacks.forget(key)
            return True
        decided = next((s for s, _ in plan.statuses if s.key == key), None)
        if decided is None:
            decided = self.statuses.get(key)
        if decided is None:
            return True
        revision = self._revision(key)
        ok = True
        if self.rollbacks is not None:
            self.rollbacks.observe(key, decided)
        if (
            revision
            and decided.revision == revision
            and is_complete(decided)
            and not self.history.known_available(key, revision)
        ):
            try:
                await self.history.mark_available(key, revision, self.wall_clock())
            except Exception:
                log.warning("%s: revision %d not marked available; retried", key, revision)
                metrics.HISTORY_ERRORS.inc()
                ok = False
        if self.rollbacks is not None and deployment.spec.auto_rollback is not None:
            statuses = [
                found
                for placement_key in self.placements_by_deployment.get(key)
                if (found := self.replica_statuses.get(placement_key)) is not None
            ]
            try:
                await self.rollbacks.consider(key, deployment, decided, revision, statuses)
            except Exception:
                log.warning("%s: the automatic rollback failed; retried", key, exc_info=True)
                ok = False
        return ok

    async def _record_revision(self, key: str) -> bool:
        """Record the Deployment's template as its newest revision, or forget the history
        of one deleted (history.py). Best-effort: a failure is logged and counted, never
        fails the reconcile (placements go on); False asks for a retry soon (the recorder
        remembers only what it wrote, so the next reconcile tries again)."""
        if self.history is None or key in self.deployments.unreadable:
            return True
        deployment = self.deployments.get(key)
        try:
            if deployment is None:
                await self.history.forget(key)
            else:
                await self.history.record(key, deployment)
        except Exception:
            log.warning("the history of %s could not be recorded; retried", key, exc_info=True)
            metrics.HISTORY_ERRORS.inc()
            return False
        return True

    async def decide(self, key: str, now: float) -> Plan:
        """Decide Deployment `key` (pure, decide.schedule_deployment), in the event loop or
        in the decider thread (`decide_in`); hold `_deciding` around it and its
        reservations."""
        started = time.perf_counter()
        view = self.view_of(key)
        wall_time = self.wall_clock()
        if self.decide_in is DecideIn.LOOP:
            plan = self._decide(view, key, now, self.usage, self.ready_nodes, wall_time)
        else:
            # What the loop changes while the thread reads it is copied (C-speed, no
            # O(placements) copy): the node records and liveness clocks, the usage per
            # node (its Usage records are replaced, never changed), the ready nodes.
            # `taken_names` is only asked `in`: the names placed are checked again below.
            view = dataclasses.replace(
                view,
                nodes=dict(view.nodes),
                node_last_seen=dict(view.node_last_seen),
                node_not_ready_since=dict(view.node_not_ready_since),
                volumes=view.volumes if view.volumes is NO_VOLUMES else view.volumes.copied(),
            )
            usage, ready = dict(self.usage), frozenset(self.ready_nodes)
            plan = await anyio.to_thread.run_sync(
                partial(self._decide, view, key, now, usage, ready, wall_time, on_loop=False),
                limiter=self._decider,
            )
            if any(placement.replica in self.taken_names for placement in plan.place):
                # A name taken meanwhile (another writer's placement): decide again here.
                self.redecided += 1
                plan = self._decide(
                    self.view_of(key), key, now, self.usage, self.ready_nodes, wall_time
                )
        metrics.DECIDE_SECONDS.observe(time.perf_counter() - started)
        return plan

    def _decide(
        self,
        view: Snapshot,
        key: str,
        now: float,
        usage: dict[str, Usage],
        ready_nodes: set[str] | frozenset[str],
        wall_time: float,
        *,
        on_loop: bool = True,
    ) -> Plan:
        """`on_loop`: made on this loop, which keeps `node_ranking` (not copied: a
        decision in the decider thread ranks every node)."""
        revision = self._revision(key, view.deployments.get(key))  # the view's template
        rolled_back = None if self.rollbacks is None else self.rollbacks.record_for(key, revision)
        return schedule_deployment(
            view,
            key,
            now,
            usage=usage,
            taken_names=self.taken_names,
            ready_nodes=ready_nodes,
            wall_time=wall_time,
            new_suffix=random_suffix,
            revision=revision,
            rolled_back=rolled_back,
            ranking=self.node_ranking if on_loop else None,
        )

    async def _emit_one(self, key: str, reason: str, message: str, warning: bool) -> None:
        """An event about Deployment `key` (the automatic rollback's)."""
        if self.events is None:
            return
        namespace, name = names.split_object_key(key)
        await self.events.emit(
            "deployment", name, reason, message, warning=warning, namespace=namespace
        )

    async def _emit(self, plan: Plan) -> None:
        if self.events is None:
            return
        for event in plan.events:
            namespace, name = names.split_object_key(event.deployment)
            await self.events.emit(
                "deployment",
                name,
                event.reason,
                event.message,
                warning=event.warning,
                namespace=namespace,
            )

    def _forget_nodes(self) -> None:
        """Drop the liveness clocks of nodes with neither a record nor placements, and
        with them their judgements (a node known again is judged afresh), unless
        released (a release is judged without clocks)."""
        records = self.nodes.items
        released = self.released()
        for book in (
            self.node_last_seen,
            self.node_not_ready_since,
            self._node_shapes,
            self._nodes,
        ):
            gone = [
                node
                for node in list(book)  # a copy at once: the heartbeat thread adds clocks
                if node not in records
                and node not in self.nodes.unreadable
                and node not in self.deployments_by_node
            ]
            for node in gone:
                del book[node]
                if book is self._nodes:
                    self._rank_node(node)
                if node not in released:
                    self._forget_judgement(node)
        for node in [node for node in self._node_revisions if node not in records]:
            del self._node_revisions[node]

    async def _settle_releases(self) -> None:
        """End releases that are done (no record, no placements) or overtaken (the node
        wrote a new record since)."""
        placed = self.deployments_by_node
        for key, (release, revision) in list(self.releases.items.items()):
            record = self.nodes.revision(release.node)
            back = record is not None and record > release.node_revision
            done = record is None and release.node not in placed
            if not (back or done):
                continue
            try:
                marker = await self.releases.bucket.delete(key, revision=revision)
            except Conflict:
                continue  # released again meanwhile: the next pass decides
            except Exception as error:
                log.warning("could not end the release of node %s: %s", release.node, error)
                continue
            self.releases.apply(Entry(key, None, marker))
            log.info(
                "release of node %s ended (%s)",
                release.node,
                "a new record" if back else "nothing left",
            )

    async def _collect_echoes(self, now: float) -> None:
        """Delete other owners' echo keys that have not changed for ECHO_GC_SECONDS."""
        own = {key for _, key in self.echo_watches}
        seen_now: set[tuple[str, str]] = set()
        for mirror, _ in self.echo_watches:
            for key, seen in list(mirror.echoes.items()):
                where = (mirror.bucket.name, key)
                seen_now.add(where)
                if key in own or now - seen.seen_at <= ECHO_GC_SECONDS:
                    continue
                if self._collecting.get(where) == seen.revision:
                    continue  # asked already; the watch will tell
                self._collecting[where] = seen.revision
                try:
                    await mirror.bucket.delete(key, revision=seen.revision)
                except Conflict:
                    continue  # its owner wrote it again: alive after all
                except Exception as error:
                    log.debug("could not delete echo %s: %s", key, error)
                    continue
                metrics.ECHOES_COLLECTED.inc()
                log.info("deleted the echo key %s/%s of a gone owner", mirror.bucket.name, key)
        for where in [where for where in self._collecting if where not in seen_now]:
            del self._collecting[where]


def _claim_keys(key: str, deployment: Deployment) -> list[str]:
    """The claims (keys <namespace>.<claim>) a Deployment's template names."""
    template = deployment.spec.template
    if not template.volumes:
        return []
    namespace = deployment.metadata.namespace
    return [names.object_key(namespace, claim) for claim in claim_names(template)]


def _room_of(status: VolumeStatus | None) -> tuple[str, int] | None:
    """The node and bytes a volume corral made there (countsRoom: one with no source,
    provisioned or made by hand) takes of that node's room, or None."""
    if status is None or not status.counts_room or not status.node:
        return None
    return (status.node, status.size_bytes)


def _deleting(status: VolumeStatus | None) -> bool:
    return status is not None and status.phase == VOLUME_DELETING


def _offer(record: NodeVolumes | None) -> tuple[bool, int] | None:
    """What of a node's volume manager placement depends on (not its message or time)."""
    return None if record is None else (record.ready, record.capacity_bytes)


__all__ = ["DECIDE_IN", "ControlLoop", "DecideIn", "random_suffix"]
