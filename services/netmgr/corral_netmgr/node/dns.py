"""The node part's DNS server: Service names on the gateways of the node's slices, every
other name forwarded to the host's resolvers (docs/networking.md, "DNS").

Which names mean what is dns_names.py; this module is the wire (dnslib) and the sockets
(asyncio: one UDP endpoint and one TCP server per address, both on the same port).

API (all from one event loop, the node part's):

    directory = ServiceDirectory()            # dns_names.ServiceDirectory
    directory.put(endpoints)                  # an Endpoints record changed (corral_endpoints)
    directory.remove(key)                     # ... was deleted (key "<namespace>.<service>")
    server = DnsServer(directory, resolv_conf_upstreams(), cluster_domain="cluster.local")
    await server.start([(gateway, 53), ...])  # the node's slices' gateways
    await server.set_addresses([...])         # slices came or went: binds/unbinds the difference
    server.bound                              # [(host, port)] actually bound (port 0 -> chosen)
    await server.close()

`start` and `set_addresses` bind every address they can and keep what was bound; if any
failed they then raise `BindError` naming each (call again to retry: what is bound stays).
A host must be an IP address (`ValueError` otherwise). Port 0 picks a free port (the same
for UDP and TCP): tests and the benchmark use it.

Answers are authoritative, TTL 5 s; NXDOMAIN and NOERROR-without-answer carry the cluster
domain's SOA (negative caching for 5 s). A UDP answer larger than the client allows (512
bytes, or its EDNS size) is sent truncated (TC) so the client asks again over TCP.

Forwarding: a query that is not the cluster's goes to the upstreams in order (the client's
bytes with a fresh random id, from a fresh socket: a reply must come from there with that id
and the same question), each given `forward_timeout` seconds; UDP queries are forwarded
over UDP, TCP queries over TCP. None answers: SERVFAIL. An upstream that is one of the
server's own bound addresses is skipped (no loop); `resolv_conf_upstreams` leaves out
Docker's embedded resolver 127.0.0.11 (it only exists inside containers). `server.upstreams`
may be replaced at any time (a re-read resolv.conf). At most `max_forwards` forwards are
in flight: a query beyond them gets SERVFAIL at once; at most `max_tcp_connections`
clients' connections are open, each closed after `tcp_idle_timeout` s without a query.

A bad packet never stops the server: unparsable queries with a readable header get FORMERR,
anything else (responses, runts) is dropped; both are logged at debug level.

Metrics (prometheus_client's default registry: the service's /metrics shows them):
`corral_dns_queries_total{result}` (answer, nodata, nxdomain, forwarded, servfail,
formerr, notimp, dropped) and `corral_dns_forward_failures_total{reason}` (timeout, error,
bad_reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, SOA, SRV, A, DNSLabel, DNSRecord
from prometheus_client import Counter

from corral_netmgr.node import dns_names
from corral_netmgr.node.dns_names import TTL, Address, Outcome, Resolution, ServiceDirectory

__all__ = [
    "BindError",
    "DnsServer",
    "ServiceDirectory",
    "resolv_conf_upstreams",
]

log = logging.getLogger(__name__)

QUERIES = Counter(
    "corral_dns_queries_total",
    "DNS queries handled by the node's DNS server, by result "
    "(answer, nodata, nxdomain, forwarded, servfail, formerr, notimp, dropped)",
    ["result"],
)
FORWARD_FAILURES = Counter(
    "corral_dns_forward_failures_total",
    "Forwarded DNS queries an upstream did not answer (timeout, error, bad_reply)",
    ["reason"],
)

DOCKER_EMBEDDED_DNS = "127.0.0.11"
DNS_PORT = 53
UDP_PLAIN_LIMIT = 512  # a client without EDNS takes no larger UDP answer
EDNS_PAYLOAD = 1232  # what the server offers in its own OPT record
_HEADER = struct.Struct("!HHHHHH")
_ALLOWED_LABEL_BYTES = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
)


class BindError(OSError):
    """Some addresses could not be bound (the others were)."""

    def __init__(self, failures: Sequence[tuple[tuple[str, int], OSError]]) -> None:
        self.failures = list(failures)
        detail = "; ".join(f"{host}:{port}: {exc}" for (host, port), exc in self.failures)
        super().__init__(f"DNS server could not bind {detail}")


def resolv_conf_upstreams(path: str | Path = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The `nameserver` lines of a resolv.conf as (address, 53), without Docker's embedded
    resolver (127.0.0.11) and without anything that is not an IP address. A missing file
    gives no upstreams (every forwarded query then gets SERVFAIL)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    upstreams: list[tuple[str, int]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        host = fields[1].split("%", 1)[0]  # fe80::1%eth0: the zone is not ours to use
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            continue
        if address != DOCKER_EMBEDDED_DNS and (address, DNS_PORT) not in upstreams:
            upstreams.append((address, DNS_PORT))
    return upstreams


# --- the wire -------------------------------------------------------------------------


class _BadReply(Exception):
    pass


def _header_only(data: bytes, rcode: int) -> bytes | None:
    """A reply with only a header (id, opcode, RD copied): FORMERR for what cannot be
    parsed. None when there is no query header to answer (a runt, or a response)."""
    if len(data) < _HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    if flags & 0x8000:  # QR: a response; answering it could loop between two servers
        return None
    opcode = flags & 0x7800
    rd = flags & 0x0100
    return _HEADER.pack(ident, 0x8000 | opcode | rd | rcode, 0, 0, 0, 0)


def _question_end(data: bytes) -> int | None:
    """The offset just past the (first) question of a message; None if its name is
    compressed or the message is cut short."""
    offset = _HEADER.size
    while offset < len(data):
        length = data[offset]
        if length == 0:
            end = offset + 1 + 4
            return end if end <= len(data) else None
        if length & 0xC0:
            return None
        offset += 1 + length
    return None


def _checked_reply(query: bytes, reply: bytes) -> bytes:
    """`reply` if it answers `query` (same id, QR set, same question); else _BadReply."""
    if len(reply) < _HEADER.size or reply[:2] != query[:2] or not reply[2] & 0x80:
        raise _BadReply("not a reply to the query")
    end = _question_end(query)
    if end is not None and struct.unpack_from("!H", reply, 4)[0] >= 1:
        if reply[_HEADER.size : end].lower() != query[_HEADER.size : end].lower():
            raise _BadReply("a reply to another question")
    return reply


def _qname_text(qname: DNSLabel) -> str | None:
    """The question's name as text, or None when a label holds bytes no cluster name has
    (such names are forwarded as they came)."""
    labels = qname.label
    for label in labels:
        if not label or not _ALLOWED_LABEL_BYTES.issuperset(label):
            return None
    return ".".join(label.decode("ascii") for label in labels) + "."


def _udp_limit(request: DNSRecord) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_PLAIN_LIMIT, min(int(rr.rclass), 65535))
    return UDP_PLAIN_LIMIT


def _has_edns(request: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in request.ar)


def _rr(record: dns_names.Record) -> RR:
    if isinstance(record, Address):
        if record.ipv6:
            return RR(record.name, QTYPE.AAAA, rdata=AAAA(record.ip), ttl=TTL)
        return RR(record.name, QTYPE.A, rdata=A(record.ip), ttl=TTL)
    return RR(
        record.name,
        QTYPE.SRV,
        rdata=SRV(record.priority, record.weight, record.port, record.target),
        ttl=TTL,
    )


@dataclass(slots=True)
class _Decision:
    """What to do with one query: send `reply`; or forward it, and send `servfail` if no
    upstream answers; or drop it (both None)."""

    reply: bytes | None = None
    servfail: bytes | None = None
    result: str = "dropped"


# The plain query (one question, class IN, at most an EDNS OPT record: what resolvers
# send) is read and answered without dnslib, which costs ~10x more per query; anything
# else, and answers with more than address records, go through dnslib.

_RR_HEAD = struct.Struct("!HHIH")  # type, class, TTL, rdata length
_A_HEAD = b"\xc0\x0c" + _RR_HEAD.pack(1, 1, TTL, 4)  # owner: a pointer to the question
_AAAA_HEAD = b"\xc0\x0c" + _RR_HEAD.pack(28, 1, TTL, 16)
_OPT = b"\x00" + _RR_HEAD.pack(41, EDNS_PAYLOAD, 0, 0)
_QTYPE_NAMES = {1: "A", 28: "AAAA", 33: "SRV", 255: "ANY"}


@dataclass(frozen=True, slots=True)
class _PlainQuery:
    flags: int
    name: str  # the question's name as text, as spelled
    qtype: int
    question_end: int  # data[12:question_end] is the question
    edns: bool
    udp_limit: int


def _plain_query(data: bytes) -> _PlainQuery | None:
    """`data` read as a plain query, or None (then dnslib reads it)."""
    size = len(data)
    if size < 17:
        return None
    _, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # QR, opcode; counts
        return None
    offset = _HEADER.size
    labels: list[str] = []
    while True:
        length = data[offset]
        offset += 1
        if length == 0:
            break
        label = data[offset : offset + length]
        if length > 63 or len(label) != length or not _ALLOWED_LABEL_BYTES.issuperset(label):
            return None
        labels.append(label.decode("ascii"))
        offset += length
        if offset >= size:
            return None
    end = offset + 4
    if end > size:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    if qclass != 1:
        return None
    edns = False
    limit = UDP_PLAIN_LIMIT
    if ar:
        if end + 11 > size or data[end] != 0:
            return None
        rtype, payload, ttl, rdlength = _RR_HEAD.unpack_from(data, end + 1)
        if rtype != 41 or (ttl >> 16) & 0xFF or end + 11 + rdlength != size:
            return None  # not OPT, or an EDNS version past 0
        edns = True
        limit = max(UDP_PLAIN_LIMIT, payload)
    elif end != size:
        return None
    return _PlainQuery(flags, ".".join(labels) + ".", qtype, end, edns, limit)


def _id(data: bytes) -> int:
    ident: int = struct.unpack_from("!H", data)[0]
    return ident


def _soa_rdata(mname: str, rname: str, times: tuple[int, int, int, int, int]) -> bytes:
    """An SOA record's rdata with its length in front."""
    rdata = _encode_name(mname) + _encode_name(rname) + struct.pack("!5I", *times)
    return struct.pack("!H", len(rdata)) + rdata


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


