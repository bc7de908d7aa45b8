"""The agent's safety rules: unreadable placements, duplicate node names, startup
hiccups, fencing after a partition, name conflicts, pulls and restart counts."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.state import Node, NodeCapacity, ReplicaState
from corral.natsio.kv import Entry, MemoryBucket, Snapshot, Wakeups
from corral_node_agent.agent import NodeAgent, NodeNameTaken
from corral_node_agent.diff import StartContainer
from corral_node_agent.docker_runtime import DockerRuntime
from corral_node_agent.executor import Executor, container_name
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.runtime import (
    ContainerSpec,
    EngineUnavailable,
    ObservedContainer,
    RuntimeFailure,
)
from corral_node_agent.safety import Displacement, Mode
from corral_node_agent.status_book import StatusBook
from tests.unit.agent_helpers import CLUSTER_ID, NODE, cluster_bucket, fast_settings, placement
from tests.unit.test_agent_loop import IMAGE, RecordedEvents, World, eventually, state_of


class FlakyBucket(MemoryBucket):
    """A MemoryBucket whose writes, deletes or watches fail on demand."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.failing_writes = False
        self.failing_gets = False
        self.stalled = False  # watches deliver their replay, then nothing
        self.failing_deletes = 0
        self.failing_watches = 0
        self.watches = 0  # watches begun, and snapshots read (a read of what is current)
        self.floors: list[int] = []  # the floor of each snapshot and follow asked for
        self.resets = 0  # watches say this many times that they went on from a new consumer
        self.live = 0  # watches running now

    def _fail(self) -> None:
        if self.failing_writes:
            raise ConnectionError("nats: connection closed")

    async def get(self, key: str) -> Entry | None:
        if self.failing_gets:
            raise TimeoutError("nats: timeout")
        return await super().get(key)

    async def create(self, key: str, value: bytes) -> int:
        self._fail()
        return await super().create(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        self._fail()
        return await super().update(key, value, revision)

    async def delete(self, key: str, revision: int | None = None) -> int:
        if self.failing_deletes:
            self.failing_deletes -= 1
            raise TimeoutError("nats: timeout")
        return await super().delete(key, revision)

    async def snapshot(self, prefix: str = ">", *, floor: int = 0) -> Snapshot | None:
        self.watches += 1
        self.floors.append(floor)
        if self.failing_watches:
            self.failing_watches -= 1
            raise TimeoutError("nats: timeout")
        return await super().snapshot(prefix, floor=floor)

    async def follow(
        self, prefix: str, wakeups: Wakeups, *, floor: int = 0
    ) -> AsyncIterator[Entry | None]:
        self.floors.append(floor)
        async for item in super().follow(prefix, wakeups, floor=floor):
            yield item

    async def watch(self, prefix: str = ">") -> AsyncIterator[Entry | None]:
        self.watches += 1
        if self.failing_watches:
            self.failing_watches -= 1
            raise TimeoutError("nats: timeout")
        self.live += 1
        try:
            async for item in self._replay(prefix):
                yield item
        finally:
            self.live -= 1

    async def _replay(self, prefix: str) -> AsyncIterator[Entry | None]:
        replayed = False
        async for item in super().watch(prefix):
            if self.stalled and replayed:
                await anyio.sleep_forever()  # connected, writes succeed, nothing arrives
            if replayed and item is not None and self.resets:
                self.resets -= 1
                yield None  # a new consumer from here (Bucket.watch)
            replayed = replayed or item is None
            yield item


def flaky_cluster() -> FlakyBucket:
    bucket = FlakyBucket("cluster")
    bucket.items.update(cluster_bucket().items)
    bucket.revision = 1
    return bucket


@dataclass
class Rig:
    runtime: HollowRuntime = field(default_factory=lambda: HollowRuntime(images={IMAGE}))
    placements: FlakyBucket = field(default_factory=lambda: FlakyBucket("placements"))
    nodes: FlakyBucket = field(default_factory=lambda: FlakyBucket("nodes"))
    statuses: FlakyBucket = field(default_factory=lambda: FlakyBucket("statuses"))
    events: RecordedEvents = field(default_factory=RecordedEvents)
    health: dict[str, bool] = field(default_factory=dict)

    cluster: FlakyBucket = field(default_factory=flaky_cluster)
    state_dir: Path | None = None

    def world(self) -> World:
        return World(
            self.runtime,
            self.placements,
            self.nodes,
            self.statuses,
            self.events,
            self.health,
            self.cluster,
        )

    def agent(self, **settings: object) -> NodeAgent:
        return NodeAgent(
            fast_settings(state_dir=self.state_dir, **settings),
            self.runtime,
            placements=self.placements,
            nodes=self.nodes,
            statuses=self.statuses,
            cluster=self.cluster,
            events=self.events,
            health=self.health,
        )


@asynccontextmanager
async def running(agent: NodeAgent) -> AsyncIterator[NodeAgent]:
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run)
        yield agent
        tg.cancel_scope.cancel()


