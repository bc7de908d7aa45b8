"""The whole agent against the hollow runtime and in-memory buckets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.state import Node, Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import MemoryBucket
from corral_node_agent.agent import NodeAgent
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.runtime import StartNetworkGone
from tests.unit.agent_helpers import NODE, cluster_bucket, fast_settings, placement

IMAGE = "corral-test/busybox:1"


@dataclass
class RecordedEvents:
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    async def emit(
        self,
        object_kind: str,
        object_name: str,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        namespace: str | None = None,
    ) -> None:
        self.seen.append((object_name, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.seen]


@dataclass
class World:
    runtime: HollowRuntime
    placements: MemoryBucket
    nodes: MemoryBucket
    statuses: MemoryBucket
    events: RecordedEvents
    health: dict[str, bool]
    cluster: MemoryBucket = field(default_factory=cluster_bucket)

    def agent(self, **settings: object) -> NodeAgent:
        return NodeAgent(
            fast_settings(**settings),
            self.runtime,
            placements=self.placements,
            nodes=self.nodes,
            statuses=self.statuses,
            cluster=self.cluster,
            events=self.events,
            health=self.health,
        )

    async def place(self, p: Placement) -> None:
        await self.placements.put(p.key, encode(p))

    async def unplace(self, replica: str) -> None:
        await self.placements.delete(names.placement_key(NODE, "default", replica))

    def status(self, replica: str, node: str = NODE) -> ReplicaStatus | None:
        entry = self.statuses.items.get(names.placement_key(node, "default", replica))
        return None if entry is None or entry.value is None else decode(entry.value, ReplicaStatus)

    def node(self) -> Node | None:
        entry = self.nodes.items.get(NODE)
        return None if entry is None or entry.value is None else decode(entry.value, Node)


def a_world() -> World:
    """Empty buckets, an engine that has IMAGE, the default cluster's identity."""
    return World(
        runtime=HollowRuntime(images={IMAGE}),
        placements=MemoryBucket("placements"),
        nodes=MemoryBucket("nodes"),
        statuses=MemoryBucket("statuses"),
        events=RecordedEvents(),
        health={},
    )


@pytest.fixture
def world() -> World:
    return a_world()


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await anyio.sleep(0.01)


@asynccontextmanager
async def agent_running(world: World) -> AsyncIterator[NodeAgent]:
    """An agent in this task (fixtures set up and tear down in different tasks)."""
    async with anyio.create_task_group() as tg:
        agent = world.agent()
        await tg.start(agent.run)
        yield agent
        tg.cancel_scope.cancel()


def state_of(world: World, replica: str, node: str = NODE) -> ReplicaState | None:
    status = world.status(replica, node)
    return None if status is None else status.state


async def test_registers_and_heartbeats(world: World) -> None:
    async with agent_running(world):
        await eventually(lambda: world.node() is not None and world.node().ready)  # type: ignore[union-attr]
        node = world.node()
        assert node is not None
        assert node.runtime == "hollow"
        assert node.capacity.cpu_millis == 4000
        first = node.heartbeat_at
        await eventually(lambda: world.node().heartbeat_at > first)  # type: ignore[union-attr]
        assert world.health["engine"] is True


async def test_runs_a_placement_and_reports_running(world: World) -> None:
    async with agent_running(world):
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        (container,) = world.runtime.running(NODE)
        assert container.spec.name == "corral_node-a_web-a1_c1c1c1c1c1c1c1c1"
        assert container.spec.labels[names.LABEL_REPLICA] == "web-a1"
        assert container.spec.labels[names.LABEL_NODE] == NODE
        status = world.status("web-a1")
        assert status is not None and status.container_id == container.id
        assert "Started" in world.events.reasons()


async def test_unplaced_replica_goes_with_its_status(world: World) -> None:
    async with agent_running(world):
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        await world.unplace("web-a1")
        await eventually(lambda: not world.runtime.containers and world.status("web-a1") is None)


async def test_a_crash_restarts_at_once_then_backs_off(world: World) -> None:
    async with agent_running(world):
        await world.place(placement("web-a1"))
        await eventually(lambda: len(world.runtime.running(NODE)) == 1)
        (container,) = world.runtime.running(NODE)
        world.runtime.crash(container.id, exit_code=7)
        await eventually(lambda: world.runtime.starts == 2)
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        world.runtime.crash(container.id, exit_code=7)
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.CRASH_LOOP)
        status = world.status("web-a1")
        assert status is not None and status.exit_code == 7 and status.restarts == 1
        await eventually(lambda: world.runtime.starts == 3, within=3)  # after one second
        await eventually(lambda: (world.status("web-a1") or status).restarts == 2)


