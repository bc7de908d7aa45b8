"""What netmgr decides and observes: its records in KV (docs/networking.md).

    NetworkStatus   netmgr (cluster part)   corral_network_status[network]
    NetworkSlice    netmgr (cluster part)   corral_network_slices[network.node]
    Endpoints       netmgr (cluster part)   corral_endpoints[namespace.service]
    NodeNetwork     netmgr (node part)      corral_node_network[node]

A Service's allocated cluster IP and node ports are written into its stored spec
(as Kubernetes does), so `get` shows them and a re-apply keeps them.
New fields always get defaults; a field's type never changes.
"""

from __future__ import annotations

import msgspec

from corral.contract.names import DEFAULT_NAMESPACE, object_key, placement_key


class _Record(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of stored records: immutable, camelCase JSON, tolerant of newer fields."""


class NetworkStatus(_Record, frozen=True, kw_only=True):
    """A Network as netmgr made it: its range, and the addresses that may reach it
    besides its own range (replicas on several networks, from their other networks)."""

    name: str
    subnet: str  # the whole range (the spec's, or the one netmgr picked)
    slice_prefix: int
    phase: str = "Ready"  # "Ready", or "Deleting" while its slices are removed
    message: str = ""
    # IPs on other networks of replicas that are also on this one (isolation admits them)
    extra_members: list[str] = []
    updated_at: float = 0.0


class NetworkSlice(_Record, frozen=True, kw_only=True):
    """One node's part of a Network: the subnet its Docker network uses there."""

    network: str
    node: str
    subnet: str
    gateway: str  # the first address: the node's bridge, and its DNS server there

    @property
    def key(self) -> str:
        return f"{self.network}.{self.node}"


class EndpointAddress(_Record, frozen=True, kw_only=True):
    ip: str
    replica: str
    node: str
    ready: bool = True


class EndpointPort(_Record, frozen=True, kw_only=True):
    """A Service port resolved against the replicas' template: `targetPort` is a number."""

    port: int
    target_port: int
    protocol: str = "TCP"
    name: str = ""
    node_port: int = 0


class Endpoints(_Record, frozen=True, kw_only=True):
    """A Service's ready replicas, with their IP on the Service's network, and what a
    node needs to program its rules (so it reads one record per Service)."""

    service: str
    namespace: str = DEFAULT_NAMESPACE
    cluster_ip: str = msgspec.field(default="", name="clusterIP")  # "None": headless
    type: str = "ClusterIP"
    network: str = ""
    ports: list[EndpointPort] = []
    addresses: list[EndpointAddress] = []
    updated_at: float = 0.0

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.service)


class NodeNetwork(_Record, frozen=True, kw_only=True):
    """What a node's netmgr part reports: its address for other nodes' routes, the
    ranges and ports its host already uses (never allocated), and how far its rules are."""

    node: str
    address: str = ""  # other nodes route this node's slices via this address
    host_id: str = ""  # nodes that share a host (one packet filter) have the same
    used_ranges: list[str] = []  # the host's own networks and routes, not corral's
    # The corral_endpoints bucket revision the node's rules include (every change at
    # or below it is in force on this node).
    endpoints_revision: int = 0
    ready: bool = False
    message: str = ""
    updated_at: float = 0.0
    # Ports a process on the host listens on ("22/TCP", "53/UDP"; loopback-only binds
    # left out): never given as node ports (docs/networking.md, "Node ports").
    listening_ports: list[str] = []


class ReplicaDrain(_Record, frozen=True, kw_only=True):
    """netmgr's word that a replica going away has left every Service's endpoints on
    every node (corral_replica_drains[node.namespace.replica], docs/rollouts.md,
    "Graceful stops"): the endpoints without it were written at `endpointsRevision`, and
    every live node part reported that revision or a later one applied. Its agent
    signals the container only after this (or after its drain timeout)."""

    node: str
    replica: str
    namespace: str = DEFAULT_NAMESPACE
    endpoints_revision: int = 0
    in_force_at: float = 0.0  # netmgr's clock
    nodes: int = 0  # how many node parts confirmed

    @property
    def key(self) -> str:
        return placement_key(self.node, self.namespace, self.replica)
