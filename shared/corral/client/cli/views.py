"""What `corral get` shows: rows and objects computed from one read of the cluster."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from corral.client.api import CorralClient, node_is_ready, to_builtins
from corral.client.cli.tables import NONE, age_since
from corral.contract.quantity import format_cpu, format_memory
from corral.contract.specs import Deployment, ResourceList
from corral.contract.state import DeploymentStatus, Node, Placement, ReplicaState, ReplicaStatus
from corral.contract.time_budget import HEARTBEAT_SECONDS

PENDING_REPLICA = "<pending>"


@dataclass
class ClusterView:
    """One read of every bucket the CLI shows."""

    deployments: dict[str, Deployment] = field(default_factory=dict)
    statuses: dict[str, DeploymentStatus] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    placements: dict[str, Placement] = field(default_factory=dict)
    replica_statuses: dict[str, ReplicaStatus] = field(default_factory=dict)


# How long `get nodes` listens to the agents' heartbeats (one beat and a bit).
HEARD_WINDOW_SECONDS = 1.5 * HEARTBEAT_SECONDS


async def read_cluster(
    client: CorralClient, *, what: tuple[str, ...] = (), node: str | None = None
) -> ClusterView:
    """Read the buckets named in `what` (all when empty) concurrently; with `node`, the
    placements and replica statuses of that node only."""
    view = ClusterView()
    wanted = set(what) or {"deployments", "statuses", "nodes", "placements", "replica_statuses"}

    async def deployments() -> None:
        view.deployments = await client.deployments()

    async def statuses() -> None:
        view.statuses = await client.deployment_statuses()

    async def nodes() -> None:
        records = await client.nodes()
        # Idle agents do not rewrite their records: a node heard heartbeating now is
        # shown as heard now (its heartbeat_at on the reader's clock).
        heard = await client.heard_nodes(set(records), HEARD_WINDOW_SECONDS)
        now = time.time()
        view.nodes = {
            name: msgspec.structs.replace(node, heartbeat_at=max(node.heartbeat_at, now))
            if name in heard
            else node
            for name, node in records.items()
        }

    async def placements() -> None:
        view.placements = await client.placements(node)

    async def replica_statuses() -> None:
        view.replica_statuses = await client.replica_statuses(node)

    readers = {
        "deployments": deployments,
        "statuses": statuses,
        "nodes": nodes,
        "placements": placements,
        "replica_statuses": replica_statuses,
    }
    async with anyio.create_task_group() as tg:
        for name in sorted(wanted):
            tg.start_soon(readers[name])
    return view


# --- deployments --------------------------------------------------------------------

DEPLOYMENT_HEADERS = ("NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE")
DEPLOYMENT_WIDE_HEADERS = (*DEPLOYMENT_HEADERS, "IMAGE", "REQUESTS", "MESSAGE")


def pending_message(status: DeploymentStatus | None) -> str:
    if status is None or status.pending <= 0:
        return ""
    reason = status.pending_reason or "not placed yet"
    return f"{status.pending} pending: {reason}"


def format_resources(resources: ResourceList) -> str:
    parts = []
    if resources.cpu is not None:
        parts.append(f"cpu={format_cpu(resources.cpu_millis)}")
    if resources.memory is not None:
        parts.append(f"memory={format_memory(resources.memory_bytes)}")
    return ",".join(parts) or NONE


def deployment_row(
    deployment: Deployment, status: DeploymentStatus | None, now: float, *, wide: bool
) -> list[str]:
    """kubectl's columns: READY (ready/desired), UP-TO-DATE (of the current template),
    AVAILABLE (ready for at least minReadySeconds: status.available), AGE."""
    desired = deployment.spec.replicas
    ready = status.ready if status is not None else 0
    updated = status.updated if status is not None else 0
    available = status.available if status is not None else 0
    row = [
        deployment.metadata.name,
        f"{ready}/{desired}",
        str(updated),
        str(available),
        age_since(deployment.metadata.creation_timestamp, now),
    ]
    if wide:
        template = deployment.spec.template
        row += [
            template.image,
            format_resources(template.resources.requests),
            pending_message(status) or NONE,
        ]
    return row


def deployment_table(
    view: ClusterView, now: float, *, wide: bool
) -> tuple[tuple[str, ...], list[list[str]]]:
    """The rows of `get deployments`; a MESSAGE column appears when any is pending."""
    rows = []
    messages = []
    for name in sorted(view.deployments):
        status = view.statuses.get(name)
        rows.append(deployment_row(view.deployments[name], status, now, wide=wide))
        messages.append(pending_message(status))
    if wide:
        return DEPLOYMENT_WIDE_HEADERS, rows
    if any(messages):
        return (*DEPLOYMENT_HEADERS, "MESSAGE"), [
            [*row, message] for row, message in zip(rows, messages, strict=True)
        ]
    return DEPLOYMENT_HEADERS, rows


def deployment_object(deployment: Deployment, status: DeploymentStatus | None) -> dict[str, Any]:
    item: dict[str, Any] = to_builtins(deployment)
    item["status"] = to_builtins(status) if status is not None else {}
    return item


# --- replicas -------------------------------------------------------------------------

REPLICA_HEADERS = ("NAME", "DEPLOYMENT", "NODE", "CONTAINER", "READY", "STATE", "RESTARTS", "AGE")
REPLICA_WIDE_HEADERS = (*REPLICA_HEADERS, "IMAGE", "MESSAGE")


@dataclass(frozen=True)
class ReplicaLine:
    """A placed replica (placement, maybe its status) or a pending one (neither)."""

    name: str
    deployment: str
    node: str
    state: str
    container: str = ""
    restarts: int = 0
    since: float = 0.0
    image: str = ""
    message: str = ""
    placement: Placement | None = None
    status: ReplicaStatus | None = None


def replica_lines(view: ClusterView, deployment: str | None = None) -> list[ReplicaLine]:
    lines = []
    for key, placement in view.placements.items():
        if deployment is not None and placement.deployment != deployment:
            continue
        status = view.replica_statuses.get(key)
        lines.append(
            ReplicaLine(
                name=placement.replica,
                deployment=placement.deployment,
                node=placement.node,
                state=status.state.value if status is not None else ReplicaState.PENDING.value,
                container=status.container_id[:12] if status is not None else "",
                restarts=status.restarts if status is not None else 0,
                since=placement.created_at,
                image=placement.template.image,
                message=status.message if status is not None else "",
                placement=placement,
                status=status,
            )
        )
    lines.sort(key=lambda line: (line.deployment, line.name))
    for name, summary in sorted(view.statuses.items()):
        if deployment is not None and name != deployment:
            continue
        spec = view.deployments.get(name)
        if spec is None:
            continue
        for _ in range(max(summary.pending, 0)):
            lines.append(
                ReplicaLine(
                    name=PENDING_REPLICA,
                    deployment=name,
                    node=NONE,
                    state=ReplicaState.PENDING.value,
                    since=summary.updated_at,
                    image=spec.spec.template.image,
                    message=summary.pending_reason or "not placed yet",
                )
            )
    return lines


def ready_column(status: ReplicaStatus | None) -> str:
    """kubectl's READY for a replica of one container: 1/1 when ReplicaStatus.is_ready
    (Running, its readiness probe if any passing), else 0/1."""
    return "1/1" if status is not None and status.is_ready else "0/1"


def replica_row(line: ReplicaLine, now: float, *, wide: bool) -> list[str]:
    row = [
        line.name,
        line.deployment,
        line.node,
        line.container or NONE,
        ready_column(line.status),
        line.state,
        str(line.restarts),
        age_since(line.since, now),
    ]
    if wide:
        row += [line.image, line.message or NONE]
    return row


def replica_object(line: ReplicaLine) -> dict[str, Any]:
    return {
        "name": line.name,
        "deployment": line.deployment,
        "node": None if line.placement is None else line.node,
        "state": line.state,
        "ready": line.status is not None and line.status.is_ready,
        "message": line.message,
        "placement": to_builtins(line.placement) if line.placement is not None else None,
        "status": to_builtins(line.status) if line.status is not None else None,
    }


# --- nodes ------------------------------------------------------------------------------

NODE_HEADERS = ("NAME", "STATUS", "CPU", "MEMORY", "PODS", "AGE")
NODE_WIDE_HEADERS = (*NODE_HEADERS, "RUNTIME", "VERSION", "LABELS", "MESSAGE")


@dataclass(frozen=True)
class Allocation:
    cpu_millis: int = 0
    memory_bytes: int = 0
    pods: int = 0


def allocations(placements: dict[str, Placement]) -> dict[str, Allocation]:
    """Per node: the sum of the requests of the placements on it."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for placement in placements.values():
        total = sums[placement.node]
        total[0] += placement.cpu_millis
        total[1] += placement.memory_bytes
        total[2] += 1
    return {node: Allocation(*total) for node, total in sums.items()}


