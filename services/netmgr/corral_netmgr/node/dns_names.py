"""Which Service names a node's DNS server answers, and with what (docs/networking.md, "DNS").

Pure: no sockets, no wire format (dns.py turns a `Resolution` into a DNS message).

`ServiceDirectory` holds the cluster's Services as their `Endpoints` records say
(`put(endpoints)`, `remove(key)`, key `<namespace>.<service>`), precomputed for lookups.
`resolve(directory, qname, qtype, cluster_domain)` decides one question:

- `<service>.<namespace>.svc.<domain>` (what a resolver sends after expanding the search
  path `<ns>.svc.<domain> svc.<domain> <domain>`): A = the clusterIP, or for a headless
  Service (clusterIP "None") every ready endpoint's address; AAAA: the IPv6 ones (none
  today: NOERROR, no answer); any other type: NOERROR, no answer.
- `<replica>.<service>.<namespace>.svc.<domain>` of a headless Service: that endpoint.
- `_<port>._<proto>.<service>.<namespace>.svc.<domain>` SRV: the named port (the Service
  port, target the Service's name; headless: one record per ready endpoint with the
  target port, target `<replica>.<service>...`), the targets' A records as additional.
- Unexpanded forms: `<service>.<namespace>.svc.`, `<service>.<namespace>.` and
  `<service>.` (namespace "default", or the only namespace that has that Service) are
  answered when such a Service exists, and forwarded otherwise (so `example.com.` still
  reaches the upstream resolvers unless a Service `example` lives in a namespace `com`).
- Any other name under `<domain>` that does not exist: NXDOMAIN (the server is the
  authority for the cluster domain; nothing under it is forwarded). A name with names
  below it (`svc.<domain>`, `<namespace>.svc.<domain>`, ...) exists: NOERROR, no answer.
- Everything else: forwarded.

Names compare case-insensitively; answers carry the question's own spelling.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from corral.contract.names import DEFAULT_NAMESPACE
from corral.contract.network_state import Endpoints

TTL = 5  # seconds: every answer, and the negative-caching time of the domain's SOA
HEADLESS = "None"


class Outcome(Enum):
    ANSWER = "answer"  # NOERROR with records
    NODATA = "nodata"  # NOERROR, the name exists, no record of that type
    NXDOMAIN = "nxdomain"  # no such name (under the cluster domain)
    FORWARD = "forward"  # not ours: ask the upstream resolvers


@dataclass(frozen=True, slots=True)
class Address:
    """An A (IPv4) or AAAA (IPv6) record."""

    name: str
    ip: str

    @property
    def ipv6(self) -> bool:
        return ":" in self.ip


@dataclass(frozen=True, slots=True)
class Service:
    """An SRV record."""

    name: str
    priority: int
    weight: int
    port: int
    target: str


Record = Address | Service


@dataclass(frozen=True, slots=True)
class Resolution:
    outcome: Outcome
    answers: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()


FORWARD = Resolution(Outcome.FORWARD)
NXDOMAIN = Resolution(Outcome.NXDOMAIN)
NODATA = Resolution(Outcome.NODATA)


@dataclass(frozen=True, slots=True)
class _Port:
    name: str  # lowercase; "" for an unnamed port (no SRV name)
    protocol: str  # lowercase: "tcp", "udp", "sctp"
    port: int
    target_port: int


@dataclass(frozen=True, slots=True)
class _Entry:
    """One Service, ready for lookups."""

    name: str
    namespace: str
    headless: bool
    ipv4: tuple[str, ...]  # the A answer
    ipv6: tuple[str, ...]  # the AAAA answer
    ports: tuple[_Port, ...]
    # headless: endpoint host label (replica name, or the address with dashes) -> address
    hosts: dict[str, str] = field(default_factory=dict)


def is_label(text: str) -> bool:
    """A DNS label of letters, digits and hyphens (a Service's or a replica's name)."""
    return 0 < len(text) <= 63 and all(c.isalnum() or c == "-" for c in text) and text.isascii()


def _host_label(replica: str, ip: str) -> str:
    label = replica.lower()
    if is_label(label):
        return label
    return ip.replace(".", "-").replace(":", "-")


def _valid_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _entry(endpoints: Endpoints) -> _Entry:
    headless = endpoints.cluster_ip == HEADLESS
    ips: list[str] = []
    hosts: dict[str, str] = {}
    if headless:
        for address in endpoints.addresses:
            ip = _valid_ip(address.ip) if address.ready else None
            if ip is not None and ip not in ips:
                ips.append(ip)
                hosts.setdefault(_host_label(address.replica, ip), ip)
    else:
        ip = _valid_ip(endpoints.cluster_ip)
        if ip is not None:
            ips.append(ip)
    ports = tuple(
        _Port(p.name.lower(), p.protocol.lower(), p.port, p.target_port) for p in endpoints.ports
    )
    return _Entry(
        name=endpoints.service.lower(),
        namespace=endpoints.namespace.lower(),
        headless=headless,
        ipv4=tuple(ip for ip in ips if ":" not in ip),
        ipv6=tuple(ip for ip in ips if ":" in ip),
        ports=ports,
        hosts=hosts,
    )


class ServiceDirectory:
    """The Services a DNS server answers for, kept from `Endpoints` records (in memory).

    `put(endpoints)` adds or replaces one (by its key `<namespace>.<service>`),
    `remove(key)` forgets one (an unknown key is ignored). Call them from the event
    loop the server runs on (the node part's watch of `corral_endpoints`)."""

    def __init__(self, endpoints: Iterable[Endpoints] = ()) -> None:
        self._by_key: dict[str, _Entry] = {}
        self._by_name: dict[tuple[str, str], _Entry] = {}  # (namespace, service)
        self._namespaces_of: dict[str, set[str]] = {}  # service -> namespaces having it
        self._services_in: dict[str, int] = {}  # namespace -> how many Services
        for item in endpoints:
            self.put(item)

    def put(self, endpoints: Endpoints) -> None:
        self.remove(endpoints.key)
        entry = _entry(endpoints)
        self._by_key[endpoints.key] = entry
        self._by_name[entry.namespace, entry.name] = entry
        self._namespaces_of.setdefault(entry.name, set()).add(entry.namespace)
        self._services_in[entry.namespace] = self._services_in.get(entry.namespace, 0) + 1

    def remove(self, key: str) -> None:
        entry = self._by_key.pop(key, None)
        if entry is None:
            return
        if self._by_name.get((entry.namespace, entry.name)) is entry:
            del self._by_name[entry.namespace, entry.name]
        namespaces = self._namespaces_of.get(entry.name)
        if namespaces is not None:
            namespaces.discard(entry.namespace)
            if not namespaces:
                del self._namespaces_of[entry.name]
        left = self._services_in.get(entry.namespace, 0) - 1
        if left > 0:
            self._services_in[entry.namespace] = left
        else:
            self._services_in.pop(entry.namespace, None)

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, namespace: str, service: str) -> _Entry | None:
        return self._by_name.get((namespace, service))

    def has_namespace(self, namespace: str) -> bool:
        return namespace in self._services_in

    def only_namespace_of(self, service: str) -> str | None:
        """The namespace of `service` for a bare `<service>.` query: "default" if it
        has one, else the only namespace that does (None when none or several do)."""
        namespaces = self._namespaces_of.get(service)
        if not namespaces:
            return None
        if DEFAULT_NAMESPACE in namespaces:
            return DEFAULT_NAMESPACE
        if len(namespaces) == 1:
            return next(iter(namespaces))
        return None


