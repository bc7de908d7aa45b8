"""The scheduler decides per Deployment: a change enqueues only the Deployments it
affects, and the cluster-wide facts a decision needs (usage per node, replica names
taken, placements per Deployment and per node) are kept per change, never rebuilt."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import anyio
import msgspec
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
    ResourceList,
    Resources,
)
from corral.contract.state import (
    DeploymentStatus,
    Node,
    NodeCapacity,
    OrphanReplica,
    Placement,
    ReplicaState,
    ReplicaStatus,
)
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.contract.views import SchedulingStatus
from corral.natsio.controller import Result
from corral.natsio.kv import Bucket, MemoryBucket
from corral_scheduler import control_loop, prompt_changes
from corral_scheduler.control_loop import ControlLoop
from corral_scheduler.decide import Usage, schedule_deployment
from corral_scheduler.snapshot import PlacedReplica, Snapshot
from tests.unit.test_scheduler_control_loop import (
    Clock,
    Cluster,
    _value,
    placed_and_running,
    running,
)
from tests.unit.test_scheduler_node_ranking import ranking_of
from tests.waiting import current, eventually


def record_reconciles(loop: ControlLoop) -> list[str]:
    """The keys the loop's controller reconciles from now on, in order."""
    seen: list[str] = []
    inner: Callable[[str], Awaitable[Result | None]] = loop.controller.reconcile

    async def recording(key: str) -> Result | None:
        seen.append(key)
        return await inner(key)

    loop.controller.reconcile = recording
    return seen


def usage_rebuilt(loop: ControlLoop) -> dict[str, Usage]:
    usage: dict[str, Usage] = {}
    for placement in loop.placements.values():
        found = usage.setdefault(placement.node, Usage())
        found.cpu_millis += placement.cpu_millis
        found.memory_bytes += placement.memory_bytes
        found.pods += 1
    return usage


def ranking_rebuilt(loop: ControlLoop) -> list[list[tuple[int, str]]]:
    """The loop's ranking of nodes as it would be built from its books now."""
    rebuilt = ranking_of(Snapshot(nodes=dict(loop._nodes)), loop.usage)
    return [list(entries) for entries in rebuilt.classes()]


def ranking_kept(loop: ControlLoop) -> list[list[tuple[int, str]]]:
    return [list(entries) for entries in loop.node_ranking.classes()]


def placed_by(cluster: Cluster, deployment: str) -> list[str]:
    return sorted(p.node for p in cluster.loop.placements.values() if p.deployment == deployment)


async def test_a_lost_node_gets_only_its_own_deployments_decided_again() -> None:
    async with running() as cluster:
        await _apply(cluster, _deployment("web", 1, cpu="1"))
        await placed_and_running(cluster, "a", "b")
        await _apply(cluster, _deployment("db", 1, cpu="1"))  # least allocated: b
        await cluster.tick(1, beating=("a", "b"))
        assert placed_by(cluster, "web") == ["a"] and placed_by(cluster, "db") == ["b"]
        seen = record_reconciles(cluster.loop)
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=("b",))  # a falls silent
        assert placed_by(cluster, "web") == ["b"]  # moved
        assert set(seen) == {"default.web"}  # db, on a live node, was never decided again


async def test_a_heartbeat_alone_decides_nothing() -> None:
    async with running() as cluster:
        await cluster.apply("web", 2)
        await placed_and_running(cluster, "a", "b")
        await cluster.tick(2, beating=("a", "b"))
        seen = record_reconciles(cluster.loop)
        await cluster.tick(5, beating=("a", "b"))
        assert seen == []


