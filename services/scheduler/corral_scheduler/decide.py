"""The deciding step: schedule(snapshot, now) -> Plan. Pure: no I/O, no clock, no randomness
of its own (names come from the `new_suffix` argument), so it is tested in milliseconds.

Stages, as in Nomad: reconcile (what must be placed or stopped, per Deployment) ->
feasibility (which Ready nodes have room) -> ranking (spread, then least allocated) -> plan.

Replicas on a lost node are stopped (and so replaced) by the rules of snapshot.py:
after R for "Fast" Deployments, after R' for "AfterStop" ones, at once on a released
node. New replicas first claim a node's orphans (containers of an adopted earlier
cluster with the Deployment's name and current template), so they keep running.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from corral.contract.names import placement_key
from corral.contract.specs import Deployment
from corral.contract.state import DeploymentStatus, Node, OrphanReplica, Placement, ReplicaState
from corral_scheduler.snapshot import Loss, PlacedReplica, Snapshot

MAX_REPLICA_NAME = 63
SUFFIX_LENGTH = 5


@dataclass(frozen=True)
class Stop:
    key: str
    revision: int
    deployment: str
    reason: str  # for people (events); may name a node
    cause: str = ""  # a bounded label (metrics); the reason when empty

    @property
    def label(self) -> str:
        return self.cause or self.reason


@dataclass(frozen=True)
class PlanEvent:
    deployment: str
    reason: str
    message: str
    warning: bool = False


@dataclass
class Plan:
    place: list[Placement] = field(default_factory=list)
    stop: list[Stop] = field(default_factory=list)
    # Each with the revision it was decided on (None: create), for compare-and-set.
    statuses: list[tuple[DeploymentStatus, int | None]] = field(default_factory=list)
    forget_statuses: list[tuple[str, int]] = field(default_factory=list)
    events: list[PlanEvent] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.place or self.stop or self.statuses or self.forget_statuses)


@dataclass
class _Usage:
    cpu_millis: int = 0
    memory_bytes: int = 0
    pods: int = 0


def schedule(
    snapshot: Snapshot,
    now: float,
    *,
    wall_time: float,
    new_suffix: Callable[[], str],
) -> Plan:
    """Decide what to place and stop so that every Deployment converges on its spec.

    `now` is the monotonic clock that node liveness is measured with; `wall_time`
    only stamps records.
    """
    plan = Plan()
    ready_nodes = {name for name in snapshot.nodes if snapshot.schedulable(name, now)}
    usage: defaultdict[str, _Usage] = defaultdict(_Usage)
    by_deployment: dict[str, list[tuple[str, PlacedReplica]]] = {}
    taken_names = {placed.placement.replica for placed in snapshot.placements.values()}
    losses: dict[tuple[str, bool], Loss | None] = {}  # (node, after_stop): once per pass

    def loss(node: str, after_stop: bool) -> Loss | None:
        if (node, after_stop) not in losses:
            losses[node, after_stop] = snapshot.loss(node, now, after_stop=after_stop)
        return losses[node, after_stop]

    for key, placed in sorted(snapshot.placements.items()):
        placement = placed.placement
        deployment = snapshot.deployments.get(placement.deployment)
        if placement.deployment in snapshot.unreadable_deployments:
            _count(usage[placement.node], placement, +1)  # left alone, but it takes room
            continue
        if deployment is None:
            plan.stop.append(Stop(key, placed.revision, placement.deployment, "deployment deleted"))
            continue
        lost = loss(placement.node, deployment.spec.replacement == "AfterStop")
        if lost is not None:
            reason = _LOSS_REASONS[lost].format(node=placement.node)
            plan.stop.append(Stop(key, placed.revision, placement.deployment, reason, lost.value))
        else:
            _count(usage[placement.node], placement, +1)
            by_deployment.setdefault(placement.deployment, []).append((key, placed))

    orphans = _orphans_by_deployment(snapshot, ready_nodes)
    for name, deployment in sorted(snapshot.deployments.items()):
        _reconcile_deployment(
            snapshot,
            deployment,
            by_deployment.get(name, []),
            ready_nodes,
            usage,
            taken_names,
            plan,
            wall_time,
            new_suffix,
            orphans.get(name, []),
        )

    for name, (_, revision) in sorted(snapshot.statuses.items()):
        if name not in snapshot.deployments and name not in snapshot.unreadable_deployments:
            plan.forget_statuses.append((name, revision))
    _summarise_stops(plan)
    return plan


_LOSS_REASONS = {
    Loss.RELEASED: "node {node} was released by an operator",
    Loss.SILENT: "node {node} is not ready (silent too long)",
    Loss.ENGINE_DOWN: "node {node} is not ready (its engine is down)",
}


def _orphans_by_deployment(
    snapshot: Snapshot, ready_nodes: set[str]
) -> dict[str, list[tuple[str, OrphanReplica]]]:
    """The orphans of schedulable nodes, per Deployment name: running ones first, then by
    node and name (deterministic)."""
    found: dict[str, list[tuple[str, OrphanReplica]]] = {}
    for node_name in sorted(ready_nodes):
        for orphan in snapshot.nodes[node_name].orphans:
            found.setdefault(orphan.deployment, []).append((node_name, orphan))
    for entries in found.values():
        entries.sort(key=lambda entry: (not entry[1].running, entry[0], entry[1].replica))
    return found


def _count(node_usage: _Usage, placement: Placement, sign: int) -> None:
    node_usage.cpu_millis += sign * placement.cpu_millis
    node_usage.memory_bytes += sign * placement.memory_bytes
    node_usage.pods += sign


def _is_ready(snapshot: Snapshot, key: str, template_hash: str) -> bool:
    status = snapshot.replica_statuses.get(key)
    return (
        status is not None
        and status.state == ReplicaState.RUNNING
        and status.template_hash == template_hash
    )


def _reconcile_deployment(
    snapshot: Snapshot,
    deployment: Deployment,
    live: list[tuple[str, PlacedReplica]],
    ready_nodes: set[str],
    usage: defaultdict[str, _Usage],
    taken_names: set[str],
    plan: Plan,
    wall_time: float,
    new_suffix: Callable[[], str],
    orphans: Sequence[tuple[str, OrphanReplica]] = (),
) -> None:
    name = deployment.metadata.name
    template = deployment.spec.template
    template_hash = template.template_hash()
    want = deployment.spec.replicas
    current = [(k, p) for k, p in live if p.placement.template_hash == template_hash]
    old = [(k, p) for k, p in live if p.placement.template_hash != template_hash]

    def ready(entries: list[tuple[str, PlacedReplica]]) -> list[tuple[str, PlacedReplica]]:
        return [(k, p) for k, p in entries if _is_ready(snapshot, k, p.placement.template_hash)]

    stops: list[tuple[str, PlacedReplica, str]] = []
    if old:
        # Rolling update: surge new replicas, retire old ones as the new become ready.
        max_surge = max(1, math.ceil(want * 0.25))
        max_unavailable = math.floor(want * 0.25)
        to_place = max(0, min(want - len(current), want + max_surge - len(live)))
        ready_old = ready(old)
        unready_old = [entry for entry in old if entry not in ready_old]
        available = len(ready(current)) + len(ready_old)
        stoppable = max(0, available - (want - max_unavailable))
        stops += [(k, p, "replaced by a new template") for k, p in unready_old]
        stops += [(k, p, "replaced by a new template") for k, p in ready_old[:stoppable]]
    else:
        to_place = max(0, want - len(current))
    excess = len(current) - want
    if excess > 0:
        stops += [(k, p, "scaled down") for k, p in _victims(snapshot, current, excess)]

    for key, placed, reason in stops:
        plan.stop.append(Stop(key, placed.revision, name, reason))
        _count(usage[placed.placement.node], placed.placement, -1)
    stopped = {key for key, _, _ in stops}

    cpu = template.resources.requests.cpu_millis
    memory = template.resources.requests.memory_bytes
    spread = Counter(p.placement.node for k, p in live if k not in stopped)

    def placement(replica: str, node: str) -> Placement:
        return Placement(
            replica=replica,
            deployment=name,
            node=node,
            template=template,
            template_hash=template_hash,
            generation=deployment.metadata.generation,
            cpu_millis=cpu,
            memory_bytes=memory,
            created_at=wall_time,
        )

    # Orphans first: placed where they run, under their own name, they are kept running.
    adopted: list[Placement] = []
    for where, orphan in orphans:
        if len(adopted) == to_place:
            break
        if orphan.template_hash != template_hash or orphan.replica in taken_names:
            continue
        if _misfit(snapshot.nodes[where], usage[where], cpu, memory):
            continue
        taken_names.add(orphan.replica)
        adopted.append(placement(orphan.replica, where))
        _count(usage[where], adopted[-1], +1)
        spread[where] += 1
    placed_now: list[Placement] = list(adopted)
    pending_reason = ""
    remaining = to_place - len(adopted)
    picker = _NodePicker(snapshot, ready_nodes, usage, spread, cpu, memory) if remaining else None
    for _ in range(remaining):
        assert picker is not None
        node = picker.pick()
        if node is None:
            pending_reason = picker.why_none_fits()
            break
        placed_now.append(placement(_new_replica_name(name, taken_names, new_suffix), node))
    plan.place += placed_now

    kept = [(k, p) for k, p in live if k not in stopped]
    pending = to_place - len(placed_now)
    status = DeploymentStatus(
        name=name,
        observed_generation=deployment.metadata.generation,
        replicas=want,
        placed=len(kept) + len(placed_now),
        ready=len(ready(kept)),
        updated=len([1 for _, p in kept if p.placement.template_hash == template_hash])
        + len(placed_now),
        pending=pending,
        pending_reason=pending_reason if pending else "",
        updated_at=wall_time,
    )
    stored = snapshot.statuses.get(name)
    if stored is None or _differs(stored[0], status):
        plan.statuses.append((status, None if stored is None else stored[1]))
        if pending and (stored is None or stored[0].pending_reason != status.pending_reason):
            plan.events.append(
                PlanEvent(
                    name,
                    "FailedScheduling",
                    f"{pending} replica(s) pending: {pending_reason}",
                    warning=True,
                )
            )
    if adopted:
        counts = Counter(p.node for p in adopted)
        where = ", ".join(f"{node}: {count}" for node, count in sorted(counts.items()))
        plan.events.append(
            PlanEvent(name, "Adopted", f"kept {len(adopted)} orphan replica(s) ({where})")
        )
    if placed_now:
        counts = Counter(p.node for p in placed_now)
        where = ", ".join(f"{node}: {count}" for node, count in sorted(counts.items()))
        plan.events.append(
            PlanEvent(name, "Scheduled", f"placed {len(placed_now)} replica(s) ({where})")
        )


def _differs(stored: DeploymentStatus, fresh: DeploymentStatus) -> bool:
    return msgspec.structs.replace(stored, updated_at=0.0) != msgspec.structs.replace(
        fresh, updated_at=0.0
    )


def _victims(
    snapshot: Snapshot, entries: list[tuple[str, PlacedReplica]], count: int
) -> list[tuple[str, PlacedReplica]]:
    """Which replicas to stop when scaling down: not ready ones first (newest first), then
    one at a time from the node that has the most of them, so the rest stay spread,
    taking that node's newest. O(n log n), for scale-downs of thousands."""

    def newest_first(entry: tuple[str, PlacedReplica]) -> tuple[float, str]:
        return (-entry[1].placement.created_at, entry[0])

    def ready(entry: tuple[str, PlacedReplica]) -> bool:
        return _is_ready(snapshot, entry[0], entry[1].placement.template_hash)

    chosen = sorted((e for e in entries if not ready(e)), key=newest_first)[:count]
    per_node: dict[str, list[tuple[str, PlacedReplica]]] = {}
    for entry in sorted((e for e in entries if ready(e)), key=newest_first, reverse=True):
        per_node.setdefault(entry[1].placement.node, []).append(entry)  # newest last
    crowded = [(-len(group), node) for node, group in per_node.items()]
    heapq.heapify(crowded)
    while len(chosen) < count and crowded:
        size, node = heapq.heappop(crowded)
        chosen.append(per_node[node].pop())
        if size + 1 < 0:
            heapq.heappush(crowded, (size + 1, node))
    return chosen