async def passes_after(agent: NodeAgent, count: int = 2) -> None:
    """Wait until `count` more passes completed: the first may have begun before the
    caller's event, every later one began after it."""
    for _ in range(count):
        target = agent.passes + 1
        agent.poke()
        await eventually(lambda target=target: agent.passes >= target)  # type: ignore[misc]


def key(replica: str) -> str:
    return names.placement_key(NODE, "default", replica)


# 1. Unreadable placements.


async def test_an_unreadable_placement_leaves_its_container_alone() -> None:
    rig = Rig()
    world = rig.world()
    async with running(rig.agent()) as agent:
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        (container,) = rig.runtime.running(NODE)
        status_before = rig.statuses.items[key("web-a1")]

        await rig.placements.put(key("web-a1"), b'{"replica": 7, "from": "corral 9"}')
        await passes_after(agent)
        assert key("web-a1") in agent.placements.unreadable
        assert [c.id for c in rig.runtime.running(NODE)] == [container.id]  # not removed
        assert rig.statuses.items[key("web-a1")] == status_before  # no status written

        rig.runtime.crash(container.id)
        await passes_after(agent)
        assert rig.runtime.starts == 1 and rig.runtime.removes == 0  # not restarted either
        assert rig.statuses.items[key("web-a1")] == status_before

        await world.place(placement("web-a1"))  # readable again: acted on again
        await eventually(lambda: rig.runtime.starts == 2)
        await eventually(lambda: getattr(world.status("web-a1"), "restarts", 0) == 1)


# 2. Duplicate node names.


def other_agents_node(heartbeat_at: float) -> bytes:
    return encode(
        Node(
            name=NODE,
            capacity=NodeCapacity(cpu_millis=1000, memory_bytes=2**30),
            agent_id="someone-else",
            heartbeat_at=heartbeat_at,
        )
    )


def raised(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = raised(inner, kind)
            if found is not None:
                return found
    return None


async def keep_writing(bucket: MemoryBucket, value: bytes, key: str = NODE) -> None:
    """Another live agent: its record changes every 50 ms."""
    while True:
        await bucket.put(key, value)
        await anyio.sleep(0.05)


async def test_a_live_agent_of_the_same_name_makes_the_second_refuse() -> None:
    rig = Rig()
    await rig.placements.put(key("web-a1"), encode(placement("web-a1")))
    # Its heartbeat_at lies (another host's clock, an hour behind): only changes count.
    record = other_agents_node(time.time() - 3600)
    with pytest.raises(BaseException) as caught:
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_writing, rig.nodes, record)
            async with running(rig.agent()):
                pass
    error = raised(caught.value, NodeNameTaken)
    assert error is not None, caught.value
    assert repr(NODE) in str(error) and "another node agent" in str(error)
    assert "--node-name" in str(error)
    assert rig.runtime.creates == 0 and rig.runtime.removes == 0  # it touched nothing


async def test_a_silent_agent_of_the_same_name_is_taken_over() -> None:
    rig = Rig()
    # Its heartbeat_at lies (another host's clock, an hour ahead): only changes count.
    await rig.nodes.put(NODE, other_agents_node(time.time() + 3600))
    async with running(rig.agent()) as agent:
        world = rig.world()
        await eventually(
            lambda: (
                (world.node() or Node(name="", capacity=NodeCapacity())).agent_id == agent.agent_id
            )
        )
        assert rig.health["node_name"] is True


async def test_another_live_agent_taking_the_record_over_stops_this_one() -> None:
    rig = Rig()
    world = rig.world()
    async with running(rig.agent()) as agent:
        await eventually(lambda: world.node() is not None)
        assert world.node().agent_id == agent.agent_id  # type: ignore[union-attr]
        async with anyio.create_task_group() as tg:  # a second agent writes, and lives
            tg.start_soon(keep_writing, rig.nodes, other_agents_node(time.time()))
            await eventually(lambda: rig.health.get("node_name") is False)
            await eventually(lambda: agent.mode == Mode.HANDED_OVER)
            tg.cancel_scope.cancel()
        await world.place(placement("web-a1"))
        await agent.reconcile_once()
        await agent.record.write()
        assert rig.runtime.creates == 0  # no longer acting on placements
        assert world.node().agent_id == "someone-else"  # type: ignore[union-attr] # not overwritten


