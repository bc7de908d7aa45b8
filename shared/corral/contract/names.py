"""Every NATS subject, stream, KV bucket and container label corral uses.

Public subjects (what any client may publish, as JSON):

    corral.api.<kind>.<verb>    request/reply: the owner answers with a Reply
    corral.spec.<kind>.<verb>   durable: captured by the CORRAL_SPECS stream and
                                applied as soon as the owner runs; a rejection
                                shows up as an event on corral.events.rejected.<kind>

<kind> is the lower-case kind (deployment, ...); <verb> is apply, delete or scale.

Namespaced objects (Deployments, Services, claims: NAMESPACED_KINDS) are keyed
`<namespace>.<name>` in every bucket, and their replicas `<node>.<namespace>.<replica>`,
so names are unique per namespace (a DNS label: corral.contract.specs.Namespace;
docs/api.md, "Namespaces"). Keys written before namespaces (`<name>`,
`<node>.<replica>`) are read as the default namespace's, and moved to the new form
by their owner at start (corral.natsio.key_migration).
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Final

API_PREFIX: Final = "corral.api"
SPEC_PREFIX: Final = "corral.spec"
EVENTS_PREFIX: Final = "corral.events"

SPEC_STREAM: Final = "CORRAL_SPECS"
EVENTS_STREAM: Final = "CORRAL_EVENTS"

# JetStream KV buckets: the cluster's state (the role etcd plays in Kubernetes).
# key: namespace.name -> Deployment (scheduler)
DEPLOYMENTS_BUCKET: Final = "corral_deployments"
# key: namespace.name -> DeploymentStatus (scheduler)
DEPLOYMENT_STATUS_BUCKET: Final = "corral_deployment_status"
# key: namespace.name -> DeploymentHistory (scheduler): the templates `rollout undo` offers
DEPLOYMENT_HISTORY_BUCKET: Final = "corral_deployment_history"
NODES_BUCKET: Final = "corral_nodes"  # key: node -> Node (its node agent)
# key: node.namespace.replica -> Placement (scheduler)
PLACEMENTS_BUCKET: Final = "corral_placements"
# key: node.namespace.replica -> ReplicaStatus (the node's agent)
REPLICA_STATUS_BUCKET: Final = "corral_replica_status"
# Liveness of control-plane services: each writes and watches its own keys here.
LEASES_BUCKET: Final = "corral_leases"
# The cluster's identity (key CLUSTER_KEY -> Cluster), made once when the state is first
# created; everything corral makes in an engine carries its id (LABEL_CLUSTER).
CLUSTER_BUCKET: Final = "corral_cluster"
CLUSTER_KEY: Final = "identity"
# Networking (netmgr; docs/networking.md).
NETWORKS_BUCKET: Final = "corral_networks"  # key: network -> Network
NETWORK_STATUS_BUCKET: Final = "corral_network_status"  # key: network -> NetworkStatus
# key: network.node -> NetworkSlice (the cluster part)
NETWORK_SLICES_BUCKET: Final = "corral_network_slices"
SERVICES_BUCKET: Final = "corral_services"  # key: namespace.name -> Service
ENDPOINTS_BUCKET: Final = "corral_endpoints"  # key: namespace.name -> Endpoints
NODE_NETWORK_BUCKET: Final = "corral_node_network"  # key: node -> NodeNetwork (node part)
# key: node.namespace.replica -> ReplicaDrain (netmgr's cluster part): a replica going
# away has left every endpoint on every node, so its agent may signal it.
REPLICA_DRAINS_BUCKET: Final = "corral_replica_drains"
# Storage (volmgr; docs/volumes.md).
VOLUMES_BUCKET: Final = "corral_volumes"  # key: volume -> PersistentVolume
VOLUME_STATUS_BUCKET: Final = "corral_volume_status"  # key: volume -> VolumeStatus
CLAIMS_BUCKET: Final = "corral_claims"  # key: namespace.name -> PersistentVolumeClaim
CLAIM_STATUS_BUCKET: Final = "corral_claim_status"  # key: namespace.name -> ClaimStatus
STORAGE_CLASSES_BUCKET: Final = "corral_storage_classes"  # key: class -> StorageClass
NODE_VOLUMES_BUCKET: Final = "corral_node_volumes"  # key: node -> NodeVolumes (node part)
# key: node.volume -> VolumeAttachment (node part)
VOLUME_ATTACHMENTS_BUCKET: Final = "corral_volume_attachments"

# The placements may be split into shards, one bucket each, chosen by node
# (placement_shard): an agent's watch is filtered on its node's keys, and nats-server
# reads past every other key of its bucket to find them, so that work per placement
# grows with the nodes watching one bucket (docs/architecture.md, "How far one
# placements bucket goes"). A cluster of one shard (the default, and every cluster made
# before shards) has the one bucket it always had, corral_placements. A cluster of more
# has corral_placements_0 ... _<n-1>, and no corral_placements: its identity lists that
# name all the same (PLACEMENTS_FENCE), so that a corral from before shards, which
# would read the one bucket and find it empty, refuses the store as one that lost a
# bucket instead. The number is fixed when a cluster is made (Cluster.placement_shards).
MAX_PLACEMENT_SHARDS: Final = 64
PLACEMENTS_FENCE: Final = PLACEMENTS_BUCKET


def placements_buckets(shards: int) -> tuple[str, ...]:
    """Every placements bucket of a cluster of `shards` shards, shard 0 first."""
    check_placement_shards(shards)
    if shards == 1:
        return (PLACEMENTS_BUCKET,)
    return tuple(f"{PLACEMENTS_BUCKET}_{shard}" for shard in range(shards))


def is_placements_bucket(bucket: str) -> bool:
    """A bucket of placements: the one of a cluster of one shard, or a shard's."""
    if bucket == PLACEMENTS_BUCKET:
        return True
    shard = bucket.removeprefix(f"{PLACEMENTS_BUCKET}_")
    return shard != bucket and shard.isdigit()


