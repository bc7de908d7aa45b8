"""netmgr's cluster part through a real nats-server: Networks and Services over
request/reply and the durable stream, slices for the nodes that register, Endpoints
that follow what the scheduler and the agents write, and one active instance."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Network, Service
from corral.contract.network_state import Endpoints, NetworkSlice, NodeNetwork
from corral.natsio.kv import NatsBucket
from corral.natsio.lease import LeaseRecord, lease_key
from tests.integration.cluster_part_harness import absent, record, request
from tests.integration.netmgr_harness import running_netmgr
from tests.unit.netmgr_helpers import network, node, placement, service, status, template
from tests.waiting import eventually


async def present(bucket: NatsBucket, key: str, kind: type[Any]) -> Any:
    return await eventually(lambda: record(bucket, key, kind), lambda r: r is not None)


async def test_networks_are_made_and_deleted_over_requests_and_a_refusal_changes_nothing(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    networks = buckets[names.NETWORKS_BUCKET]
    async with running_netmgr(nats_url) as ctx:
        default = await present(networks, "default", Network)
        assert default.spec.subnet == "10.128.0.0/16"
        made = await request(ctx.nc, "network", "apply", network("blue"))
        assert made.ok and made.generation == 1
        blue = await record(networks, "blue", Network)
        assert blue.spec.subnet == "10.129.0.0/16"
        overlapping = await request(
            ctx.nc, "network", "apply", network("red", subnet="10.129.5.0/24")
        )
        assert not overlapping.ok and overlapping.field == "spec.subnet"
        assert "network 'blue'" in overlapping.error
        assert await networks.get("red") is None
        refused = await request(ctx.nc, "network", "delete", encode({"name": "default"}))
        assert not refused.ok and refused.field == "name"
        deleted = await request(ctx.nc, "network", "delete", encode({"name": "blue"}))
        assert deleted.ok
        assert await networks.get("blue") is None
        again = await request(ctx.nc, "network", "delete", encode({"name": "blue"}))
        assert not again.ok and again.reason == "NotFound"


async def test_durable_network_and_service_specs_are_applied(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_netmgr(nats_url) as ctx:
        js = ctx.nc.jetstream()
        await js.publish(names.spec_subject("network", "apply"), network("green"))
        green = await present(buckets[names.NETWORKS_BUCKET], "green", Network)
        assert green.spec.subnet and green.metadata.spec_sequence > 0
        await js.publish(names.spec_subject("service", "apply"), service("web", network="green"))
        web = await present(buckets[names.SERVICES_BUCKET], "default.web", Service)
        assert web.spec.cluster_ip == "10.96.0.2"
        await js.publish(names.spec_subject("service", "delete"), encode({"name": "web"}))
        await absent(buckets[names.SERVICES_BUCKET], "default.web")
        await js.publish(names.spec_subject("network", "delete"), encode({"name": "green"}))
        await absent(buckets[names.NETWORKS_BUCKET], "green")


async def test_services_get_addresses_and_refusals_change_nothing(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    services = buckets[names.SERVICES_BUCKET]
    async with running_netmgr(nats_url) as ctx:
        await present(buckets[names.NETWORKS_BUCKET], "default", Network)
        made = await request(ctx.nc, "service", "apply", service("web", type="NodePort"))
        assert made.ok
        web = await record(services, "default.web", Service)
        assert web.spec.cluster_ip == "10.96.0.2" and web.spec.ports[0].node_port == 30000
        taken = await request(
            ctx.nc,
            "service",
            "apply",
            service("api", type="NodePort", ports=[{"port": 80, "nodePort": 30000}]),
        )
        assert not taken.ok and taken.field == "spec.ports[0].nodePort"
        unknown = await request(ctx.nc, "service", "apply", service("api", network="nowhere"))
        assert not unknown.ok and unknown.field == "spec.network"
        assert await services.get("default.api") is None
        assert (await request(ctx.nc, "service", "delete", encode({"name": "web"}))).ok
        await absent(buckets[names.ENDPOINTS_BUCKET], "default.web")


async def test_a_node_port_a_node_reports_listening_is_refused_naming_the_field(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    """A node port's rules come first on every node: one on sshd's port would send SSH
    to a replica. The record is there before netmgr starts (its view replays it)."""
    listens = NodeNetwork(node="n1", listening_ports=["2222/TCP"], ready=True)
    await buckets[names.NODE_NETWORK_BUCKET].put("n1", encode(listens))
    services = buckets[names.SERVICES_BUCKET]
    async with running_netmgr(nats_url) as ctx:
        await present(buckets[names.NETWORKS_BUCKET], "default", Network)
        refused = await request(
            ctx.nc,
            "service",
            "apply",
            service("ssh", type="NodePort", ports=[{"port": 22, "nodePort": 2222}]),
        )
        assert not refused.ok and refused.field == "spec.ports[0].nodePort", refused
        assert "2222/TCP is in use on node n1 (a process listens there)" in refused.error
        assert await services.get("default.ssh") is None
        udp = await request(
            ctx.nc,
            "service",
            "apply",
            service(
                "ssh", type="NodePort", ports=[{"port": 22, "nodePort": 2222, "protocol": "UDP"}]
            ),
        )
        assert udp.ok, udp  # nothing listens on 2222/UDP


async def test_slices_appear_for_the_nodes_that_register_and_go_with_them(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    nodes = buckets[names.NODES_BUCKET]
    slices = buckets[names.NETWORK_SLICES_BUCKET]
    async with running_netmgr(nats_url):
        await nodes.put("n1", encode(node("n1")))
        await nodes.put("n2", encode(node("n2")))
        first = await present(slices, "default.n1", NetworkSlice)
        second = await present(slices, "default.n2", NetworkSlice)
        assert {first.subnet, second.subnet} == {"10.128.0.0/24", "10.128.1.0/24"}
        assert first.gateway.endswith(".1")
        await nodes.delete("n1")
        await absent(slices, "default.n1")
        assert await record(slices, "default.n2", NetworkSlice) == second


async def test_endpoints_follow_the_placements_and_statuses_written(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    endpoints = buckets[names.ENDPOINTS_BUCKET]
    async with running_netmgr(nats_url) as ctx:
        await buckets[names.NODES_BUCKET].put("n1", encode(node("n1")))
        await present(buckets[names.NETWORKS_BUCKET], "default", Network)
        applied = await request(
            ctx.nc, "service", "apply", service("web", ports=[{"port": 80, "targetPort": "http"}])
        )
        assert applied.ok
        empty = await present(endpoints, "default.web", Endpoints)
        assert empty.addresses == [] and empty.cluster_ip == "10.96.0.2"
        p = placement("web-a", "web", "n1", template(("http", 8080)))
        await buckets[names.PLACEMENTS_BUCKET].put(p.key, encode(p))
        await buckets[names.REPLICA_STATUS_BUCKET].put(
            p.key, encode(status(p, {"default": "10.128.0.7"}))
        )
        ready = await eventually(
            lambda: record(endpoints, "default.web", Endpoints), lambda e: bool(e.addresses)
        )
        assert [(a.ip, a.replica) for a in ready.addresses] == [("10.128.0.7", "web-a")]
        assert ready.ports[0].target_port == 8080
        await buckets[names.PLACEMENTS_BUCKET].delete(p.key)
        await eventually(
            lambda: record(endpoints, "default.web", Endpoints), lambda e: not e.addresses
        )


async def test_one_netmgr_is_active_and_another_takes_over_when_it_stops(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    networks = buckets[names.NETWORKS_BUCKET]
    leases = buckets[names.LEASES_BUCKET]
    async with running_netmgr(nats_url) as first:
        holder = await record(leases, lease_key("netmgr"), LeaseRecord)
        async with running_netmgr(nats_url):
            # the second stands by (it tried once before it started): the lease is the
            # first's, and the first answers
            assert (await record(leases, lease_key("netmgr"), LeaseRecord)).holder == holder.holder
            made = await request(first.nc, "network", "apply", network("blue"))
            assert made.ok
        made = await request(first.nc, "network", "apply", network("red"))
        assert made.ok and await networks.get("red") is not None
    # the first stops cleanly and hands the lease back: a new one is active at once
    async with running_netmgr(nats_url) as ctx:
        made = await request(ctx.nc, "network", "apply", network("green"))
        assert made.ok


async def test_the_default_network_waits_for_a_node_and_avoids_what_its_host_uses(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    """Another cluster on the same engine has 10.128.0.0/16 already: a default network
    picked before any node part reported would take it, and its Docker networks could
    never be made there."""
    async with running_netmgr(nats_url, "--default-network-wait", "60"):
        used = NodeNetwork(node="n1", used_ranges=["10.128.0.0/16", "10.129.0.0/24"], ready=True)
        await buckets[names.NODE_NETWORK_BUCKET].put("n1", encode(used))
        entry = await eventually(
            lambda: buckets[names.NETWORKS_BUCKET].get("default"),
            lambda found: found is not None and found.value is not None,
            within=20,
        )
        assert entry is not None and entry.value is not None
        subnet = ipaddress.IPv4Network(decode(entry.value, Network).spec.subnet)
        for taken in used.used_ranges:
            assert not subnet.overlaps(ipaddress.IPv4Network(taken)), subnet


async def test_endpoints_follow_placements_in_every_shard_and_none_in_another_nodes(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cluster made with its placements in 3 shards: netmgr watches each of them.
    monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", "3")
    nodes = {names.placement_shard(f"n{i}", 3): f"n{i}" for i in range(20)}
    assert len(nodes) == 3
    async with running_netmgr(nats_url) as ctx:
        buckets = ctx.buckets
        endpoints = buckets[names.ENDPOINTS_BUCKET]
        for name in nodes.values():
            await buckets[names.NODES_BUCKET].put(name, encode(node(name)))
        await present(buckets[names.NETWORKS_BUCKET], "default", Network)
        assert (await request(ctx.nc, "service", "apply", service("web"))).ok
        for shard, name in nodes.items():
            p = placement(f"web-{shard}", "web", name, template(("http", 8080)))
            await buckets[names.placements_buckets(3)[shard]].put(p.key, encode(p))
            await buckets[names.REPLICA_STATUS_BUCKET].put(
                p.key, encode(status(p, {"default": f"10.128.0.{shard + 1}"}))
            )
        # One in a shard that is not its node's: no agent watches it there, no endpoint.
        stray = placement("web-stray", "web", nodes[0], template(("http", 8080)))
        await buckets[names.placements_buckets(3)[1]].put(stray.key, encode(stray))
        await buckets[names.REPLICA_STATUS_BUCKET].put(
            stray.key, encode(status(stray, {"default": "10.128.0.9"}))
        )
        # Written after the stray into the same shard: once it shows, the stray was read.
        late = placement("web-late", "web", nodes[1], template(("http", 8080)))
        await buckets[names.placements_buckets(3)[1]].put(late.key, encode(late))
        await buckets[names.REPLICA_STATUS_BUCKET].put(
            late.key, encode(status(late, {"default": "10.128.0.8"}))
        )
        ready = await eventually(
            lambda: record(endpoints, "default.web", Endpoints),
            lambda e: len(e.addresses) >= 4,
        )
        assert sorted(a.replica for a in ready.addresses) == [
            "web-0",
            "web-1",
            "web-2",
            "web-late",
        ]