async def test_a_container_whose_network_is_gone_is_made_anew(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its network removed while it was stopped (Docker lets that happen), a container
    can never start again: the agent removes it and makes a new one."""
    async with agent_running(world):
        await world.place(placement("web-a1"))
        await eventually(lambda: len(world.runtime.running(NODE)) == 1)
        (container,) = world.runtime.running(NODE)
        start = world.runtime.start_container

        async def start_container(container_id: str) -> None:
            if container_id == container.id:
                raise StartNetworkGone("start: network corral_default_x not found")
            await start(container_id)

        monkeypatch.setattr(world.runtime, "start_container", start_container)
        world.runtime.crash(container.id, exit_code=1)
        await eventually(lambda: container.id not in world.runtime.containers)
        await eventually(lambda: len(world.runtime.running(NODE)) == 1)
        assert world.runtime.running(NODE)[0].id != container.id
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        assert "NetworkNotReady" in world.events.reasons()


async def test_a_container_removed_behind_its_back_is_recreated(world: World) -> None:
    async with agent_running(world):
        await world.place(placement("web-a1"))
        await eventually(lambda: len(world.runtime.running(NODE)) == 1)
        (container,) = world.runtime.running(NODE)
        world.runtime.remove_behind_back(container.id)
        await eventually(lambda: len(world.runtime.running(NODE)) == 1)
        assert world.runtime.running(NODE)[0].id != container.id
        assert world.runtime.creates == 2


async def test_a_missing_image_is_pulled_once(world: World) -> None:
    async with agent_running(world):
        world.runtime.pull_seconds = 0.2
        for index in range(4):
            await world.place(placement(f"web-{index}", "example/app:2"))
        await eventually(lambda: state_of(world, "web-0") == ReplicaState.PULLING)
        await eventually(lambda: len(world.runtime.running(NODE)) == 4)
        assert world.runtime.pulls == ["example/app:2"]
        assert world.events.reasons().count("Pulled") == 4 or "Pulled" in world.events.reasons()


async def test_an_unpullable_image_backs_off_and_the_agent_lives(world: World) -> None:
    async with agent_running(world):
        world.runtime.unpullable_images.add("nope/missing:1")
        await world.place(placement("web-a1", "nope/missing:1"))
        await world.place(placement("web-b2"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.IMAGE_PULL_BACKOFF)
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)
        status = world.status("web-a1")
        assert status is not None and "repository does not exist" in status.message
        await eventually(lambda: len(world.runtime.pulls) >= 2, within=3)  # retried
        assert "Failed" in world.events.reasons()


async def test_a_create_error_is_failed_and_retried(world: World) -> None:
    async with agent_running(world):
        world.runtime.images.add("bad/config:1")
        world.runtime.failing_images["bad/config:1"] = "invalid mount config"
        await world.place(placement("web-a1", "bad/config:1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.FAILED)
        status = world.status("web-a1")
        assert status is not None and "invalid mount config" in status.message
        del world.runtime.failing_images["bad/config:1"]
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING, within=4)


async def test_a_restart_adopts_and_fences(world: World) -> None:
    await world.place(placement("web-a1"))
    await world.place(placement("web-b2"))
    async with anyio.create_task_group() as tg:
        agent = world.agent()
        await tg.start(agent.run)
        await eventually(lambda: len(world.runtime.running(NODE)) == 2)
        tg.cancel_scope.cancel()
    before = {c.spec.labels[names.LABEL_REPLICA]: c.id for c in world.runtime.running(NODE)}
    assert len(before) == 2  # stopping the agent leaves its containers running

    # While it was down: web-b2 exited and moved away, web-c3 arrived. (A running
    # replica going away stops gracefully on its own task: test_agent_graceful_stops.)
    world.runtime.crash(before["web-b2"], 0)
    await world.unplace("web-b2")
    await world.place(placement("web-c3"))
    world.runtime.operations.clear()
    async with anyio.create_task_group() as tg:
        agent = world.agent()
        await tg.start(agent.run)
        await eventually(lambda: state_of(world, "web-c3") == ReplicaState.RUNNING)
        # Fencing: what is no longer placed here went before anything was created.
        assert world.runtime.operations == ["remove web-b2", "create web-c3"]
        after = {c.spec.labels[names.LABEL_REPLICA]: c.id for c in world.runtime.running(NODE)}
        assert after["web-a1"] == before["web-a1"]  # adopted, never stopped
        assert set(after) == {"web-a1", "web-c3"}
        await eventually(lambda: world.status("web-b2") is None)
        tg.cancel_scope.cancel()


async def test_an_engine_outage_makes_the_node_not_ready(world: World) -> None:
    async with agent_running(world):
        await eventually(lambda: bool(world.node() and world.node().ready))  # type: ignore[union-attr]
        world.runtime.set_available(False)
        await eventually(lambda: world.node() is not None and not world.node().ready)  # type: ignore[union-attr]
        node = world.node()
        assert node is not None and "unreachable" in node.message
        assert world.health["engine"] is False
        await world.place(placement("web-a1"))
        world.runtime.set_available(True)
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        await eventually(lambda: bool(world.node() and world.node().ready))  # type: ignore[union-attr]
