"""The deciding step: schedule(snapshot, now) -> Plan. Pure: no I/O, no clock, no randomness
of its own (names come from the `new_suffix` argument), so it is tested in milliseconds.

Two entries: `schedule` decides the whole cluster in one pass (benchmarks, tests);
`schedule_deployment` decides ONE Deployment from its own part of the view and the
cluster-wide facts the caller keeps incrementally (per-node usage, replica names taken,
schedulable nodes): the running scheduler's controller calls it per changed key.

Stages, as in Nomad: reconcile (what must be placed or stopped, per Deployment) ->
feasibility (which Ready nodes have room, carry the template's nodeSelector labels,
and which the template's claims allow: volume_fit.py) -> ranking (spread, then least
allocated) -> plan.
Per Deployment (`_reconcile_deployment`), in named steps: split its replicas by template
and readiness (`_Replicas`), the rollout arithmetic on those counts (rollout.py, pure),
what to stop (`_what_to_stop`), what to place (`_what_to_place`), the status (`_status`).

Replicas on a lost node are stopped (and so replaced) by the rules of snapshot.py:
after R for "Fast" Deployments, after R' for "AfterStop" ones, at once on a released
node; "Never" ones (containers) only on a released node. New replicas first claim a
node's orphans (containers of an adopted earlier cluster with the Deployment's name and
current template), so they keep running.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from corral.contract.names import object_key
from corral.contract.specs import (
    DEFAULT_ROLLING_UPDATE,
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    claim_names,
    labels_match,
)
from corral.contract.state import (
    AutoRollbackRecord,
    DeploymentStatus,
    Node,
    NodeCapacity,
    OrphanReplica,
    Placement,
    ReplicaState,
)
from corral_scheduler.node_ranking import NodeRanking
from corral_scheduler.progress import Seen, conditions
from corral_scheduler.rollout import Step, resolve_bounds, rollout_step
from corral_scheduler.snapshot import Loss, PlacedReplica, Snapshot
from corral_scheduler.volume_fit import VolumeFit, VolumeTakes, uses_exclusive_claim

MAX_REPLICA_NAME = 63
SUFFIX_LENGTH = 5


@dataclass(frozen=True)
class Stop:
    key: str
    revision: int
    deployment: str  # its key: <namespace>.<name>
    reason: str  # for people (events); may name a node
    cause: str = ""  # a bounded label (metrics); the reason when empty

    @property
    def label(self) -> str:
        return self.cause or self.reason


@dataclass(frozen=True)
class PlanEvent:
    deployment: str  # its key: <namespace>.<name>
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
    # Decide again after this many seconds even if nothing changes: a new replica will
    # have run for its Deployment's minReadySeconds by then (None: no such replica).
    requeue_after: float | None = None
    # Decide again after this many seconds: the progress deadline passes then, unless the
    # rollout progresses meanwhile (progress.py; None: no deadline runs).
    deadline_in: float | None = None

    def is_empty(self) -> bool:
        return not (self.place or self.stop or self.statuses or self.forget_statuses)


@dataclass
class Usage:
    """What the placements on one node reserve."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    pods: int = 0


_NO_USAGE = Usage()  # a node nothing is placed on, when only read (never changed)
# Below this a load's numerator is exact enough that two nodes of one class of capacity
# have the same load only if they have the same allocation (node_ranking.py).
_EXACT_NUMERATOR = 2**52
# The fewest nodes a decision pulls off the ranking before it ranks every node instead.
_MIN_PULLS = 64


def _load(capacity: NodeCapacity, cpu_millis: int, memory_bytes: int) -> float:
    """How much of a node's room `cpu_millis` and `memory_bytes` take: the CPU and the
    memory fractions summed, computed as one exact integer over the capacities' product
    (one rounding): nodes of one class of capacity then order by load exactly as by
    allocation (node_ranking.allocation), ties included."""
    return _exact_load(capacity, cpu_millis, memory_bytes)[0]


def _exact_load(capacity: NodeCapacity, cpu_millis: int, memory_bytes: int) -> tuple[float, bool]:
    """`_load`, and whether it is exact enough that another node of the class has the
    same load only with the same allocation (its numerator below _EXACT_NUMERATOR)."""
    cpu_capacity = max(capacity.cpu_millis, 1)
    memory_capacity = max(capacity.memory_bytes, 1)
    numerator = cpu_millis * memory_capacity + memory_bytes * cpu_capacity
    return numerator / (cpu_capacity * memory_capacity), numerator < _EXACT_NUMERATOR


class _Names(Protocol):
    def __contains__(self, name: object, /) -> bool: ...

    def add(self, name: str, /) -> None: ...


