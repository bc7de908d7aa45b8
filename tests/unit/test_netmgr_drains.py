"""netmgr's drain controller on in-memory buckets (docs/rollouts.md, "Graceful stops"):
a replica going away leaves every Service's endpoints, and its ReplicaDrain is written
once every live node part reports the endpoints revision without it."""

from __future__ import annotations

from corral.contract import names
from corral.contract.network_state import Endpoints, NodeNetwork, ReplicaDrain
from corral.contract.state import Placement, ReplicaState
from corral.natsio.kv import MemoryBucket
from tests.unit.netmgr_helpers import (
    Netmgr,
    memory_buckets,
    netmgr,
    node,
    ok,
    placement,
    put,
    service,
    status,
)

IP = {"default": "10.128.0.5"}


async def node_part(n: Netmgr, name: str, revision: int, *, ready: bool = True) -> None:
    record = NodeNetwork(node=name, ready=ready, endpoints_revision=revision)
    await put(n.buckets[names.NODE_NETWORK_BUCKET], name, record)


async def drain_of(n: Netmgr, p: Placement) -> ReplicaDrain | None:
    found: ReplicaDrain | None = await n.record(names.REPLICA_DRAINS_BUCKET, p.key, ReplicaDrain)
    return found


async def written_drain(n: Netmgr, p: Placement) -> ReplicaDrain:
    drained = await drain_of(n, p)
    assert drained is not None, f"no drain of {p.key}"
    return drained


async def terminating(n: Netmgr, p: Placement) -> None:
    """The replica's status says Terminating (its stop has begun); netmgr looks."""
    await put(
        n.buckets[names.REPLICA_STATUS_BUCKET], p.key, status(p, IP, ReplicaState.TERMINATING)
    )
    await n.drain()


async def revision_of(bucket: MemoryBucket, key: str) -> int:
    entry = await bucket.get(key)
    assert entry is not None
    return entry.revision


async def serving(n: Netmgr, *nodes: str) -> Placement:
    """Two Services selecting one Running replica web-a on n1, every node ready, its
    node parts reporting revision 0; the endpoints list it."""
    for name in nodes:
        await put(n.buckets[names.NODES_BUCKET], name, node(name))
        await node_part(n, name, 0)
    ok(await n.services.apply(service("web")))
    ok(await n.services.apply(service("web-alt", selector={"app": "web"})))
    p = placement("web-a", "web", "n1")
    await put(n.buckets[names.PLACEMENTS_BUCKET], p.key, p)
    await put(n.buckets[names.REPLICA_STATUS_BUCKET], p.key, status(p, IP))
    await n.drain()
    for key in ("default.web", "default.web-alt"):
        listed = await n.record(names.ENDPOINTS_BUCKET, key, Endpoints)
        assert [a.replica for a in listed.addresses] == ["web-a"]
    return p


async def both_without_it(n: Netmgr) -> int:
    """Both Services' endpoints no longer list web-a; E, the newest of their revisions."""
    endpoints = n.buckets[names.ENDPOINTS_BUCKET]
    for key in ("default.web", "default.web-alt"):
        assert (await n.record(names.ENDPOINTS_BUCKET, key, Endpoints)).addresses == []
    return max(
        [
            await revision_of(endpoints, "default.web"),
            await revision_of(endpoints, "default.web-alt"),
        ]
    )


async def test_a_terminating_replica_leaves_the_endpoints_and_waits_for_the_slowest_node() -> None:
    async with netmgr() as n:
        p = await serving(n, "n1", "n2")
        await terminating(n, p)
        revision = await both_without_it(n)
        assert await drain_of(n, p) is None  # neither node part has it yet
        await node_part(n, "n1", revision + 5)
        await node_part(n, "n2", revision - 1)  # the slowest, one short
        await n.drain()
        assert await drain_of(n, p) is None
        await node_part(n, "n2", revision)
        await n.drain()
        drained = await written_drain(n, p)
        assert (drained.node, drained.namespace, drained.replica) == ("n1", "default", "web-a")
        assert (drained.endpoints_revision, drained.nodes) == (revision, 2)
        # idempotent: looked at again, nothing is rewritten
        written = await revision_of(n.buckets[names.REPLICA_DRAINS_BUCKET], p.key)
        n.loop.drain_controller.enqueue_all(n.loop.drains.keys())
        await node_part(n, "n2", revision + 9)
        await n.drain()
        assert await revision_of(n.buckets[names.REPLICA_DRAINS_BUCKET], p.key) == written


async def test_a_replica_whose_placement_is_gone_leaves_every_endpoints_and_is_drained() -> None:
    async with netmgr() as n:
        p = await serving(n, "n1", "n2")
        await n.buckets[names.PLACEMENTS_BUCKET].delete(p.key)  # its status still Running
        await n.drain()
        revision = await both_without_it(n)
        assert await drain_of(n, p) is None
        await node_part(n, "n1", revision)
        await node_part(n, "n2", revision)
        await n.drain()
        drained = await written_drain(n, p)
        assert (drained.endpoints_revision, drained.nodes) == (revision, 2)