# Each write to a placements bucket is republished by its stream, headers only, on
# corral.kv-written.<bucket>.<key> (core NATS, not stored): a node agent reads its
# placements by stream sequence when one of its own keys' arrives (kv.NatsBucket.follow).
KV_WRITTEN_PREFIX: Final = "corral.kv-written"


def kv_written_subject(bucket: str, key_filter: str) -> str:
    """Where writes of `bucket`'s keys matching `key_filter` ("node-1.>") are told."""
    return f"{KV_WRITTEN_PREFIX}.{bucket}.{key_filter}"


def placement_shard(node: str, shards: int) -> int:
    """The shard holding `node`'s placements (a hash every process computes alike)."""
    return zlib.crc32(node.encode()) % shards


def placements_bucket_of(node: str, shards: int) -> str:
    """The bucket of `node`'s placements in a cluster of `shards` shards."""
    return placements_buckets(shards)[placement_shard(node, shards)]


def check_placement_shards(shards: object) -> int:
    """`shards` when it is a valid number of placements shards; else ValueError naming it."""
    if (
        not isinstance(shards, int)
        or isinstance(shards, bool)
        or not 1 <= shards <= MAX_PLACEMENT_SHARDS
    ):
        raise ValueError(
            f"placement shards must be a whole number from 1 to {MAX_PLACEMENT_SHARDS}, "
            f"got {shards!r}"
        )
    return shards