class _NamesTaken:
    """Names taken cluster-wide (the caller's, read only) plus those this decision takes."""

    def __init__(self, base: Container[str]) -> None:
        self.base = base
        self.added: set[str] = set()

    def __contains__(self, name: object) -> bool:
        return name in self.added or name in self.base

    def add(self, name: str) -> None:
        self.added.add(name)


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
    usage: defaultdict[str, Usage] = defaultdict(Usage)
    by_deployment: dict[str, list[tuple[str, PlacedReplica]]] = {}  # by Deployment key
    taken_names = {placed.placement.replica for placed in snapshot.placements.values()}
    losses: dict[tuple[str, bool], Loss | None] = {}  # (node, after_stop): once per pass

    def loss(node: str, after_stop: bool) -> Loss | None:
        if (node, after_stop) not in losses:
            losses[node, after_stop] = snapshot.loss(node, now, after_stop=after_stop)
        return losses[node, after_stop]

    for key, placed in sorted(snapshot.placements.items()):
        placement = placed.placement
        owner = placement.deployment_key
        deployment = snapshot.deployments.get(owner)
        if owner in snapshot.unreadable_deployments:
            _count(usage[placement.node], placement, +1)  # left alone, but it takes room
            continue
        if deployment is None:
            plan.stop.append(Stop(key, placed.revision, owner, "deployment deleted"))
            continue
        lost = _moving(deployment, loss(placement.node, deployment.spec.replacement == "AfterStop"))
        if lost is not None:
            reason = _LOSS_REASONS[lost].format(node=placement.node)
            plan.stop.append(Stop(key, placed.revision, owner, reason, lost.value))
        else:
            _count(usage[placement.node], placement, +1)
            by_deployment.setdefault(owner, []).append((key, placed))

    orphans = _orphans_by_deployment(snapshot, ready_nodes)
    run = _Pass(snapshot, ready_nodes, usage, taken_names, wall_time, new_suffix)
    for key, deployment in sorted(snapshot.deployments.items()):
        live = by_deployment.get(key, [])
        _reconcile_deployment(run, deployment, live, orphans.get(key, []), plan)

    for key, (_, revision) in sorted(snapshot.statuses.items()):
        if key not in snapshot.deployments and key not in snapshot.unreadable_deployments:
            plan.forget_statuses.append((key, revision))
    _summarise_stops(plan)
    return plan


def schedule_deployment(
    view: Snapshot,
    key: str,
    now: float,
    *,
    usage: Mapping[str, Usage],
    taken_names: Container[str],
    ready_nodes: Set[str],
    wall_time: float,
    new_suffix: Callable[[], str],
    revision: int = 0,
    rolled_back: AutoRollbackRecord | None = None,
    ranking: NodeRanking | None = None,
) -> Plan:
    """Decide ONE Deployment (`key`): the same Plan `schedule` would make for it.

    `view` holds the Deployment, its status, its placements and their replica statuses
    (others in it are ignored), every node and the liveness facts; `usage` counts every
    placement of the cluster per node, `taken_names` every replica name, `ready_nodes`
    the schedulable nodes. None of them is changed: the room this decision takes is
    counted on copies of the nodes it touches, never O(placements of the cluster); a
    decision that places nothing costs O(its own placements), not O(nodes).

    Run off the event loop (control_loop.DecideIn.THREAD), its inputs must not change
    while it runs: the caller passes copies (`usage` of immutable Usage records shallow-
    copied, the nodes and liveness facts copied), except `taken_names`, only asked
    `name in taken_names`, which the caller checks again for the names placed.

    `revision`: the current template's revision (history.py; 0: not known, the stored
    status's is kept); `rolled_back`: the automatic rollback just wrote that revision
    (auto_rollback.py). Both feed the status's conditions (progress.py).

    `ranking`: every node with a record in order of allocation (node_ranking.py), kept
    with `usage` by the caller; placing k replicas then reads about k nodes off its
    head instead of ranking every node, and picks the same ones. Never with a decision
    made off the event loop (it is not copied).
    """
    plan = Plan()
    if key in view.unreadable_deployments:
        return plan  # left alone: its placements keep running, its status stays
    deployment = view.deployments.get(key)
    after_stop = deployment is not None and deployment.spec.replacement == "AfterStop"
    mine = _UsageCopy(usage)  # copied per node as the decision first touches it
    live: list[tuple[str, PlacedReplica]] = []
    for placement_key, placed in sorted(view.placements.items()):
        placement = placed.placement
        if placement.deployment_key != key:
            continue
        if deployment is None:
            plan.stop.append(Stop(placement_key, placed.revision, key, "deployment deleted"))
            continue
        lost = _moving(deployment, view.loss(placement.node, now, after_stop=after_stop))
        if lost is not None:
            reason = _LOSS_REASONS[lost].format(node=placement.node)
            plan.stop.append(Stop(placement_key, placed.revision, key, reason, lost.value))
            _count(mine[placement.node], placement, -1)  # as `schedule`: it takes no room
        else:
            live.append((placement_key, placed))
    if deployment is not None:
        orphans = _orphans_of(view, ready_nodes, key)
        run = _Pass(view, ready_nodes, mine, _NamesTaken(taken_names), wall_time, new_suffix)
        run.revision, run.rolled_back, run.ranking = revision, rolled_back, ranking
        _reconcile_deployment(run, deployment, live, orphans, plan)
    else:
        stored = view.statuses.get(key)
        if stored is not None:
            plan.forget_statuses.append((key, stored[1]))
    _summarise_stops(plan)
    return plan


