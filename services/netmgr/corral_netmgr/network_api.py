"""netmgr's answers to apply and delete of a Network (corral.api.network.*, and the
durable corral.spec.network.*), by the rules of corral_netmgr.spec_api.

A network's range is decided when it is made: the requested `spec.subnet` when it
overlaps no other network, the service range, or a range a node uses
(NodeNetwork.usedRanges), else the first free /16 of the pool. It is written into the
stored spec (a re-apply without it keeps it) and never changes, nor does its
`slicePrefix`. While another Network record cannot be read (from a newer corral, or
corrupt), its range is unknown: making a network is refused Busy (a re-apply of one
that has its range goes on). A delete is refused while a Deployment's template or a Service names
the network; `default` is never deleted.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

import anyio
import msgspec

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import REASON_BUSY, REASON_CONFLICT, Reply
from corral.contract.network_specs import Network, Service
from corral.contract.network_state import NodeNetwork
from corral.contract.specs import DEFAULT_NETWORK, ObjectMeta, replica_networks
from corral.contract.views import NetworksDeployment
from corral.natsio.kv import Bucket, Mirror
from corral_netmgr.allocator import (
    AllocationError,
    Taken,
    Unreadable,
    check_subnet,
    parse_ranges,
    pick_subnet,
    refuse_unreadable,
)
from corral_netmgr.spec_api import SpecAPI, SpecPosition, no_stream

KIND = "Network"


def service_network(service: Service) -> str:
    """The network a Service's endpoints are on (empty: `default`)."""
    return service.spec.network or DEFAULT_NETWORK


class NetworkAPI(SpecAPI[Network]):
    kind = KIND
    type = Network

    def __init__(
        self,
        networks: Mirror[Network],
        *,
        deployments: Mirror[NetworksDeployment],
        services: Mirror[Service],
        node_network: Mirror[NodeNetwork],
        lock: anyio.Lock,
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
    ) -> None:
        super().__init__(
            networks,
            lock=lock,
            views=[deployments, services, node_network],
            progress=progress,
            spec_position=spec_position,
        )
        self.deployments = deployments
        self.services = services
        self.node_network = node_network

    def taken(self, but: str) -> Taken:
        """What a new range of network `but` must not overlap."""
        ranges: dict[str, IPv4Network] = {}
        for name, (network, _) in self.mirror.items.items():
            if name != but and network.spec.subnet:
                ranges[name] = IPv4Network(network.spec.subnet)
        used = {
            node: parse_ranges(record.used_ranges)
            for node, (record, _) in self.node_network.items.items()
        }
        return Taken(networks=ranges, used=used)

    def settle(self, wanted: Network, current: Network | None) -> Network | Reply:
        try:
            return super().settle(wanted, current)
        except Unreadable as error:
            return self.reply(
                ok=False, name=wanted.metadata.name, reason=REASON_BUSY, error=error.message
            )

    def decide(self, wanted: Network, current: Network | None) -> Network:
        if current is not None and current.spec.subnet:
            if wanted.spec.subnet and wanted.spec.subnet != current.spec.subnet:
                raise AllocationError(
                    "spec.subnet",
                    f"`spec.subnet` of network {wanted.metadata.name!r} is "
                    f"{current.spec.subnet} and cannot change once made; delete the "
                    "network and make it again",
                )
            if wanted.spec.slice_prefix != current.spec.slice_prefix:
                raise AllocationError(
                    "spec.slicePrefix",
                    f"`spec.slicePrefix` of network {wanted.metadata.name!r} is "
                    f"{current.spec.slice_prefix} and cannot change once made; delete the "
                    "network and make it again",
                )
            return msgspec.structs.replace(wanted, spec=current.spec)
        refuse_unreadable("networks", self.mirror.unreadable, but=wanted.key)
        taken = self.taken(wanted.metadata.name)
        if wanted.spec.subnet:
            check_subnet(IPv4Network(wanted.spec.subnet), taken)
            return wanted
        subnet = pick_subnet(taken)
        return msgspec.structs.replace(
            wanted, spec=msgspec.structs.replace(wanted.spec, subnet=str(subnet))
        )

    def delete_key(self, request: Any) -> str:
        return str(request.name)  # networks are cluster-wide: the namespace is ignored

    def users(self, name: str) -> list[str]:
        """What names network `name`: Deployments' templates and Services."""
        found = [
            f"deployment {key}"
            for key, (deployment, _) in self.deployments.items.items()
            if name in replica_networks(deployment.spec.template)
        ]
        found += [
            f"service {key}"
            for key, (service, _) in self.services.items.items()
            if service_network(service) == name
        ]
        return sorted(found)

    def refuse_delete(self, name: str, key: str) -> Reply | None:
        if name == DEFAULT_NETWORK:
            return self.invalid(
                name, f"network {DEFAULT_NETWORK!r} is the cluster's and is never deleted", "name"
            )
        users = self.users(name)
        if users:
            return self.reply(
                ok=False,
                name=name,
                reason=REASON_CONFLICT,  # the cluster's state, not the request, is in the way
                field="name",
                error=f"network {name!r} is in use by {', '.join(users)}; "
                "delete them or change them to another network first",
            )
        return None

    async def ensure_default(self) -> Reply | None:
        """Make the `default` network (a range from the pool) when it is missing; the
        reply when one was made or refused, None when it exists."""
        if DEFAULT_NETWORK in self.mirror.items or DEFAULT_NETWORK in self.mirror.unreadable:
            return None
        default = Network(metadata=ObjectMeta(name=DEFAULT_NETWORK))
        return await self.apply(encode(default))


__all__ = ["KIND", "NetworkAPI", "names", "service_network"]