ALL_BUCKETS: Final = (
    DEPLOYMENTS_BUCKET,
    DEPLOYMENT_STATUS_BUCKET,
    NODES_BUCKET,
    PLACEMENTS_BUCKET,
    REPLICA_STATUS_BUCKET,
    LEASES_BUCKET,
    CLUSTER_BUCKET,
    NETWORKS_BUCKET,
    NETWORK_STATUS_BUCKET,
    NETWORK_SLICES_BUCKET,
    SERVICES_BUCKET,
    ENDPOINTS_BUCKET,
    NODE_NETWORK_BUCKET,
    VOLUMES_BUCKET,
    VOLUME_STATUS_BUCKET,
    CLAIMS_BUCKET,
    CLAIM_STATUS_BUCKET,
    STORAGE_CLASSES_BUCKET,
    NODE_VOLUMES_BUCKET,
    VOLUME_ATTACHMENTS_BUCKET,
    DEPLOYMENT_HISTORY_BUCKET,
    REPLICA_DRAINS_BUCKET,
)

VERBS: Final = ("apply", "delete", "scale")

# The largest spec payload accepted, in bytes (well below NATS' 1 MiB max_payload).
MAX_SPEC_BYTES: Final = 64 * 1024

# Labels on everything corral creates in a container engine.
LABEL_MANAGED: Final = "io.corral.managed"
LABEL_CLUSTER: Final = "io.corral.cluster"  # the id of the cluster that made it
LABEL_NODE: Final = "io.corral.node"
LABEL_DEPLOYMENT: Final = "io.corral.deployment"
LABEL_NAMESPACE: Final = "io.corral.namespace"  # the Deployment's (absent: default)
LABEL_REPLICA: Final = "io.corral.replica"
LABEL_TEMPLATE_HASH: Final = "io.corral.template-hash"
LABEL_NETWORK: Final = "io.corral.network"  # on a Docker network: the corral network's name
LABEL_VOLUME: Final = "io.corral.volume"  # on a Docker volume: the PersistentVolume's name
# on a Docker volume: the uid of the PersistentVolume it was made for (a volume made again
# under that name is another volume: it never adopts the old one's Docker volume)
LABEL_VOLUME_UID: Final = "io.corral.volume-uid"
# On a replica's container, one label per PersistentVolume it mounts in any way (a Docker
# volume mount or a bind of a subPath inside it): `docker ps --filter label=...` finds
# every user of a volume, which Docker's own volume filter misses for binds.
LABEL_USES_VOLUME_PREFIX: Final = "io.corral.uses-volume."


def uses_volume_label(volume: str) -> str:
    return f"{LABEL_USES_VOLUME_PREFIX}{volume}"


def docker_volume_name(volume: str, cluster_id: str) -> str:
    """The Docker volume of a PersistentVolume on a node's engine."""
    return f"corral_pv_{volume}_{cluster_id}"


def empty_dir_volume_name(replica: str, volume: str, cluster_id: str) -> str:
    """The Docker volume of a replica's emptyDir (removed with the replica's container)."""
    return f"corral_empty_{replica}_{volume}_{cluster_id}"


def attachment_key(node: str, volume: str) -> str:
    """<node>.<volume>: node first, so that an agent watches only its own (placement_prefix)."""
    return f"{node}.{volume}"


def docker_network_name(network: str, cluster_id: str) -> str:
    """The Docker network of a corral network on a node's engine (one per engine)."""
    return f"corral_{network}_{cluster_id}"


def bridge_name(network: str, node: str, cluster_id: str) -> str:
    """The Linux bridge of a corral network on one node: at most 15 characters (IFNAMSIZ),
    distinct for two nodes of one host and for two clusters."""
    digest = hashlib.sha256(f"{cluster_id}/{network}/{node}".encode()).hexdigest()
    return f"crl{digest[:12]}"


def chain_prefix(cluster_id: str, node: str) -> str:
    """The prefix of the packet-filter chains one node's netmgr owns (iptables chain names
    are at most 28 characters): two nodes on one host, or two clusters, never share one."""
    digest = hashlib.sha256(f"{cluster_id}/{node}".encode()).hexdigest()
    return f"CRL-{digest[:8]}"


