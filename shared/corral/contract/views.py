"""Views: what one service reads of a stored record, decoded from the same JSON.

netmgr and volmgr mirror whole buckets that the scheduler and the node agents write
(corral_placements, corral_replica_status, corral_deployments), and the scheduler the
replica statuses the agents write, but each reads a few fields of each record: a
Placement carries its replica's whole ContainerTemplate (image, command, env,
resources, probes...), a ReplicaStatus its container, addresses, probes and messages.
As client-go's metadata-only informers, those services decode each record as a view that
holds only the fields they read: less memory per record (tens of thousands of them) and
less work per change (no validation of what is not kept). bench/bench_mirror_memory.py
measures both.

A view is not a wire type: nothing writes it, no JSON Schema describes it, and the
records keep their one home (corral.contract.state, corral.contract.specs). Each field a
view has bears the record's name, type and default (none where the record has none), so
it decodes to the same value; the logic the services call on a record (its `key`,
`is_ready`, replica_labels(), ...) is the record's own, shared through
corral.contract.state.ReplicaKeyed, Serving and Restarting and the template protocols
of corral.contract.specs. Every other record a service mirrors is held whole.

A view is tolerant of every field it does not hold (as corral.contract.state's records
are of newer fields): a record the full type would refuse for such a field alone (a
template field of a newer corral, say) is read. A record a view cannot decode (corrupt,
a field it holds missing or of the wrong type) is unreadable, as a full record is
(corral.natsio.kv.Mirror.unreadable).
"""

from __future__ import annotations

from corral.contract.names import DEFAULT_NAMESPACE
from corral.contract.specs import ContainerPort, Volume
from corral.contract.state import ReplicaKeyed, ReplicaState, Restarting, Serving, _Record


class _ReplicaView(_Record, ReplicaKeyed, frozen=True, kw_only=True):
    """A view of a replica's record (its Placement or ReplicaStatus): who it is, and where."""

    replica: str
    node: str
    namespace: str = DEFAULT_NAMESPACE


class EndpointsTemplate(_Record, frozen=True, kw_only=True):
    """What netmgr reads of a placed replica's ContainerTemplate: its labels, which a
    Service's selector matches (corral.contract.specs.replica_labels), and its ports, which
    a Service's named targetPort resolves against (corral_netmgr.endpoints)."""

    labels: dict[str, str] = {}
    ports: list[ContainerPort] = []


class EndpointsPlacement(_ReplicaView, frozen=True, kw_only=True):
    """What netmgr's cluster part reads of a Placement: the replica, its node and
    namespace (the endpoints it may be in; `key`), its Deployment (the labels of a template
    without any) and its template's labels and ports. Its drain controller reads only
    that the placement is there. The template hash is held so that the placements of one
    Deployment revision hold one template (corral.contract.sharing)."""

    deployment: str
    template_hash: str
    template: EndpointsTemplate


class EndpointsStatus(_ReplicaView, Serving, frozen=True, kw_only=True):
    """What netmgr's cluster part reads of a ReplicaStatus: whether the replica serves
    (`is_ready`: state and readiness verdict) and its address on each network (`ips`:
    endpoints, a network's extra members); its state (Terminating: a drain); who and
    where it is (the ReplicaDrain it writes)."""

    state: ReplicaState
    ready: bool | None = None
    ips: dict[str, str] = {}


class SchedulingStatus(_ReplicaView, Serving, Restarting, frozen=True, kw_only=True):
    """What the scheduler reads of a ReplicaStatus: who and where the replica is, of which
    Deployment revision (`template_hash`), whether it serves (`is_ready`) and since when
    (`started_at`, its availability), and its restarts lately (`restarts_within`, the
    automatic rollback's crash loop). Not its container, addresses, ports, probes or
    messages."""

    deployment: str
    state: ReplicaState
    template_hash: str = ""
    started_at: float | None = None
    updated_at: float = 0.0
    ready: bool | None = None
    restart_times: list[float] = []


class ClaimsTemplate(_Record, frozen=True, kw_only=True):
    """What volmgr reads of a placed replica's ContainerTemplate: its volumes, for the
    claims they name (corral.contract.specs.claim_names)."""

    volumes: list[Volume] = []


class ClaimsPlacement(_ReplicaView, frozen=True, kw_only=True):
    """What volmgr (cluster and node parts) reads of a Placement: the claims its template
    names, in its namespace; the replica and its node (a claim's users, the node a
    WaitForFirstConsumer volume is made on); when it was made (its users, oldest first)."""

    created_at: float = 0.0
    template: ClaimsTemplate


class NetworksTemplate(_Record, frozen=True, kw_only=True):
    """What netmgr reads of a Deployment's template: the networks it names
    (corral.contract.specs.replica_networks)."""

    networks: list[str] = []


class NetworksSpec(_Record, frozen=True, kw_only=True):
    template: NetworksTemplate


class NetworksDeployment(_Record, frozen=True, kw_only=True):
    """What netmgr's Network API reads of a Deployment (corral_deployments): the networks
    its template names, for a network's users (a network named is never deleted)."""

    spec: NetworksSpec