def _moving(deployment: Deployment, lost: Loss | None) -> Loss | None:
    """Why a replica of `deployment` on a node judged `lost` is stopped and placed again,
    or None to keep it: a "Never" Deployment's replica (a container: docs/containers.md)
    keeps its placement on a lost node, silent or with its engine down, as a bare Pod
    stays bound to its node; only an operator's release moves it."""
    if lost is None or deployment.spec.replacement != "Never" or lost == Loss.RELEASED:
        return lost
    return None


_LOSS_REASONS = {
    Loss.RELEASED: "node {node} was released by an operator",
    Loss.SILENT: "node {node} is not ready (silent too long)",
    Loss.ENGINE_DOWN: "node {node} is not ready (its engine is down)",
}


def _orphans_by_deployment(
    snapshot: Snapshot, ready_nodes: set[str]
) -> dict[str, list[tuple[str, OrphanReplica]]]:
    """The orphans of schedulable nodes, per Deployment key: running ones first, then by
    node and name (deterministic)."""
    found: dict[str, list[tuple[str, OrphanReplica]]] = {}
    for node_name in sorted(ready_nodes):
        for orphan in snapshot.nodes[node_name].orphans:
            owner = object_key(orphan.namespace, orphan.deployment)
            found.setdefault(owner, []).append((node_name, orphan))
    for entries in found.values():
        entries.sort(key=lambda entry: (not entry[1].running, entry[0], entry[1].replica))
    return found


def _orphans_of(
    snapshot: Snapshot, ready_nodes: Set[str], key: str
) -> list[tuple[str, OrphanReplica]]:
    """The orphans of Deployment `key` on schedulable nodes, ordered as
    `_orphans_by_deployment` orders them: from the nodes the snapshot names as holding
    some (`orphan_holders`, O(those)), or else from every schedulable node (O(nodes))."""
    nodes = snapshot.nodes
    holders = snapshot.orphan_holders
    found: list[tuple[str, OrphanReplica]] = []
    for node_name in ready_nodes if holders is None else holders:
        node = nodes.get(node_name)
        if node is None or node_name not in ready_nodes:
            continue
        for orphan in node.orphans:
            if object_key(orphan.namespace, orphan.deployment) == key:
                found.append((node_name, orphan))
    found.sort(key=lambda entry: (not entry[1].running, entry[0], entry[1].replica))
    return found


class _UsageCopy(dict[str, Usage]):
    """The caller's usage per node (read only), copied node by node as a decision first
    reads it: the decision counts the room it takes on its copies only."""

    def __init__(self, base: Mapping[str, Usage]) -> None:
        super().__init__()
        self.base = base

    def __missing__(self, node: str) -> Usage:
        found = self.base.get(node)
        mine = Usage() if found is None else Usage(found.cpu_millis, found.memory_bytes, found.pods)
        self[node] = mine
        return mine

    def get(self, node: str, default: Usage | None = None) -> Usage | None:  # type: ignore[override]
        """The node's usage, read without copying it (ranking every node copies none)."""
        found = dict.get(self, node)
        if found is None:
            found = self.base.get(node)
        return default if found is None else found


def _count(node_usage: Usage, placement: Placement, sign: int) -> None:
    node_usage.cpu_millis += sign * placement.cpu_millis
    node_usage.memory_bytes += sign * placement.memory_bytes
    node_usage.pods += sign


def _available_in(snapshot: Snapshot, key: str, min_ready: int, wall_time: float) -> float:
    """Seconds until a Running replica has run `min_ready` seconds (0: it has; a start
    time the agent did not report counts as long ago)."""
    status = snapshot.replica_statuses.get(key)
    if not min_ready or status is None or status.started_at is None:
        return 0.0
    return max(0.0, min(float(min_ready), status.started_at + min_ready - wall_time))


def _is_running(snapshot: Snapshot, key: str, template_hash: str) -> bool:
    """Running (ready or not), and reported for this template."""
    status = snapshot.replica_statuses.get(key)
    return (
        status is not None
        and status.state == ReplicaState.RUNNING
        and status.template_hash == template_hash
    )