async def test_a_record_naming_another_agent_that_never_changes_is_taken_back() -> None:
    # A store restored from a backup holds an older agent's id: nobody writes it.
    rig = Rig()
    world = rig.world()
    async with running(rig.agent()) as agent:
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        await rig.nodes.put(NODE, other_agents_node(time.time()))
        await eventually(lambda: world.node().agent_id == agent.agent_id)  # type: ignore[union-attr]
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        assert agent.displacement == Displacement.NONE
        assert rig.runtime.removes == 0 and len(rig.runtime.running(NODE)) == 1


async def test_a_clean_stop_lets_a_successor_start_at_once() -> None:
    rig = Rig()
    async with running(rig.agent()):
        await eventually(lambda: rig.world().node() is not None)
    async with running(rig.agent()) as successor:
        assert successor.health["node_name"] is True


# 3. Startup hiccups.


async def test_startup_survives_nats_timeouts_and_a_failing_first_pass() -> None:
    rig = Rig()
    rig.statuses.failing_watches = 2  # statuses.load times out twice
    rig.placements.failing_watches = 1
    await rig.placements.put(key("web-a1"), encode(placement("web-a1")))

    class StumblingRuntime(HollowRuntime):
        stumbles = 1

        async def list_containers(self) -> list[ObservedContainer]:
            if self.stumbles:
                self.stumbles -= 1
                raise ConnectionResetError("engine hiccup")
            return await super().list_containers()

    rig.runtime = StumblingRuntime(images={IMAGE})
    world = rig.world()
    with anyio.fail_after(10):
        async with running(rig.agent()):
            await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
            # each failed start cancelled the placements watch it had begun: one runs
            await eventually(lambda: rig.placements.live == 1)
    assert rig.statuses.watches == 3


async def test_docker_runtime_turns_engine_trouble_into_its_own_errors() -> None:
    gone = DockerRuntime("unix:///nonexistent/docker.sock")
    try:
        for call in (gone.ping(), gone.info(), gone.list_containers(), gone.has_image("x")):
            with pytest.raises(EngineUnavailable):
                await call
        with pytest.raises(RuntimeFailure):
            await gone.create_container(ContainerSpec(name="corral-x", image="x"))
    finally:
        await gone.close()

    with socket.socket() as listener:  # an engine that accepts and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        silent = DockerRuntime(f"tcp://127.0.0.1:{port}", call_seconds=0.2)
        try:
            with anyio.fail_after(5):
                with pytest.raises(EngineUnavailable, match="no answer"):
                    await silent.ping()
                with pytest.raises(EngineUnavailable):
                    await silent.list_containers()
        finally:
            await silent.close()


# 4. Status deletes.


async def test_a_status_is_forgotten_only_after_its_delete_succeeded() -> None:
    bucket = FlakyBucket("statuses")
    book = StatusBook(bucket, NODE)
    world_status = World(
        HollowRuntime(), MemoryBucket(), MemoryBucket(), bucket, RecordedEvents(), {}
    )
    from corral_node_agent.backoff import ReplicaTrack
    from corral_node_agent.replica_status import replica_status

    await book.write(replica_status(placement("web-a1"), None, ReplicaTrack(), 0.0))
    bucket.failing_deletes = 1
    with pytest.raises(TimeoutError):
        await book.delete("web-a1")
    assert book.replicas() == ["web-a1"]  # still known: the next pass retries
    await book.delete("web-a1")
    assert book.replicas() == [] and world_status.status("web-a1") is None


# 5. Container names.


async def test_a_container_of_another_cluster_holding_the_name_is_never_removed() -> None:
    rig = Rig()
    world = rig.world()
    name = container_name(CLUSTER_ID, NODE, "web-a1")
    holder = await rig.runtime.create_container(
        ContainerSpec(
            name=name,
            image=IMAGE,
            labels={
                names.LABEL_MANAGED: "true",
                names.LABEL_CLUSTER: "0123456789abcdef",
                names.LABEL_NODE: NODE,
            },
        )
    )
    async with running(rig.agent()):
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.FAILED)
        status = world.status("web-a1")
        assert status is not None and "held by container" in status.message
        assert "cluster 0123456789abcdef" in status.message
    assert holder in rig.runtime.containers


