"""The node part's packet-filter rules, rendered (docs/networking.md, "Isolation" and
"Services"): pure, from the desired state to `iptables-restore --noflush` text.

    desired = Desired(prefix, networks=[NetworkRange(...)], endpoints=[Endpoints(...)])
    text = render(desired, existing={"filter": {...}, "nat": {...}})

Every chain is named `<prefix>-...` (names.chain_prefix: one node of one cluster), so
rendering never names another owner's chain. The text declares each of the node's
chains (which empties it), fills it, and deletes the node's chains that `existing`
lists and the desired state no longer has (a Service gone). The jumps from the built-in
chains are not in the text: they are added once, checked first (`jumps`, iptables.py).

filter table:
    <prefix>-FWD   (from DOCKER-USER, first) isolation: established, masquerade-marked
                   (a node port), same network, extra members -> ACCEPT; from a corral
                   range -> <prefix>-XNET
    <prefix>-XNET  to a corral range -> REJECT icmp-admin-prohibited
    <prefix>-NOEP  (from INPUT, FORWARD, OUTPUT, first) a Service port with no ready
                   endpoint, or a VIP on a port its Service does not serve ->
                   REJECT icmp-port-unreachable
nat table:
    <prefix>-SVC   (from PREROUTING and OUTPUT, first) VIP:port -> <prefix>-S-<hash>;
                   node port on a local address (not 127.0.0.0/8) -> mark, same chain
    <prefix>-S-<hash>  one rule per endpoint, random with probability 1/(n-i)
    <prefix>-E-<hash>  from the endpoint itself -> mark (hairpin); DNAT ip:targetPort
    <prefix>-POST  (from POSTROUTING, first) -> <prefix>-MASQ; from a corral range ->
                   <prefix>-XNET
    <prefix>-XNET  to a corral range -> ACCEPT (no masquerade between corral ranges)
    <prefix>-MASQ  marked -> MASQUERADE
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from corral.contract.network_state import Endpoints

# The packet mark meaning "masquerade this" (a bit of its own: kube-proxy's are 0x4000
# and 0x8000). Every corral node uses the same one, so either node part's MASQ chain
# of one host masquerades what the other's rules marked.
MASQ_MARK: Final = "0x40000/0x40000"
TABLES: Final = ("filter", "nat")
HEADLESS: Final = "None"
LOOPBACK: Final = "127.0.0.0/8"


@dataclass(frozen=True, slots=True)
class NetworkRange:
    """A corral network as isolation sees it: its whole range and its extra members."""

    name: str
    subnet: str
    extra_members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Desired:
    prefix: str
    networks: tuple[NetworkRange, ...] = ()
    endpoints: tuple[Endpoints, ...] = ()


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in (or Docker's) chain that jumps to one of the node's chains;
    `first`: inserted at position 1 (else appended)."""

    table: str
    chain: str
    target: str
    first: bool = True

    @property
    def spec(self) -> tuple[str, ...]:
        return ("-j", self.target)


@dataclass(slots=True)
class Rendered:
    """The restore text per table, and the Services skipped (with why)."""

    tables: dict[str, str]
    problems: list[str] = field(default_factory=list)


def chain(prefix: str, suffix: str) -> str:
    return f"{prefix}-{suffix}"


def jumps(prefix: str, *, docker_user: bool = True) -> list[Jump]:
    """The node's jumps from the built-in chains. Without Docker's DOCKER-USER chain
    (an engine that leaves iptables alone) isolation is jumped to from FORWARD."""
    return [
        Jump("filter", "DOCKER-USER" if docker_user else "FORWARD", chain(prefix, "FWD")),
        Jump("filter", "INPUT", chain(prefix, "NOEP")),
        Jump("filter", "FORWARD", chain(prefix, "NOEP")),
        Jump("filter", "OUTPUT", chain(prefix, "NOEP")),
        Jump("nat", "PREROUTING", chain(prefix, "SVC")),
        Jump("nat", "OUTPUT", chain(prefix, "SVC")),
        Jump("nat", "POSTROUTING", chain(prefix, "POST")),
    ]