def _is_ready(snapshot: Snapshot, key: str, template_hash: str) -> bool:
    """Ready as ReplicaStatus.is_ready says (Running, its readiness probe if any passing),
    and reported for this template."""
    status = snapshot.replica_statuses.get(key)
    return status is not None and status.is_ready and status.template_hash == template_hash


@dataclass
class _Pass:
    """What one deciding pass shares across Deployments. Placing a replica counts it in
    `usage` and `taken_names`, so the next Deployment sees the room it took."""

    snapshot: Snapshot
    ready_nodes: Set[str]
    usage: dict[str, Usage]  # a defaultdict(Usage) or a _UsageCopy: every node readable
    taken_names: _Names
    wall_time: float
    new_suffix: Callable[[], str]
    # The claims this pass's placements use and the room they take (volume_fit.py).
    volume_takes: VolumeTakes = field(default_factory=VolumeTakes)
    # The current template's revision (0: not known) and an automatic rollback to it just
    # written (schedule_deployment's arguments; the status's conditions: progress.py).
    revision: int = 0
    rolled_back: AutoRollbackRecord | None = None
    # The nodes in order of allocation, kept by the caller (node_ranking.py): placing a
    # few replicas reads its head instead of ranking every node. None: rank every node.
    ranking: NodeRanking | None = None


@dataclass
class _Replicas:
    """One Deployment's live replicas (in key order): of the current template or old,
    and which are ready: ReplicaStatus.is_ready, and for those of the current template
    started at least the Deployment's minReadySeconds ago (available, as Kubernetes says;
    counted from the start, the status has no time it became ready)."""

    current: list[tuple[str, PlacedReplica]]
    current_ready: int
    old_ready: list[tuple[str, PlacedReplica]]
    old_unready: list[tuple[str, PlacedReplica]]  # not Running first, then Running
    ready_keys: set[str]
    # How many of old_unready are Running (readiness not passing): stopped within budget.
    old_running_unready: int = 0
    # Seconds until the first Running current replica becomes available (None: none waits).
    available_in: float | None = None

    @classmethod
    def split(
        cls,
        snapshot: Snapshot,
        live: list[tuple[str, PlacedReplica]],
        template_hash: str,
        *,
        min_ready: int = 0,
        wall_time: float = 0.0,
    ) -> _Replicas:
        replicas = cls(current=[], current_ready=0, old_ready=[], old_unready=[], ready_keys=set())
        for entry in live:
            key, placed = entry
            ready = _is_ready(snapshot, key, placed.placement.template_hash)
            current = placed.placement.template_hash == template_hash
            if ready and current and min_ready:
                wait = _available_in(snapshot, key, min_ready, wall_time)
                if wait > 0:
                    ready = False
                    if replicas.available_in is None or wait < replicas.available_in:
                        replicas.available_in = wait
            if ready:
                replicas.ready_keys.add(key)
            if current:
                replicas.current.append(entry)
                replicas.current_ready += ready
            elif ready:
                replicas.old_ready.append(entry)
            else:
                replicas.old_unready.append(entry)
        if replicas.old_unready:  # the not Running ones stop first (stable: key order)
            running = [
                _is_running(snapshot, k, p.placement.template_hash) for k, p in replicas.old_unready
            ]
            replicas.old_running_unready = sum(running)
            order = sorted(range(len(running)), key=running.__getitem__)
            replicas.old_unready = [replicas.old_unready[i] for i in order]
        return replicas

    def step(self, spec: DeploymentSpec, *, exclusive: bool = False) -> Step:
        """The rollout arithmetic (rollout.py) on these counts, with the Deployment's
        settings (`exclusive`: a ReadWriteOncePod claim, the old replica stops first)."""
        want = spec.replicas
        recreate = spec.strategy.type == "Recreate"
        rolling = spec.strategy.rolling_update or DEFAULT_ROLLING_UPDATE
        if recreate:  # the bounds only matter while no old replica is left: plain scaling
            bounds = resolve_bounds(want, 0, "100%", exclusive=exclusive)
        else:
            surge, unavailable = rolling.max_surge, rolling.max_unavailable
            bounds = resolve_bounds(want, surge, unavailable, exclusive=exclusive)
        return rollout_step(
            want,
            bounds,
            old=len(self.old_ready) + len(self.old_unready),
            old_ready=len(self.old_ready),
            new=len(self.current),
            new_ready=self.current_ready,
            recreate=recreate,
            paused=spec.paused,
            old_running_unready=self.old_running_unready,
        )

    def old_template(self) -> tuple[ContainerTemplate, str] | None:
        """The old template most old replicas run (the newest on a tie), and its hash: what
        a paused Deployment scales up with."""
        old = self.old_ready + self.old_unready
        if not old:
            return None
        counts = Counter(placed.placement.template_hash for _, placed in old)
        _, chosen = max(
            old,
            key=lambda e: (counts[e[1].placement.template_hash], e[1].placement.created_at, e[0]),
        )
        return chosen.placement.template, chosen.placement.template_hash