async def test_a_node_joining_decides_the_pending_deployments_and_not_the_converged_ones() -> None:
    async with running() as cluster:
        await cluster.apply("web", 1)
        await placed_and_running(cluster, "a")
        await _apply(cluster, _deployment("huge", 1, cpu="5"))  # fits nowhere: 4 cpus a node
        await cluster.tick(1, beating=("a",))
        assert cluster.loop.pending == {"default.huge"}
        seen = record_reconciles(cluster.loop)
        await cluster.heartbeat("c")
        await cluster.tick(1, beating=("a", "c"))
        assert "default.huge" in seen  # a new node may have room: pending ones look again
        assert "default.web" not in seen  # converged, on no changed node


async def test_orphans_are_found_through_an_index_of_the_nodes_that_hold_them() -> None:
    """A decision looks for its Deployment's orphans only on the nodes whose records list
    some (kept per record change), not on every node: and still adopts them."""
    web = _deployment("web", 2, cpu="100m")

    def orphan(replica: str, deployment: str = "web") -> OrphanReplica:
        template_hash = web.spec.template.template_hash()
        return OrphanReplica(
            deployment=deployment, replica=replica, template_hash=template_hash, running=True
        )

    async with running() as cluster:
        loop = cluster.loop
        cluster.orphans = {"b": [orphan("web-kept1")], "c": [orphan("api-kept1", "api")]}
        for name in ("a", "b", "c"):
            await cluster.heartbeat(name)
        await cluster.tick(1, beating=("a", "b", "c"))
        assert loop.orphan_holders.get("default.web") == {"b"}
        assert loop.orphan_holders.get("default.api") == {"c"}
        assert loop.view_of("default.web").orphan_holders == {"b"}
        await _apply(cluster, web)
        await cluster.tick(1, beating=("a", "b", "c"))
        await eventually(lambda: _value(len(loop.placements.items)), lambda n: n == 2)
        adopted = [p for p in loop.placements.values() if p.replica == "web-kept1"]
        assert [p.node for p in adopted] == ["b"]  # kept where it runs, under its name
        cluster.orphans = {"c": [orphan("api-kept1", "api")]}  # b's record lists none now
        await cluster.tick(1, beating=("a", "b", "c"))
        assert loop.orphan_holders.get("default.web") == frozenset()
        assert loop.orphan_holders.get("default.api") == {"c"}


async def test_the_ranking_of_nodes_follows_records_joining_changing_and_leaving() -> None:
    async with running() as cluster:
        loop = cluster.loop
        await _apply(cluster, _deployment("web", 3, cpu="1"))
        await placed_and_running(cluster, "a", "b", "c")
        assert sorted(name for entries in ranking_kept(loop) for _, name in entries) == [
            "a",
            "b",
            "c",
        ]
        await cluster.nodes.delete("c")  # its record is gone: it ranks no more
        await cluster.tick(1, beating=("a", "b"))
        await eventually(lambda: _value("c" in loop.node_ranking), lambda there: not there)
        assert ranking_kept(loop) == ranking_rebuilt(loop)


async def _apply(cluster: Cluster, deployment: Deployment) -> None:
    await cluster.buckets[names.DEPLOYMENTS_BUCKET].put(deployment.key, encode(deployment))


async def test_usage_names_and_indexes_follow_every_placement_change() -> None:
    async with running() as cluster:
        await _apply(cluster, _deployment("web", 6, cpu="500m"))
        await placed_and_running(cluster, "a", "b")
        loop = cluster.loop
        assert loop.usage == usage_rebuilt(loop)
        assert loop.usage["a"].cpu_millis == 1500 and loop.usage["b"].pods == 3
        assert ranking_kept(loop) == ranking_rebuilt(loop) and len(loop.node_ranking) == 2
        assert set(loop.taken_names) == {p.replica for p in loop.placements.values()}
        assert loop.placements_by_deployment.get("default.web") == set(loop.placements.items)
        await _apply(cluster, _deployment("web", 2, cpu="500m"))  # scale down
        await cluster.tick(1, beating=("a", "b"))
        assert loop.usage == usage_rebuilt(loop)
        assert sum(u.pods for u in loop.usage.values()) == 2
        assert set(loop.taken_names) == {p.replica for p in loop.placements.values()}
        assert ranking_kept(loop) == ranking_rebuilt(loop)
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].delete("default.web")
        await cluster.tick(1, beating=("a", "b"))
        assert loop.usage == {} and loop.taken_names == {}
        assert ranking_kept(loop) == ranking_rebuilt(loop)
        assert "a" not in loop.deployments_by_node and len(loop.placements_by_deployment) == 0