def owned(prefix: str, chain_name: str) -> bool:
    """Whether `chain_name` is one of the node of `prefix`'s chains."""
    return chain_name.startswith(f"{prefix}-")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10].upper()


def _proto(protocol: str) -> str:
    return protocol.lower()


def _port_match(protocol: str, port: int) -> str:
    proto = _proto(protocol)
    return f"-p {proto} -m {proto} --dport {port}"


@dataclass(frozen=True, slots=True)
class _ServicePort:
    key: str
    vip: str
    protocol: str
    port: int
    target_port: int
    node_port: int
    name: str
    endpoints: tuple[str, ...]  # ready endpoint IPs, sorted


def _service_ports(endpoints: Endpoints, problems: list[str]) -> list[_ServicePort]:
    """The Service's ports with their ready endpoints; [] for a headless Service or one
    without a VIP yet. A record with bad values is skipped whole, with a problem."""
    key = endpoints.key
    if endpoints.cluster_ip in ("", HEADLESS):
        return []
    try:
        vip = ipaddress.IPv4Address(endpoints.cluster_ip)
    except ValueError:
        problems.append(f"{key}: `clusterIP` {endpoints.cluster_ip!r} is not an IPv4 address")
        return []
    ready: set[str] = set()
    for index, address in enumerate(endpoints.addresses):
        if not address.ready:
            continue
        try:
            ready.add(str(ipaddress.IPv4Address(address.ip)))
        except ValueError:
            problems.append(f"{key}: `addresses[{index}].ip` {address.ip!r} is not an IPv4 address")
            return []
    found: list[_ServicePort] = []
    for index, port in enumerate(endpoints.ports):
        for field_name, value, low in (
            ("port", port.port, 1),
            # 0 while no ready endpoint resolved a named targetPort: unused then (the
            # port is rejected as one with no endpoint), not a reason to skip the Service
            ("targetPort", port.target_port, 1 if ready else 0),
            ("nodePort", port.node_port, 0),
        ):
            if not low <= value <= 65535:
                problems.append(f"{key}: `ports[{index}].{field_name}` {value} is out of range")
                return []
        if port.protocol not in ("TCP", "UDP"):
            problems.append(f"{key}: `ports[{index}].protocol` {port.protocol!r} is not TCP or UDP")
            return []
        found.append(
            _ServicePort(
                key=key,
                vip=str(vip),
                protocol=port.protocol,
                port=port.port,
                target_port=port.target_port,
                node_port=port.node_port if endpoints.type == "NodePort" else 0,
                name=port.name,
                endpoints=tuple(sorted(ready, key=ipaddress.IPv4Address)),
            )
        )
    return found


def _ranges(networks: Iterable[NetworkRange], problems: list[str]) -> list[NetworkRange]:
    good: list[NetworkRange] = []
    for network in sorted(networks, key=lambda n: n.name):
        try:
            subnet = ipaddress.IPv4Network(network.subnet, strict=False)
            members = tuple(str(ipaddress.IPv4Address(member)) for member in network.extra_members)
        except ValueError as error:
            problems.append(
                f"network {network.name}: `subnet` {network.subnet!r} or `extraMembers` "
                f"{list(network.extra_members)}: {error}"
            )
            continue
        good.append(NetworkRange(network.name, str(subnet), tuple(sorted(set(members)))))
    return good


