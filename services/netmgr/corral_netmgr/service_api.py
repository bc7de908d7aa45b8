"""netmgr's answers to apply and delete of a Service (corral.api.service.*, and the
durable corral.spec.service.*), by the rules of corral_netmgr.spec_api.

At apply the Service's cluster IP (from the service range) and, for a NodePort
Service, its node ports are allocated and written into the stored spec, as
Kubernetes does: a re-apply without them keeps them. Refused: a network that does not
exist, a name that exists with another type (delete it first), a node port or a
cluster IP that another Service has, a node port a process listens on on some node
(NodeNetwork.listeningPorts), a cluster IP out of the range. While another Service
record cannot be read (from a newer corral, or corrupt), what it holds is unknown: an
apply that would allocate is refused Busy (one that keeps what it has goes on). What a
deleted Service had is free again at once (the next decision no longer sees it).
"""

from __future__ import annotations

import anyio
import msgspec

from corral.contract.events import REASON_BUSY, Reply
from corral.contract.network_specs import HEADLESS, Network, Service, ServicePort
from corral.contract.network_state import NodeNetwork
from corral.natsio.kv import Bucket, Mirror
from corral_netmgr.allocator import (
    AllocationError,
    Unreadable,
    allocate_cluster_ip,
    allocate_node_ports,
    listening,
    refuse_unreadable,
)
from corral_netmgr.network_api import service_network
from corral_netmgr.spec_api import SpecAPI, SpecPosition, no_stream

KIND = "Service"


def kind_of(service: Service) -> str:
    """A Service's type in words, headless included."""
    return "headless" if service.spec.cluster_ip == HEADLESS else service.spec.type


def _previous_node_port(port: ServicePort, current: Service | None) -> int:
    """The node port the stored Service gave this port (same port and protocol), or 0."""
    if current is None:
        return 0
    for old in current.spec.ports:
        if (old.port, old.protocol) == (port.port, port.protocol) and old.node_port:
            return old.node_port
    return 0


class ServiceAPI(SpecAPI[Service]):
    kind = KIND
    type = Service

    def __init__(
        self,
        services: Mirror[Service],
        *,
        networks: Mirror[Network],
        node_network: Mirror[NodeNetwork],
        lock: anyio.Lock,
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
    ) -> None:
        super().__init__(
            services,
            lock=lock,
            views=[networks, node_network],
            progress=progress,
            spec_position=spec_position,
        )
        self.networks = networks
        self.node_network = node_network

    def settle(self, wanted: Service, current: Service | None) -> Service | Reply:
        try:
            return super().settle(wanted, current)
        except Unreadable as error:
            return self.reply(
                ok=False, name=wanted.metadata.name, reason=REASON_BUSY, error=error.message
            )

    def require_readable(self, wanted: Service) -> None:
        """Before allocating: every other Service record can be read (else Unreadable)."""
        refuse_unreadable("services", self.mirror.unreadable, but=wanted.key)

    def decide(self, wanted: Service, current: Service | None) -> Service:
        spec = wanted.spec
        name = wanted.metadata.name
        network = service_network(wanted)
        if network not in self.networks.items:
            raise AllocationError(
                "spec.network",
                f"`spec.network` {network!r} does not exist"
                + ("" if spec.network else " (the cluster's default network is not made yet)"),
            )
        if current is not None and kind_of(current) != kind_of(wanted):
            raise AllocationError(
                "spec.clusterIP"
                if HEADLESS in (spec.cluster_ip, current.spec.cluster_ip)
                else "spec.type",
                f"service {name!r} exists with type {kind_of(current)}, not "
                f"{kind_of(wanted)}: delete it first",
            )
        others = [
            (service, key) for key, (service, _) in self.mirror.items.items() if key != wanted.key
        ]
        cluster_ip = spec.cluster_ip
        if cluster_ip != HEADLESS:
            kept = "" if current is None else current.spec.cluster_ip
            if cluster_ip and kept and cluster_ip != kept:
                raise AllocationError(
                    "spec.clusterIP",
                    f"`spec.clusterIP` of service {name!r} is {kept} and cannot change; "
                    "delete the service first",
                )
            taken = [s.spec.cluster_ip for s, _ in others if s.spec.cluster_ip != HEADLESS]
            if not kept:
                self.require_readable(wanted)
            cluster_ip = allocate_cluster_ip(cluster_ip or kept, taken)
        ports = list(spec.ports)
        if spec.type == "NodePort":
            taken_ports = [
                (port.protocol, port.node_port)
                for service, _ in others
                for port in service.spec.ports
                if port.node_port
            ]
            requested = [
                (port.protocol, port.node_port or _previous_node_port(port, current))
                for port in ports
            ]
            held: set[tuple[str, int]] = (
                set()
                if current is None
                else {(port.protocol, port.node_port) for port in current.spec.ports}
            )
            if any(pair not in held for pair in requested):
                self.require_readable(wanted)
            reports = {
                node: record.listening_ports
                for node, (record, _) in self.node_network.items.items()
            }
            # A port this Service already has stays its own, whatever listens there since.
            listened = {pair: node for pair, node in listening(reports).items() if pair not in held}
            chosen = allocate_node_ports(requested, taken_ports, listened=listened)
            ports = [
                msgspec.structs.replace(port, node_port=node_port)
                for port, node_port in zip(ports, chosen, strict=True)
            ]
        return msgspec.structs.replace(
            wanted, spec=msgspec.structs.replace(spec, cluster_ip=cluster_ip, ports=ports)
        )


__all__ = ["KIND", "ServiceAPI", "kind_of"]