def _deployment(name: str, replicas: int, cpu: str) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, generation=1),
        spec=DeploymentSpec(
            replicas=replicas,
            template=ContainerTemplate(
                image="app:1", resources=Resources(requests=ResourceList(cpu=cpu))
            ),
        ),
    )


def test_deciding_one_deployment_respects_the_room_others_took_and_changes_no_shared_book() -> None:
    web = _deployment("web", 2, "1")
    nodes = {
        name: Node(name=name, capacity=NodeCapacity(cpu_millis=2000, memory_bytes=2**33))
        for name in ("a", "b")
    }
    usage = {"a": Usage(cpu_millis=2000, pods=2)}  # a is full of someone else's replicas
    taken = {"web-00000"}
    counter = itertools.count()
    view = Snapshot(
        deployments={web.key: web},
        nodes=nodes,
        node_last_seen={"a": 999.0, "b": 999.0},
    )
    plan = schedule_deployment(
        view,
        web.key,
        1000.0,
        usage=usage,
        taken_names=taken,
        ready_nodes={"a", "b"},
        wall_time=1.0,
        new_suffix=lambda: f"{next(counter):05d}",
    )
    assert [p.node for p in plan.place] == ["b", "b"]
    assert [p.replica for p in plan.place] == ["web-00001", "web-00002"]  # 00000 was taken
    assert usage == {"a": Usage(cpu_millis=2000, pods=2)} and taken == {"web-00000"}
    assert plan.statuses[0][0].placed == 2 and plan.statuses[0][0].pending == 0


def test_deciding_a_deleted_deployment_stops_its_placements_and_forgets_its_status() -> None:
    web = _deployment("web", 1, "1")
    placement = Placement(
        replica="web-1",
        deployment="web",
        node="a",
        template=web.spec.template,
        template_hash=web.spec.template.template_hash(),
        generation=1,
    )
    view = Snapshot(
        statuses={web.key: (DeploymentStatus(name="web", replicas=1), 7)},
        placements={placement.key: PlacedReplica(placement, 3)},
    )
    plan = schedule_deployment(
        view,
        web.key,
        1000.0,
        usage={},
        taken_names=set(),
        ready_nodes=set(),
        wall_time=1.0,
        new_suffix=lambda: "x",
    )
    assert [(s.key, s.revision, s.reason) for s in plan.stop] == [
        (placement.key, 3, "deployment deleted")
    ]
    assert plan.forget_statuses == [(web.key, 7)] and not plan.place


