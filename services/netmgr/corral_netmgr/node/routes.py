"""Routes to other nodes' slices (flannel's host-gw; docs/networking.md, "Between nodes").

For every slice of a node on another host (its NodeNetwork's hostId differs from this
host's): `ip route add <slice> via <its address> proto 182`, or `ip route replace` when
the route there is already corral's (protocol 182). A destination the host already
routes otherwise (its own `proto kernel` LAN, a static or VPN route, at any metric) is
never touched: it is reported (a conflict) and left without corral's route. A route of
protocol 182 inside one of the cluster's ranges that no longer applies is removed; no
other route is ever touched. `plan` decides (pure), `apply_plan` carries it out.
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
    replace: dict[str, str] = field(default_factory=dict)  # corral's route, new next hop
    add: dict[str, str] = field(default_factory=dict)  # slice -> via, no corral route yet
    remove: list[str] = field(default_factory=list)  # slices whose route goes
    problems: list[str] = field(default_factory=list)  # slices without a usable next hop

    @property
    def empty(self) -> bool:
        return not self.replace and not self.add and not self.remove


@dataclass(frozen=True, slots=True)
class RouteConflict:
    """A slice corral would route whose destination the host already routes otherwise:
    left as it is (the slice's replicas are not reachable from this host through it)."""

    subnet: str
    via: str  # the next hop corral wanted
    theirs: str  # the host's route, as `ip route` shows it

    @property
    def message(self) -> str:
        return (
            f"route {self.subnet} via {self.via} not added: the host already routes it "
            f"({self.theirs}); corral leaves that route alone"
        )


@dataclass(frozen=True, slots=True)
class RouteResult:
    errors: list[str] = field(default_factory=list)  # one per route that failed
    conflicts: list[RouteConflict] = field(default_factory=list)


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
    """What to change: corral's routes (`current`) with another next hop are replaced,
    routes wanted and not among them are added (if the host has none of its own there);
    routes of protocol 182 inside the cluster's ranges and not wanted are removed (a
    route outside them is another cluster's, or someone else's: left alone)."""
    ranges = []
    for text in cluster_ranges:
        try:
            ranges.append(ipaddress.IPv4Network(text, strict=False))
        except ValueError:
            continue
    replace = {
        subnet: via
        for subnet, via in sorted(wanted.items())
        if subnet in current and current[subnet] != via
    }
    add = {subnet: via for subnet, via in sorted(wanted.items()) if subnet not in current}
    remove = [
        subnet
        for subnet in sorted(current)
        if subnet not in wanted and any(ipaddress.IPv4Network(subnet).subnet_of(r) for r in ranges)
    ]
    return RoutePlan(replace, add, remove)


async def read_current(wrapper: Sequence[str] = ()) -> dict[str, str]:
    """corral's routes now (`wrapper`: e.g. `ip netns exec NAME`, for tests)."""
    ran = await host.run([*wrapper, "ip", "-j", "route", "show", "proto", str(host.ROUTE_PROTOCOL)])
    return current_routes(host.parse_json_list(ran.stdout))


def foreign_route(routes: Iterable[Mapping[str, Any]]) -> str:
    """The first route of `ip -j route show exact <subnet>` output that is not corral's,
    as text ("" when every one is corral's)."""
    for route in routes:
        if str(route.get("protocol", "")) in (str(host.ROUTE_PROTOCOL), "corral"):
            continue
        words = [str(route.get("dst", ""))]
        for key, word in (("gateway", "via"), ("dev", "dev"), ("protocol", "proto")):
            if route.get(key):
                words += [word, str(route[key])]
        if route.get("metric") is not None:
            words += ["metric", str(route["metric"])]
        return " ".join(words)
    return ""


async def apply(route_plan: RoutePlan, wrapper: Sequence[str] = ()) -> RouteResult:
    """Carry out `route_plan`: the routes that failed and the slices left unrouted
    because the host routes their destination itself (each logged)."""
    result = RouteResult()
    proto = str(host.ROUTE_PROTOCOL)
    for subnet, via in route_plan.replace.items():
        try:
            await host.run([*wrapper, "ip", "route", "replace", subnet, "via", via, "proto", proto])
            log.info("route %s via %s", subnet, via)
        except host.CommandFailed as error:
            result.errors.append(str(error))
    for subnet, via in route_plan.add.items():
        try:
            shown = await host.run([*wrapper, "ip", "-j", "route", "show", "exact", subnet])
            theirs = foreign_route(host.parse_json_list(shown.stdout))
            if not theirs:
                added = await host.run(
                    [*wrapper, "ip", "route", "add", subnet, "via", via, "proto", proto],
                    check=False,
                )
                if added.code == 0:
                    log.info("route %s via %s", subnet, via)
                    continue
                if "File exists" not in added.stderr:
                    result.errors.append(f"ip route add {subnet} via {via}: {added.stderr.strip()}")
                    continue
                shown = await host.run([*wrapper, "ip", "-j", "route", "show", "exact", subnet])
                theirs = foreign_route(host.parse_json_list(shown.stdout))
                if not theirs:
                    continue  # corral's, added meanwhile (another node part on this host)
            conflict = RouteConflict(subnet, via, theirs)
            log.warning("%s", conflict.message)
            result.conflicts.append(conflict)
        except host.CommandFailed as error:
            result.errors.append(str(error))
    for subnet in route_plan.remove:
        try:
            await host.run([*wrapper, "ip", "route", "del", subnet, "proto", proto])
            log.info("route %s removed", subnet)
        except host.CommandFailed as error:
            result.errors.append(str(error))
    return result


async def apply_plan(route_plan: RoutePlan, wrapper: Sequence[str] = ()) -> list[str]:
    """Carry out `route_plan`; the errors (one per route that failed) and the conflicts'
    messages (a slice the host routes itself), [] when all went."""
    result = await apply(route_plan, wrapper)
    return result.errors + [conflict.message for conflict in result.conflicts]