# Requests to one node agent (operator decisions): corral.node.<node>.<verb>.
NODE_PREFIX: Final = "corral.node"
NODE_VERBS: Final = ("adopt", "reset")


def node_subject(node: str, verb: str) -> str:
    return f"{NODE_PREFIX}.{node}.{verb}"


# Container logs (docs/api.md, "Logs"): a LogRequest to the agent of the replica's
# node on corral.logs.<node>, answered with LogChunks on the request's reply inbox.
# Outside corral.node.<node>.* on purpose: that wildcard takes operator decisions.
LOGS_PREFIX: Final = "corral.logs"


def logs_subject(node: str) -> str:
    return f"{LOGS_PREFIX}.{node}"


# Node liveness on core NATS (docs/time-budget.md): every agent requests on
# corral.heartbeat.<node> every heartbeat; every scheduler hears all of them and
# acknowledges. Not persisted. `HEARTBEAT_ECHO` is a scheduler's own echo through
# the same subscription (node names are DNS labels: never "_echo").
HEARTBEAT_PREFIX: Final = "corral.heartbeat"
HEARTBEAT_ECHO: Final = "_echo"


def heartbeat_subject(node: str) -> str:
    return f"{HEARTBEAT_PREFIX}.{node}"


def api_subject(kind: str, verb: str) -> str:
    return f"{API_PREFIX}.{kind.lower()}.{verb}"


def spec_subject(kind: str, verb: str) -> str:
    return f"{SPEC_PREFIX}.{kind.lower()}.{verb}"


def event_subject(kind: str, name: str, namespace: str | None = None) -> str:
    """Events about one object: corral.events.<kind>.<namespace>.<name> for a namespaced
    kind, corral.events.<kind>.<name> for a cluster-wide one (a node)."""
    if namespace is None:
        return f"{EVENTS_PREFIX}.{kind.lower()}.{name}"
    return f"{EVENTS_PREFIX}.{kind.lower()}.{namespace}.{name}"


def rejected_subject(kind: str) -> str:
    """Rejections of specs that came through the durable stream."""
    return f"{EVENTS_PREFIX}.rejected.{kind.lower()}"


DEFAULT_NAMESPACE: Final = "default"
# Kinds whose objects live in a namespace (lower-case, as in subjects).
NAMESPACED_KINDS: Final = frozenset({"deployment", "service", "persistentvolumeclaim"})


def object_key(namespace: str, name: str) -> str:
    """The key of a namespaced object (a Deployment, its status): <namespace>.<name>."""
    return f"{namespace}.{name}"


def split_object_key(key: str) -> tuple[str, str]:
    """(namespace, name) of an object key; a key from before namespaces is the default's."""
    namespace, dot, name = key.partition(".")
    return (namespace, name) if dot else (DEFAULT_NAMESPACE, key)


def placement_key(node: str, namespace: str, replica: str) -> str:
    """The key of a replica's placement and status: <node>.<namespace>.<replica>
    (node first, so that an agent watches only its own: placement_prefix)."""
    return f"{node}.{namespace}.{replica}"


def placement_prefix(node: str) -> str:
    """The KV watch filter of one node's placements and statuses."""
    return f"{node}.>"


def placement_node(key: str) -> str:
    """The node whose agent watches `key` (placement_prefix); "" for a key without a
    '.', which no agent's watch covers."""
    node, dot, _ = key.partition(".")
    return node if dot else ""


def split_placement_key(key: str) -> tuple[str, str, str]:
    """(node, namespace, replica) of a placement key; a key from before namespaces
    (<node>.<replica>) is the default namespace's."""
    parts = key.split(".", 2)
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    node, _, replica = key.partition(".")
    return node, DEFAULT_NAMESPACE, replica


def is_legacy_object_key(key: str) -> bool:
    """A key written before namespaces (to be moved by corral.natsio.key_migration)."""
    return "." not in key


def is_legacy_placement_key(key: str) -> bool:
    return key.count(".") == 1
