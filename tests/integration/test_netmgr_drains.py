"""netmgr's drains through a real nats-server (docs/rollouts.md, "Graceful stops"): a
replica going away gets its ReplicaDrain only once every live node part reports the
endpoints revision without it applied."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Network
from corral.contract.network_state import Endpoints, NodeNetwork, ReplicaDrain
from corral.contract.state import Placement, ReplicaState
from corral.natsio.kv import NatsBucket
from corral_netmgr.node.part import KEYS, NodePart, NodeSettings
from tests.integration.cluster_part_harness import record, request
from tests.integration.netmgr_harness import running_netmgr
from tests.unit.netmgr_helpers import node, placement, service, status
from tests.unit.test_netmgr_node_part import FakeIptables
from tests.waiting import eventually

IP = {"default": "10.128.0.5"}


async def present(bucket: NatsBucket, key: str, kind: type[Any]) -> Any:
    return await eventually(lambda: record(bucket, key, kind), lambda r: r is not None)


async def listing(bucket: NatsBucket, key: str, replica: str, listed: bool) -> int:
    """Once the Service's endpoints list `replica` (or no longer do): their revision."""

    async def probe() -> Any:
        return await bucket.get(key)

    def accept(entry: Any) -> bool:
        if entry is None or entry.value is None:
            return False
        addresses = decode(entry.value, Endpoints).addresses
        return any(a.replica == replica for a in addresses) == listed

    entry = await eventually(probe, accept, within=10.0, interval=0.005)
    return int(entry.revision)


async def serve_web(ctx: Any, buckets: dict[str, NatsBucket], *nodes: str) -> None:
    for name in nodes:
        await buckets[names.NODES_BUCKET].put(name, encode(node(name)))
    await present(buckets[names.NETWORKS_BUCKET], "default", Network)
    assert (await request(ctx.nc, "service", "apply", service("web"))).ok


async def start_replica(buckets: dict[str, NatsBucket], replica: str) -> Placement:
    p = placement(replica, "web", "n1")
    await buckets[names.PLACEMENTS_BUCKET].put(p.key, encode(p))
    await buckets[names.REPLICA_STATUS_BUCKET].put(p.key, encode(status(p, IP)))
    await listing(buckets[names.ENDPOINTS_BUCKET], "default.web", replica, True)
    return p


async def terminate(buckets: dict[str, NatsBucket], p: Placement) -> None:
    terminating = status(p, IP, ReplicaState.TERMINATING)
    await buckets[names.REPLICA_STATUS_BUCKET].put(p.key, encode(terminating))


async def report(
    buckets: dict[str, NatsBucket], name: str, revision: int, *, ready: bool = True
) -> None:
    record_ = NodeNetwork(node=name, ready=ready, endpoints_revision=revision)
    await buckets[names.NODE_NETWORK_BUCKET].put(name, encode(record_))