def split_name(qname: str) -> list[str] | None:
    """`Web.Default.` -> ["web", "default"]; None for a name that is no ASCII text."""
    if not qname.isascii():
        return None
    text = qname.lower().rstrip(".")
    return text.split(".") if text else []


def resolve(
    directory: ServiceDirectory,
    qname: str,
    qtype: str,
    cluster_domain: str = "cluster.local",
) -> Resolution:
    """Decide one question (`qtype` as dnslib spells it: "A", "AAAA", "SRV", "ANY", ...)."""
    labels = split_name(qname)
    if labels is None or not labels:
        return FORWARD
    domain = cluster_domain.lower().strip(".").split(".")
    owner = qname if qname.endswith(".") else qname + "."
    suffix = ".svc." + ".".join(domain) + "."
    if len(labels) >= len(domain) and labels[-len(domain) :] == domain:
        inner = labels[: -len(domain)]
        if not inner:
            return NODATA  # the domain itself
        if inner[-1] != "svc":
            return NXDOMAIN
        return _under_svc(directory, inner[:-1], owner, qtype.upper(), suffix)
    # Unexpanded forms: answered only when the Service exists.
    if len(labels) == 3 and labels[2] == "svc":
        labels = labels[:2]
    if len(labels) == 2:
        entry = directory.lookup(labels[1], labels[0])
    elif len(labels) == 1:
        namespace = directory.only_namespace_of(labels[0])
        entry = None if namespace is None else directory.lookup(namespace, labels[0])
    else:
        entry = None
    if entry is None:
        return FORWARD
    return _addresses(entry, owner, qtype.upper())