async def test_a_container_not_of_corral_holding_the_name_is_never_removed() -> None:
    rig = Rig()
    world = rig.world()
    foreign = await rig.runtime.create_container(
        ContainerSpec(name=container_name(CLUSTER_ID, NODE, "web-a1"), image=IMAGE)
    )
    async with running(rig.agent()):
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.FAILED)
        status = world.status("web-a1")
        assert status is not None and "not corral's" in status.message
    assert foreign in rig.runtime.containers


def test_container_names_of_different_nodes_and_replicas_never_collide() -> None:
    # With '-' as the only separator, node "a-b" + replica "c-d" and node "a" +
    # replica "b-c-d" were both corral-a-b-c-d.
    assert container_name(CLUSTER_ID, "a-b", "c-d") != container_name(CLUSTER_ID, "a", "b-c-d")
    assert container_name(CLUSTER_ID, "a", "b") != container_name("0123456789abcdef", "a", "b")


# 6. Cut off from NATS.


async def test_cut_off_it_starts_nothing_then_stops_its_replicas_at_f_and_resumes() -> None:
    rig = Rig()
    world = rig.world()
    async with running(rig.agent()) as agent:
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        assert agent.mode == Mode.ACTIVE and agent.watches == 1
        (first,) = rig.runtime.running(NODE)

        rig.nodes.failing_writes = True  # heartbeats fail: cut off from NATS
        await eventually(lambda: agent.mode == Mode.ISOLATED)
        starts = rig.runtime.starts
        rig.runtime.crash(first.id)
        await world.place(placement("web-b2"))
        await passes_after(agent)
        assert rig.runtime.starts == starts  # no restart while isolated
        assert rig.runtime.creates == 1  # and no create

        # Past F: the agent removes its replicas itself (the scheduler has replaced them).
        await eventually(lambda: agent.mode == Mode.STOPPING)
        await eventually(lambda: not rig.runtime.containers)

        rig.nodes.failing_writes = False  # back
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        assert agent.watches == 2  # cut off past F: a new watch delivered a new snapshot first
        await eventually(lambda: len(rig.runtime.running(NODE)) == 2)


async def test_a_stalled_placements_watch_is_noticed_by_its_echo_and_read_afresh() -> None:
    rig = Rig()
    world = rig.world()
    async with running(rig.agent()) as agent:
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        rig.placements.stalled = True  # heartbeats and echoes are written; none come back
        await world.place(placement("web-b2"))
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)
        assert agent.watches >= 2  # a new watch's replay brought web-b2


async def test_a_create_decided_before_a_cut_off_never_happens_after_it() -> None:
    rig = Rig()
    world = rig.world()
    rig.runtime.pull_seconds = 1.0  # the create waits on a pull, decided while Active
    async with running(rig.agent()) as agent:
        await world.place(placement("web-a1", "slow/image:1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.PULLING)
        rig.nodes.failing_writes = True
        await eventually(lambda: agent.mode == Mode.ISOLATED)
        await eventually(lambda: "slow/image:1" in rig.runtime.images)
        await passes_after(agent)
        assert rig.runtime.creates == 0


# 7. Pulls.


async def test_a_long_pull_does_not_block_other_container_operations() -> None:
    rig = Rig()
    world = rig.world()
    rig.runtime.pull_seconds = 3600  # a pull that never ends during the test
    async with running(rig.agent(max_parallel=1)):
        await world.place(placement("slow-a1", "huge/image:1"))
        await eventually(lambda: state_of(world, "slow-a1") == ReplicaState.PULLING)
        await world.place(placement("web-b2"))
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)
        await world.unplace("web-b2")
        await eventually(lambda: not rig.runtime.running(NODE))


# 8. Restart counts.


async def test_a_failed_start_is_not_counted_as_a_restart() -> None:
    class RefusingRuntime(HollowRuntime):
        refuse = True

        async def start_container(self, container_id: str) -> None:
            if self.refuse:
                raise RuntimeFailure("start: cannot start")
            await super().start_container(container_id)

    runtime = RefusingRuntime(images={IMAGE})
    tracks: dict[str, object] = {}
    executor = Executor(runtime, RecordedEvents(), tracks)  # type: ignore[arg-type]
    p = placement("web-a1")
    from corral_node_agent.executor import container_spec

    container_id = await runtime.create_container(container_spec(p, CLUSTER_ID))
    restart = StartContainer("web-a1", p, container_id, restart=True)
    assert await executor.execute(restart) is False
    assert executor._track("web-a1").restarts == 0
    runtime.refuse = False
    assert await executor.execute(restart) is True
    assert executor._track("web-a1").restarts == 1
