"""What netmgr's cluster part allocates, as pure functions (docs/networking.md):

- a network's range: a requested one that overlaps nothing, or the first free /16 of
  the pool;
- each node's slice of every network (stable; the lowest free index; its first
  address is the gateway);
- a Service's cluster IP from the service range, and its node ports (free: no other
  Service has it and no node reports a process listening there).

Every refusal is an AllocationError naming the field, as a Reply's `field`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from corral.contract.network_specs import (
    DEFAULT_NETWORK_POOL,
    DEFAULT_NETWORK_PREFIX,
    DEFAULT_NODE_PORT_RANGE,
    DEFAULT_SERVICE_RANGE,
)

POOL = IPv4Network(DEFAULT_NETWORK_POOL)
SERVICE_RANGE = IPv4Network(DEFAULT_SERVICE_RANGE)
NODE_PORTS = DEFAULT_NODE_PORT_RANGE


class AllocationError(ValueError):
    """A request the cluster's state refuses; `field` is the offending field's path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Unreadable(Exception):
    """An allocation that cannot be decided now: a record of the kind it must not collide
    with cannot be read (corrupt, or from a newer corral), so what it holds is unknown.
    Refused Busy, nothing written; `message` names the record(s)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def refuse_unreadable(what: str, keys: Iterable[str], *, but: str = "") -> None:
    """Raise Unreadable when any of `keys` (other than `but`, the record being replaced)
    cannot be read; `what`: the kind in words, plural ("services")."""
    blocking = sorted(key for key in keys if key != but)
    if blocking:
        raise Unreadable(
            f"cannot allocate while {what} {', '.join(blocking)} cannot be read (written by "
            "a newer corral, or corrupt): what they hold is unknown; delete or rewrite them, "
            "then try again"
        )


def parse_ranges(ranges: Iterable[str]) -> list[IPv4Network]:
    """The IPv4 ranges among `ranges` (what a node reports; anything unreadable or a /0,
    a default route rather than a range, is left out)."""
    found: list[IPv4Network] = []
    for text in ranges:
        try:
            network = IPv4Network(text, strict=False)
        except ValueError:
            continue
        if network.prefixlen > 0:
            found.append(network)
    return found


@dataclass(frozen=True)
class Taken:
    """The ranges a new network must not overlap: other networks' (name -> range), the
    service range, and each node's used ranges (node -> ranges)."""

    networks: Mapping[str, IPv4Network] = field(default_factory=dict)
    used: Mapping[str, Sequence[IPv4Network]] = field(default_factory=dict)
    service_range: IPv4Network = SERVICE_RANGE

    def overlap(self, candidate: IPv4Network) -> str | None:
        """What `candidate` overlaps, in words, or None."""
        for name, network in sorted(self.networks.items()):
            if candidate.overlaps(network):
                return f"network {name!r} ({network})"
        if candidate.overlaps(self.service_range):
            return f"the service range ({self.service_range})"
        for node, ranges in sorted(self.used.items()):
            for used in ranges:
                if candidate.overlaps(used):
                    return f"{used}, used on node {node!r}"
        return None


# Ranges no network may use: a bridge given one would route them on every host
# (127.0.0.0/24 on a bridge takes the host's own loopback traffic for those addresses).
SPECIAL_RANGES: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "'this network', never a destination"),
    (IPv4Network("127.0.0.0/8"), "the hosts' loopback"),
    (IPv4Network("169.254.0.0/16"), "link-local addresses"),
    (IPv4Network("224.0.0.0/4"), "multicast"),
    (IPv4Network("240.0.0.0/4"), "reserved addresses and the broadcast address"),
)


def check_subnet(subnet: IPv4Network, taken: Taken) -> None:
    """Refuse a requested range that overlaps a special range or anything taken."""
    for special, what in SPECIAL_RANGES:
        if subnet.overlaps(special):
            raise AllocationError(
                "spec.subnet", f"`spec.subnet` {subnet} overlaps {special} ({what})"
            )
    overlap = taken.overlap(subnet)
    if overlap is not None:
        raise AllocationError("spec.subnet", f"`spec.subnet` {subnet} overlaps {overlap}")


def pick_subnet(
    taken: Taken, *, pool: IPv4Network = POOL, prefix: int = DEFAULT_NETWORK_PREFIX
) -> IPv4Network:
    """The first range of `pool` of length `prefix` that overlaps nothing taken."""
    for candidate in pool.subnets(new_prefix=prefix):
        if taken.overlap(candidate) is None:
            return candidate
    raise AllocationError(
        "spec.subnet",
        f"no free /{prefix} is left in the pool {pool}: give `spec.subnet` explicitly",
    )


def gateway(slice_: IPv4Network) -> IPv4Address:
    """A slice's first address: its bridge, and the DNS server there."""
    return slice_.network_address + 1


def slice_at(subnet: IPv4Network, slice_prefix: int, index: int) -> IPv4Network:
    size = 1 << (32 - slice_prefix)
    return IPv4Network((int(subnet.network_address) + index * size, slice_prefix))


def slice_index(subnet: IPv4Network, slice_prefix: int, text: str) -> int | None:
    """The index of slice `text` in `subnet`, or None when it is not one of its slices."""
    try:
        network = IPv4Network(text, strict=True)
    except ValueError:
        return None
    if network.prefixlen != slice_prefix or not network.subnet_of(subnet):
        return None
    return (int(network.network_address) - int(subnet.network_address)) >> (32 - slice_prefix)


@dataclass(frozen=True)
class Slices:
    """Each node's slice (node -> range), and the nodes that got none (no room left)."""

    assigned: dict[str, IPv4Network]
    without: list[str]


