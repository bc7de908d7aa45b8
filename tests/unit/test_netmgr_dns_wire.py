"""The DNS server's two ways of reading and writing a message (corral_netmgr.node.dns):
the plain query read and answered by hand must give what dnslib gives, field by field,
for every kind of answer; what is not plain goes to dnslib."""

from __future__ import annotations

import pytest
from dnslib import EDNS0, RCODE, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints
from corral_netmgr.node.dns import DnsServer, _plain_query
from corral_netmgr.node.dns_names import ServiceDirectory


@pytest.fixture
def server() -> DnsServer:
    directory = ServiceDirectory(
        [
            Endpoints(
                service="web",
                cluster_ip="10.96.0.10",
                ports=[EndpointPort(port=80, target_port=8080, name="http")],
            ),
            Endpoints(
                service="db",
                cluster_ip="None",
                addresses=[
                    EndpointAddress(ip=f"10.128.0.{i}", replica=f"db-{i}", node="n")
                    for i in range(1, 4)
                ],
            ),
            Endpoints(
                service="big",
                cluster_ip="None",
                addresses=[
                    EndpointAddress(ip=f"10.128.1.{i}", replica=f"big-{i}", node="n")
                    for i in range(1, 101)
                ],
            ),
            Endpoints(service="v6", cluster_ip="fd00::10"),
        ]
    )
    return DnsServer(directory, [])


def summary(packed: bytes) -> tuple[object, ...]:
    reply = DNSRecord.parse(packed)
    h = reply.header
    return (
        (h.id, h.qr, h.opcode, h.aa, h.tc, h.rd, h.ra, h.rcode),
        [(str(q.qname), q.qtype, q.qclass) for q in reply.questions],
        [(str(r.rname), r.rtype, r.rclass, r.ttl, str(r.rdata)) for r in reply.rr],
        [(str(r.rname), r.rtype, r.rclass, r.ttl, str(r.rdata)) for r in reply.auth],
        [(str(r.rname), r.rtype, r.rclass, r.ttl, str(r.rdata)) for r in reply.ar],
    )


NAMES = [
    "web.default.svc.cluster.local.",
    "WeB.DeFault.svc.cluster.local.",
    "web.default.",
    "web.",
    "db.default.svc.cluster.local.",
    "db-2.db.default.svc.cluster.local.",
    "big.default.svc.cluster.local.",
    "v6.default.svc.cluster.local.",
    "nope.default.svc.cluster.local.",
    "default.svc.cluster.local.",
    "cluster.local.",
    "example.com.",
    ".",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("qtype", ["A", "AAAA", "ANY", "MX", "TXT"])
@pytest.mark.parametrize("edns", [None, 512, 4096])
@pytest.mark.parametrize("tcp", [False, True])
def test_a_plain_query_is_answered_by_hand_as_dnslib_answers_it(
    server: DnsServer, name: str, qtype: str, edns: int | None, tcp: bool
) -> None:
    query = DNSRecord.question(name, qtype)
    query.header.rd = 0 if qtype == "MX" else 1
    if edns is not None:
        query.add_ar(EDNS0(udp_len=edns))
    data = bytes(query.pack())
    plain = _plain_query(data)
    assert plain is not None
    by_hand = server._decide_plain(data, plain, tcp)
    assert by_hand is not None
    by_dnslib = server._decide_parsed(data, tcp)
    assert by_hand.result == by_dnslib.result
    for mine, theirs in ((by_hand.reply, by_dnslib.reply), (by_hand.servfail, by_dnslib.servfail)):
        assert (mine is None) == (theirs is None)
        if mine is not None and theirs is not None:
            assert summary(mine) == summary(theirs)


def test_a_large_answer_is_truncated_by_hand_as_by_dnslib(server: DnsServer) -> None:
    data = bytes(DNSRecord.question("big.default.svc.cluster.local.").pack())
    plain = _plain_query(data)
    assert plain is not None
    by_hand = server._decide_plain(data, plain, False)
    assert by_hand is not None and by_hand.reply is not None
    reply = DNSRecord.parse(by_hand.reply)
    assert (reply.header.tc, reply.rr) == (1, [])
    assert by_hand.reply == server._decide_parsed(data, False).reply


def test_srv_answers_go_through_dnslib(server: DnsServer) -> None:
    data = bytes(DNSRecord.question("_http._tcp.web.default.svc.cluster.local.", "SRV").pack())
    plain = _plain_query(data)
    assert plain is not None
    assert server._decide_plain(data, plain, False) is None
    reply = DNSRecord.parse(server.decide(data, tcp=False).reply or b"")
    assert [r.rdata.port for r in reply.rr] == [80]


def test_what_is_not_a_plain_query_is_left_to_dnslib() -> None:
    base = DNSRecord.question("web.default.svc.cluster.local.")
    two = DNSRecord.question("web.default.svc.cluster.local.")
    two.add_question(DNSRecord.question("db.default.svc.cluster.local.").q)
    chaos = DNSRecord.question("version.bind.", "TXT", "CH")
    response = base.reply()
    odd_label = DNSRecord.question("we b.default.")
    for record in (two, chaos, response, odd_label):
        assert _plain_query(bytes(record.pack())) is None
    data = bytes(base.pack())
    assert _plain_query(data) is not None
    assert _plain_query(data + b"\x00") is None  # trailing bytes
    for cut in range(len(data)):
        assert _plain_query(data[:cut]) is None


def test_bytes_that_no_client_sends_never_escape_decide(server: DnsServer) -> None:
    data = bytes(DNSRecord.question("web.default.svc.cluster.local.").pack())
    for cut in range(len(data)):
        decision = server.decide(data[:cut], tcp=False)
        assert decision.servfail is None
        if decision.reply is not None:
            assert DNSRecord.parse(decision.reply).header.rcode == RCODE.FORMERR
    for i in range(len(data)):
        for value in (0x00, 0x3F, 0xC0, 0xFF):
            mutated = data[:i] + bytes([value]) + data[i + 1 :]
            server.decide(mutated, tcp=False)  # any outcome, but no exception


# Deterministic (a seed from each test's name), no example database on disk.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
QUERY = b"\x12\x34" + bytes(DNSRecord.question("web.default.svc.cluster.local.").pack())[2:]


@FUZZ
@given(data=st.binary(max_size=600))
def test_any_bytes_get_a_parsable_reply_or_none_and_never_an_exception(
    server: DnsServer, data: bytes
) -> None:
    decision = server.decide(data, tcp=False)
    for packed in (decision.reply, decision.servfail):
        if packed is not None:
            assert DNSRecord.parse(packed).header.qr == 1


@FUZZ
@given(at=st.integers(0, len(QUERY) - 1), value=st.integers(0, 255), tcp=st.booleans())
def test_a_query_with_any_byte_changed_gets_a_parsable_reply_or_none(
    server: DnsServer, at: int, value: int, tcp: bool
) -> None:
    data = QUERY[:at] + bytes([value]) + QUERY[at + 1 :]
    decision = server.decide(data, tcp=tcp)
    for packed in (decision.reply, decision.servfail):
        if packed is not None:
            reply = DNSRecord.parse(packed)
            assert reply.header.qr == 1
            assert reply.header.id == int.from_bytes(data[:2], "big")
