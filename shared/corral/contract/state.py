"""What corral observes and decides: the records its services keep in KV.

Each kind has one owner (docs/architecture.md, the pieces and their owners):
    Node              its node agent        corral_nodes[node]
    Placement         the scheduler         corral_placements[node.replica] (or the node's shard)
    ReplicaStatus     the node agent        corral_replica_status[node.replica]
    DeploymentStatus  the scheduler         corral_deployment_status[name]
New fields always get defaults; a field's type never changes.
"""

from __future__ import annotations

import enum

import msgspec

from corral.contract.names import DEFAULT_NAMESPACE, object_key, placement_key
from corral.contract.specs import ContainerTemplate


class _Record(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """Base of stored records: immutable, camelCase JSON, tolerant of newer fields.

    `gc=False`: not tracked by Python's cyclic collector (frozen, made of strings, numbers
    and containers of them, a record cannot be part of a cycle), so the tens of thousands
    a service's mirrors hold do not lengthen its collections (corral.natsio.gc_policy)."""


class Cluster(_Record, frozen=True, kw_only=True):
    """The cluster's identity, made once when its state is first created (corral.natsio.cluster)."""

    id: str
    created_at: float = 0.0
    # The buckets this cluster's state has (corral.natsio.cluster): one listed here and
    # missing from the store was lost, and is never made again empty. Empty in an
    # identity made before the list existed (corral.natsio.cluster.listed_buckets).
    buckets: list[str] = []
    # How many buckets the placements are split into, by node (names.placement_shard):
    # chosen when the cluster is made ($CORRAL_PLACEMENT_SHARDS), never changed. 1 in
    # an identity made before shards: the one bucket, corral_placements.
    placement_shards: int = 1


class OrphanReplica(_Record, frozen=True, kw_only=True):
    """A container on a node that an earlier cluster made and an operator adopted
    (`corral node adopt`): kept, and placed again when a Deployment of its name and
    template claims it."""

    deployment: str
    replica: str
    template_hash: str
    running: bool = False
    namespace: str = DEFAULT_NAMESPACE  # the Deployment's (containers made before: default)


class NodeCapacity(_Record, frozen=True, kw_only=True):
    cpu_millis: int
    memory_bytes: int
    pods: int = 110


class Node(_Record, frozen=True, kw_only=True):
    """A node agent and its container engine, as the agent reports it."""

    name: str
    labels: dict[str, str] = {}
    capacity: NodeCapacity
    runtime: str = "docker"  # "docker" or "hollow"
    ready: bool = True  # the agent can reach its engine
    message: str = ""
    agent_started_at: float = 0.0
    # The agent's clock at the record's last write (written on change, or when not every
    # scheduler acknowledged a heartbeat); liveness uses the observer's clock.
    heartbeat_at: float = 0.0
    version: str = ""
    # A random id per agent process: two agents that claim the same node name are
    # told apart, and the second refuses to run rather than run every replica twice.
    agent_id: str = ""
    # The container engine's own id: one engine serves one node; an agent displaced by
    # an agent on the same engine hands over, one on another engine removes its copies.
    engine_id: str = ""
    # The agent's safety mode (corral_node_agent.safety.Mode): Active, Syncing, Held, ...
    mode: str = ""
    # Containers of another corral cluster on this node's engine: never touched.
    foreign_containers: int = 0
    # Containers of an adopted earlier cluster that no placement claims yet.
    orphans: list[OrphanReplica] = []
    # Containers the agent must remove and could not (retried with back-off).
    failing_removals: int = 0


class ReplicaKeyed:
    """The key of a replica's records (`<node>.<namespace>.<replica>`, as placement_key):
    shared by Placement, ReplicaStatus and their views (corral.contract.views)."""

    __slots__ = ()
    replica: str
    node: str
    namespace: str

    @property
    def key(self) -> str:
        return placement_key(self.node, self.namespace, self.replica)


class Placement(_Record, ReplicaKeyed, frozen=True, kw_only=True):
    """The scheduler's decision: this replica runs on this node."""

    replica: str
    deployment: str
    node: str
    namespace: str = DEFAULT_NAMESPACE  # the Deployment's
    template: ContainerTemplate
    template_hash: str
    generation: int  # the Deployment's generation when it was placed (fencing)
    cpu_millis: int = 0  # requests, reserved on the node
    memory_bytes: int = 0
    created_at: float = 0.0

    @property
    def deployment_key(self) -> str:
        return object_key(self.namespace, self.deployment)


class ReplicaState(enum.StrEnum):
    PENDING = "Pending"  # placed, the agent has not acted yet
    PULLING = "Pulling"
    CREATING = "ContainerCreating"
    RUNNING = "Running"
    EXITED = "Exited"  # exited; a restart follows after its back-off
    CRASH_LOOP = "CrashLoopBackOff"
    IMAGE_PULL_BACKOFF = "ImagePullBackOff"
    FAILED = "Failed"  # the engine refused to create or start it
    TERMINATING = "Terminating"


class Serving:
    """Whether a replica serves, from its status's `state` and `ready`: shared by
    ReplicaStatus and its views (corral.contract.views)."""

    __slots__ = ()
    state: ReplicaState
    ready: bool | None

    @property
    def is_ready(self) -> bool:
        """Serving: Running, and its readiness probe (if any) passes."""
        return self.state == ReplicaState.RUNNING and self.ready is not False


class Restarting:
    """How often a replica's container restarted lately, from its status's
    `restart_times` and `updated_at`: shared by ReplicaStatus and its view
    (corral.contract.views)."""

    __slots__ = ()
    updated_at: float
    restart_times: list[float]

    def restarts_within(self, seconds: float) -> int:
        """How many restarts happened in the `seconds` before this status was written."""
        since = self.updated_at - seconds
        return sum(1 for at in self.restart_times if at > since)


class ReplicaStatus(_Record, ReplicaKeyed, Serving, Restarting, frozen=True, kw_only=True):
    """What a node agent observes of one replica's container."""

    replica: str
    deployment: str
    node: str
    namespace: str = DEFAULT_NAMESPACE  # the Deployment's
    state: ReplicaState
    template_hash: str = ""
    container_id: str = ""
    exit_code: int | None = None
    restarts: int = 0
    message: str = ""
    started_at: float | None = None
    updated_at: float = 0.0
    # The container's address on each corral network it is on (network -> IPv4).
    ips: dict[str, str] = {}
    # The ports the image declares (Dockerfile EXPOSE), as "8080/tcp": what
    # `corral expose` falls back on when the template declares none.
    image_ports: list[str] = []
    # The readiness probe's verdict (None: the template has none, so Running means ready).
    ready: bool | None = None
    # Each probe's last result, "readiness" / "liveness" / "startup" -> "ok" or why it
    # failed; and the last failure of any probe, for `corral describe`.
    probes: dict[str, str] = {}
    last_probe_failure: str = ""
    # When the container was restarted, on the agent's clock, the last
    # MAX_CRASH_LOOP_RESTARTS of them, oldest first: with `updatedAt` (the same clock)
    # the scheduler counts restarts within a window without comparing two hosts' clocks.
    restart_times: list[float] = []


# DeploymentCondition types and reasons (Kubernetes' names; docs/rollouts.md).
CONDITION_PROGRESSING = "Progressing"
CONDITION_AVAILABLE = "Available"
REASON_NEW_REPLICAS_CREATED = "NewReplicaSetCreated"  # a new template, rollout started
REASON_REPLICAS_UPDATED = "ReplicaSetUpdated"  # the rollout made progress
REASON_NEW_REPLICAS_AVAILABLE = "NewReplicaSetAvailable"  # the rollout is complete
REASON_PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
REASON_PAUSED = "DeploymentPaused"
REASON_RESUMED = "DeploymentResumed"
REASON_ROLLED_BACK = "RolledBack"  # corral's: the automatic rollback put an old template back
REASON_MINIMUM_AVAILABLE = "MinimumReplicasAvailable"
REASON_MINIMUM_UNAVAILABLE = "MinimumReplicasUnavailable"


class DeploymentCondition(_Record, frozen=True, kw_only=True):
    """One of a Deployment's conditions, as Kubernetes': `status` "True", "False" or
    "Unknown"; times on the scheduler's clock. lastUpdateTime moves whenever the rollout
    makes progress; the progress deadline counts from it."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_update_time: float = 0.0
    last_transition_time: float = 0.0


class AutoRollbackRecord(_Record, frozen=True, kw_only=True):
    """What the automatic rollback did, kept on the status until the next template change
    that is not a rollback: from which revision to which, why ("ProgressDeadlineExceeded"
    or "CrashLoop") and when (the scheduler's clock)."""

    from_revision: int
    to_revision: int
    reason: str
    message: str = ""
    at: float = 0.0


class DeploymentStatus(_Record, frozen=True, kw_only=True):
    """The scheduler's summary of a Deployment, read by `corral get deployments`."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    observed_generation: int = 0
    replicas: int = 0  # desired
    placed: int = 0  # placements on live nodes
    ready: int = 0  # placed and Running
    updated: int = 0  # placed with the current template
    pending: int = 0  # desired but placed nowhere
    pending_reason: str = ""
    updated_at: float = 0.0
    # Ready for at least minReadySeconds (Kubernetes' availableReplicas).
    available: int = 0
    # The current template's revision (corral_deployment_history), 0 before it is known.
    revision: int = 0
    conditions: list[DeploymentCondition] = []
    # Set when the automatic rollback acted; cleared by the next template change.
    auto_rollback: AutoRollbackRecord | None = None

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)

    def condition(self, kind: str) -> DeploymentCondition | None:
        return next((c for c in self.conditions if c.type == kind), None)


class DeploymentRevision(_Record, frozen=True, kw_only=True):
    """One template a Deployment has had: its revision number (Kubernetes' annotation
    deployment.kubernetes.io/revision), why it was made (the Deployment's
    kubernetes.io/change-cause annotation then), and when the scheduler saw it."""

    revision: int
    template_hash: str
    template: ContainerTemplate
    change_cause: str = ""
    created_at: float = 0.0
    # When its rollout first completed (every replica updated and available; the
    # scheduler's clock): the automatic rollback only returns to such a revision.
    available_at: float = 0.0


class DeploymentHistory(_Record, frozen=True, kw_only=True):
    """The scheduler's record of a Deployment's templates, oldest first, the last being
    the current one (corral_deployment_history[namespace.name]): at most
    `spec.revisionHistoryLimit` old ones besides it. `corral rollout history` reads it,
    `corral rollout undo` applies one of its templates again."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    revisions: list[DeploymentRevision] = []

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)

    def find(self, revision: int) -> DeploymentRevision | None:
        for entry in self.revisions:
            if entry.revision == revision:
                return entry
        return None
