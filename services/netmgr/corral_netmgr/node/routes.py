"""Routes to other nodes' slices (flannel's host-gw; docs/networking.md, "Between nodes").

For every slice of a node on another host (its NodeNetwork's hostId differs from this
host's): `ip route replace <slice> via <its address> proto 182`. A route of protocol
182 inside one of the cluster's ranges that no longer applies is removed; no other
route is ever touched. `plan` decides (pure), `apply_plan` carries it out.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.contract.network_state import NetworkSlice, NodeNetwork
from corral_netmgr.node import host

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoutePlan:
    replace: dict[str, str] = field(default_factory=dict)  # slice -> via, to add or change
    remove: list[str] = field(default_factory=list)  # slices whose route goes
    problems: list[str] = field(default_factory=list)  # slices without a usable next hop

    @property
    def empty(self) -> bool:
        return not self.replace and not self.remove


def desired_routes(
    slices: Iterable[NetworkSlice],
    node_networks: Mapping[str, NodeNetwork],
    node: str,
    host_id: str,
) -> tuple[dict[str, str], list[str]]:
    """slice subnet -> next hop for the slices of nodes on other hosts, and why some
    slices have none yet (their node has not reported an address)."""
    wanted: dict[str, str] = {}
    problems: list[str] = []
    for piece in sorted(slices, key=lambda s: s.key):
        if piece.node == node:
            continue
        other = node_networks.get(piece.node)
        if other is None or not other.address:
            problems.append(f"{piece.key}: node {piece.node} has not reported its address")
            continue
        if host_id and other.host_id == host_id:
            continue  # the same host: its bridge is here, no route needed
        try:
            subnet = str(ipaddress.IPv4Network(piece.subnet, strict=False))
            via = str(ipaddress.IPv4Address(other.address))
        except ValueError as error:
            problems.append(f"{piece.key}: {error}")
            continue
        wanted[subnet] = via
    return wanted, problems


def current_routes(routes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """subnet -> next hop of corral's routes in `ip -j route show proto 182` output."""
    found: dict[str, str] = {}
    for route in routes:
        dst = str(route.get("dst", ""))
        if not dst or dst == "default":
            continue
        try:
            subnet = str(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
        except ValueError:
            continue
        found[subnet] = str(route.get("gateway", ""))
    return found


def plan(
    current: Mapping[str, str], wanted: Mapping[str, str], cluster_ranges: Iterable[str]
) -> RoutePlan:
    """What to change: routes wanted and missing or with another next hop are replaced;
    routes of protocol 182 inside the cluster's ranges and not wanted are removed (a
    route outside them is another cluster's, or someone else's: left alone)."""
    ranges = []
    for text in cluster_ranges:
        try:
            ranges.append(ipaddress.IPv4Network(text, strict=False))
        except ValueError:
            continue
    replace = {subnet: via for subnet, via in sorted(wanted.items()) if current.get(subnet) != via}
    remove = [
        subnet
        for subnet in sorted(current)
        if subnet not in wanted and any(ipaddress.IPv4Network(subnet).subnet_of(r) for r in ranges)
    ]
    return RoutePlan(replace, remove)


async def read_current(wrapper: Sequence[str] = ()) -> dict[str, str]:
    """corral's routes now (`wrapper`: e.g. `ip netns exec NAME`, for tests)."""
    ran = await host.run([*wrapper, "ip", "-j", "route", "show", "proto", str(host.ROUTE_PROTOCOL)])
    return current_routes(host.parse_json_list(ran.stdout))


async def apply_plan(route_plan: RoutePlan, wrapper: Sequence[str] = ()) -> list[str]:
    """Carry out `route_plan`; the errors (one per route that failed), [] when all went."""
    errors: list[str] = []
    proto = str(host.ROUTE_PROTOCOL)
    for subnet, via in route_plan.replace.items():
        try:
            await host.run([*wrapper, "ip", "route", "replace", subnet, "via", via, "proto", proto])
            log.info("route %s via %s", subnet, via)
        except host.CommandFailed as error:
            errors.append(str(error))
    for subnet in route_plan.remove:
        try:
            await host.run([*wrapper, "ip", "route", "del", subnet, "proto", proto])
            log.info("route %s removed", subnet)
        except host.CommandFailed as error:
            errors.append(str(error))
    return errors