# Agent modes shown beside Ready/NotReady (as kubectl shows "Ready,SchedulingDisabled"):
# every mode but the normal one.
_QUIET_MODES = ("", "Active")


def node_status(node: Node, now: float) -> str:
    """Ready or NotReady (by the reader's clock: see node_is_ready), then the agent's
    mode when it is not the normal one, e.g. "Ready,Held"."""
    status = "Ready" if node_is_ready(node, now) else "NotReady"
    if node.mode not in _QUIET_MODES:
        status += f",{node.mode}"
    return status


def node_row(node: Node, allocated: Allocation, now: float, *, wide: bool) -> list[str]:
    capacity = node.capacity
    row = [
        node.name,
        node_status(node, now),
        f"{format_cpu(allocated.cpu_millis)}/{format_cpu(capacity.cpu_millis)}",
        f"{format_memory(allocated.memory_bytes)}/{format_memory(capacity.memory_bytes)}",
        f"{allocated.pods}/{capacity.pods}",
        age_since(node.agent_started_at, now),
    ]
    if wide:
        labels = ",".join(f"{key}={value}" for key, value in sorted(node.labels.items()))
        row += [node.runtime, node.version or NONE, labels or NONE, node.message or NONE]
    return row


def node_object(node: Node, allocated: Allocation, now: float) -> dict[str, Any]:
    item: dict[str, Any] = to_builtins(node)
    item["status"] = node_status(node, now)
    item["allocated"] = {
        "cpuMillis": allocated.cpu_millis,
        "memoryBytes": allocated.memory_bytes,
        "pods": allocated.pods,
    }
    return item
