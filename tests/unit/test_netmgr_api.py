"""netmgr's Network and Service APIs on in-memory buckets: allocation, refusals that
name the field and change nothing, and the durable-spec rules."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Network, Service
from corral.contract.network_state import NodeNetwork
from corral.natsio.kv import MemoryBucket
from tests.unit.netmgr_helpers import (
    deployment,
    memory_buckets,
    netmgr,
    network,
    ok,
    put,
    service,
)


async def snapshot(buckets: dict[str, MemoryBucket]) -> dict[str, Any]:
    return {
        name: {key: entry.value for key, entry in bucket.items.items()}
        for name, bucket in buckets.items()
        if name != names.LEASES_BUCKET
    }


async def stored_network(buckets: dict[str, MemoryBucket], name: str) -> Network:
    entry = await buckets[names.NETWORKS_BUCKET].get(name)
    assert entry is not None and entry.value is not None
    return decode(entry.value, Network)


async def stored_service(buckets: dict[str, MemoryBucket], name: str) -> Service:
    entry = await buckets[names.SERVICES_BUCKET].get(f"default.{name}")
    assert entry is not None and entry.value is not None
    return decode(entry.value, Service)


# --- networks -------------------------------------------------------------------------


async def test_the_default_network_is_made_at_start_with_a_range_from_the_pool() -> None:
    async with netmgr() as n:
        default = await stored_network(n.buckets, "default")
        assert default.spec.subnet == "10.128.0.0/16" and default.metadata.uid


async def test_a_network_without_subnet_gets_the_next_free_16_and_keeps_it() -> None:
    async with netmgr() as n:
        first = ok(await n.networks.apply(network("blue")))
        assert (await stored_network(n.buckets, "blue")).spec.subnet == "10.129.0.0/16"
        again = ok(await n.networks.apply(network("blue")))
        assert again.unchanged and again.revision == first.revision
        relabelled = ok(
            await n.networks.apply(
                encode({"kind": "Network", "metadata": {"name": "blue", "labels": {"a": "b"}}})
            )
        )
        assert relabelled.generation == 2
        assert (await stored_network(n.buckets, "blue")).spec.subnet == "10.129.0.0/16"


async def test_a_networks_subnet_and_slice_prefix_cannot_change_once_made() -> None:
    async with netmgr() as n:
        ok(await n.networks.apply(network("blue", subnet="10.50.0.0/16")))
        before = await snapshot(n.buckets)
        moved = await n.networks.apply(network("blue", subnet="10.51.0.0/16"))
        assert not moved.ok and moved.field == "spec.subnet" and "cannot change" in moved.error
        resliced = await n.networks.apply(network("blue", slicePrefix=26))
        assert not resliced.ok and resliced.field == "spec.slicePrefix"
        assert await snapshot(n.buckets) == before


@pytest.mark.parametrize(
    ("subnet", "overlaps"),
    [
        ("10.128.0.0/12", "network 'default'"),
        ("10.96.0.0/16", "service range"),
        ("172.17.0.0/16", "172.17.0.0/16, used on node 'n1'"),
    ],
)
async def test_a_subnet_that_overlaps_is_refused_and_changes_nothing(
    subnet: str, overlaps: str
) -> None:
    buckets = memory_buckets()
    await put(
        buckets[names.NODE_NETWORK_BUCKET],
        "n1",
        NodeNetwork(node="n1", used_ranges=["172.17.0.0/16"]),
    )
    async with netmgr(buckets) as n:
        before = await snapshot(n.buckets)
        reply = await n.networks.apply(network("blue", subnet=subnet))
        assert not reply.ok and reply.field == "spec.subnet" and overlaps in reply.error
        assert await snapshot(n.buckets) == before


async def test_bad_network_input_names_the_field_and_changes_nothing() -> None:
    async with netmgr() as n:
        before = await snapshot(n.buckets)
        reply = await n.networks.apply(network("blue", subnet="10.0.0.1/16"))
        assert not reply.ok and reply.field == "spec.subnet"
        reply = await n.networks.apply(network("Blue"))
        assert not reply.ok and reply.field == "metadata.name"
        assert await snapshot(n.buckets) == before


async def test_a_network_in_use_is_not_deleted_and_the_error_lists_its_users() -> None:
    buckets = memory_buckets()
    await buckets[names.DEPLOYMENTS_BUCKET].put("default.web", deployment("web", networks=["blue"]))
    async with netmgr(buckets) as n:
        ok(await n.networks.apply(network("blue")))
        ok(await n.services.apply(service("api", network="blue")))
        refused = await n.networks.delete(encode({"name": "blue"}))
        assert not refused.ok and refused.field == "name" and refused.reason == "Conflict"
        assert "deployment default.web" in refused.error
        assert "service default.api" in refused.error
        assert await n.buckets[names.NETWORKS_BUCKET].get("blue") is not None
        ok(await n.services.delete(encode({"name": "api"})))
        await n.buckets[names.DEPLOYMENTS_BUCKET].delete("default.web")
        await n.drain()
        ok(await n.networks.delete(encode({"name": "blue"})))
        assert await n.buckets[names.NETWORKS_BUCKET].get("blue") is None


async def test_the_default_network_is_used_by_default_and_never_deleted() -> None:
    buckets = memory_buckets()
    await buckets[names.DEPLOYMENTS_BUCKET].put("default.web", deployment("web"))
    async with netmgr(buckets) as n:
        users = n.networks.users("default")
        assert users == ["deployment default.web"]
        refused = await n.networks.delete(encode({"name": "default"}))
        assert not refused.ok and "never deleted" in refused.error
        assert await n.buckets[names.NETWORKS_BUCKET].get("default") is not None


async def test_a_stale_resource_version_is_a_conflict() -> None:
    async with netmgr() as n:
        made = ok(await n.networks.apply(network("blue")))
        stale = await n.networks.delete(
            encode({"name": "blue", "resourceVersion": made.revision + 5})
        )
        assert not stale.ok and stale.reason == "Conflict" and stale.field == "resourceVersion"
        ok(await n.networks.delete(encode({"name": "blue", "resourceVersion": made.revision})))


async def test_a_durable_spec_older_than_a_requests_delete_does_not_bring_it_back() -> None:
    async with netmgr() as n:
        n.networks.spec_position = _position(7)
        ok(await n.networks.apply(network("blue")))
        ok(await n.networks.delete(encode({"name": "blue"})))
        late = await n.networks.apply(network("blue"), 5)
        assert late.ok and late.reason == "Superseded"
        assert await n.buckets[names.NETWORKS_BUCKET].get("blue") is None
        newer = ok(await n.networks.apply(network("blue"), 9))
        assert not newer.reason


def _position(value: int) -> Any:
    async def position() -> int:
        return value

    return position


# --- services -------------------------------------------------------------------------


async def test_a_service_gets_a_cluster_ip_and_node_ports_that_a_reapply_keeps() -> None:
    async with netmgr() as n:
        ok(await n.services.apply(service("web", type="NodePort")))
        first = await stored_service(n.buckets, "web")
        assert first.spec.cluster_ip == "10.96.0.2"
        assert first.spec.ports[0].node_port == 30000
        ok(await n.services.apply(service("api", type="NodePort")))
        other = await stored_service(n.buckets, "api")
        assert other.spec.cluster_ip == "10.96.0.3" and other.spec.ports[0].node_port == 30001
        again = ok(await n.services.apply(service("web", type="NodePort")))
        assert again.unchanged
        assert await stored_service(n.buckets, "web") == first


async def test_what_a_deleted_service_had_is_free_again() -> None:
    async with netmgr() as n:
        ok(await n.services.apply(service("web", type="NodePort")))
        ok(await n.services.delete(encode({"name": "web"})))
        ok(await n.services.apply(service("api", type="NodePort")))
        api = await stored_service(n.buckets, "api")
        assert api.spec.cluster_ip == "10.96.0.2" and api.spec.ports[0].node_port == 30000


@pytest.mark.parametrize(
    ("second", "field", "message"),
    [
        (service("b", network="nowhere"), "spec.network", "'nowhere' does not exist"),
        (service("b", clusterIP="10.96.0.2"), "spec.clusterIP", "taken"),
        (service("b", clusterIP="10.20.0.2"), "spec.clusterIP", "not in the service range"),
        (
            service("b", type="NodePort", ports=[{"port": 80, "nodePort": 30000}]),
            "spec.ports[0].nodePort",
            "taken",
        ),
        (service("a", type="ClusterIP"), "spec.type", "delete it first"),
        (service("a", type="NodePort", clusterIP="10.96.0.9"), "spec.clusterIP", "cannot change"),
    ],
)
async def test_a_service_refusal_names_the_field_and_changes_nothing(
    second: bytes, field: str, message: str
) -> None:
    async with netmgr() as n:
        ok(await n.services.apply(service("a", type="NodePort")))
        before = await snapshot(n.buckets)
        reply = await n.services.apply(second)
        assert not reply.ok and reply.field == field and message in reply.error, reply
        assert await snapshot(n.buckets) == before


async def test_a_headless_service_has_no_cluster_ip_and_cannot_become_one() -> None:
    async with netmgr() as n:
        ok(await n.services.apply(service("h", clusterIP="None", ports=[])))
        assert (await stored_service(n.buckets, "h")).spec.cluster_ip == "None"
        reply = await n.services.apply(service("h"))
        assert not reply.ok and reply.field == "spec.clusterIP" and "headless" in reply.error


async def test_a_requested_node_port_outside_the_default_range_is_given() -> None:
    async with netmgr() as n:
        ok(
            await n.services.apply(
                service("web", type="NodePort", ports=[{"port": 80, "nodePort": 8080}])
            )
        )
        assert (await stored_service(n.buckets, "web")).spec.ports[0].node_port == 8080


async def test_a_service_for_an_existing_network_is_accepted() -> None:
    async with netmgr() as n:
        ok(await n.networks.apply(network("blue")))
        ok(await n.services.apply(service("web", network="blue")))
        assert (await stored_service(n.buckets, "web")).spec.network == "blue"


async def test_bad_service_input_is_refused_whole() -> None:
    async with netmgr() as n:
        before = await snapshot(n.buckets)
        reply = await n.services.apply(service("web", selector={}))
        assert not reply.ok and reply.field == "spec.selector"
        reply = await n.services.apply(service("web", ports=[{"port": 70000}]))
        assert not reply.ok and reply.field == "spec.ports[0].port"
        assert await snapshot(n.buckets) == before


__all__ = ["msgspec"]


# --- node ports a process listens on; records that cannot be read ----------------------


async def test_a_node_port_a_node_listens_on_is_refused_and_skipped_when_picking() -> None:
    buckets = memory_buckets()
    await put(
        buckets[names.NODE_NETWORK_BUCKET],
        "n1",
        NodeNetwork(node="n1", listening_ports=["22/TCP", "30000/TCP"]),
    )
    async with netmgr(buckets) as n:
        before = await snapshot(n.buckets)
        reply = await n.services.apply(
            service("ssh", type="NodePort", ports=[{"port": 80, "nodePort": 22}])
        )
        assert not reply.ok and reply.field == "spec.ports[0].nodePort"
        assert "22/TCP is in use on node n1 (a process listens there)" in reply.error
        assert await snapshot(n.buckets) == before
        ok(await n.services.apply(service("web", type="NodePort")))
        web = await stored_service(n.buckets, "web")
        assert web.spec.ports[0].node_port == 30001
        # a port the Service has stays its own when a process listens there later
        await put(
            n.buckets[names.NODE_NETWORK_BUCKET],
            "n1",
            NodeNetwork(node="n1", listening_ports=["30001/TCP"]),
        )
        await n.drain()
        assert ok(await n.services.apply(service("web", type="NodePort"))).unchanged


async def test_an_unreadable_service_makes_allocating_busy_and_writes_nothing() -> None:
    async with netmgr() as n:
        ok(await n.services.apply(service("kept", type="NodePort")))
        await n.buckets[names.SERVICES_BUCKET].put("default.x", b'{"kind": "Service", "spec": 7}')
        await n.drain()
        assert "default.x" in n.services.mirror.unreadable
        before = await snapshot(n.buckets)
        for refused in (
            await n.services.apply(service("new")),
            await n.services.apply(
                service(
                    "kept",
                    type="NodePort",
                    ports=[{"port": 80, "name": "a"}, {"port": 81, "name": "b"}],
                )
            ),
        ):
            assert not refused.ok and refused.reason == "Busy", refused
            assert "cannot allocate while services default.x cannot be read" in refused.error
        assert await snapshot(n.buckets) == before
        # what keeps its allocation goes on; the unreadable record itself may be replaced
        assert ok(await n.services.apply(service("kept", type="NodePort"))).unchanged
        ok(await n.services.apply(service("x")))
        ok(await n.services.apply(service("new")))


async def test_an_unreadable_network_makes_making_a_network_busy_and_writes_nothing() -> None:
    async with netmgr() as n:
        await n.buckets[names.NETWORKS_BUCKET].put("red", b'{"kind": "Network", "spec": 7}')
        await n.drain()
        before = await snapshot(n.buckets)
        for wanted in (network("blue"), network("blue", subnet="10.50.0.0/16")):
            refused = await n.networks.apply(wanted)
            assert not refused.ok and refused.reason == "Busy", refused
            assert "cannot allocate while networks red cannot be read" in refused.error
        assert await snapshot(n.buckets) == before
        assert ok(await n.networks.apply(network("default"))).unchanged
        ok(await n.networks.apply(network("red")))
        ok(await n.networks.apply(network("blue")))
