"""A Service's Endpoints, computed from what the cluster reports (pure; docs/networking.md):
the replicas whose labels (corral.contract.specs.replica_labels) match its selector, in
its namespace, that are placed, ready (ReplicaStatus.is_ready: Running, and passing its
readiness probe if it has one), have an IP on the Service's network (ReplicaStatus.ips)
and are on a node whose record says ready. A replica not ready is left out of the
addresses altogether (Kubernetes lists it under notReadyAddresses; corral's readers only
ever serve ready ones).

A `targetPort` name is resolved against each replica's template ports; a replica
without that name is left out. Should replicas resolve a name to different numbers (a
rolling update that renumbered a port), the numbers most of them give are the
Service's, and the others are left out until they agree (one record has one port list).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from corral.contract.network_specs import Service, ServicePort
from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints
from corral.contract.specs import labels_match, replica_labels
from corral.contract.state import Node
from corral.contract.views import EndpointsPlacement, EndpointsStatus, EndpointsTemplate
from corral_netmgr.network_api import service_network


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every label of a (non-empty) selector is among `labels`, with the same value."""
    return bool(selector) and labels_match(selector, labels)


def placement_labels(placement: EndpointsPlacement) -> dict[str, str]:
    return replica_labels(placement.deployment, placement.template)


def resolve_port(port: ServicePort, template: EndpointsTemplate) -> int | None:
    """A Service port's target as a number for a replica of `template` (None: it has no
    port of that name)."""
    target = port.target
    if isinstance(target, int):
        return target
    for declared in template.ports:
        if declared.name == target:
            return declared.container_port
    return None


@dataclass(frozen=True)
class Candidate:
    """One replica as the cluster reports it: its placement, status and node's record."""

    placement: EndpointsPlacement
    status: EndpointsStatus | None
    node: Node | None


def compute_endpoints(service: Service, candidates: Iterable[Candidate]) -> Endpoints:
    """The Service's Endpoints (updated_at 0: the caller stamps what it writes)."""
    network = service_network(service)
    namespace = service.metadata.namespace
    ready: dict[tuple[int, ...], list[EndpointAddress]] = {}
    for candidate in candidates:
        placement, status, node = candidate.placement, candidate.status, candidate.node
        if placement.namespace != namespace:
            continue
        if not selects(service.spec.selector, placement_labels(placement)):
            continue
        if status is None or not status.is_ready:  # Running, readiness probe (if any) passing
            continue
        ip = status.ips.get(network)
        if not ip or node is None or not node.ready:
            continue
        resolved = [resolve_port(port, placement.template) for port in service.spec.ports]
        if any(number is None for number in resolved):
            continue
        numbers = tuple(number for number in resolved if number is not None)
        ready.setdefault(numbers, []).append(
            EndpointAddress(ip=ip, replica=placement.replica, node=placement.node)
        )
    targets: tuple[int, ...] | None = None
    addresses: list[EndpointAddress] = []
    if ready:
        # Most replicas first; a tie goes to the numbers of the replica first by name.
        targets = min(
            ready,
            key=lambda numbers: (
                -len(ready[numbers]),
                min(address.replica for address in ready[numbers]),
            ),
        )
        addresses = sorted(ready[targets], key=lambda a: (a.replica, a.node, a.ip))
    ports = []
    for index, port in enumerate(service.spec.ports):
        target = port.target
        if targets is not None:
            number = targets[index]
        else:
            number = target if isinstance(target, int) else 0  # a name, nothing to resolve it
        ports.append(
            EndpointPort(
                port=port.port,
                target_port=number,
                protocol=port.protocol,
                name=port.name or "",
                node_port=port.node_port,
            )
        )
    return Endpoints(
        service=service.metadata.name,
        namespace=namespace,
        cluster_ip=service.spec.cluster_ip,
        type=service.spec.type,
        network=network,
        ports=ports,
        addresses=addresses,
    )