@dataclass
class _Placed:
    adopted: list[Placement]  # orphans kept where they run
    new: list[Placement]  # adopted first, then new names on ranked nodes
    pending: int
    pending_reason: str


def _reconcile_deployment(
    run: _Pass,
    deployment: Deployment,
    live: list[tuple[str, PlacedReplica]],
    orphans: Sequence[tuple[str, OrphanReplica]],
    plan: Plan,
) -> None:
    """One Deployment's share of the plan: what to stop, what to place, its status."""
    name = deployment.key
    template_hash = deployment.spec.template.template_hash()
    min_ready = deployment.spec.min_ready_seconds
    replicas = _Replicas.split(
        run.snapshot, live, template_hash, min_ready=min_ready, wall_time=run.wall_time
    )
    if replicas.available_in is not None:
        wait = replicas.available_in + 0.05  # decided again just past the moment
        plan.requeue_after = wait if plan.requeue_after is None else min(plan.requeue_after, wait)
    template = deployment.spec.template
    exclusive = bool(template.volumes) and uses_exclusive_claim(
        run.snapshot.volumes, deployment.metadata.namespace, template
    )
    step = replicas.step(deployment.spec, exclusive=exclusive)

    stops = _what_to_stop(run.snapshot, replicas, step)
    for key, victim, reason in stops:
        plan.stop.append(Stop(key, victim.revision, name, reason))
        _count(run.usage[victim.placement.node], victim.placement, -1)
    stopped = {key for key, _, _ in stops}
    kept = [(k, p) for k, p in live if k not in stopped] if stopped else live

    if step.place_old:  # paused: a scale-up with the old template
        old_template, old_hash = replicas.old_template() or (template, template_hash)
        placed = _what_to_place(
            run, deployment, old_hash, kept, step.place_old, orphans, template=old_template
        )
        placed_current = 0
    else:
        placed = _what_to_place(run, deployment, template_hash, kept, step.place_new, orphans)
        placed_current = len(placed.new)
    plan.place += placed.new

    ready = len(replicas.ready_keys - stopped) if stopped else len(replicas.ready_keys)
    current_stopped = sum(1 for key, _ in replicas.current if key in stopped)
    updated = len(replicas.current) - current_stopped + placed_current
    rolling = deployment.spec.strategy.rolling_update or DEFAULT_ROLLING_UPDATE
    if deployment.spec.strategy.type == "Recreate":
        max_unavailable = 0  # as Kubernetes' MaxUnavailable: every replica, when not rolling
    else:
        max_unavailable = resolve_bounds(
            deployment.spec.replicas,
            rolling.max_surge,
            rolling.max_unavailable,
            exclusive=exclusive,
        ).max_unavailable
    _status(run, deployment, len(kept), ready, updated, placed, plan, max_unavailable)
    if placed.adopted:
        where = _per_node(placed.adopted)
        message = f"kept {len(placed.adopted)} orphan replica(s) ({where})"
        plan.events.append(PlanEvent(name, "Adopted", message))
    if placed.new:
        message = f"placed {len(placed.new)} replica(s) ({_per_node(placed.new)})"
        plan.events.append(PlanEvent(name, "Scheduled", message))


def _per_node(placements: list[Placement]) -> str:
    counts = Counter(p.node for p in placements)
    return ", ".join(f"{node}: {count}" for node, count in sorted(counts.items()))


def _what_to_stop(
    snapshot: Snapshot, replicas: _Replicas, step: Step
) -> list[tuple[str, PlacedReplica, str]]:
    """The replicas to stop, with the reason: old ones that are not Running, then the
    Running old ones the arithmetic lets go (in key order), then the current ones beyond
    `replicas` (`_victims`)."""
    replaced = "replaced by a new template"
    stops = [(k, p, replaced) for k, p in replicas.old_unready[: step.stop_old_unready]]
    stops += [(k, p, replaced) for k, p in replicas.old_ready[: step.stop_old_ready]]
    if step.stop_any:  # paused: a scale-down among old and new alike
        every = replicas.current + replicas.old_ready + replicas.old_unready
        stops += [(k, p, "scaled down") for k, p in _victims(snapshot, every, step.stop_any)]
    if step.stop_new:
        victims = _victims(snapshot, replicas.current, step.stop_new)
        stops += [(k, p, "scaled down") for k, p in victims]
    return stops


