"""The scheduler's control loop: mirrors of the cluster state in KV, and passes of
snapshot -> schedule -> commit, run whenever something changed (and every second,
so that a node that fell silent is noticed).

The loop also writes an echo key every second and watches it come back: while
its own echo is late, its view of KV is stale (NATS restarting, a partition), and
no node is judged lost on that view.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable

import anyio
import msgspec
from anyio.abc import TaskStatus

from corral import names
from corral.bus import EventPublisher
from corral.codec import encode
from corral.kv import Bucket, Mirror
from corral.specs import Deployment
from corral.state import DeploymentStatus, Node, Placement, ReplicaStatus
from corral_scheduler import metrics
from corral_scheduler.apply_plan import PlanApplier
from corral_scheduler.decide import Plan, schedule
from corral_scheduler.snapshot import PlacedReplica, Snapshot

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
ECHO_SECONDS = 1.0
ECHO_LATE_SECONDS = 3.0
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as Kubernetes: no vowels, no look-alikes


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
        self.node_last_seen: dict[str, float] = {}
        self.node_not_ready_since: dict[str, float] = {}
        self._node_shapes: dict[str, Node] = {}  # each node's record without its heartbeat
        self._nodes_replayed = False
        self.changed_at: dict[str, float] = {}
        self._wake = anyio.Event()
        self.leases = buckets[names.LEASES_BUCKET]
        self.echo_key = f"scheduler-echo-{uuid.uuid4().hex[:12]}"
        self.echo_seen: float | None = None
        self.feed_fresh_since: float | None = None
        self.deployments = Mirror(
            buckets[names.DEPLOYMENTS_BUCKET], Deployment, on_change=self._deployment_changed
        )
        self.statuses = Mirror(buckets[names.DEPLOYMENT_STATUS_BUCKET], DeploymentStatus)
        self.nodes = Mirror(buckets[names.NODES_BUCKET], Node, on_change=self._node_changed)
        self.placements = Mirror(
            buckets[names.PLACEMENTS_BUCKET], Placement, on_change=self._changed
        )
        self.replica_statuses = Mirror(
            buckets[names.REPLICA_STATUS_BUCKET], ReplicaStatus, on_change=self._changed
        )
        self.echo = Mirror(self.leases, float, prefix=self.echo_key, on_change=self._echoed)
        self.applier = PlanApplier(self.placements, self.statuses)
        self.passes = 0

    def _changed(self, _key: str) -> None:
        self._wake.set()

    def _echoed(self, _key: str) -> None:
        self.echo_seen = self.monotonic()

    def _deployment_changed(self, key: str) -> None:
        self.changed_at.setdefault(key, self.monotonic())
        self._wake.set()

    def _node_changed(self, key: str) -> None:
        now = self.monotonic()
        node = self.nodes.get(key)
        if self._nodes_replayed:  # a change seen live, not the replay of what was stored
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

    def _update_feed(self, now: float) -> None:
        fresh = self.echo_seen is not None and now - self.echo_seen <= ECHO_LATE_SECONDS
        if fresh and self.feed_fresh_since is None:
            self.feed_fresh_since = now
            log.info("view of NATS is fresh; node liveness judged from now on")
        elif not fresh and self.feed_fresh_since is not None:
            self.feed_fresh_since = None
            log.warning("view of NATS is stale (echo late); no node is judged lost meanwhile")

    def snapshot(self) -> Snapshot:
        return Snapshot(
            deployments={d.metadata.name: d for d in self.deployments.values()},
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
        )

    async def _write_echoes(self) -> None:
        try:
            while True:
                try:
                    await self.leases.put(self.echo_key, encode(self.wall_clock()))
                except Exception as error:  # NATS away: the echo stays late, as it should
                    log.debug("echo write failed: %s", error)
                await anyio.sleep(ECHO_SECONDS)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    await self.leases.delete(self.echo_key)
                except Exception:
                    log.debug("echo delete failed", exc_info=True)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.nodes.run)
            self._nodes_replayed = True
            for mirror in (
                self.placements,
                self.replica_statuses,
                self.statuses,
                self.deployments,
                self.echo,
            ):
                await tg.start(mirror.run)
            tg.start_soon(self._write_echoes)
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

    async def run_pass(self) -> Plan:
        now = self.monotonic()
        self._update_feed(now)
        metrics.VIEW_FRESH.set(1 if self.feed_fresh_since is not None else 0)
        snapshot = self.snapshot()
        started = time.perf_counter()
        plan = schedule(snapshot, now, wall_time=self.wall_clock(), new_suffix=random_suffix)
        metrics.DECIDE_SECONDS.observe(time.perf_counter() - started)
        if not plan.is_empty():
            committed = await self.applier.commit(plan)
            metrics.PLANS.inc()
            metrics.PLACEMENTS.inc(len(committed.placed))
            for stop in committed.stopped:
                metrics.STOPS.labels(stop.reason).inc()
            metrics.CONFLICTS.inc(committed.conflicts)
            if committed.conflicts:
                self._wake.set()  # decide again from fresher state
            if self.events is not None:
                for event in plan.events:
                    await self.events.emit(
                        "deployment",
                        event.deployment,
                        event.reason,
                        event.message,
                        warning=event.warning,
                    )
        done = self.monotonic()
        for since in self.changed_at.values():
            metrics.SCHEDULING_LATENCY.observe(done - since)
        self.changed_at.clear()
        self.passes += 1
        self._export(snapshot, now)
        return plan

    def _export(self, snapshot: Snapshot, now: float) -> None:
        live = set()
        for status in self.statuses.values():
            live.add(status.name)
            metrics.REPLICAS_DESIRED.labels(status.name).set(status.replicas)
            metrics.REPLICAS_READY.labels(status.name).set(status.ready)
            metrics.REPLICAS_PENDING.labels(status.name).set(status.pending)
        for gauge in (metrics.REPLICAS_DESIRED, metrics.REPLICAS_READY, metrics.REPLICAS_PENDING):
            for labels in list(gauge._metrics):  # drop the series of deleted Deployments
                if labels[0] not in live:
                    gauge.remove(*labels)
        metrics.NODES.set(len(snapshot.nodes))
        metrics.NODES_READY.set(
            sum(1 for name in snapshot.nodes if snapshot.schedulable(name, now))
        )
