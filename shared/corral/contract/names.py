"""Every NATS subject, stream, KV bucket and container label corral uses.

Public subjects (what any client may publish, as JSON):

    corral.api.<kind>.<verb>    request/reply: the owner answers with a Reply
    corral.spec.<kind>.<verb>   durable: captured by the CORRAL_SPECS stream and
                                applied as soon as the owner runs; a rejection
                                shows up as an event on corral.events.rejected.<kind>

<kind> is the lower-case kind (deployment, ...); <verb> is apply, delete or scale.
"""

from __future__ import annotations

from typing import Final

API_PREFIX: Final = "corral.api"
SPEC_PREFIX: Final = "corral.spec"
EVENTS_PREFIX: Final = "corral.events"

SPEC_STREAM: Final = "CORRAL_SPECS"
EVENTS_STREAM: Final = "CORRAL_EVENTS"

# JetStream KV buckets: the cluster's state (the role etcd plays in Kubernetes).
DEPLOYMENTS_BUCKET: Final = "corral_deployments"  # key: name -> Deployment (scheduler)
DEPLOYMENT_STATUS_BUCKET: Final = "corral_deployment_status"  # key: name -> DeploymentStatus
NODES_BUCKET: Final = "corral_nodes"  # key: node -> Node (its node agent)
PLACEMENTS_BUCKET: Final = "corral_placements"  # key: node.replica -> Placement (scheduler)
REPLICA_STATUS_BUCKET: Final = "corral_replica_status"  # key: node.replica -> ReplicaStatus (agent)
# Liveness of control-plane services: each writes and watches its own keys here.
LEASES_BUCKET: Final = "corral_leases"
# The cluster's identity (key CLUSTER_KEY -> Cluster), made once when the state is first
# created; everything corral makes in an engine carries its id (LABEL_CLUSTER).
CLUSTER_BUCKET: Final = "corral_cluster"
CLUSTER_KEY: Final = "identity"

ALL_BUCKETS: Final = (
    DEPLOYMENTS_BUCKET,
    DEPLOYMENT_STATUS_BUCKET,
    NODES_BUCKET,
    PLACEMENTS_BUCKET,
    REPLICA_STATUS_BUCKET,
    LEASES_BUCKET,
    CLUSTER_BUCKET,
)

VERBS: Final = ("apply", "delete", "scale")

# The largest spec payload accepted, in bytes (well below NATS' 1 MiB max_payload).
MAX_SPEC_BYTES: Final = 64 * 1024

# Labels on everything corral creates in a container engine.
LABEL_MANAGED: Final = "io.corral.managed"
LABEL_CLUSTER: Final = "io.corral.cluster"  # the id of the cluster that made it
LABEL_NODE: Final = "io.corral.node"
LABEL_DEPLOYMENT: Final = "io.corral.deployment"
LABEL_REPLICA: Final = "io.corral.replica"
LABEL_TEMPLATE_HASH: Final = "io.corral.template-hash"


# Requests to one node agent (operator decisions): corral.node.<node>.<verb>.
NODE_PREFIX: Final = "corral.node"
NODE_VERBS: Final = ("adopt", "reset")


def node_subject(node: str, verb: str) -> str:
    return f"{NODE_PREFIX}.{node}.{verb}"


def api_subject(kind: str, verb: str) -> str:
    return f"{API_PREFIX}.{kind.lower()}.{verb}"


def spec_subject(kind: str, verb: str) -> str:
    return f"{SPEC_PREFIX}.{kind.lower()}.{verb}"


def event_subject(kind: str, name: str) -> str:
    """Events about one object: corral.events.<kind>.<name>."""
    return f"{EVENTS_PREFIX}.{kind.lower()}.{name}"


def rejected_subject(kind: str) -> str:
    """Rejections of specs that came through the durable stream."""
    return f"{EVENTS_PREFIX}.rejected.{kind.lower()}"


def placement_key(node: str, replica: str) -> str:
    return f"{node}.{replica}"


def split_placement_key(key: str) -> tuple[str, str]:
    node, _, replica = key.partition(".")
    return node, replica
