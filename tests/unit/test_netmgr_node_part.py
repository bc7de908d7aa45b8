"""The node part's reconciles with in-memory buckets and fakes for the host's tools."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_state import (
    EndpointAddress,
    EndpointPort,
    Endpoints,
    NetworkStatus,
    NodeNetwork,
)
from corral.natsio.kv import Entry, MemoryBucket
from corral.natsio.service import RefusedToStart
from corral_netmgr import node
from corral_netmgr.node.part import NodePart, NodeSettings


class FakeIptables:
    def __init__(self) -> None:
        self.applied: list[dict[str, str]] = []
        self.forgotten: list[tuple[str, tuple[int, ...], frozenset[str]]] = []

    async def save(self) -> str:
        return ""

    async def apply(self, tables: dict[str, str], saved: str | None = None) -> int:
        self.applied.append(dict(tables))
        return 0

    async def forget_flows(
        self, vip: str, node_ports: tuple[int, ...], removed: Iterable[str] = ()
    ) -> None:
        self.forgotten.append((vip, tuple(node_ports), frozenset(removed)))


def make_part() -> tuple[NodePart, FakeIptables, dict[str, MemoryBucket]]:
    buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    fake = FakeIptables()
    part = NodePart(
        buckets,  # type: ignore[arg-type]
        NodeSettings(node="n1", cluster_id="c0ffee", host_id="host-a"),
        docker=None,  # type: ignore[arg-type]
        iptables=fake,  # type: ignore[arg-type]
        clock=iter(range(1000, 2000)).__next__,  # type: ignore[arg-type]
    )
    return part, fake, buckets


revision = iter(range(1, 10_000))


def feed(part: NodePart, value: Endpoints | None, key: str = "default.dns") -> None:
    raw = None if value is None else encode(value)
    part.endpoints.apply(Entry(key, raw, next(revision)), from_watch=True)


def udp_dns(*ips: str) -> Endpoints:
    return Endpoints(
        service="dns",
        cluster_ip="10.96.0.10",
        type="NodePort",
        ports=[EndpointPort(port=53, target_port=53, protocol="UDP", node_port=30053)],
        addresses=[EndpointAddress(ip=ip, replica=f"r{i}", node="n1") for i, ip in enumerate(ips)],
    )


async def test_udp_flows_are_forgotten_when_a_udp_services_endpoints_change_and_only_then():
    part, fake, _ = make_part()
    feed(part, udp_dns("10.128.0.2"))
    await part.reconcile_rules()
    assert fake.forgotten == []  # nothing applied before: no flow can be stale
    await part.reconcile_rules()
    assert fake.forgotten == []  # the same endpoints
    feed(part, udp_dns("10.128.0.2", "10.128.0.3"))
    await part.reconcile_rules()
    # the VIP's flows; node-port flows of no endpoint (none went)
    assert fake.forgotten == [("10.96.0.10", (30053,), frozenset())]
    feed(part, udp_dns("10.128.0.3"))
    await part.reconcile_rules()
    assert fake.forgotten[-1] == ("10.96.0.10", (30053,), frozenset({"10.128.0.2"}))
    feed(part, None)  # the Service went: every endpoint it had
    await part.reconcile_rules()
    assert fake.forgotten[-1] == ("10.96.0.10", (30053,), frozenset({"10.128.0.3"}))
    assert len(fake.forgotten) == 3
    assert len(fake.applied) == 5


async def test_a_tcp_services_endpoints_changing_forgets_no_flow():
    part, fake, _ = make_part()
    tcp = msgspec.structs.replace(
        udp_dns("10.128.0.2"), ports=[EndpointPort(port=80, target_port=8080)]
    )
    feed(part, tcp)
    await part.reconcile_rules()
    feed(part, msgspec.structs.replace(tcp, addresses=[]))
    await part.reconcile_rules()
    assert fake.forgotten == []


async def test_the_endpoints_revision_is_the_watchs_position_once_the_rules_with_it_are_applied():
    part, _, _ = make_part()
    feed(part, udp_dns("10.128.0.2"))
    part.endpoints.current = True  # the watch's replay is complete
    position = part.endpoints.position
    assert part.endpoints_revision == 0
    await part.reconcile_rules()
    assert part.endpoints_revision == position
    part.endpoints.current = False  # a watch catching up: its position proves nothing yet
    feed(part, udp_dns("10.128.0.3"))
    await part.reconcile_rules()
    assert part.endpoints_revision == position


async def test_rules_include_every_networks_range_from_its_status():
    part, fake, _ = make_part()
    status = NetworkStatus(name="blue", subnet="10.130.0.0/16", slice_prefix=24)
    part.statuses.apply(Entry("blue", encode(status), 1), from_watch=True)
    await part.reconcile_rules()
    assert "-s 10.130.0.0/16 -d 10.130.0.0/16 -j ACCEPT" in fake.applied[-1]["filter"]


async def test_the_record_is_written_when_it_changes_and_not_for_its_time_alone(
    monkeypatch: pytest.MonkeyPatch,
):
    part, _, buckets = make_part()
    facts: dict[str, Any] = {"value": ("192.0.2.2", ["172.17.0.0/16"])}

    async def host_facts() -> tuple[str, list[str]]:
        return facts["value"]  # type: ignore[no-any-return]

    monkeypatch.setattr(part, "host_facts", host_facts)

    async def listening_ports() -> list[str]:
        return []  # not this host's: what it listens on may change meanwhile

    monkeypatch.setattr(part, "listening_ports", listening_ports)
    bucket = buckets[names.NODE_NETWORK_BUCKET]

    async def stored() -> tuple[NodeNetwork, int]:
        entry = await bucket.get("n1")
        assert entry is not None and entry.value is not None
        return decode(entry.value, NodeNetwork), entry.revision

    await part.reconcile_record()
    first, first_revision = await stored()
    assert first.address == "192.0.2.2" and first.host_id == "host-a"
    assert not first.ready and first.message.startswith("starting")
    await part.reconcile_record()
    assert (await stored())[1] == first_revision  # nothing new: not written
    part.done.update({"networks", "rules", "routes"})
    await part.reconcile_record()
    ready, ready_revision = await stored()
    assert ready.ready and ready.message == "" and ready_revision > first_revision
    part.problems["networks"] = "Docker network x still has containers (y)"
    await part.reconcile_record()
    blocked, _ = await stored()
    assert not blocked.ready and "still has containers (y)" in blocked.message
    facts["value"] = ("192.0.2.2", ["172.17.0.0/16", "172.18.0.0/16"])
    part.forget_facts()
    await part.reconcile_record()
    assert (await stored())[0].used_ranges == ["172.17.0.0/16", "172.18.0.0/16"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--node", "Not_A_Label"], "--node"),
        (["--node", "n1", "--node-address", "192.0.2"], "--node-address"),
        (["--node", "n1", "--dns-port", "70000"], "--dns-port"),
        (["--node", "n1", "--node-resync-seconds", "0"], "--node-resync-seconds"),
        (["--node", "n1", "--node-resync-seconds", "nan"], "--node-resync-seconds"),
    ],
)
def test_bad_flags_refuse_to_start_naming_the_flag(flags: list[str], named: str) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", default="")
    node.add_arguments(parser)
    with pytest.raises(RefusedToStart, match=named):
        node.settings_from_args(parser.parse_args(flags), "c0ffee", "host-a")


def test_good_flags_make_the_settings() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", default="")
    node.add_arguments(parser)
    args = parser.parse_args(["--node", "n1", "--node-address", "192.0.2.7", "--dns-port", "0"])
    settings = node.settings_from_args(args, "c0ffee", "host-a")
    assert settings == NodeSettings(
        node="n1", cluster_id="c0ffee", node_address="192.0.2.7", host_id="host-a", dns_port=0
    )
    assert settings.prefix == names.chain_prefix("c0ffee", "n1")


async def test_the_record_reports_the_ports_the_host_listens_on_and_is_written_when_they_change(
    monkeypatch: pytest.MonkeyPatch,
):
    part, _, buckets = make_part()
    ports: dict[str, list[str]] = {"value": ["22/TCP"]}

    async def host_facts() -> tuple[str, list[str]]:
        return "192.0.2.2", []

    async def listening_ports() -> list[str]:
        return list(ports["value"])

    monkeypatch.setattr(part, "host_facts", host_facts)
    monkeypatch.setattr(part, "listening_ports", listening_ports)
    bucket = buckets[names.NODE_NETWORK_BUCKET]

    async def stored() -> tuple[NodeNetwork, int]:
        entry = await bucket.get("n1")
        assert entry is not None and entry.value is not None
        return decode(entry.value, NodeNetwork), entry.revision

    await part.reconcile_record()
    first, revision = await stored()
    assert first.listening_ports == ["22/TCP"]
    await part.reconcile_record()
    assert (await stored())[1] == revision  # the same ports: not written
    ports["value"] = ["22/TCP", "53/UDP"]
    part.forget_facts()  # as a resync does when half a resync has gone by
    await part.reconcile_record()
    changed, changed_revision = await stored()
    assert changed.listening_ports == ["22/TCP", "53/UDP"] and changed_revision > revision