class GatedBucket(MemoryBucket):
    """Creates wait until `gate` is set: a commit in flight."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = anyio.Event()
        self.waiting = 0

    async def create(self, key: str, value: bytes) -> int:
        self.waiting += 1
        await self.gate.wait()
        return await super().create(key, value)


async def test_a_decision_made_while_another_commits_sees_the_room_it_took() -> None:
    clock = Clock()
    buckets: dict[str, Bucket] = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    placements = GatedBucket(names.PLACEMENTS_BUCKET)
    buckets[names.PLACEMENTS_BUCKET] = placements
    loop = ControlLoop(buckets, None, monotonic=clock, wall_clock=lambda: 1.0)
    async with anyio.create_task_group() as tg:
        await loop.start(tg, echoes=False)
        node = Node(name="a", capacity=NodeCapacity(cpu_millis=4000, memory_bytes=2**33))
        await buckets[names.NODES_BUCKET].put("a", encode(node))
        for name in ("x", "y"):
            deployment = _deployment(name, 1, cpu="3")
            await buckets[names.DEPLOYMENTS_BUCKET].put(deployment.key, encode(deployment))
        await eventually(lambda: _value(len(loop.deployments.items)), lambda n: n == 2)
        await eventually(lambda: _value(loop.ready_nodes), lambda r: r == {"a"})
        async with anyio.create_task_group() as workers:
            workers.start_soon(loop.reconcile, "default.x")  # decides, then waits to commit
            await eventually(lambda: _value(placements.waiting), lambda n: n == 1)
            assert loop.usage["a"].cpu_millis == 3000  # reserved while in flight
            await loop.reconcile("default.y")  # decided meanwhile: no room left on a
            assert placements.waiting == 1
            placements.gate.set()
        assert [p.deployment for p in loop.placements.values()] == ["x"]
        assert loop.usage == usage_rebuilt(loop) and not loop._reserved
        await eventually(lambda: _value(loop.statuses.get("default.y")), lambda s: s is not None)
        status = loop.statuses.get("default.y")
        assert status is not None and status.pending == 1
        tg.cancel_scope.cancel()


async def test_a_placement_that_conflicts_is_decided_again_and_placed_under_a_new_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suffixes = iter(["aaaaa", "bbbbb", "ccccc"])
    monkeypatch.setattr(control_loop, "random_suffix", lambda: next(suffixes))
    async with running() as cluster:
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        web = _deployment("web", 1, cpu="1")
        theirs = Placement(
            replica="web-aaaaa",
            deployment="other",
            node="a",
            template=web.spec.template,
            template_hash="h",
            generation=1,
        )
        cluster.placements.stalled = True  # written, but this scheduler does not see it
        await cluster.placements.create(theirs.key, encode(theirs))
        cluster.placements.stalled = False
        await _apply(cluster, web)
        await cluster.tick(1, beating=("a",))
        assert placed_by(cluster, "web") == []  # its create conflicted...
        assert cluster.loop.controller.queue.due_in(web.key) is not None  # ...decided again
        await cluster.tick(1, beating=("a",))
        assert [p.replica for p in cluster.loop.placements.values() if p.deployment == "web"] == [
            "web-bbbbb"
        ]
        stored = await cluster.placements.get(theirs.key)
        assert stored is not None and decode(stored.value or b"", Placement) == theirs


async def test_room_that_appears_while_a_pending_decision_commits_gets_it_decided_again() -> None:
    clock = Clock()
    buckets: dict[str, Bucket] = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    statuses = GatedBucket(names.DEPLOYMENT_STATUS_BUCKET)  # its first status in flight
    buckets[names.DEPLOYMENT_STATUS_BUCKET] = statuses
    loop = ControlLoop(buckets, None, monotonic=clock, wall_clock=lambda: 1.0)
    queue = loop.controller.queue
    async with anyio.create_task_group() as tg:
        await loop.start(tg, echoes=False)
        small = Node(name="a", capacity=NodeCapacity(cpu_millis=1000, memory_bytes=2**33))
        await buckets[names.NODES_BUCKET].put("a", encode(small))
        big = _deployment("big", 1, cpu="3")  # fits on no node yet
        await buckets[names.DEPLOYMENTS_BUCKET].put(big.key, encode(big))
        await eventually(lambda: _value(loop.ready_nodes), lambda r: r == {"a"})
        await eventually(lambda: _value(big.key in queue), lambda queued: queued)
        while len(queue):  # taken, as a worker would, and reconciled below by hand
            queue.done(await queue.get())
        async with anyio.create_task_group() as workers:
            # decided pending; its status (pending 1) waits to be written
            workers.start_soon(loop.reconcile, big.key)
            await eventually(lambda: _value(statuses.waiting), lambda n: n == 1)
            assert big.key not in loop.pending  # not yet: its status says so once written
            roomy = Node(name="b", capacity=NodeCapacity(cpu_millis=4000, memory_bytes=2**33))
            await buckets[names.NODES_BUCKET].put("b", encode(roomy))  # room appears
            await eventually(lambda: _value(loop.ready_nodes), lambda r: r == {"a", "b"})
            statuses.gate.set()
        assert big.key in loop.pending
        assert big.key in queue  # to be decided again, now that b has room
        await loop.reconcile(big.key)
        assert [p.node for p in loop.placements.values()] == ["b"]
        tg.cancel_scope.cancel()


async def _report(cluster: Cluster, deployment: str, state: ReplicaState) -> None:
    """The agent of each of `deployment`'s replicas reports it in `state`."""
    for placement in list(cluster.loop.placements.values()):
        if placement.deployment == deployment:
            status = ReplicaStatus(
                replica=placement.replica, deployment=deployment, node=placement.node, state=state
            )
            await cluster.buckets[names.REPLICA_STATUS_BUCKET].put(
                names.placement_key(placement.node, placement.namespace, placement.replica),
                encode(status),
            )