def _what_to_place(
    run: _Pass,
    deployment: Deployment,
    template_hash: str,
    kept: list[tuple[str, PlacedReplica]],
    count: int,
    orphans: Sequence[tuple[str, OrphanReplica]],
    *,
    template: ContainerTemplate | None = None,
) -> _Placed:
    """`count` new placements: the Deployment's orphans first (placed where they run,
    under their own name, they are kept running), then new names on the ranked nodes.
    `template` (of `template_hash`): an old one (a paused Deployment), else the spec's."""
    name = deployment.metadata.name
    namespace = deployment.metadata.namespace
    if template is None:
        template = deployment.spec.template
    missing = run.snapshot.missing_network(template)
    if missing is not None and count:
        # Nothing is placed until netmgr has the network: its appearance decides again.
        return _Placed([], [], count, f"network {missing} does not exist")
    fit: VolumeFit | None = None
    if template.volumes and count:  # a template without volumes costs nothing here
        claims = claim_names(template)
        if claims:
            fit = VolumeFit(run.snapshot.volumes, namespace, claims, run.volume_takes)
            if fit.block:
                return _Placed([], [], count, fit.block)
    cpu = template.resources.requests.cpu_millis
    memory = template.resources.requests.memory_bytes
    spread = Counter(p.placement.node for _, p in kept)

    def placement(replica: str, node: str) -> Placement:
        return Placement(
            replica=replica,
            deployment=name,
            node=node,
            namespace=namespace,
            template=template,
            template_hash=template_hash,
            generation=deployment.metadata.generation,
            cpu_millis=cpu,
            memory_bytes=memory,
            created_at=run.wall_time,
        )

    adopted: list[Placement] = []
    for where, orphan in orphans:
        if len(adopted) == count:
            break
        if orphan.template_hash != template_hash or orphan.replica in run.taken_names:
            continue
        if _misfit(run.snapshot.nodes[where], run.usage[where], cpu, memory):
            continue
        if _selector_misfit(run.snapshot.nodes[where], template.node_selector):
            continue
        if fit is not None and (fit.block or fit.misfit(where)):
            continue
        run.taken_names.add(orphan.replica)
        adopted.append(placement(orphan.replica, where))
        _count(run.usage[where], adopted[-1], +1)
        spread[where] += 1
        if fit is not None:
            fit.took(where, orphan.replica)
    placed_now: list[Placement] = list(adopted)
    pending_reason = ""
    remaining = count - len(adopted)
    if remaining:
        picker = _NodePicker(
            run.snapshot,
            run.ready_nodes,
            run.usage,
            spread,
            cpu,
            memory,
            fit,
            selector=template.node_selector,
            ranking=run.ranking,
        )
        for _ in range(remaining):
            node = picker.pick()
            if node is None:
                pending_reason = picker.why_none_fits()
                break
            replica = _new_replica_name(name, run.taken_names, run.new_suffix)
            placed_now.append(placement(replica, node))
            if fit is not None:
                fit.took(node, replica)
    pending = count - len(placed_now)
    return _Placed(adopted, placed_now, pending, pending_reason if pending else "")