def _under_svc(
    directory: ServiceDirectory, rest: list[str], owner: str, qtype: str, suffix: str
) -> Resolution:
    """A name `<rest...>.svc.<domain>.`."""
    if not rest:
        return NODATA  # svc.<domain>
    namespace = rest[-1]
    if len(rest) == 1:
        return NODATA if directory.has_namespace(namespace) else NXDOMAIN
    entry = directory.lookup(namespace, rest[-2])
    if entry is None:
        return NXDOMAIN
    if len(rest) == 2:
        return _addresses(entry, owner, qtype)
    if len(rest) == 3:
        label = rest[0]
        if label.startswith("_"):  # _<proto>.<service>...: exists if such a named port does
            proto = label[1:]
            found = any(p.protocol == proto and p.name for p in entry.ports)
            return NODATA if found else NXDOMAIN
        ip = entry.hosts.get(label)
        if ip is None:
            return NXDOMAIN
        return _single(owner, ip, qtype)
    if len(rest) == 4 and rest[0].startswith("_") and rest[1].startswith("_"):
        return _srv(entry, rest[0][1:], rest[1][1:], owner, qtype, suffix)
    return NXDOMAIN


def _single(owner: str, ip: str, qtype: str) -> Resolution:
    ipv6 = ":" in ip
    if qtype == "ANY" or (qtype == "A" and not ipv6) or (qtype == "AAAA" and ipv6):
        return Resolution(Outcome.ANSWER, (Address(owner, ip),))
    return NODATA


def _addresses(entry: _Entry, owner: str, qtype: str) -> Resolution:
    if qtype == "A":
        ips = entry.ipv4
    elif qtype == "AAAA":
        ips = entry.ipv6
    elif qtype == "ANY":
        ips = entry.ipv4 + entry.ipv6
    else:
        ips = ()
    if not ips:
        return NODATA
    return Resolution(Outcome.ANSWER, tuple(Address(owner, ip) for ip in ips))


def _srv(
    entry: _Entry, port_name: str, proto: str, owner: str, qtype: str, suffix: str
) -> Resolution:
    port = next((p for p in entry.ports if p.name == port_name and p.protocol == proto), None)
    if port is None:
        return NXDOMAIN
    if qtype not in ("SRV", "ANY"):
        return NODATA
    service_name = f"{entry.name}.{entry.namespace}{suffix}"
    if not entry.headless:
        if not entry.ipv4 and not entry.ipv6:
            return NODATA
        answers: tuple[Record, ...] = (Service(owner, 0, 100, port.port, service_name),)
        extra = tuple(Address(service_name, ip) for ip in entry.ipv4 + entry.ipv6)
        return Resolution(Outcome.ANSWER, answers, extra)
    if not entry.hosts:
        return NODATA
    weight = max(1, 100 // len(entry.hosts))
    answers = tuple(
        Service(owner, 0, weight, port.target_port, f"{host}.{service_name}")
        for host in entry.hosts
    )
    extra = tuple(Address(f"{host}.{service_name}", ip) for host, ip in entry.hosts.items())
    return Resolution(Outcome.ANSWER, answers, extra)