async def test_what_goes_down_is_decided_ahead_of_deployments_waiting_to_be_placed() -> None:
    """A replica going down, and a node judged lost, enqueue their Deployments in the
    work queue's prompt lane: a burst of new Deployments queued before them waits its
    turn (a replacement is not held back until the burst is placed). A replica coming
    up waits its turn behind the burst (counted with the others in one decision)."""
    async with running() as cluster:
        await _apply(cluster, _deployment("web", 1, cpu="1"))
        await placed_and_running(cluster, "a", "b")
        await _apply(cluster, _deployment("db", 1, cpu="1"))
        await cluster.tick(1, beating=("a", "b"))
        queue = cluster.loop.controller.queue
        seen = record_reconciles(cluster.loop)
        for state, burst in ((ReplicaState.RUNNING, "up"), (ReplicaState.EXITED, "down")):
            for n in range(3):
                await _apply(cluster, _deployment(f"{burst}-{n}", 1, cpu="100m"))
            await eventually(lambda: current(len(queue)), lambda n: n == 3, interval=0.001)
            await _report(cluster, "web", state)
            await eventually(lambda: current(len(queue)), lambda n: n == 4, interval=0.001)
            seen.clear()
            await cluster.loop.drain()
            order = [*(f"default.{burst}-{n}" for n in range(3)), "default.web"]
            if state == ReplicaState.EXITED:
                order = order[-1:] + order[:-1]
            assert seen[:4] == order
        # a node judged lost: its Deployment goes ahead of the burst queued before it,
        # even from behind it in the other lane
        db_node = placed_by(cluster, "db")[0]
        live = "a" if db_node == "b" else "b"
        for step in range(int(NODE_LOST_SECONDS) + 3):
            for n in range(3):
                await _apply(cluster, _deployment(f"burst-{step}-{n}", 1, cpu="100m"))
            await eventually(lambda: current(len(queue)), lambda n: n == 3, interval=0.001)
            queue.add("default.db")  # waits behind the burst, for a change of its own
            seen.clear()
            await cluster.tick(1, beating=(live,))  # db's node silent
            if db_node not in cluster.loop.ready_nodes:
                break
        # (with the other Deployments that had replicas there: all of them prompt)
        queued_before = [seen.index(f"default.burst-{step}-{n}") for n in range(3)]
        assert seen.index("default.db") < min(queued_before)


