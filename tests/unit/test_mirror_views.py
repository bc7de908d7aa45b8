"""netmgr and volmgr keep other services' records as views (corral.contract.views): their
mirrors hold and decode only the fields they read, not a placement's whole template or a
status's probes; and a record a view cannot read stays unreadable, as before."""

from __future__ import annotations

import json
from pathlib import Path

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.network_state import Endpoints
from corral.contract.views import (
    ClaimsPlacement,
    EndpointsPlacement,
    EndpointsStatus,
    NetworksDeployment,
)
from corral.natsio.kv import MemoryBucket
from corral_volmgr.node.part import NodePart, NodeSettings
from tests.unit import netmgr_helpers as net
from tests.unit import volmgr_helpers, volmgr_node_helpers


async def test_netmgrs_mirrors_hold_placements_statuses_and_deployments_as_views() -> None:
    async with net.netmgr() as n:
        p = net.placement("web-a", "web", "n1", net.template(("http", 8080)))
        await net.put(n.buckets[names.PLACEMENTS_BUCKET], p.key, p)
        await net.put(
            n.buckets[names.REPLICA_STATUS_BUCKET], p.key, net.status(p, {"default": "10.0.0.1"})
        )
        await n.buckets[names.DEPLOYMENTS_BUCKET].put("default.web", net.deployment("web"))
        await n.settle()
        m = n.loop.mirrors
        held = m.placements.get(p.key)
        assert isinstance(held, EndpointsPlacement)
        assert not hasattr(held.template, "image")  # the template is not kept whole
        assert [(port.name, port.container_port) for port in held.template.ports] == [
            ("http", 8080)
        ]
        seen = m.replica_statuses.get(p.key)
        assert isinstance(seen, EndpointsStatus) and not hasattr(seen, "probes")
        assert seen.is_ready and seen.ips == {"default": "10.0.0.1"}
        assert isinstance(m.deployments.get("default.web"), NetworksDeployment)


async def test_a_placement_with_a_template_field_netmgr_does_not_read_still_serves() -> None:
    """A field netmgr does not hold is not decoded, nor checked: a placement written by a
    newer corral (a template field this one does not know) is read, and its replica
    becomes an endpoint."""
    async with net.netmgr() as n:
        await net.put(n.buckets[names.NODES_BUCKET], "n1", net.node("n1"))
        net.ok(await n.services.apply(net.service("web")))
        p = net.placement("web-a", "web", "n1")
        document = json.loads(encode(p))
        document["template"]["aFieldOfANewerCorral"] = {"x": 1}
        await n.buckets[names.PLACEMENTS_BUCKET].put(p.key, json.dumps(document).encode())
        await net.put(
            n.buckets[names.REPLICA_STATUS_BUCKET], p.key, net.status(p, {"default": "10.0.0.1"})
        )
        await n.drain()
        assert p.key not in n.loop.mirrors.placements.unreadable
        endpoints = await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)
        assert [a.replica for a in endpoints.addresses] == ["web-a"]


async def test_a_placement_or_status_netmgr_cannot_read_is_unreadable_and_serves_nowhere() -> None:
    async with net.netmgr() as n:
        await net.put(n.buckets[names.NODES_BUCKET], "n1", net.node("n1"))
        net.ok(await n.services.apply(net.service("web")))
        p = net.placement("web-a", "web", "n1")
        without_template = {k: v for k, v in json.loads(encode(p)).items() if k != "template"}
        await n.buckets[names.PLACEMENTS_BUCKET].put(p.key, json.dumps(without_template).encode())
        await n.buckets[names.REPLICA_STATUS_BUCKET].put(p.key, b'{"replica": "web-a"}')
        await n.drain()
        m = n.loop.mirrors
        assert p.key in m.placements.unreadable and p.key in m.replica_statuses.unreadable
        endpoints = await n.record(names.ENDPOINTS_BUCKET, "default.web", Endpoints)
        assert endpoints.addresses == []
        assert await n.buckets[names.REPLICA_DRAINS_BUCKET].get(p.key) is None


async def test_volmgrs_cluster_part_holds_placements_as_views_of_their_claims() -> None:
    async with volmgr_helpers.volmgr() as v:
        p = volmgr_helpers.placement("app-1", "n1", "data", created_at=3.0)
        await net.put(v.buckets[names.PLACEMENTS_BUCKET], p.key, p)
        await v.drain()
        held = v.loop.mirrors.placements.get(p.key)
        assert isinstance(held, ClaimsPlacement) and not hasattr(held.template, "image")
        assert [p.key for p in v.loop.users("default.data")] == [p.key]
        assert held.created_at == 3.0 and held.node == "n1"


def test_volmgrs_node_part_holds_its_nodes_placements_as_views_of_their_claims(
    tmp_path: Path,
) -> None:
    buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    settings = NodeSettings(
        node="n1", cluster_id=volmgr_node_helpers.CLUSTER, volumes_dir=tmp_path / "volumes"
    )
    part = NodePart(buckets, settings, volmgr_node_helpers.FakeDockerVolumes())  # type: ignore[arg-type]
    p = volmgr_node_helpers.placement("n1", "app-1", "data")
    volmgr_node_helpers.put(part.placements, p.key, p)
    held = part.placements.get(p.key)
    assert isinstance(held, ClaimsPlacement) and not hasattr(held.template, "image")
    assert part.placements_by_claim.get("default.data") == {p.key}
