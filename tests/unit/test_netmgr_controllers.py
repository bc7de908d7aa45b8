"""netmgr's network and endpoints controllers on in-memory buckets: slices per node,
network status and extra members, Endpoints that follow the cluster, and changes that
enqueue only the Services they affect."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.network_state import Endpoints, NetworkSlice, NetworkStatus, NodeNetwork
from corral.contract.state import ReplicaState
from tests.unit.netmgr_helpers import (
    memory_buckets,
    netmgr,
    network,
    node,
    ok,
    placement,
    put,
    service,
    status,
    template,
)


async def test_every_node_gets_a_slice_of_every_network_and_loses_it_when_it_goes() -> None:
    async with netmgr() as n:
        nodes = n.buckets[names.NODES_BUCKET]
        await put(nodes, "n1", node("n1"))
        await put(nodes, "n2", node("n2"))
        ok(await n.networks.apply(network("blue", subnet="10.50.0.0/16", slicePrefix=20)))
        await n.drain()
        blue = await n.record(names.NETWORK_SLICES_BUCKET, "blue.n2", NetworkSlice)
        assert (blue.subnet, blue.gateway) == ("10.50.16.0/20", "10.50.16.1")
        default = await n.record(names.NETWORK_SLICES_BUCKET, "default.n1", NetworkSlice)
        assert (default.subnet, default.gateway) == ("10.128.0.0/24", "10.128.0.1")
        status_ = await n.record(names.NETWORK_STATUS_BUCKET, "blue", NetworkStatus)
        assert (status_.subnet, status_.slice_prefix, status_.phase) == (
            "10.50.0.0/16",
            20,
            "Ready",
        )
        # a heartbeat changes nothing; a node whose record goes loses its slices
        await put(nodes, "n1", node("n1"))
        await nodes.delete("n1")
        await n.drain()
        assert await n.buckets[names.NETWORK_SLICES_BUCKET].get("blue.n1") is None
        assert await n.buckets[names.NETWORK_SLICES_BUCKET].get("default.n1") is None
        kept = await n.record(names.NETWORK_SLICES_BUCKET, "blue.n2", NetworkSlice)
        assert kept == blue


async def test_a_deleted_network_loses_its_slices_then_its_status() -> None:
    async with netmgr() as n:
        await put(n.buckets[names.NODES_BUCKET], "n1", node("n1"))
        ok(await n.networks.apply(network("blue")))
        await n.drain()
        assert await n.buckets[names.NETWORK_SLICES_BUCKET].get("blue.n1") is not None
        ok(await n.networks.delete(encode({"name": "blue"})))
        await n.drain()
        assert await n.buckets[names.NETWORK_SLICES_BUCKET].get("blue.n1") is None
        assert await n.buckets[names.NETWORK_STATUS_BUCKET].get("blue") is None
        assert await n.buckets[names.NETWORK_SLICES_BUCKET].get("default.n1") is not None


async def test_replicas_on_several_networks_are_extra_members_of_each() -> None:
    async with netmgr() as n:
        ok(await n.networks.apply(network("blue")))
        p = placement("web-a", "web", "n1")
        await put(n.buckets[names.PLACEMENTS_BUCKET], p.key, p)
        await put(
            n.buckets[names.REPLICA_STATUS_BUCKET],
            p.key,
            status(p, {"default": "10.128.0.5", "blue": "10.129.0.5"}),
        )
        single = placement("web-b", "web", "n1")
        await put(
            n.buckets[names.REPLICA_STATUS_BUCKET],
            single.key,
            status(single, {"default": "10.128.0.6"}),
        )
        await n.drain()
        blue = await n.record(names.NETWORK_STATUS_BUCKET, "blue", NetworkStatus)
        default = await n.record(names.NETWORK_STATUS_BUCKET, "default", NetworkStatus)
        assert blue.extra_members == ["10.128.0.5"]
        assert default.extra_members == ["10.129.0.5"]
        await n.buckets[names.REPLICA_STATUS_BUCKET].delete(p.key)
        await n.drain()
        blue = await n.record(names.NETWORK_STATUS_BUCKET, "blue", NetworkStatus)
        assert blue.extra_members == []


async def test_endpoints_follow_placements_statuses_and_node_readiness() -> None:
    buckets = memory_buckets()
    async with netmgr(buckets) as n:
        await put(buckets[names.NODES_BUCKET], "n1", node("n1"))
        ok(await n.services.apply(service("web", ports=[{"port": 80, "targetPort": "http"}])))
        await n.drain()
        empty = await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)
        assert empty.addresses == [] and empty.cluster_ip == "10.96.0.2"
        p = placement("web-a", "web", "n1", template(("http", 8080)))
        await put(buckets[names.PLACEMENTS_BUCKET], p.key, p)
        await put(
            buckets[names.REPLICA_STATUS_BUCKET],
            p.key,
            status(p, {"default": "10.128.0.5"}, ReplicaState.CREATING),
        )
        await n.drain()
        assert (await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)).addresses == []
        await put(buckets[names.REPLICA_STATUS_BUCKET], p.key, status(p, {"default": "10.128.0.5"}))
        await n.drain()
        ready = await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)
        assert [a.ip for a in ready.addresses] == ["10.128.0.5"]
        assert ready.ports[0].target_port == 8080
        revision = (await buckets[names.ENDPOINTS_BUCKET].get("default.web")).revision  # type: ignore[union-attr]
        # a heartbeat of the node, or the same status again, writes nothing
        await put(buckets[names.NODES_BUCKET], "n1", node("n1"))
        await put(buckets[names.REPLICA_STATUS_BUCKET], p.key, status(p, {"default": "10.128.0.5"}))
        await n.drain()
        entry = await buckets[names.ENDPOINTS_BUCKET].get("default.web")
        assert entry is not None and entry.revision == revision
        # the node not ready: the replica leaves at once
        await put(buckets[names.NODES_BUCKET], "n1", node("n1", ready=False))
        await n.drain()
        assert (await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)).addresses == []
        await put(buckets[names.NODES_BUCKET], "n1", node("n1"))
        await n.drain()
        assert (await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)).addresses
        # the placement goes
        await buckets[names.PLACEMENTS_BUCKET].delete(p.key)
        await n.drain()
        assert (await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)).addresses == []


async def test_a_deleted_service_loses_its_endpoints() -> None:
    async with netmgr() as n:
        ok(await n.services.apply(service("web")))
        await n.drain()
        assert await n.buckets[names.ENDPOINTS_BUCKET].get("default.web") is not None
        ok(await n.services.delete(encode({"name": "web"})))
        await n.drain()
        assert await n.buckets[names.ENDPOINTS_BUCKET].get("default.web") is None


async def test_a_replica_change_enqueues_only_the_services_that_select_it() -> None:
    async with netmgr() as n:
        ok(await n.services.apply(service("web")))
        ok(await n.services.apply(service("db")))
        await n.drain()
        p = placement("web-a", "web", "n1")
        await put(n.buckets[names.PLACEMENTS_BUCKET], p.key, p)
        await n.settle()
        queue = n.loop.endpoints_controller.queue
        assert "default.web" in queue and "default.db" not in queue
        await n.drain()
        await put(n.buckets[names.NODES_BUCKET], "n1", node("n1"))
        await n.drain()
        await put(n.buckets[names.NODES_BUCKET], "n1", node("n1", ready=False))
        await n.settle()
        assert "default.web" in queue and "default.db" not in queue


async def test_the_controllers_run_on_their_own() -> None:
    async with netmgr(controllers=True) as n:
        await put(n.buckets[names.NODES_BUCKET], "n1", node("n1"))

        async def sliced() -> bool:
            return await n.buckets[names.NETWORK_SLICES_BUCKET].get("default.n1") is not None

        from tests.waiting import eventually

        await eventually(sliced, bool, within=5.0, interval=0.01)


async def test_an_unreadable_record_of_its_own_is_replaced_whole() -> None:
    buckets = memory_buckets()
    await buckets[names.ENDPOINTS_BUCKET].put("default.web", b"{not json")
    await buckets[names.NETWORK_STATUS_BUCKET].put("default", b'{"name": 5}')
    async with netmgr(buckets) as n:
        ok(await n.services.apply(service("web")))
        await n.drain()
        endpoints = await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)
        assert endpoints.cluster_ip == "10.96.0.2"
        default = await n.record(names.NETWORK_STATUS_BUCKET, "default", NetworkStatus)
        assert default.subnet == "10.128.0.0/16"


async def test_a_node_reporting_later_a_range_over_a_slice_is_named_in_the_network_status() -> None:
    async with netmgr() as n:
        nodes = n.buckets[names.NODES_BUCKET]
        for name in ("n1", "n2", "n3", "n4"):
            await put(nodes, name, node(name))
        await n.drain()
        n3 = await n.record(names.NETWORK_SLICES_BUCKET, "default.n3", NetworkSlice)
        assert n3.subnet == "10.128.2.0/24"
        before = await n.record(names.NETWORK_STATUS_BUCKET, "default", NetworkStatus)
        assert before.message == ""
        # n3's host got a network on its own slice, n1's one routed over n4's slice
        await put(
            n.buckets[names.NODE_NETWORK_BUCKET],
            "n3",
            NodeNetwork(node="n3", used_ranges=["10.128.2.0/24", "192.0.2.0/24"]),
        )
        await put(
            n.buckets[names.NODE_NETWORK_BUCKET],
            "n1",
            NodeNetwork(node="n1", used_ranges=["10.128.3.128/25"]),
        )
        await n.drain()
        after = await n.record(names.NETWORK_STATUS_BUCKET, "default", NetworkStatus)
        assert after.message == (
            "slice 10.128.3.0/24 (node n4's) overlaps 10.128.3.128/25 used on node n1; "
            "slice 10.128.2.0/24 overlaps 10.128.2.0/24 used on node n3"
        )
        # it goes when the host no longer uses it
        await put(n.buckets[names.NODE_NETWORK_BUCKET], "n3", NodeNetwork(node="n3"))
        await put(n.buckets[names.NODE_NETWORK_BUCKET], "n1", NodeNetwork(node="n1"))
        await n.drain()
        cleared = await n.record(names.NETWORK_STATUS_BUCKET, "default", NetworkStatus)
        assert cleared.message == ""