def assign_slices(
    subnet: IPv4Network,
    slice_prefix: int,
    nodes: Iterable[str],
    existing: Mapping[str, str],
) -> Slices:
    """One slice of `subnet` per node. A node's existing slice (node -> range) is kept
    when it is a slice of this subnet that no other node kept; a new node gets the
    lowest free index (nodes in name order)."""
    count = 1 << (slice_prefix - subnet.prefixlen)
    wanted = sorted(set(nodes))
    assigned: dict[str, IPv4Network] = {}
    used: set[int] = set()
    for node in wanted:
        text = existing.get(node)
        index = None if text is None else slice_index(subnet, slice_prefix, text)
        if index is not None and index not in used:
            used.add(index)
            assigned[node] = slice_at(subnet, slice_prefix, index)
    without: list[str] = []
    next_free = 0
    for node in wanted:
        if node in assigned:
            continue
        while next_free in used:
            next_free += 1
        if next_free >= count:
            without.append(node)
            continue
        used.add(next_free)
        assigned[node] = slice_at(subnet, slice_prefix, next_free)
    return Slices(assigned, without)


def slice_conflicts(
    slices: Mapping[str, IPv4Network], used: Mapping[str, Sequence[IPv4Network]]
) -> list[str]:
    """What a network's slices (node -> slice) overlap among the ranges nodes report
    using (node -> ranges; reported after the network was made, or its slices could
    not have been given there), in words, sorted: "slice 10.128.3.0/24 overlaps
    10.128.3.0/24 used on node n3" (with the slice's node when it is another's: every
    node routes every slice)."""
    found: list[str] = []
    for node, ranges in sorted(used.items()):
        for range_ in ranges:
            for owner, slice_ in sorted(slices.items(), key=lambda item: item[1]):
                if not slice_.overlaps(range_):
                    continue
                whose = "" if owner == node else f" (node {owner}'s)"
                found.append(f"slice {slice_}{whose} overlaps {range_} used on node {node}")
    return found


def allocate_cluster_ip(
    requested: str, taken: Iterable[str], *, service_range: IPv4Network = SERVICE_RANGE
) -> str:
    """The requested cluster IP when it is in range and free, else the lowest free one
    (never the range's network address, its .1 or its broadcast address)."""
    in_use = set(taken)
    reserved = {
        service_range.network_address,
        service_range.network_address + 1,
        service_range.broadcast_address,
    }
    if requested:
        address = ipaddress.IPv4Address(requested)
        if address not in service_range:
            raise AllocationError(
                "spec.clusterIP",
                f"`spec.clusterIP` {requested} is not in the service range {service_range}",
            )
        if address in reserved:
            raise AllocationError(
                "spec.clusterIP",
                f"`spec.clusterIP` {requested} is reserved in the service range {service_range}",
            )
        if requested in in_use:
            raise AllocationError(
                "spec.clusterIP", f"`spec.clusterIP` {requested} is taken by another Service"
            )
        return requested
    for address in service_range.hosts():
        if address in reserved:
            continue
        text = str(address)
        if text not in in_use:
            return text
    raise AllocationError(
        "spec.clusterIP", f"no free address is left in the service range {service_range}"
    )


def parse_port(text: str) -> tuple[str, int] | None:
    """("TCP", 22) for "22/TCP" (what a node reports listening), None when unreadable."""
    number, _, protocol = text.partition("/")
    try:
        port = int(number)
    except ValueError:
        return None
    if not 0 < port < 65536 or protocol not in ("TCP", "UDP"):
        return None
    return protocol, port


def listening(reports: Mapping[str, Iterable[str]]) -> dict[tuple[str, int], str]:
    """(protocol, port) -> the first node (by name) that reports a process listening
    there, from each node's NodeNetwork.listeningPorts."""
    found: dict[tuple[str, int], str] = {}
    for node in sorted(reports):
        for text in reports[node]:
            parsed = parse_port(text)
            if parsed is not None:
                found.setdefault(parsed, node)
    return found


def allocate_node_ports(
    requested: Sequence[tuple[str, int]],
    taken: Iterable[tuple[str, int]],
    *,
    listened: Mapping[tuple[str, int], str] | None = None,
    port_range: tuple[int, int] = NODE_PORTS,
) -> list[int]:
    """A node port per Service port ((protocol, requested port or 0), in order). A
    requested port may be any of 1-65535 and must be free for its protocol: no other
    Service has it (`taken`) and no process listens there on any node (`listened`:
    (protocol, port) -> a node); the others get the lowest free port of `port_range`.
    (A node port's rules come first on every node: one on a port a process listens on
    would send that process's traffic to the Service.)"""
    in_use = set(taken)
    busy = dict(listened or {})
    result = [0] * len(requested)
    for index, (protocol, port) in enumerate(requested):
        if not port:
            continue
        if (protocol, port) in in_use:
            raise AllocationError(
                f"spec.ports[{index}].nodePort",
                f"`spec.ports[{index}].nodePort` {port}/{protocol} is taken by another Service",
            )
        if (protocol, port) in busy:
            raise AllocationError(
                f"spec.ports[{index}].nodePort",
                f"`spec.ports[{index}].nodePort` {port}/{protocol} is in use on node "
                f"{busy[(protocol, port)]} (a process listens there)",
            )
        in_use.add((protocol, port))
        result[index] = port
    low, high = port_range
    for index, (protocol, port) in enumerate(requested):
        if port:
            continue
        for candidate in range(low, high + 1):
            if (protocol, candidate) not in in_use and (protocol, candidate) not in busy:
                in_use.add((protocol, candidate))
                result[index] = candidate
                break
        else:
            raise AllocationError(
                f"spec.ports[{index}].nodePort",
                f"no free {protocol} node port is left in {low}-{high}",
            )
    return result