# --- the server -----------------------------------------------------------------------


class _UdpServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        # the socket is closed a loop turn after transport.close(): rebinding waits for it
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self.server.on_datagram(self.transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: UDP error: %s", exc)


class _OneReply(asyncio.DatagramProtocol):
    """The client side of one forwarded UDP query."""

    def __init__(self, query: bytes, future: asyncio.Future[bytes]) -> None:
        self.query = query
        self.future = future

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.future.done():
            return
        try:
            self.future.set_result(_checked_reply(self.query, data))
        except _BadReply as exc:
            log.debug("dns: upstream %s sent a bad reply: %s", addr, exc)
            FORWARD_FAILURES.labels("bad_reply").inc()

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(slots=True)
class _Listener:
    requested: tuple[str, int]
    bound: tuple[str, int]
    udp: asyncio.DatagramTransport
    udp_protocol: _UdpServerProtocol
    tcp: asyncio.Server

    async def close(self) -> None:
        self.udp.close()
        self.tcp.close()  # closes the listening sockets at once
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await asyncio.shield(self.udp_protocol.closed)


class DnsServer:
    """Serves `directory`'s Services over UDP and TCP; see the module's docstring."""

    def __init__(
        self,
        directory: ServiceDirectory,
        upstreams: Iterable[tuple[str, int]],
        cluster_domain: str = "cluster.local",
        *,
        forward_timeout: float = 2.0,
        tcp_idle_timeout: float = 10.0,
        max_forwards: int = 1024,
        max_tcp_connections: int = 256,
    ) -> None:
        domain = cluster_domain.strip(".").lower()
        if not domain or any(not dns_names.is_label(x) for x in domain.split(".")):
            raise ValueError(f"cluster_domain: not a domain name: {cluster_domain!r}")
        self.directory = directory
        self.upstreams: list[tuple[str, int]] = list(upstreams)
        self.cluster_domain = domain
        self._domain_dot = domain + "."
        self.forward_timeout = forward_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_forwards = max_forwards
        self.max_tcp_connections = max_tcp_connections
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._lock = asyncio.Lock()
        self._forwards: set[asyncio.Task[None]] = set()
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._closed = False
        self._soa = RR(
            domain,
            QTYPE.SOA,
            rdata=SOA(f"ns.dns.{domain}", f"hostmaster.{domain}", (1, 7200, 1800, 86400, TTL)),
            ttl=TTL,
        )
        self._soa_bytes = (
            _encode_name(domain)
            + _RR_HEAD.pack(6, 1, TTL, 0)[:-2]
            + _soa_rdata(f"ns.dns.{domain}", f"hostmaster.{domain}", (1, 7200, 1800, 86400, TTL))
        )

    # -- addresses --

    @property
    def bound(self) -> list[tuple[str, int]]:
        """The (host, port) pairs served now (UDP and TCP alike), in the order bound."""
        return [listener.bound for listener in self._listeners.values()]

    async def start(self, addresses: Sequence[tuple[str, int]]) -> None:
        """Serve on `addresses` (usually each slice's gateway, port 53)."""
        self._closed = False
        await self.set_addresses(addresses)

    async def set_addresses(self, addresses: Sequence[tuple[str, int]]) -> None:
        """Serve on exactly `addresses`: unbind the ones gone, bind the new ones."""
        wanted = _validated(addresses)
        async with self._lock:
            if self._closed:
                raise RuntimeError("DnsServer is closed")
            # A listener stays when asked for as it was asked for or as it is bound.
            kept: dict[tuple[str, int], _Listener] = {}
            for key in wanted:
                for listener in self._listeners.values():
                    if key in (listener.requested, listener.bound) and all(
                        listener is not other for other in kept.values()
                    ):
                        kept[key] = listener
                        break
            for listener in list(self._listeners.values()):
                if all(listener is not other for other in kept.values()):
                    await listener.close()
                    log.info("dns: stopped serving on %s:%d", *listener.bound)
            self._listeners = {}
            failures: list[tuple[tuple[str, int], OSError]] = []
            for key in wanted:
                if key in kept:
                    self._listeners[key] = kept[key]
                    continue
                try:
                    self._listeners[key] = await self._bind(key)
                except OSError as exc:
                    failures.append((key, exc))
                    continue
                log.info("dns: serving on %s:%d (UDP, TCP)", *self._listeners[key].bound)
            if failures:
                raise BindError(failures)

    async def close(self) -> None:
        """Stop serving: every address unbound, open TCP connections and forwards ended."""
        async with self._lock:
            self._closed = True
            listeners = list(self._listeners.values())
            self._listeners.clear()
            for listener in listeners:
                await listener.close()
        for writer in list(self._tcp_writers):
            writer.close()
        tasks = list(self._forwards)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _bind(self, key: tuple[str, int]) -> _Listener:
        host, port = key
        loop = asyncio.get_running_loop()
        attempts = 20 if port == 0 else 1
        for attempt in range(attempts):
            udp, protocol = await loop.create_datagram_endpoint(
                lambda: _UdpServerProtocol(self), local_addr=(host, port)
            )
            actual = int(udp.get_extra_info("sockname")[1])
            try:
                tcp = await asyncio.start_server(self._serve_tcp, host, actual)
            except OSError:
                udp.close()
                await protocol.closed
                if attempt + 1 == attempts:
                    raise
                continue  # port 0: that port was free for UDP only; another one
            return _Listener(key, (host, actual), udp, protocol, tcp)
        raise AssertionError("unreachable")

    # -- queries --

    def decide(self, data: bytes, *, tcp: bool) -> _Decision:
        """The local part of handling one query message (no I/O)."""
        plain = _plain_query(data)
        if plain is not None:
            decision = self._decide_plain(data, plain, tcp)
            if decision is not None:
                return decision
        return self._decide_parsed(data, tcp)

    def _decide_plain(self, data: bytes, query: _PlainQuery, tcp: bool) -> _Decision | None:
        qtype = _QTYPE_NAMES.get(query.qtype) or str(QTYPE.get(query.qtype))
        resolution = dns_names.resolve(self.directory, query.name, qtype, self.cluster_domain)
        question = data[_HEADER.size : query.question_end]
        rd = query.flags & 0x0100
        if resolution.outcome is Outcome.FORWARD:
            servfail = _HEADER.pack(_id(data), 0x8080 | rd | RCODE.SERVFAIL, 1, 0, 0, 0)
            return _Decision(None, servfail + question, "forwarded")
        if resolution.additional:
            return None  # SRV: dnslib packs it
        answers: list[bytes] = []
        for record in resolution.answers:
            if not isinstance(record, Address) or record.name != query.name:
                return None
            if record.ipv6:
                answers.append(_AAAA_HEAD + socket.inet_pton(socket.AF_INET6, record.ip))
            else:
                answers.append(_A_HEAD + socket.inet_aton(record.ip))
        rcode = RCODE.NXDOMAIN if resolution.outcome is Outcome.NXDOMAIN else 0
        soa = b""
        if resolution.outcome is not Outcome.ANSWER and self._name_in_domain(query.name):
            soa = self._soa_bytes
        opt = _OPT if query.edns else b""
        flags = 0x8480 | rd | rcode  # QR, AA, RA
        header = _HEADER.pack(_id(data), flags, 1, len(answers), 1 if soa else 0, len(opt) // 11)
        reply = b"".join((header, question, *answers, soa, opt))
        if not tcp and len(reply) > query.udp_limit:
            header = _HEADER.pack(_id(data), flags | 0x0200, 1, 0, 0, len(opt) // 11)  # TC
            reply = header + question + opt
        return _Decision(reply, None, resolution.outcome.value)

    def _decide_parsed(self, data: bytes, tcp: bool) -> _Decision:
        try:
            request = DNSRecord.parse(data)
        except Exception as exc:  # dnslib raises many kinds on bad input
            log.debug("dns: unparsable query (%d bytes): %s", len(data), exc)
            reply = _header_only(data, RCODE.FORMERR)
            return _Decision(reply, None, "formerr" if reply is not None else "dropped")
        header = request.header
        if header.qr:
            log.debug("dns: dropped a response sent to the server")
            return _Decision()
        if header.opcode != 0:
            return _Decision(_header_only(data, RCODE.NOTIMP), None, "notimp")
        if len(request.questions) != 1:
            log.debug("dns: %d questions in one query", len(request.questions))
            return _Decision(_header_only(data, RCODE.FORMERR), None, "formerr")
        question = request.q
        name = _qname_text(question.qname)
        if name is None or question.qclass not in (1, 255):  # IN, ANY
            return _Decision(None, self._servfail(request), "forwarded")
        resolution = dns_names.resolve(
            self.directory, name, QTYPE.get(question.qtype), self.cluster_domain
        )
        if resolution.outcome is Outcome.FORWARD:
            return _Decision(None, self._servfail(request), "forwarded")
        return _Decision(self._pack(request, resolution, tcp), None, resolution.outcome.value)

    def _pack(self, request: DNSRecord, resolution: Resolution, tcp: bool) -> bytes:
        reply = request.reply()  # id, RD and the question copied; AA and RA set
        for record in resolution.answers:
            reply.add_answer(_rr(record))
        for record in resolution.additional:
            reply.add_ar(_rr(record))
        if resolution.outcome is Outcome.NXDOMAIN:
            reply.header.rcode = RCODE.NXDOMAIN
        if resolution.outcome in (Outcome.NXDOMAIN, Outcome.NODATA) and self._in_domain(request):
            reply.add_auth(self._soa)
        edns = _has_edns(request)
        if edns:
            reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
        packed: bytes = reply.pack()
        if tcp or len(packed) <= _udp_limit(request):
            return packed
        cut = request.reply()
        cut.header.tc = 1
        if edns:
            cut.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
        truncated: bytes = cut.pack()
        return truncated

    def _in_domain(self, request: DNSRecord) -> bool:
        return self._name_in_domain(str(request.q.qname))

    def _name_in_domain(self, name: str) -> bool:
        name = name.lower()
        return name == self._domain_dot or name.endswith("." + self._domain_dot)

    def _servfail(self, request: DNSRecord) -> bytes:
        reply = request.reply()
        reply.header.aa = 0
        reply.header.rcode = RCODE.SERVFAIL
        packed: bytes = reply.pack()
        return packed

    async def handle(self, data: bytes, *, tcp: bool) -> bytes | None:
        """One query message in, its reply out (None: dropped)."""
        try:
            decision = self.decide(data, tcp=tcp)
        except Exception:
            log.debug("dns: failed to answer a query", exc_info=True)
            QUERIES.labels("dropped").inc()
            return None
        if decision.servfail is None:
            QUERIES.labels(decision.result).inc()
            return decision.reply
        reply = await self._forward(data, tcp=tcp)
        if reply is None:
            QUERIES.labels("servfail").inc()
            return decision.servfail
        QUERIES.labels("forwarded").inc()
        return reply

    def on_datagram(
        self, transport: asyncio.DatagramTransport, data: bytes, addr: tuple[str | int, ...]
    ) -> None:
        """One UDP datagram from `addr` on `transport`: answered now, or forwarded."""
        try:
            decision = self.decide(data, tcp=False)
        except Exception:
            log.debug("dns: failed to answer a query from %s", addr, exc_info=True)
            QUERIES.labels("dropped").inc()
            return
        if decision.servfail is None:
            QUERIES.labels(decision.result).inc()
            if decision.reply is not None:
                transport.sendto(decision.reply, addr)
            return
        if len(self._forwards) >= self.max_forwards:
            QUERIES.labels("servfail").inc()
            transport.sendto(decision.servfail, addr)
            return
        task = asyncio.create_task(self._forward_udp(transport, data, decision.servfail, addr))
        self._forwards.add(task)
        task.add_done_callback(self._forwards.discard)

    async def _forward_udp(
        self,
        transport: asyncio.DatagramTransport,
        data: bytes,
        servfail: bytes,
        addr: tuple[str | int, ...],
    ) -> None:
        try:
            reply = await self._forward(data, tcp=False)
            if reply is None:
                QUERIES.labels("servfail").inc()
                reply = servfail
            else:
                QUERIES.labels("forwarded").inc()
            if not transport.is_closing():
                transport.sendto(reply, addr)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("dns: forwarding a query from %s failed", addr, exc_info=True)

    async def _forward(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The first upstream's reply to `data` (with the client's id), or None."""
        own = set(self.bound)
        query = secrets.token_bytes(2) + data[2:]
        for upstream in self.upstreams:
            if upstream in own:
                continue
            try:
                async with asyncio.timeout(self.forward_timeout):
                    if tcp:
                        reply = await self._ask_tcp(upstream, query)
                    else:
                        reply = await self._ask_udp(upstream, query)
            except TimeoutError:
                log.debug("dns: upstream %s:%d timed out", *upstream)
                FORWARD_FAILURES.labels("timeout").inc()
                continue
            except _BadReply as exc:
                log.debug("dns: upstream %s:%d: %s", *upstream, exc)
                FORWARD_FAILURES.labels("bad_reply").inc()
                continue
            except (OSError, EOFError) as exc:
                log.debug("dns: upstream %s:%d: %s", *upstream, exc)
                FORWARD_FAILURES.labels("error").inc()
                continue
            return data[:2] + reply[2:]
        return None

    async def _ask_udp(self, upstream: tuple[str, int], query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _OneReply(query, future), remote_addr=upstream
        )
        try:
            transport.sendto(query)
            return await future
        finally:
            transport.close()

    async def _ask_tcp(self, upstream: tuple[str, int], query: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*upstream)
        try:
            writer.write(len(query).to_bytes(2, "big") + query)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            return _checked_reply(query, await reader.readexactly(size))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tcp_writers) >= self.max_tcp_connections or self._closed:
            writer.close()
            return
        self._tcp_writers.add(writer)
        try:
            while True:
                async with asyncio.timeout(self.tcp_idle_timeout):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                reply = await self.handle(data, tcp=True)
                if reply is None:
                    break  # not a query: the stream cannot be trusted further
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError) as exc:
            log.debug("dns: TCP connection ended: %r", exc)
        finally:
            self._tcp_writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _validated(addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    wanted: list[tuple[str, int]] = []
    for index, item in enumerate(addresses):
        try:
            host, port = item
        except (TypeError, ValueError):
            raise ValueError(f"addresses[{index}]: not a (host, port) pair: {item!r}") from None
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"addresses[{index}].host: not an IP address: {host!r}") from None
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"addresses[{index}].port: not a port number: {port!r}")
        if (host, port) not in wanted:
            wanted.append((host, port))
    return wanted