async def test_many_nodes_lost_at_once_leave_all_but_a_few_deployments_in_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disruption (many nodes judged lost together): only the first few Deployments go
    in the prompt lane; the rest take their turn behind what is queued, so that
    replacing thousands of replicas does not take every next turn."""
    monkeypatch.setattr(prompt_changes, "DISRUPTION_DEPLOYMENTS", 3)  # 6, not 20, here
    nodes = ("a", "b", "c", "d", "e", "f")
    async with running() as cluster:
        for name in nodes:
            await _apply(cluster, _deployment(f"app-{name}", 1, cpu="3"))  # one per node
        await placed_and_running(cluster, *nodes)
        await cluster.tick(2, beating=nodes)
        assert sorted(p.node for p in cluster.loop.placements.values()) == list(nodes)
        queue = cluster.loop.controller.queue
        assert len(queue) == 0
        clock = cluster.clock
        for _ in range(int(NODE_LOST_SECONDS) + 2):  # five fall silent together
            clock.now += 1
            await cluster.heartbeat("a")
            await cluster.echo()
            await cluster.loop.tick()  # judged, not decided
            if len(cluster.loop.ready_nodes) == 1:
                break
        assert cluster.loop.ready_nodes == {"a"}
        assert len(queue) == 5
        assert queue.prompt_waiting() == 3  # one Deployment a node: three nodes


async def test_nodes_joining_meanwhile_do_not_make_a_lost_node_a_disruption() -> None:
    """Only judged losses count towards a disruption: nodes judged for the first time
    (joining, or every node when a scheduler starts) do not."""
    async with running() as cluster:
        await _apply(cluster, _deployment("web", 1, cpu="3"))
        await placed_and_running(cluster, "a", "b")
        await cluster.tick(2, beating=("a", "b"))
        web_node = placed_by(cluster, "web")[0]
        live = "a" if web_node == "b" else "b"
        queue = cluster.loop.controller.queue
        clock = cluster.clock
        for step in range(int(NODE_LOST_SECONDS) + 2):
            clock.now += 1
            await cluster.heartbeat(live)
            if step >= 2:  # four nodes join just before web's node is judged lost
                for name in ("c", "d", "e", "f"):
                    await cluster.heartbeat(name)
            await cluster.echo()
            await cluster.loop.tick()
            if web_node not in cluster.loop.ready_nodes:
                break
        assert {"c", "d", "e", "f"} <= cluster.loop.ready_nodes
        assert queue.prompt_waiting() == 1  # web's Deployment


async def test_the_scheduler_holds_replica_statuses_as_the_view_it_reads() -> None:
    """The scheduler holds replica statuses as the view it reads (SchedulingStatus): a
    rewrite that changes none of what it reads (only the container, addresses, ports,
    probes and message; an agent's own writes change `updatedAt` too) is no change to
    it and decides nothing; one whose readiness changed decides its Deployment again."""
    async with running() as cluster:
        await _apply(cluster, _deployment("web", 2, cpu="100m"))
        await placed_and_running(cluster, "a", "b")
        await _report(cluster, "web", ReplicaState.RUNNING)
        statuses = cluster.loop.replica_statuses
        await eventually(lambda: current(len(statuses.items)), lambda n: n == 2)
        assert all(type(held) is SchedulingStatus for held, _ in statuses.items.values())
        await cluster.loop.drain()
        seen = record_reconciles(cluster.loop)
        bucket = cluster.buckets[names.REPLICA_STATUS_BUCKET]

        async def rewrite(key: str, **changes: object) -> None:
            entry = await bucket.get(key)
            assert entry is not None and entry.value is not None
            changed = msgspec.structs.replace(decode(entry.value, ReplicaStatus), **changes)
            revision = await bucket.put(key, encode(changed))
            await eventually(lambda: current(statuses.items[key][1]), lambda r: r == revision)

        first, second = sorted(statuses.items)
        await rewrite(
            first,
            container_id="c0ffee",
            message="probed",
            ips={"default": "10.0.0.9"},
            image_ports=["8080/tcp"],
            probes={"readiness": "ok"},
            last_probe_failure="timed out",
            restarts=0,
            exit_code=None,
        )
        await cluster.loop.drain()
        assert seen == []
        await rewrite(second, ready=False)  # Running, and its readiness probe fails
        await cluster.loop.drain()
        assert seen == ["default.web"]