def render(desired: Desired, existing: Mapping[str, Iterable[str]] | None = None) -> Rendered:
    """The restore text for each table (TABLES), for `iptables-restore --noflush`.

    `existing`: table -> chain names there now; those of this node (`owned`) that are
    not rendered are emptied and deleted."""
    prefix = desired.prefix
    problems: list[str] = []
    networks = _ranges(desired.networks, problems)
    ports: list[_ServicePort] = []
    for endpoints in sorted(desired.endpoints, key=lambda e: e.key):
        ports.extend(_service_ports(endpoints, problems))

    # --- filter ------------------------------------------------------------------------
    fwd, xnet, noep = chain(prefix, "FWD"), chain(prefix, "XNET"), chain(prefix, "NOEP")
    filter_chains = [fwd, xnet, noep]
    filter_rules = [
        f"-A {fwd} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {fwd} -m mark --mark {MASQ_MARK} -j ACCEPT",
    ]
    for network in networks:
        filter_rules.append(f"-A {fwd} -s {network.subnet} -d {network.subnet} -j ACCEPT")
        for member in network.extra_members:
            filter_rules.append(f"-A {fwd} -s {member}/32 -d {network.subnet} -j ACCEPT")
    for network in networks:
        filter_rules.append(f"-A {fwd} -s {network.subnet} -j {xnet}")
    for network in networks:
        filter_rules.append(
            f"-A {xnet} -d {network.subnet} -j REJECT --reject-with icmp-admin-prohibited"
        )
    reject = "-j REJECT --reject-with icmp-port-unreachable"
    for port in ports:
        if port.endpoints:
            continue
        match = _port_match(port.protocol, port.port)
        filter_rules.append(f"-A {noep} -d {port.vip}/32 {match} {reject}")
        if port.node_port:
            node_match = _port_match(port.protocol, port.node_port)
            filter_rules.append(
                f"-A {noep} -m addrtype --dst-type LOCAL ! -d {LOOPBACK} {node_match} {reject}"
            )
    # Still addressed to a VIP in the filter table: a port the Service does not serve
    # (a served one was DNAT-ed to an endpoint before). Refused here, as a port with no
    # endpoint is; else it left by the host's default route, to whatever answers there.
    for vip in sorted({port.vip for port in ports}):
        # A packet conntrack finds INVALID (an out-of-window retransmit of a served
        # connection) skips the nat table: dropped, as kube-proxy drops it, not refused.
        filter_rules.append(f"-A {noep} -d {vip}/32 -m conntrack --ctstate INVALID -j DROP")
        filter_rules.append(f"-A {noep} -d {vip}/32 {reject}")

    # --- nat ---------------------------------------------------------------------------
    svc, post, masq = chain(prefix, "SVC"), chain(prefix, "POST"), chain(prefix, "MASQ")
    nat_xnet = chain(prefix, "XNET")
    nat_chains = [svc, post, masq, nat_xnet]
    nat_rules: list[str] = []
    per_service: list[str] = []
    mark = f"-j MARK --set-xmark {MASQ_MARK}"
    for port in ports:
        if not port.endpoints:
            continue
        port_id = f"{port.key}/{port.name or port.port}/{port.protocol}"
        service_chain = chain(prefix, f"S-{_digest(port_id)}")
        nat_chains.append(service_chain)
        match = _port_match(port.protocol, port.port)
        nat_rules.append(f"-A {svc} -d {port.vip}/32 {match} -j {service_chain}")
        if port.node_port:
            node_match = (
                f"-m addrtype --dst-type LOCAL ! -d {LOOPBACK} "
                f"{_port_match(port.protocol, port.node_port)}"
            )
            nat_rules.append(f"-A {svc} {node_match} {mark}")
            nat_rules.append(f"-A {svc} {node_match} -j {service_chain}")
        count = len(port.endpoints)
        for index, ip in enumerate(port.endpoints):
            endpoint_chain = chain(prefix, f"E-{_digest(f'{port_id}/{ip}:{port.target_port}')}")
            nat_chains.append(endpoint_chain)
            if index < count - 1:
                chance = f"-m statistic --mode random --probability {1 / (count - index):.10f} "
            else:
                chance = ""
            per_service.append(f"-A {service_chain} {chance}-j {endpoint_chain}")
            per_service.append(f"-A {endpoint_chain} -s {ip}/32 {mark}")
            per_service.append(
                f"-A {endpoint_chain} -p {_proto(port.protocol)} -m {_proto(port.protocol)} "
                f"-j DNAT --to-destination {ip}:{port.target_port}"
            )
    nat_rules.append(f"-A {post} -j {masq}")
    for network in networks:
        nat_rules.append(f"-A {post} -s {network.subnet} -j {nat_xnet}")
    for network in networks:
        nat_rules.append(f"-A {nat_xnet} -d {network.subnet} -j ACCEPT")
    nat_rules.append(f"-A {masq} -m mark --mark {MASQ_MARK} -j MASQUERADE")
    nat_rules.extend(per_service)

    existing = existing or {}
    tables = {
        "filter": _table("filter", prefix, filter_chains, filter_rules, existing.get("filter")),
        "nat": _table("nat", prefix, nat_chains, nat_rules, existing.get("nat")),
    }
    return Rendered(tables, problems)