async def test_a_node_part_with_a_problem_is_waited_for_while_its_node_is_ready() -> None:
    async with netmgr() as n:
        p = await serving(n, "n1", "n2")
        # n2's node part has a problem (ready False) but its node is ready: its last
        # rules are still in force and may still send connections to web-a
        await node_part(n, "n2", 0, ready=False)
        await terminating(n, p)
        revision = await both_without_it(n)
        await node_part(n, "n1", revision)
        await n.drain()
        assert await drain_of(n, p) is None  # n2 has not applied E yet
        await node_part(n, "n2", revision - 1, ready=False)
        await n.drain()
        assert await drain_of(n, p) is None
        await node_part(n, "n2", revision, ready=False)
        await n.drain()
        drained = await written_drain(n, p)
        assert (drained.endpoints_revision, drained.nodes) == (revision, 2)


async def test_a_node_part_without_a_record_or_whose_node_is_not_ready_is_not_waited_for() -> None:
    async with netmgr() as n:
        p = await serving(n, "n1", "n2", "n3")
        # n2's node record says not ready; n3's node record is gone; n4 is a ready node
        # whose node part never wrote a NodeNetwork: none is waited for, however far behind
        await put(n.buckets[names.NODES_BUCKET], "n2", node("n2", ready=False))
        await n.buckets[names.NODES_BUCKET].delete("n3")
        await put(n.buckets[names.NODES_BUCKET], "n4", node("n4"))
        await terminating(n, p)
        revision = await both_without_it(n)
        assert await drain_of(n, p) is None
        await node_part(n, "n1", revision)
        await n.drain()
        drained = await written_drain(n, p)
        assert drained.nodes == 1


async def test_an_unreadable_node_part_record_of_a_ready_node_never_confirms() -> None:
    async with netmgr() as n:
        p = await serving(n, "n1", "n2")
        await n.buckets[names.NODE_NETWORK_BUCKET].put("n2", b"{not a record")
        await terminating(n, p)
        revision = await both_without_it(n)
        await node_part(n, "n1", revision)
        await n.drain()
        assert await drain_of(n, p) is None  # n2's rules are unknown: never a guess
        await node_part(n, "n2", revision)
        await n.drain()
        drained = await written_drain(n, p)
        assert drained.nodes == 2


async def test_a_replica_in_no_endpoints_is_drained_at_once_and_undrained_with_its_status() -> None:
    async with netmgr() as n:
        await put(n.buckets[names.NODES_BUCKET], "n1", node("n1"))
        await node_part(n, "n1", 0)  # no endpoints applied at all
        ok(await n.services.apply(service("db")))  # selects another app
        p = placement("web-a", "web", "n1")
        await put(n.buckets[names.PLACEMENTS_BUCKET], p.key, p)
        await put(n.buckets[names.REPLICA_STATUS_BUCKET], p.key, status(p, IP))
        await n.drain()
        assert await drain_of(n, p) is None  # not going away: nothing
        await terminating(n, p)
        drained = await written_drain(n, p)
        assert (drained.endpoints_revision, drained.nodes) == (0, 1)
        await n.buckets[names.REPLICA_STATUS_BUCKET].delete(p.key)
        await n.drain()
        assert await drain_of(n, p) is None


async def test_after_a_restart_the_revision_waited_for_is_never_lower_than_the_drop() -> None:
    buckets = memory_buckets()
    async with netmgr(buckets) as n:
        p = await serving(n, "n1", "n2")
        await terminating(n, p)
        dropped = await both_without_it(n)
        # another Service changes later, at a higher revision
        ok(await n.services.apply(service("db")))
        await n.drain()
        newest = await revision_of(buckets[names.ENDPOINTS_BUCKET], "default.db")
        assert newest > dropped
    # a new process (a restart, a takeover) knows only what KV holds: not when the
    # replica was dropped, so it waits for the newest revision
    async with netmgr(buckets) as n:
        await node_part(n, "n1", dropped)
        await node_part(n, "n2", dropped)
        await n.drain()
        assert await drain_of(n, p) is None
        await node_part(n, "n1", newest)
        await node_part(n, "n2", newest)
        await n.drain()
        drained = await written_drain(n, p)
        assert drained.endpoints_revision == newest


async def test_a_drain_already_written_is_kept_by_a_new_process_and_deleted_with_the_status() -> (
    None
):
    buckets = memory_buckets()
    async with netmgr(buckets) as n:
        p = await serving(n, "n1")
        await terminating(n, p)
        await node_part(n, "n1", await both_without_it(n))
        await n.drain()
        written = await revision_of(buckets[names.REPLICA_DRAINS_BUCKET], p.key)
    async with netmgr(buckets) as n:
        n.loop.drain_controller.enqueue_all(n.loop.drains.keys())
        await n.drain()
        assert await revision_of(buckets[names.REPLICA_DRAINS_BUCKET], p.key) == written
        await buckets[names.REPLICA_STATUS_BUCKET].delete(p.key)
        await n.drain()
        assert await drain_of(n, p) is None
