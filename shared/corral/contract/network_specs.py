"""What a client declares about networking: Networks and Services (owner: netmgr).

A Network is cluster-wide (its name is unique in the cluster, as Docker Swarm's); a
Service lives in a namespace, like a Deployment. Both travel as JSON on their public
subjects (corral.api.network.*, corral.api.service.*), validated whole while decoding;
checks that need the cluster's state (overlapping ranges, a node port taken) are
netmgr's, and answered with the same kind of error naming the field.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Final, Literal

import msgspec

from corral.contract.names import object_key
from corral.contract.specs import (
    MAX_PORTS,
    DnsLabel,
    Labels,
    ObjectMeta,
    PortName,
    PortNumber,
    Protocol,
    _Public,
    check_cluster_wide,
    check_unique,
)

# The cluster's defaults (netmgr may be started with others; docs/networking.md).
DEFAULT_NETWORK_POOL: Final = "10.128.0.0/9"  # networks without a subnet get a /16 of it
DEFAULT_NETWORK_PREFIX: Final = 16
DEFAULT_SLICE_PREFIX: Final = 24  # each node's slice of a network
DEFAULT_SERVICE_RANGE: Final = "10.96.0.0/16"  # ClusterIPs
DEFAULT_NODE_PORT_RANGE: Final = (30000, 32767)
CLUSTER_DOMAIN: Final = "cluster.local"
HEADLESS: Final = "None"

CIDR_TEXT = Annotated[str, msgspec.Meta(max_length=18)]


def parse_cidr(field: str, text: str) -> ipaddress.IPv4Network:
    """An IPv4 range in CIDR form with no host bits set, or a ValueError naming `field`."""
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as error:
        raise ValueError(
            f"`{field}` {text!r} is not an IPv4 range in CIDR form ({error})"
        ) from None


class NetworkSpec(_Public, frozen=True):
    """`subnet`: the network's whole range (empty: netmgr picks a free /16 of its pool);
    `slicePrefix`: the prefix length of each node's slice of it (a /24 gives a node 253
    addresses). Ranges never overlap each other, the service range, or the networks and
    routes the nodes' engines and hosts already have."""

    subnet: CIDR_TEXT = ""
    slice_prefix: Annotated[int, msgspec.Meta(ge=16, le=28)] = DEFAULT_SLICE_PREFIX

    def __post_init__(self) -> None:
        if not self.subnet:
            return
        network = parse_cidr("subnet", self.subnet)
        if network.prefixlen < 8:
            raise ValueError(f"`subnet` {self.subnet!r} is larger than a /8")
        if network.prefixlen > self.slice_prefix:
            raise ValueError(
                f"`subnet` {self.subnet!r} is smaller than one node's slice "
                f"(/{self.slice_prefix}); use a larger range or a longer `slicePrefix`"
            )


class Network(_Public, frozen=True, kw_only=True, tag_field="kind", tag="Network"):
    """A network spanning every node: containers on it reach each other by IP on any
    node; containers on different networks cannot reach each other."""

    api_version: Literal["corral/v1"] = "corral/v1"
    metadata: ObjectMeta
    spec: NetworkSpec = NetworkSpec()

    def __post_init__(self) -> None:
        check_cluster_wide("Network", self.metadata)

    @property
    def key(self) -> str:
        """Networks are cluster-wide: the key is the name."""
        return self.metadata.name


class ServicePort(_Public, frozen=True):
    """`port`: on the Service's virtual IP; `targetPort`: the replicas' port, a number or
    the name of a template port (0: the same as `port`); `nodePort`: for a NodePort
    Service, the port on every node (0: netmgr picks one of 30000-32767)."""

    port: PortNumber
    name: PortName | None = None
    protocol: Protocol = "TCP"
    target_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | PortName = 0
    node_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0

    @property
    def target(self) -> int | str:
        return self.port if self.target_port == 0 else self.target_port


class ServiceSpec(_Public, frozen=True, kw_only=True):
    """`selector`: the replicas' labels (corral.contract.specs.replica_labels) it balances
    over, never empty; `clusterIP`: "" (netmgr allocates one), an address of the service
    range, or "None" (headless: DNS answers with the endpoints' own addresses);
    `network`: the corral network its endpoints' addresses are on (empty: `default`)."""

    selector: Annotated[Labels, msgspec.Meta(min_length=1)]
    ports: Annotated[list[ServicePort], msgspec.Meta(max_length=MAX_PORTS)] = []
    type: Literal["ClusterIP", "NodePort"] = "ClusterIP"
    cluster_ip: Annotated[str, msgspec.Meta(max_length=15)] = msgspec.field(
        default="", name="clusterIP"
    )
    network: DnsLabel | Literal[""] = ""

    def __post_init__(self) -> None:
        headless = self.cluster_ip == HEADLESS
        if self.cluster_ip and not headless:
            try:
                ipaddress.IPv4Address(self.cluster_ip)
            except ValueError:
                raise ValueError(
                    f"`clusterIP` {self.cluster_ip!r} is not an IPv4 address, '' or 'None'"
                ) from None
        if not self.ports and not headless:
            raise ValueError(
                "`ports` is empty: only a headless Service (clusterIP None) may have none"
            )
        if headless and self.type == "NodePort":
            raise ValueError("`type` NodePort needs a cluster IP: a headless Service has none")
        if len(self.ports) > 1:
            missing = [i for i, p in enumerate(self.ports) if not p.name]
            if missing:
                raise ValueError(
                    f"`ports[{missing[0]}].name` is required when a Service has several ports"
                )
        # the same port twice first: the CLI names unnamed ports after them (tcp-80)
        check_unique("ports", [f"{p.port}/{p.protocol}" for p in self.ports])
        check_unique("ports[].name", [p.name for p in self.ports if p.name])
        for index, port in enumerate(self.ports):
            if port.node_port and self.type != "NodePort":
                raise ValueError(
                    f"`ports[{index}].nodePort` is only for a Service of type NodePort"
                )
        node_ports = [f"{p.node_port}/{p.protocol}" for p in self.ports if p.node_port]
        check_unique("ports[].nodePort", node_ports)


class Service(_Public, frozen=True, kw_only=True, tag_field="kind", tag="Service"):
    """A stable virtual IP, DNS name and (type NodePort) a port on every node, balanced
    over the ready replicas its selector matches."""

    api_version: Literal["corral/v1", "v1"] = "corral/v1"
    metadata: ObjectMeta
    spec: ServiceSpec

    @property
    def key(self) -> str:
        return object_key(self.metadata.namespace, self.metadata.name)