def _table(
    table: str,
    prefix: str,
    chains: list[str],
    rules: list[str],
    existing: Iterable[str] | None,
) -> str:
    wanted = set(chains)
    stale = sorted(name for name in existing or () if owned(prefix, name) and name not in wanted)
    lines = [f"*{table}"]
    lines.extend(f":{name} - [0:0]" for name in [*chains, *stale])
    lines.extend(rules)
    lines.extend(f"-X {name}" for name in stale)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def removal(prefix: str, existing: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Restore text that empties and deletes every chain of the node of `prefix` that
    `existing` lists (its jumps must be gone first). Tables with none are left out."""
    tables: dict[str, str] = {}
    for table in TABLES:
        mine = sorted(name for name in existing.get(table, ()) if owned(prefix, name))
        if not mine:
            continue
        lines = [f"*{table}"]
        lines.extend(f":{name} - [0:0]" for name in mine)
        lines.extend(f"-X {name}" for name in mine)
        lines.append("COMMIT")
        tables[table] = "\n".join(lines) + "\n"
    return tables


def chains_in(saved: str) -> dict[str, set[str]]:
    """table -> chain names, from `iptables-save` output."""
    found: dict[str, set[str]] = {}
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            found.setdefault(table, set())
        elif line.startswith(":") and table:
            found[table].add(line[1:].split(" ", 1)[0])
    return found


def rules_in(saved: str) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> its rules in order (`-A CHAIN ...` lines), from `iptables-save`."""
    found: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A ") and table:
            found.setdefault((table, line.split(" ", 2)[1]), []).append(line)
    return found


def in_place(jump: Jump, rules: list[str]) -> bool:
    """Whether `jump` is among `rules` (its chain's, in order) and, for a jump that must
    come first, only jumps to corral chains (any node's: `CRL-`) come before it."""
    mine = f"-A {jump.chain} {' '.join(jump.spec)}"
    for rule in rules:
        if rule == mine:
            return True
        if jump.first and " -j CRL-" not in rule:
            return False
    return False


def move_first(jump: Jump, copies: int) -> str:
    """The `iptables-restore --noflush` text that moves `jump` first in one transaction:
    each of its `copies` deleted by rule text (never by position: a rule another owner
    inserts meanwhile would shift the numbers and the wrong rule would go), then one
    inserted at position 1. Applied atomically: the chain is never without the jump, and
    if the copies are no longer what was listed the whole move fails and nothing changes."""
    spec = " ".join(jump.spec)
    lines = [f"*{jump.table}"]
    lines += [f"-D {jump.chain} {spec}"] * copies
    lines += [f"-I {jump.chain} 1 {spec}", "COMMIT", ""]
    return "\n".join(lines)


def udp_targets(endpoints: Endpoints) -> tuple[str, tuple[int, ...], frozenset[str]] | None:
    """For a UDP Service with a VIP: (VIP, its UDP node ports, its ready endpoints' IPs),
    what conntrack cleaning compares between two applies; None for any other."""
    if endpoints.cluster_ip in ("", HEADLESS):
        return None
    udp = [port for port in endpoints.ports if port.protocol == "UDP"]
    if not udp:
        return None
    node_ports = tuple(
        sorted({p.node_port for p in udp if p.node_port and endpoints.type == "NodePort"})
    )
    ready = frozenset(a.ip for a in endpoints.addresses if a.ready)
    return endpoints.cluster_ip, node_ports, ready
