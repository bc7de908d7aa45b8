"""The scheduler's control loop: mirrors of the cluster state in KV, and passes of
snapshot -> schedule -> commit, run whenever something changed (and every second,
so that a node that fell silent is noticed)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from corral import names
from corral.bus import EventPublisher
from corral.kv import Bucket, Mirror
from corral.specs import Deployment
from corral.state import DeploymentStatus, Node, Placement, ReplicaStatus
from corral_scheduler import metrics
from corral_scheduler.apply_plan import PlanApplier
from corral_scheduler.decide import Plan, schedule
from corral_scheduler.snapshot import PlacedReplica, Snapshot

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
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
        self.changed_at: dict[str, float] = {}
        self._wake = anyio.Event()
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
        self.applier = PlanApplier(self.placements, self.statuses)
        self.passes = 0

    def _changed(self, _key: str) -> None:
        self._wake.set()

    def _deployment_changed(self, key: str) -> None:
        self.changed_at.setdefault(key, self.monotonic())
        self._wake.set()

    def _node_changed(self, key: str) -> None:
        self.node_last_seen[key] = self.monotonic()
        self._wake.set()

    def snapshot(self) -> Snapshot:
        return Snapshot(
            deployments={d.metadata.name: d for d in self.deployments.values()},
            statuses={
                key: (status, revision) for key, (status, revision) in self.statuses.items.items()
            },
            nodes=dict((key, node) for key, (node, _) in self.nodes.items.items()),
            node_last_seen=dict(self.node_last_seen),
            placements={
                key: PlacedReplica(revision=revision, placement=placement)
                for key, (placement, revision) in self.placements.items.items()
            },
            replica_statuses={
                key: status for key, (status, _) in self.replica_statuses.items.items()
            },
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for mirror in (
                self.nodes,
                self.placements,
                self.replica_statuses,
                self.statuses,
                self.deployments,
            ):
                await tg.start(mirror.run)
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
        snapshot = self.snapshot()
        now = self.monotonic()
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
        metrics.NODES_READY.set(sum(1 for name in snapshot.nodes if snapshot.node_ready(name, now)))
