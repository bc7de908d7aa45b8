"""What the node part reads of its host: addresses, routes, the ports it listens on,
its host id; and running the host's tools (`ip`, `iptables`, `conntrack`).

Reading only: the node's address comes from the routing table (the default route's
source address), never from sending anything. The decisions on what was read are pure
functions (`default_address`, `used_ranges`, `listening_sockets`), tested on recorded
`ip -j` and /proc/net output.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from corral.natsio.host_tools import CommandFailed as CommandFailed  # raised by run
from corral.natsio.host_tools import Ran, run_tool

log = logging.getLogger(__name__)

ROUTE_PROTOCOL: Final = (
    182  # corral's routes (docs/networking.md; 186 is the kernel's BGP): only these go
)
MACHINE_ID: Final = Path("/etc/machine-id")
PROC_NET: Final = Path("/proc/net")  # this process's network namespace: the host's
COMMAND_TIMEOUT: Final = 30.0


async def run(argv: Sequence[str], stdin: str | None = None, *, check: bool = True) -> Ran:
    """Run a host tool; CommandFailed when it exits non-zero and `check`."""
    return await run_tool(argv, stdin, check=check, seconds=COMMAND_TIMEOUT)


async def ip_json(*args: str) -> list[dict[str, Any]]:
    """`ip -j <args>` parsed (a list of objects)."""
    ran = await run(["ip", "-j", *args])
    return parse_json_list(ran.stdout)


def parse_json_list(text: str) -> list[dict[str, Any]]:
    """`ip -j` output: a list of objects ([] for nothing)."""
    if not text.strip():
        return []
    found = json.loads(text)
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def machine_id(path: Path = MACHINE_ID) -> str:
    """The host's id (/etc/machine-id): nodes on one host share it; "" when unreadable."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


SYS_NET: Final = Path("/sys/class/net")


def set_hairpin(bridge: str, sys_net: Path = SYS_NET) -> int:
    """Turn hairpin mode on for every port of `bridge` (a container reaching a Service
    that balances it to itself: with br_netfilter the DNATed frame is bridged back out
    the port it came in on, which a bridge only does in hairpin mode). How many ports
    were changed; 0 when the bridge is not there."""
    changed = 0
    ports = sys_net / bridge / "brif"
    try:
        found = sorted(ports.iterdir())
    except OSError:
        return 0
    for port in found:
        mode = port / "hairpin_mode"
        try:
            if mode.read_text().strip() != "1":
                mode.write_text("1")
                changed += 1
        except OSError:
            continue  # the port went meanwhile
    return changed


def _ipv4_addresses(links: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, int]]:
    """(device, address, prefix length) of every IPv4 address in `ip -j addr` output."""
    found: list[tuple[str, str, int]] = []
    for link in links:
        device = str(link.get("ifname", ""))
        for info in link.get("addr_info") or []:
            if info.get("family") == "inet" and info.get("local"):
                found.append((device, str(info["local"]), int(info.get("prefixlen", 32))))
    return found


def default_address(routes: Iterable[Mapping[str, Any]], links: Iterable[Mapping[str, Any]]) -> str:
    """The host's source address on its default route (`ip -j route`, `ip -j addr`):
    the route's preferred source, else the address of its device whose network holds
    the gateway, else the device's first address; "" without a default route."""
    addresses = _ipv4_addresses(links)
    for route in routes:
        if route.get("dst") != "default":
            continue
        if route.get("prefsrc"):
            return str(route["prefsrc"])
        device = route.get("dev")
        mine = [(address, length) for dev, address, length in addresses if dev == device]
        gateway = route.get("gateway")
        if gateway:
            for address, length in mine:
                network = ipaddress.IPv4Interface(f"{address}/{length}").network
                if ipaddress.IPv4Address(gateway) in network:
                    return address
        if mine:
            return mine[0][0]
    return ""


def _route_network(route: Mapping[str, Any]) -> ipaddress.IPv4Network | None:
    dst = str(route.get("dst", ""))
    if not dst or dst == "default":
        return None
    try:
        return ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
    except ValueError:
        return None  # IPv6, or a type of route without a plain destination


def used_ranges(
    routes: Iterable[Mapping[str, Any]],
    links: Iterable[Mapping[str, Any]],
    docker_subnets: Iterable[str],
    corral_devices: Iterable[str],
) -> list[str]:
    """The IPv4 ranges this host already uses and corral must not allocate: its
    addresses' networks, its routes (not corral's: protocol 186, or on one of this
    cluster's bridges) and the engine's Docker networks that are not corral's. Loopback
    is left out; sorted, each once."""
    skip = set(corral_devices)
    found: set[ipaddress.IPv4Network] = set()
    for device, address, length in _ipv4_addresses(links):
        if device in skip:
            continue
        found.add(ipaddress.IPv4Interface(f"{address}/{length}").network)
    for route in routes:
        if route.get("dev") in skip or str(route.get("protocol", "")) in (
            str(ROUTE_PROTOCOL),
            "corral",
        ):
            continue
        network = _route_network(route)
        if network is not None:
            found.add(network)
    for subnet in docker_subnets:
        try:
            found.add(ipaddress.IPv4Network(subnet, strict=False))
        except ValueError:
            continue  # an IPv6 subnet
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    kept = [n for n in found if not n.subnet_of(loopback)]
    return [str(n) for n in sorted(kept)]


# /proc/net/{tcp,udp}[6]: the socket state column (include/net/tcp_states.h)
TCP_LISTEN: Final = "0A"
UDP_UNCONNECTED: Final = "07"  # TCP_CLOSE: a bound UDP socket with no peer
PROC_NET_FILES: Final = (("tcp", "TCP"), ("tcp6", "TCP"), ("udp", "UDP"), ("udp6", "UDP"))


def _proc_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A /proc/net address column's address: 8 hex digits (IPv4) or 32 (IPv6), each
    32-bit word in the host's byte order (little-endian here, as every host corral runs)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    if len(raw) not in (4, 16):
        return None
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _loopback_only(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A bind that only loopback reaches (127.0.0.0/8, ::1, ::ffff:127.x): no node port
    (whose traffic comes from outside, or from a replica) can reach it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def listening_sockets(text: str) -> set[int]:
    """The local ports in a /proc/net/{tcp,tcp6,udp,udp6} table that a process listens
    on (TCP in LISTEN, UDP bound without a peer), on any address but loopback-only ones."""
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] not in (TCP_LISTEN, UDP_UNCONNECTED):
            continue
        host_part, _, port_part = fields[1].partition(":")
        address = _proc_address(host_part)
        try:
            port = int(port_part, 16)
        except ValueError:
            continue
        if address is None or not port or _loopback_only(address):
            continue
        ports.add(port)
    return ports


def listening_ports(proc_net: Path = PROC_NET) -> list[str]:
    """The ports a process on this host listens on, as NodeNetwork.listeningPorts has
    them ("22/TCP", "53/UDP"; sorted by protocol then number). A table that cannot be
    read (no IPv6) adds nothing."""
    found: set[tuple[str, int]] = set()
    for name, protocol in PROC_NET_FILES:
        try:
            text = (proc_net / name).read_text()
        except OSError:
            continue
        found.update((protocol, port) for port in listening_sockets(text))
    return [f"{port}/{protocol}" for protocol, port in sorted(found)]
