"""The node's DNS server over real UDP and TCP on loopback (corral_netmgr.node.dns):
every name form, headless Services, NXDOMAIN, forwarding through fake upstream servers
on 127.0.0.1 (answering, silent, lying, itself), bad packets, truncation, and binding
and unbinding addresses while it runs. No traffic leaves loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from prometheus_client import REGISTRY

from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints
from corral_netmgr.node.dns import BindError, DnsServer, resolv_conf_upstreams
from corral_netmgr.node.dns_names import ServiceDirectory
from tests.waiting import eventually

SERVER_HOST = "127.0.0.2"
UPSTREAM_HOST = "127.0.0.1"
TIMEOUT = 5.0

# --- clients ----------------------------------------------------------------------------


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.errors.put_nowait(exc)


@contextlib.asynccontextmanager
async def udp_client(
    address: tuple[str, int],
) -> AsyncIterator[tuple[asyncio.DatagramTransport, _Collect]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Collect, remote_addr=address)
    try:
        yield transport, protocol
    finally:
        transport.close()


async def ask_udp(address: tuple[str, int], query: DNSRecord) -> DNSRecord:
    async with udp_client(address) as (transport, protocol):
        transport.sendto(query.pack())
        async with asyncio.timeout(TIMEOUT):
            return DNSRecord.parse(await protocol.replies.get())


async def ask_tcp_raw(address: tuple[str, int], payloads: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        replies = []
        for payload in payloads:
            writer.write(len(payload).to_bytes(2, "big") + payload)
            await writer.drain()
            async with asyncio.timeout(TIMEOUT):
                size = int.from_bytes(await reader.readexactly(2), "big")
                replies.append(await reader.readexactly(size))
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


async def ask_tcp(address: tuple[str, int], query: DNSRecord) -> DNSRecord:
    (reply,) = await ask_tcp_raw(address, [query.pack()])
    return DNSRecord.parse(reply)


def a_records(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- fake upstream resolvers ------------------------------------------------------------


class FakeUpstream(asyncio.DatagramProtocol):
    """A resolver on 127.0.0.1 (UDP and TCP, one port): answers every A question with
    `ip`, or (mode) stays silent, or replies with the wrong id."""

    def __init__(self, ip: str = "192.0.2.1", mode: str = "answer") -> None:
        self.ip = ip
        self.mode = mode
        self.seen: list[tuple[str, DNSRecord]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.address = (UPSTREAM_HOST, 0)

    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(UPSTREAM_HOST, 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                self.tcp = await asyncio.start_server(self._serve_tcp, UPSTREAM_HOST, port)
            except OSError:
                transport.close()
                continue
            self.address = (UPSTREAM_HOST, port)
            return self
        raise RuntimeError("no free port for the fake upstream")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _reply(self, data: bytes, via: str) -> bytes | None:
        query = DNSRecord.parse(data)
        self.seen.append((via, query))
        if self.mode == "silent":
            return None
        reply = query.reply()
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(self.ip), ttl=60))
        if self.mode == "wrong_id":
            reply.header.id = (query.header.id + 1) % 65536
        packed: bytes = reply.pack()
        return packed

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self._reply(data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = self._reply(await reader.readexactly(size), "tcp")
            if reply is not None:
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
            else:
                await reader.read()  # silent: hold the connection until the client goes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.tcp is not None:
            self.tcp.close()
            await self.tcp.wait_closed()


def seen_by(fake: FakeUpstream) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        return len(fake.seen)

    return probe


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = await FakeUpstream().start()
    try:
        yield fake
    finally:
        await fake.close()


# --- the server under test ---------------------------------------------------------------


def services() -> ServiceDirectory:
    return ServiceDirectory(
        [
            Endpoints(
                service="web",
                namespace="default",
                cluster_ip="10.96.0.10",
                ports=[EndpointPort(port=80, target_port=8080, name="http")],
            ),
            Endpoints(service="api", namespace="shop", cluster_ip="10.96.0.20"),
            Endpoints(
                service="db",
                namespace="default",
                cluster_ip="None",
                addresses=[
                    EndpointAddress(ip="10.128.0.5", replica="db-aaaaa", node="n1"),
                    EndpointAddress(ip="10.128.0.6", replica="db-bbbbb", node="n2"),
                    EndpointAddress(ip="10.128.0.7", replica="db-ccccc", node="n2", ready=False),
                ],
            ),
        ]
    )


@pytest.fixture
async def server(upstream: FakeUpstream) -> AsyncIterator[DnsServer]:
    dns = DnsServer(services(), [upstream.address], forward_timeout=0.5)
    await dns.start([(SERVER_HOST, 0)])
    try:
        yield dns
    finally:
        await dns.close()


@pytest.mark.parametrize(
    "name",
    [
        "web.default.svc.cluster.local",
        "WEB.Default.svc.cluster.local",
        "web.default.svc",
        "web.default",
        "web",
    ],
)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_every_name_form_of_a_service_is_answered_with_its_cluster_ip(
    server: DnsServer, upstream: FakeUpstream, name: str, transport: str
) -> None:
    ask = ask_udp if transport == "udp" else ask_tcp
    query = DNSRecord.question(name, "A")
    reply = await ask(server.bound[0], query)
    assert reply.header.id == query.header.id
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.header.aa == 1
    assert a_records(reply) == ["10.96.0.10"]
    assert [rr.ttl for rr in reply.rr] == [5]
    assert str(reply.rr[0].rname) == str(query.q.qname)  # the question's own spelling
    assert upstream.seen == []  # nothing of the cluster's is forwarded


async def test_a_service_of_another_namespace_answers_by_its_namespace(
    server: DnsServer,
) -> None:
    reply = await ask_udp(server.bound[0], DNSRecord.question("api.shop.svc.cluster.local"))
    assert a_records(reply) == ["10.96.0.20"]


async def test_a_headless_service_answers_every_ready_endpoint(server: DnsServer) -> None:
    reply = await ask_udp(server.bound[0], DNSRecord.question("db.default.svc.cluster.local"))
    assert sorted(a_records(reply)) == ["10.128.0.5", "10.128.0.6"]


async def test_an_unknown_service_is_nxdomain_with_the_domains_soa(
    server: DnsServer, upstream: FakeUpstream
) -> None:
    before = metric("corral_dns_queries_total", result="nxdomain")
    reply = await ask_udp(server.bound[0], DNSRecord.question("nope.default.svc.cluster.local"))
    assert metric("corral_dns_queries_total", result="nxdomain") == before + 1
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert reply.rr == []
    assert [(str(rr.rname), rr.rtype) for rr in reply.auth] == [("cluster.local.", QTYPE.SOA)]
    assert upstream.seen == []


async def test_aaaa_of_a_known_service_is_noerror_without_answers(server: DnsServer) -> None:
    reply = await ask_udp(
        server.bound[0], DNSRecord.question("web.default.svc.cluster.local", "AAAA")
    )
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.rr == []


async def test_srv_of_a_named_port_answers_the_port_and_the_target_address(
    server: DnsServer,
) -> None:
    reply = await ask_udp(
        server.bound[0], DNSRecord.question("_http._tcp.web.default.svc.cluster.local", "SRV")
    )
    assert [(rr.rdata.port, str(rr.rdata.target)) for rr in reply.rr] == [
        (80, "web.default.svc.cluster.local.")
    ]
    assert [str(rr.rdata) for rr in reply.ar] == ["10.96.0.10"]


async def test_a_changed_directory_is_answered_at_once(server: DnsServer) -> None:
    server.directory.put(Endpoints(service="new", namespace="default", cluster_ip="10.96.1.1"))
    reply = await ask_udp(server.bound[0], DNSRecord.question("new.default.svc.cluster.local"))
    assert a_records(reply) == ["10.96.1.1"]
    server.directory.remove("default.new")
    reply = await ask_udp(server.bound[0], DNSRecord.question("new.default.svc.cluster.local"))
    assert reply.header.rcode == RCODE.NXDOMAIN


# --- forwarding ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_other_names_are_forwarded_to_the_upstream_over_the_same_transport(
    server: DnsServer, upstream: FakeUpstream, transport: str
) -> None:
    ask = ask_udp if transport == "udp" else ask_tcp
    before = metric("corral_dns_queries_total", result="forwarded")
    query = DNSRecord.question("www.example.com", "A")
    reply = await ask(server.bound[0], query)
    assert reply.header.id == query.header.id
    assert a_records(reply) == ["192.0.2.1"]
    assert [(via, str(q.q.qname)) for via, q in upstream.seen] == [(transport, "www.example.com.")]
    assert metric("corral_dns_queries_total", result="forwarded") == before + 1


async def test_a_silent_upstream_is_skipped_for_the_next_one(upstream: FakeUpstream) -> None:
    silent = await FakeUpstream(mode="silent").start()
    dns = DnsServer(ServiceDirectory(), [silent.address, upstream.address], forward_timeout=0.3)
    try:
        await dns.start([(SERVER_HOST, 0)])
        before = metric("corral_dns_forward_failures_total", reason="timeout")
        reply = await ask_udp(dns.bound[0], DNSRecord.question("www.example.com"))
        assert a_records(reply) == ["192.0.2.1"]
        assert len(silent.seen) == 1
        assert metric("corral_dns_forward_failures_total", reason="timeout") == before + 1
    finally:
        await dns.close()
        await silent.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_servfail_when_no_upstream_answers(transport: str) -> None:
    silent = await FakeUpstream(mode="silent").start()
    dns = DnsServer(ServiceDirectory(), [silent.address], forward_timeout=0.3)
    try:
        await dns.start([(SERVER_HOST, 0)])
        ask = ask_udp if transport == "udp" else ask_tcp
        query = DNSRecord.question("www.example.com")
        reply = await ask(dns.bound[0], query)
        assert reply.header.rcode == RCODE.SERVFAIL
        assert reply.header.id == query.header.id
    finally:
        await dns.close()
        await silent.close()


async def test_forwards_beyond_the_limit_in_flight_get_servfail_at_once() -> None:
    silent = await FakeUpstream(mode="silent").start()
    dns = DnsServer(ServiceDirectory(), [silent.address], forward_timeout=5.0, max_forwards=1)
    try:
        await dns.start([(SERVER_HOST, 0)])
        async with udp_client(dns.bound[0]) as (transport, protocol):
            held = DNSRecord.question("held.example.com")
            transport.sendto(held.pack())
            await eventually(seen_by(silent), lambda n: n == 1)  # held by the upstream
            over = DNSRecord.question("over.example.com")
            transport.sendto(over.pack())
            async with asyncio.timeout(2.0):  # well before the held one's 5 s
                reply = DNSRecord.parse(await protocol.replies.get())
        assert (reply.header.id, reply.header.rcode) == (over.header.id, RCODE.SERVFAIL)
        assert len(silent.seen) == 1
    finally:
        await dns.close()  # also ends the held forward
        await silent.close()


async def test_a_reply_with_another_id_is_not_taken_for_the_answer() -> None:
    liar = await FakeUpstream(mode="wrong_id").start()
    dns = DnsServer(ServiceDirectory(), [liar.address], forward_timeout=0.3)
    try:
        await dns.start([(SERVER_HOST, 0)])
        before = metric("corral_dns_forward_failures_total", reason="bad_reply")
        reply = await ask_udp(dns.bound[0], DNSRecord.question("www.example.com"))
        assert reply.header.rcode == RCODE.SERVFAIL
        assert metric("corral_dns_forward_failures_total", reason="bad_reply") == before + 1
    finally:
        await dns.close()
        await liar.close()


async def test_an_upstream_that_refuses_fails_over_at_once(upstream: FakeUpstream) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind((UPSTREAM_HOST, 0))
        gone = closed.getsockname()
    # nothing listens on `gone` now: the ICMP port-unreachable ends that try at once
    dns = DnsServer(ServiceDirectory(), [gone, upstream.address], forward_timeout=3.0)
    try:
        await dns.start([(SERVER_HOST, 0)])
        async with asyncio.timeout(2.0):
            reply = await ask_udp(dns.bound[0], DNSRecord.question("www.example.com"))
        assert a_records(reply) == ["192.0.2.1"]
    finally:
        await dns.close()


async def test_the_server_never_forwards_to_its_own_address() -> None:
    dns = DnsServer(ServiceDirectory(), [], forward_timeout=0.3)
    try:
        await dns.start([(SERVER_HOST, 0)])
        dns.upstreams = [dns.bound[0]]  # e.g. a resolv.conf naming the gateway itself
        reply = await ask_udp(dns.bound[0], DNSRecord.question("www.example.com"))
        assert reply.header.rcode == RCODE.SERVFAIL
    finally:
        await dns.close()


def test_upstreams_come_from_resolv_conf_without_dockers_embedded_resolver(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch default.svc.cluster.local\nnameserver 127.0.0.11\n"
        "nameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver not-an-ip\n"
        "nameserver 10.0.0.2\noptions ndots:5\n"
    )
    assert resolv_conf_upstreams(conf) == [("10.0.0.2", 53), ("fe80::1", 53)]
    assert resolv_conf_upstreams(tmp_path / "missing") == []


# --- bad packets ---------------------------------------------------------------------------


GARBAGE = [
    b"",
    b"\x00",
    b"\x12\x34\x01\x00\x00\x01",  # half a header
    b"\x12\x34\x01\x00\x00\x05\x00\x00\x00\x00\x00\x00",  # 5 questions announced, none there
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",  # a label cut short
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # self-pointer
    bytes(range(256)) * 4,
    b"\xff" * 60000,  # huge
    DNSRecord.question("web.default.svc.cluster.local").reply().pack(),  # a response
]


async def test_garbage_datagrams_are_dropped_or_formerr_and_the_server_keeps_answering(
    server: DnsServer,
) -> None:
    async with udp_client(server.bound[0]) as (transport, protocol):
        for packet in GARBAGE:
            transport.sendto(packet)
        query = DNSRecord.question("web.default.svc.cluster.local")
        transport.sendto(query.pack())
        replies: list[DNSRecord] = []
        async with asyncio.timeout(TIMEOUT):
            while not replies or replies[-1].header.id != query.header.id:
                replies.append(DNSRecord.parse(await protocol.replies.get()))
    *errors, answer = replies
    assert a_records(answer) == ["10.96.0.10"]
    # the announced-but-missing question, the cut label, the pointer loop and the byte
    # ramp (a query header, id 0x0001): FORMERR; runts and responses (the 0xff run has
    # QR set): no reply
    assert [(r.header.id, r.header.rcode) for r in errors] == [(0x1234, RCODE.FORMERR)] * 3 + [
        (0x0001, RCODE.FORMERR)
    ]


async def test_a_query_with_two_questions_is_formerr(server: DnsServer) -> None:
    query = DNSRecord.question("web.default.svc.cluster.local")
    query.add_question(DNSRecord.question("api.shop.svc.cluster.local").q)
    reply = await ask_udp(server.bound[0], query)
    assert reply.header.rcode == RCODE.FORMERR


async def test_garbage_over_tcp_ends_that_connection_only(server: DnsServer) -> None:
    address = server.bound[0]
    # a length prefix promising more than is sent, then the connection closed
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"\x03\xe8garbage")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # a runt on a connection: no reply, the server closes it
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"\x00\x03abc")
    await writer.drain()
    async with asyncio.timeout(TIMEOUT):
        assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()
    # an unparsable query with a header: FORMERR, and the connection goes on
    bad = b"\x12\x34\x01\x00\x00\x05" + b"\x00" * 6
    good = DNSRecord.question("web.default.svc.cluster.local")
    first, second = await ask_tcp_raw(address, [bad, good.pack()])
    assert DNSRecord.parse(first).header.rcode == RCODE.FORMERR
    assert a_records(DNSRecord.parse(second)) == ["10.96.0.10"]


async def test_an_answer_too_large_for_udp_is_truncated_and_whole_over_tcp() -> None:
    addresses = [
        EndpointAddress(ip=f"10.128.{i // 250}.{i % 250 + 1}", replica=f"r-{i}", node="n1")
        for i in range(100)
    ]
    directory = ServiceDirectory(
        [Endpoints(service="big", namespace="default", cluster_ip="None", addresses=addresses)]
    )
    dns = DnsServer(directory, [])
    try:
        await dns.start([(SERVER_HOST, 0)])
        query = DNSRecord.question("big.default.svc.cluster.local")
        over_udp = await ask_udp(dns.bound[0], query)
        assert over_udp.header.tc == 1
        assert over_udp.rr == []
        over_tcp = await ask_tcp(dns.bound[0], query)
        assert over_tcp.header.tc == 0
        assert len(a_records(over_tcp)) == 100
    finally:
        await dns.close()


# --- addresses ------------------------------------------------------------------------------


async def refused(address: tuple[str, int]) -> bool:
    """Nothing serves `address` (TCP connect refused)."""
    try:
        _, writer = await asyncio.open_connection(*address)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_addresses_are_bound_and_unbound_while_the_server_runs(server: DnsServer) -> None:
    first = server.bound[0]
    await server.set_addresses([(SERVER_HOST, 0), ("127.0.0.3", 0)])
    assert server.bound[0] == first  # kept as it was
    second = server.bound[1]
    assert second[0] == "127.0.0.3"
    query = DNSRecord.question("web.default.svc.cluster.local")
    for address in (first, second):
        assert a_records(await ask_udp(address, query)) == ["10.96.0.10"]
        assert a_records(await ask_tcp(address, query)) == ["10.96.0.10"]

    await server.set_addresses([("127.0.0.3", 0)])
    assert server.bound == [second]
    assert await refused(first)
    assert a_records(await ask_udp(second, query)) == ["10.96.0.10"]

    await server.set_addresses([])
    assert server.bound == []
    assert await refused(second)


async def test_an_address_that_cannot_be_bound_is_named_and_the_others_are_served(
    server: DnsServer,
) -> None:
    taken = server.bound[0]
    with pytest.raises(BindError) as caught:
        # 192.0.2.1 (TEST-NET-1) is no address of this host; `taken` is already ours
        await server.set_addresses([taken, ("192.0.2.1", 5353), ("127.0.0.4", 0)])
    assert [address for address, _ in caught.value.failures] == [("192.0.2.1", 5353)]
    assert "192.0.2.1:5353" in str(caught.value)
    assert [host for host, _ in server.bound] == [SERVER_HOST, "127.0.0.4"]
    reply = await ask_udp(server.bound[1], DNSRecord.question("web"))
    assert a_records(reply) == ["10.96.0.10"]


async def test_an_address_that_is_not_an_ip_is_refused_naming_it(server: DnsServer) -> None:
    with pytest.raises(ValueError, match=r"addresses\[1\].host"):
        await server.set_addresses([(SERVER_HOST, 0), ("gateway", 53)])
    with pytest.raises(ValueError, match=r"addresses\[0\].port"):
        await server.set_addresses([(SERVER_HOST, 70000)])


async def test_close_unbinds_every_address_and_ends_open_connections(
    upstream: FakeUpstream,
) -> None:
    dns = DnsServer(services(), [upstream.address])
    await dns.start([(SERVER_HOST, 0)])
    address = dns.bound[0]
    reader, writer = await asyncio.open_connection(*address)
    await dns.close()
    assert dns.bound == []
    async with asyncio.timeout(TIMEOUT):
        assert await reader.read() == b""
    writer.close()
    assert await refused(address)


async def test_udp_answers_come_from_the_address_the_query_went_to(server: DnsServer) -> None:
    await server.set_addresses([(SERVER_HOST, 0), ("127.0.0.3", 0)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        for address in server.bound:
            await loop.sock_sendto(sock, DNSRecord.question("web").pack(), address)
            async with asyncio.timeout(TIMEOUT):
                data, source = await loop.sock_recvfrom(sock, 4096)
            assert source == address
            assert a_records(DNSRecord.parse(data)) == ["10.96.0.10"]


async def test_a_port_given_up_can_be_bound_again_at_once(upstream: FakeUpstream) -> None:
    dns = DnsServer(services(), [upstream.address])
    await dns.start([(SERVER_HOST, 0)])
    address = dns.bound[0]
    await dns.set_addresses([])
    await dns.set_addresses([address])  # the same port, right after it was let go
    assert dns.bound == [address]
    await dns.close()
    again = DnsServer(services(), [upstream.address])
    try:
        await again.start([address])  # a restarted node part on port 53
        reply = await ask_udp(address, DNSRecord.question("web"))
        assert a_records(reply) == ["10.96.0.10"]
    finally:
        await again.close()