class _NodePicker:
    """Ranks the feasible Ready nodes for one Deployment's new replicas in a heap.

    Only the node just picked changes, so the other entries stay valid: each pick is
    O(log nodes) instead of a scan of every node.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        ready_nodes: set[str],
        usage: defaultdict[str, _Usage],
        spread: Counter[str],
        cpu: int,
        memory: int,
    ) -> None:
        self.snapshot = snapshot
        self.ready_nodes = ready_nodes
        self.usage = usage
        self.spread = spread
        self.cpu = cpu
        self.memory = memory
        self.heap = [
            self._rank(name)
            for name in ready_nodes
            if not _misfit(snapshot.nodes[name], usage[name], cpu, memory)
        ]
        heapq.heapify(self.heap)

    def _rank(self, name: str) -> tuple[int, float, str]:
        capacity = self.snapshot.nodes[name].capacity
        node_usage = self.usage[name]
        load = (node_usage.cpu_millis + self.cpu) / max(capacity.cpu_millis, 1) + (
            node_usage.memory_bytes + self.memory
        ) / max(capacity.memory_bytes, 1)
        return (self.spread[name], load, name)

    def pick(self) -> str | None:
        """The best node (spread first, then least allocated), its usage already counted."""
        while self.heap:
            _, _, name = heapq.heappop(self.heap)
            node_usage = self.usage[name]
            if _misfit(self.snapshot.nodes[name], node_usage, self.cpu, self.memory):
                continue
            node_usage.cpu_millis += self.cpu
            node_usage.memory_bytes += self.memory
            node_usage.pods += 1
            self.spread[name] += 1
            if not _misfit(self.snapshot.nodes[name], node_usage, self.cpu, self.memory):
                heapq.heappush(self.heap, self._rank(name))
            return name
        return None

    def why_none_fits(self) -> str:
        """Why no node can take one more replica, in Kubernetes' words."""
        total = len(self.snapshot.nodes)
        if total == 0:
            return "no nodes are registered"
        reasons: Counter[str] = Counter()
        for name, node in self.snapshot.nodes.items():
            if name not in self.ready_nodes:
                reasons["node(s) not ready"] += 1
            else:
                reasons[_misfit(node, self.usage[name], self.cpu, self.memory)] += 1
        detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        return f"0/{total} nodes are available: {detail}"


def _misfit(node: Node, node_usage: _Usage, cpu: int, memory: int) -> str:
    capacity = node.capacity
    if node_usage.pods + 1 > capacity.pods:
        return "Too many replicas"
    if node_usage.cpu_millis + cpu > capacity.cpu_millis:
        return "Insufficient cpu"
    if node_usage.memory_bytes + memory > capacity.memory_bytes:
        return "Insufficient memory"
    return ""


def _new_replica_name(deployment: str, taken: set[str], new_suffix: Callable[[], str]) -> str:
    stem = deployment[: MAX_REPLICA_NAME - SUFFIX_LENGTH - 1].rstrip("-")
    while True:
        name = f"{stem}-{new_suffix()}"
        if name not in taken:
            taken.add(name)
            return name


def _summarise_stops(plan: Plan) -> None:
    reasons = Counter((stop.deployment, stop.reason) for stop in plan.stop)
    for (deployment, reason), count in sorted(reasons.items()):
        plan.events.append(
            PlanEvent(deployment, "Stopped", f"stopped {count} replica(s): {reason}")
        )


def placement_keys(plan: Plan) -> list[str]:
    return [placement_key(p.node, p.replica) for p in plan.place]