async def test_no_drain_until_both_node_parts_report_the_revision_without_the_replica(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    drains = buckets[names.REPLICA_DRAINS_BUCKET]
    async with running_netmgr(nats_url) as ctx:
        await report(buckets, "n1", 0)
        await report(buckets, "n2", 0)
        await serve_web(ctx, buckets, "n1", "n2")
        p = await start_replica(buckets, "web-a")
        await terminate(buckets, p)
        revision = await listing(buckets[names.ENDPOINTS_BUCKET], "default.web", "web-a", False)
        await report(buckets, "n1", revision)
        await report(buckets, "n2", revision - 1)
        # a while for netmgr to see both reports: still no drain (n2 is one short)
        with anyio.move_on_after(0.5):
            await eventually(lambda: drains.get(p.key), lambda e: e is not None, within=1.0)
            raise AssertionError("drained before n2 applied the endpoints without web-a")
        await report(buckets, "n2", revision)
        drained = await present(drains, p.key, ReplicaDrain)
        assert (drained.endpoints_revision, drained.nodes) == (revision, 2)
        # the status goes: so does the drain
        await buckets[names.REPLICA_STATUS_BUCKET].delete(p.key)
        await eventually(lambda: drains.get(p.key), lambda e: e is None or e.value is None)


async def test_a_node_part_with_a_problem_is_waited_for_not_one_without_a_record_or_ready_node(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    drains = buckets[names.REPLICA_DRAINS_BUCKET]
    async with running_netmgr(nats_url) as ctx:
        await report(buckets, "n1", 0)
        await report(buckets, "n2", 0, ready=False)  # a problem: its old rules in force
        await report(buckets, "n3", 0)
        await serve_web(ctx, buckets, "n1", "n2", "n3", "n4")  # n4: no node part record
        await buckets[names.NODES_BUCKET].put("n3", encode(node("n3", ready=False)))
        p = await start_replica(buckets, "web-a")
        await terminate(buckets, p)
        revision = await listing(buckets[names.ENDPOINTS_BUCKET], "default.web", "web-a", False)
        await report(buckets, "n1", revision)
        # a while for netmgr to see it: still no drain (n2's node is ready, its node part
        # has not applied the endpoints without web-a)
        with anyio.move_on_after(0.5):
            await eventually(lambda: drains.get(p.key), lambda e: e is not None, within=1.0)
            raise AssertionError("drained before n2 applied the endpoints without web-a")
        await report(buckets, "n2", revision, ready=False)
        drained = await present(drains, p.key, ReplicaDrain)
        # n3 (node not ready) and n4 (no NodeNetwork) were never waited for
        assert (drained.endpoints_revision, drained.nodes) == (revision, 2)


class HostlessNodePart(NodePart):
    """The node part's controller over NATS with a fake packet filter and no host
    changes: no Docker networks, no routes, fixed host facts."""

    async def reconcile_networks(self) -> str:
        return ""

    async def reconcile_routes(self) -> str:
        return ""

    async def host_facts(self) -> tuple[str, list[str]]:
        return "192.0.2.1", []

    async def listening_ports(self) -> list[str]:
        return []

    async def run_hostless(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            for mirror in self.mirrors:
                await tg.start(mirror.run)
            self.controller.enqueue_all(KEYS)
            await tg.start(self.controller.run)
            task_status.started()


@asynccontextmanager
async def node_parts(buckets: dict[str, NatsBucket], *nodes: str) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for name in nodes:
            part = HostlessNodePart(
                buckets,  # type: ignore[arg-type]
                NodeSettings(node=name, cluster_id="c0ffee", host_id=f"host-{name}"),
                docker=None,  # type: ignore[arg-type]
                iptables=FakeIptables(),  # type: ignore[arg-type]
            )
            await tg.start(part.run_hostless)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def test_with_two_node_parts_a_terminating_replica_is_drained_within_a_second(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    drains = buckets[names.REPLICA_DRAINS_BUCKET]
    node_network = buckets[names.NODE_NETWORK_BUCKET]
    async with running_netmgr(nats_url) as ctx, node_parts(buckets, "n1", "n2"):
        for name in ("n1", "n2"):
            await eventually(
                lambda name=name: record(node_network, name, NodeNetwork),  # type: ignore[misc]
                lambda r: r is not None and r.ready,
            )
        await serve_web(ctx, buckets, "n1", "n2")
        seconds = []
        for index in range(5):
            p = await start_replica(buckets, f"web-{index}")
            started = time.monotonic()
            await terminate(buckets, p)
            drained = await eventually(
                lambda p=p: record(drains, p.key, ReplicaDrain),  # type: ignore[misc]
                lambda r: r is not None,
                within=5.0,
                interval=0.005,
            )
            seconds.append(time.monotonic() - started)
            assert drained.nodes == 2
            for name in ("n1", "n2"):
                reported = await record(node_network, name, NodeNetwork)
                assert reported.endpoints_revision >= drained.endpoints_revision
        print(
            f"status Terminating -> ReplicaDrain, 2 node parts: median "
            f"{statistics.median(seconds) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms "
            f"({', '.join(f'{s * 1000:.0f}' for s in seconds)})"
        )
        assert max(seconds) < 1.0


async def test_a_netmgr_taking_over_writes_the_drain_its_predecessor_was_waiting_for(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    drains = buckets[names.REPLICA_DRAINS_BUCKET]
    async with running_netmgr(nats_url) as ctx:
        await report(buckets, "n1", 0)
        await serve_web(ctx, buckets, "n1")
        p = await start_replica(buckets, "web-a")
        await terminate(buckets, p)
        revision = await listing(buckets[names.ENDPOINTS_BUCKET], "default.web", "web-a", False)
    assert await drains.get(p.key) is None  # n1 never reported it
    async with running_netmgr(nats_url):
        await report(buckets, "n1", revision)
        drained = await present(drains, p.key, ReplicaDrain)
        assert (drained.endpoints_revision, drained.nodes) == (revision, 1)