def _status(
    run: _Pass,
    deployment: Deployment,
    kept: int,
    ready: int,
    updated: int,
    placed: _Placed,
    plan: Plan,
    max_unavailable: int = 0,
) -> None:
    """The Deployment's status after this pass (`kept`: replicas not stopped, `ready` of
    them Running, `updated`: of the current template, new ones included), written only
    when it changed; a FailedScheduling event when the reason for pending ones is new.
    Its conditions, revision and automatic-rollback record: progress.py (with a requeue
    at the moment the progress deadline would pass, and its Warning event)."""
    name = deployment.key
    stored = run.snapshot.statuses.get(name)
    stored_status = None if stored is None else stored[0]
    placed_count = kept + len(placed.new)
    seen = Seen(
        replicas=deployment.spec.replicas,
        updated=updated,
        ready=ready,
        available=ready,  # `ready` counts current replicas only after minReadySeconds
        old=max(0, placed_count - updated),
        pending=placed.pending,
        revision=run.revision,
        paused=deployment.spec.paused,
        deadline_seconds=deployment.spec.progress_deadline_seconds,
        max_unavailable=max_unavailable,
    )
    outcome = conditions(stored_status, seen, run.wall_time, rolled_back=run.rolled_back)
    if outcome.requeue_after is not None:
        wait = outcome.requeue_after
        plan.deadline_in = wait if plan.deadline_in is None else min(plan.deadline_in, wait)
    revision = run.revision or (0 if stored_status is None else stored_status.revision)
    status = DeploymentStatus(
        name=deployment.metadata.name,
        namespace=deployment.metadata.namespace,
        observed_generation=deployment.metadata.generation,
        replicas=deployment.spec.replicas,
        placed=placed_count,
        ready=ready,
        updated=updated,
        pending=placed.pending,
        pending_reason=placed.pending_reason,
        updated_at=run.wall_time,
        available=ready,
        revision=revision,
        conditions=outcome.conditions,
        auto_rollback=outcome.auto_rollback,
    )
    if stored is not None and not _differs(stored[0], status):
        return
    plan.statuses.append((status, None if stored is None else stored[1]))
    for event in outcome.events:
        plan.events.append(PlanEvent(name, event.reason, event.message, warning=event.warning))
    if placed.pending and (stored is None or stored[0].pending_reason != status.pending_reason):
        plan.events.append(
            PlanEvent(
                name,
                "FailedScheduling",
                f"{placed.pending} replica(s) pending: {placed.pending_reason}",
                warning=True,
            )
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
    O(log nodes) instead of a scan of every node. With volumes (`fit`), the rules of
    volume_fit.py exclude nodes too; within one decision they only ever exclude more
    (a claim pinned to the node picked, room taken), so an entry they exclude is dropped.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        ready_nodes: Set[str],
        usage: dict[str, Usage],
        spread: Counter[str],
        cpu: int,
        memory: int,
        fit: VolumeFit | None = None,
        *,
        selector: Mapping[str, str] | None = None,
        ranking: NodeRanking | None = None,
    ) -> None:
        self.snapshot = snapshot
        # The template's nodeSelector: fixed for the pass, so it only filters the heap.
        self.selector: Mapping[str, str] = selector or {}
        self.ready_nodes = ready_nodes
        self.usage = usage
        self.spread = spread
        self.cpu = cpu
        self.memory = memory
        self.fit = fit
        # With a ranking, nodes are pulled off the head of each class of it as picks need
        # them (`_fill`): the frontier holds each class's next node not pulled yet, by
        # its load and name (load, name, class, position).
        self._classes: list[Any] = []
        self._frontier: list[tuple[float, str, int, int]] = []
        # Nodes whose usage this decision changed before ranking (its stops, its adopted
        # orphans: the copies in a _UsageCopy): the ranking's order does not hold for
        # them, so they are candidates from the start and skipped on the ranking.
        self._touched: set[str] = set()
        # Pulling one by one costs several times ranking a node in `_ranked`: past this
        # many pulls (ties, spread everywhere, few nodes ready or fitting) every node is
        # ranked instead, which picks the same.
        self._pulls_left = max(_MIN_PULLS, len(ready_nodes) // 8)
        if ranking is None or not isinstance(usage, _UsageCopy):
            self._rank_every_node()
        else:
            self.heap = []
            self._classes = list(ranking.classes())
            self._touched = set(dict.keys(usage))
            for name in self._touched:
                candidate = self._candidate(name)
                if candidate is not None:
                    self.heap.append(candidate)
            heapq.heapify(self.heap)
            for index in range(len(self._classes)):
                self._reach(index, 0)

    def _rank_every_node(self) -> None:
        """The heap of every ready node that fits, at its rank now (and no ranking)."""
        self.heap = self._ranked(self.ready_nodes)
        heapq.heapify(self.heap)
        self._classes, self._frontier = [], []

    def _reach(self, index: int, position: int) -> None:
        """Put class `index`'s node at `position` (or the next one with a record) on the
        frontier, by its load now and its name. Along a class, loads never fall, and
        nodes of equal load come by name: the frontier's entry is less than every node
        of its class not pulled yet. Where loads are too large to be exact, another
        node of the class may have an equal load and a lesser name: its entry then
        carries the least name, "", so that only a higher load counts as past it."""
        entries = self._classes[index]
        nodes = self.snapshot.nodes
        while position < len(entries):
            name = entries[position][1]
            node = nodes.get(name)
            if node is not None and name not in self._touched:
                used = self.usage.get(name) or _NO_USAGE
                load, exact = _exact_load(
                    node.capacity, used.cpu_millis + self.cpu, used.memory_bytes + self.memory
                )
                heapq.heappush(self._frontier, (load, name if exact else "", index, position))
                return
            position += 1

    def _fill(self) -> None:
        """Pull nodes off the ranking until none not pulled yet can rank before the best
        one pulled: the best has no replica of this Deployment (spread 0: it wins over
        any with one) and comes before the next node of every class (`_reach`)."""
        frontier, heap = self._frontier, self.heap
        while frontier:
            if heap and heap[0][0] == 0 and frontier[0][:2] > heap[0][1:]:
                return
            if self._pulls_left <= 0:
                self._rank_every_node()
                return
            self._pulls_left -= 1
            _, _, index, position = heapq.heappop(frontier)
            name = self._classes[index][position][1]
            self._reach(index, position + 1)
            candidate = self._candidate(name)
            if candidate is not None:
                heapq.heappush(heap, candidate)

    def _candidate(self, name: str) -> tuple[int, float, str] | None:
        """A node's `_rank` if it is ready and fits, as `_ranked` judges every node."""
        node = self.snapshot.nodes.get(name)
        if node is None or name not in self.ready_nodes:
            return None
        used = self.usage.get(name) or _NO_USAGE
        if _misfit(node, used, self.cpu, self.memory):
            return None
        if self.selector and _selector_misfit(node, self.selector):
            return None
        if self.fit is not None and self.fit.misfit(name):
            return None
        load = _load(node.capacity, used.cpu_millis + self.cpu, used.memory_bytes + self.memory)
        return (self.spread[name], load, name)

    def _ranked(self, ready_nodes: Set[str]) -> list[tuple[int, float, str]]:
        """Every feasible node's `_rank`, as `_misfit`, `_selector_misfit` and `fit` judge
        it: the one loop of a decision over every node, written out (no call, no usage
        copied per node) since it is most of what placing one replica costs."""
        nodes, usage, spread, selector, fit = (
            self.snapshot.nodes,
            self.usage,
            self.spread,
            self.selector,
            self.fit,
        )
        cpu, memory = self.cpu, self.memory
        ranked: list[tuple[int, float, str]] = []
        for name in ready_nodes:
            node = nodes.get(name)
            if node is None:
                continue  # its record went since it was judged ready: nothing to rank
            capacity = node.capacity
            used = usage.get(name) or _NO_USAGE
            used_cpu = used.cpu_millis + cpu
            used_memory = used.memory_bytes + memory
            if (
                used.pods + 1 > capacity.pods
                or used_cpu > capacity.cpu_millis
                or used_memory > capacity.memory_bytes
            ):
                continue
            if selector and _selector_misfit(node, selector):
                continue
            if fit is not None and fit.misfit(name):
                continue
            cpu_capacity = max(capacity.cpu_millis, 1)
            memory_capacity = max(capacity.memory_bytes, 1)
            load = (used_cpu * memory_capacity + used_memory * cpu_capacity) / (
                cpu_capacity * memory_capacity
            )  # _load, written out
            ranked.append((spread[name], load, name))
        return ranked

    def _rank(self, name: str) -> tuple[int, float, str]:
        capacity = self.snapshot.nodes[name].capacity
        node_usage = self.usage[name]
        load = _load(
            capacity, node_usage.cpu_millis + self.cpu, node_usage.memory_bytes + self.memory
        )
        return (self.spread[name], load, name)

    def pick(self) -> str | None:
        """The best node (spread first, then least allocated), its usage already counted."""
        fit = self.fit
        if fit is not None and fit.block:
            return None  # a ReadWriteOncePod claim has its one replica now
        while True:
            self._fill()
            if not self.heap:
                return None
            _, _, name = heapq.heappop(self.heap)
            node_usage = self.usage[name]
            if _misfit(self.snapshot.nodes[name], node_usage, self.cpu, self.memory):
                continue
            if fit is not None and fit.misfit(name):
                continue
            node_usage.cpu_millis += self.cpu
            node_usage.memory_bytes += self.memory
            node_usage.pods += 1
            self.spread[name] += 1
            if not _misfit(self.snapshot.nodes[name], node_usage, self.cpu, self.memory):
                heapq.heappush(self.heap, self._rank(name))
            return name

    def why_none_fits(self) -> str:
        """Why no node can take one more replica, in Kubernetes' words."""
        fit = self.fit
        if fit is not None and fit.block:
            return fit.block
        total = len(self.snapshot.nodes)
        if total == 0:
            return "no nodes are registered"
        if self.selector and all(
            _selector_misfit(node, self.selector) for node in self.snapshot.nodes.values()
        ):
            return f"no node has labels {_selector_text(self.selector)}"
        reasons: Counter[str] = Counter()
        for name, node in self.snapshot.nodes.items():
            if name not in self.ready_nodes:
                reasons["node(s) not ready"] += 1
            else:
                reason = _selector_misfit(node, self.selector) or _misfit(
                    node, self.usage[name], self.cpu, self.memory
                )
                if not reason and fit is not None:
                    reason = fit.misfit(name)
                reasons[reason] += 1
        detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        return f"0/{total} nodes are available: {detail}"


def _misfit(node: Node, node_usage: Usage, cpu: int, memory: int) -> str:
    capacity = node.capacity
    if node_usage.pods + 1 > capacity.pods:
        return "Too many replicas"
    if node_usage.cpu_millis + cpu > capacity.cpu_millis:
        return "Insufficient cpu"
    if node_usage.memory_bytes + memory > capacity.memory_bytes:
        return "Insufficient memory"
    return ""


def _selector_text(selector: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def _selector_misfit(node: Node, selector: Mapping[str, str]) -> str:
    """Why a template's nodeSelector excludes `node` ("" when its labels include every
    pair: Kubernetes' Pod nodeSelector, Swarm's `--constraint node.labels.K==V`)."""
    if labels_match(selector, node.labels):
        return ""
    return f"node(s) without labels {_selector_text(selector)}"


def _new_replica_name(deployment: str, taken: _Names, new_suffix: Callable[[], str]) -> str:
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
    return [p.key for p in plan.place]
