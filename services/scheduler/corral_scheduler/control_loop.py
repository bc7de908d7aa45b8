"""The scheduler's control loop: mirrors of the cluster state in KV, and passes of
snapshot -> schedule -> commit, run whenever something changed (and every second,
so that a node that fell silent is noticed).

Liveness is judged only on a fresh view. The loop writes an echo key (corral.natsio.kv
echo_key) every second into every bucket a judgement depends on: corral_nodes
(who is alive), corral_placements (what runs where) and corral_leases (the nodes
an operator released). Each must come back through that bucket's own watch: while
any is late or its watch is broken, the view is stale and no node is judged lost,
since a stalled nodes watch would otherwise make every node look silent.

The loop also forgets what no longer exists: the liveness clocks of nodes that have
neither record nor placements, metric series of deleted Deployments, finished
releases, and echo keys whose owner died (no new revision for ECHO_GC_SECONDS on
this scheduler's clock; deleted compare-and-set on the revision seen, so an owner
that wrote meanwhile keeps its key).
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import Deployment
from corral.contract.state import DeploymentStatus, Node, Placement, ReplicaStatus
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.natsio.bus import EventPublisher
from corral.natsio.kv import Bucket, Conflict, Entry, Mirror, echo_key, keep_echoing
from corral_scheduler import metrics
from corral_scheduler.apply_plan import PlanApplier
from corral_scheduler.decide import Plan, schedule
from corral_scheduler.node_api import RELEASE_PREFIX, NodeRelease
from corral_scheduler.snapshot import PlacedReplica, Snapshot

log = logging.getLogger(__name__)

TICK_SECONDS: Final = 1.0
ECHO_SECONDS: Final = 1.0
# An echo not back within this long makes the view stale. The last echo seen before a
# watch stalls is at most ECHO_SECONDS old, so a stall is noticed before any node's
# silence (heartbeats every second) can pass R.
ECHO_LATE_SECONDS: Final = 3.0
# Echo keys of other owners that have not changed for this long are deleted.
ECHO_GC_SECONDS: Final = 60.0
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as Kubernetes: no vowels, no look-alikes

assert ECHO_SECONDS + ECHO_LATE_SECONDS < NODE_LOST_SECONDS, "a stalled watch would lose nodes"


def random_suffix() -> str:
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))


class ControlLoop:
    def __init__(
        self,
        buckets: dict[str, Bucket],
        events: EventPublisher | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.monotonic = monotonic
        self.wall_clock = wall_clock
        self.events = events
        self.owner = f"scheduler-{uuid.uuid4().hex[:12]}"
        self.node_last_seen: dict[str, float] = {}
        self.node_not_ready_since: dict[str, float] = {}
        self._node_shapes: dict[str, Node] = {}  # each node's record without its heartbeat
        self._node_revisions: dict[str, int] = {}  # the record's revision last seen
        self._nodes_replayed = False
        self.changed_at: dict[str, float] = {}
        self._wake = anyio.Event()
        self.feed_fresh_since: float | None = None
        self.deployments = Mirror(
            buckets[names.DEPLOYMENTS_BUCKET], Deployment, on_change=self._deployment_changed
        )
        self.statuses = Mirror(buckets[names.DEPLOYMENT_STATUS_BUCKET], DeploymentStatus)
        self.nodes = Mirror(
            buckets[names.NODES_BUCKET], Node, on_change=self._node_changed, clock=monotonic
        )
        self.placements = Mirror(
            buckets[names.PLACEMENTS_BUCKET], Placement, on_change=self._changed, clock=monotonic
        )
        self.replica_statuses = Mirror(
            buckets[names.REPLICA_STATUS_BUCKET], ReplicaStatus, on_change=self._changed
        )
        self.releases = Mirror(
            buckets[names.LEASES_BUCKET],
            NodeRelease,
            prefix=f"{RELEASE_PREFIX}>",
            on_change=self._changed,
            clock=monotonic,
        )
        # The watches liveness depends on, each with this scheduler's echo key in it.
        self.echo_watches: list[tuple[Mirror[Any], str]] = [
            (self.nodes, echo_key(self.owner)),
            (self.placements, echo_key(self.owner)),
            (self.releases, echo_key(self.owner, prefix=RELEASE_PREFIX)),
        ]
        self._collecting: dict[str, int] = {}  # echo key -> revision being deleted
        self._exported: set[str] = set()  # Deployments with metric series
        self.applier = PlanApplier(self.placements, self.statuses)
        self.passes = 0

    # --- watching ---------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _changed(self, _key: str) -> None:
        self._wake.set()

    def _deployment_changed(self, key: str) -> None:
        self.changed_at.setdefault(key, self.monotonic())
        self._wake.set()

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
        if node is None:
            self._node_shapes.pop(key, None)
            self.node_not_ready_since.pop(key, None)
            self._wake.set()
            return
        if node.ready:
            self.node_not_ready_since.pop(key, None)
        else:
            self.node_not_ready_since.setdefault(key, now)
        shape = msgspec.structs.replace(node, heartbeat_at=0.0)
        if self._node_shapes.get(key) != shape:
            # A node joined or changed; a mere heartbeat waits for the next tick.
            self._node_shapes[key] = shape
            self._wake.set()

    def _late_watch(self, now: float) -> str | None:
        """Why the view is stale now (a watch broken, an echo late), or None: fresh."""
        for mirror, key in self.echo_watches:
            where = f"{mirror.bucket.name}/{mirror.prefix}"
            if not mirror.current:
                return f"watch of {where} is not current ({mirror.last_error or 'starting'})"
            age = mirror.echo_age(key, now)
            if age is None or age > ECHO_LATE_SECONDS:
                return f"echo in {where} is late"
        return None

    def update_feed(self, now: float) -> bool:
        """Judge whether the view is fresh now; True when it is."""
        late = self._late_watch(now)
        if late is None and self.feed_fresh_since is None:
            self.feed_fresh_since = now
            log.info("view of NATS is fresh; node liveness judged from now on")
        elif late is not None and self.feed_fresh_since is not None:
            self.feed_fresh_since = None
            log.warning("view of NATS is stale (%s); no node is judged lost meanwhile", late)
        return late is None

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
        await tg.start(self.nodes.run)
        self._nodes_replayed = True
        for mirror in (
            self.placements,
            self.replica_statuses,
            self.statuses,
            self.deployments,
            self.releases,
        ):
            await tg.start(mirror.run)
        if echoes:
            for mirror, key in self.echo_watches:
                tg.start_soon(self._echo, mirror.bucket, key)

    async def _echo(self, bucket: Bucket, key: str) -> None:
        await keep_echoing(bucket, key, interval=ECHO_SECONDS, wall_clock=self.wall_clock)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await self.start(tg)
            task_status.started()
            while True:
                with anyio.move_on_after(TICK_SECONDS):
                    await self._wake.wait()
                self._wake = anyio.Event()
                try:
                    await self.run_pass()
                except Exception:  # a bad pass must not stop the scheduler
                    log.exception("scheduling pass failed; retrying")
                    await anyio.sleep(TICK_SECONDS)

    # --- one pass -----------------------------------------------------------------------

    async def run_pass(self) -> Plan:
        now = self.monotonic()
        fresh = self.update_feed(now)
        metrics.VIEW_FRESH.set(1 if fresh else 0)
        snapshot = self.snapshot()
        started = time.perf_counter()
        plan = schedule(snapshot, now, wall_time=self.wall_clock(), new_suffix=random_suffix)
        metrics.DECIDE_SECONDS.observe(time.perf_counter() - started)
        if not plan.is_empty():
            committed = await self.applier.commit(plan)
            metrics.PLANS.inc()
            metrics.PLACEMENTS.inc(len(committed.placed))
            for stop in committed.stopped:
                metrics.STOPS.labels(stop.label).inc()
            metrics.CONFLICTS.inc(committed.conflicts)
            if committed.retry:
                self._wake.set()  # decide again from fresher state
            if self.events is not None:
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
        done = self.monotonic()
        for since in self.changed_at.values():
            metrics.SCHEDULING_LATENCY.observe(done - since)
        self.changed_at.clear()
        self.passes += 1
        self._export(snapshot, now)
        self._forget_nodes()
        await self._settle_releases()
        if fresh:
            await self._collect_echoes(now)
        return plan

    def _forget_nodes(self) -> None:
        """Drop the liveness clocks of nodes with neither a record nor placements."""
        keep = set(self.nodes.items) | set(self.nodes.unreadable)
        keep |= {placement.node for placement in self.placements.values()}
        for book in (self.node_last_seen, self.node_not_ready_since, self._node_shapes):
            for node in [node for node in book if node not in keep]:
                del book[node]
        for node in [node for node in self._node_revisions if node not in self.nodes.items]:
            del self._node_revisions[node]

    async def _settle_releases(self) -> None:
        """End releases that are done (no record, no placements) or overtaken (the node
        wrote a new record since)."""
        placed = {placement.node for placement in self.placements.values()}
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
        seen_now: set[str] = set()
        for mirror, _ in self.echo_watches:
            for key, seen in list(mirror.echoes.items()):
                seen_now.add(key)
                if key in own or now - seen.seen_at <= ECHO_GC_SECONDS:
                    continue
                if self._collecting.get(key) == seen.revision:
                    continue  # asked already; the watch will tell
                self._collecting[key] = seen.revision
                try:
                    await mirror.bucket.delete(key, revision=seen.revision)
                except Conflict:
                    continue  # its owner wrote it again: alive after all
                except Exception as error:
                    log.debug("could not delete echo %s: %s", key, error)
                    continue
                metrics.ECHOES_COLLECTED.inc()
                log.info("deleted the echo key %s/%s of a gone owner", mirror.bucket.name, key)
        for key in [key for key in self._collecting if key not in seen_now]:
            del self._collecting[key]

    def _export(self, snapshot: Snapshot, now: float) -> None:
        live = set()
        for status in self.statuses.values():
            live.add(status.name)
            metrics.REPLICAS_DESIRED.labels(status.name).set(status.replicas)
            metrics.REPLICAS_READY.labels(status.name).set(status.ready)
            metrics.REPLICAS_PENDING.labels(status.name).set(status.pending)
        for gone in self._exported - live:  # drop the series of deleted Deployments
            for gauge in (
                metrics.REPLICAS_DESIRED,
                metrics.REPLICAS_READY,
                metrics.REPLICAS_PENDING,
            ):
                try:
                    gauge.remove(gone)
                except KeyError:
                    pass
        self._exported = live
        metrics.NODES.set(len(snapshot.nodes))
        metrics.NODES_READY.set(
            sum(1 for name in snapshot.nodes if snapshot.schedulable(name, now))
        )
        metrics.NODES_RELEASED.set(len(snapshot.released))


__all__ = ["ControlLoop", "random_suffix"]
