"""Agents sharing a process's cores take turns at their passes (pass_gate.PassGate)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import TaskGroup

from corral.contract.codec import encode
from corral.contract.state import ReplicaState
from corral_node_agent.agent import NodeAgent
from corral_node_agent.pass_gate import PassGate
from corral_node_agent.safety import Mode
from tests.unit.agent_helpers import placement
from tests.unit.test_agent_loop import World, eventually, state_of, world  # noqa: F401


async def test_a_gate_lets_its_parallel_through_in_the_order_they_came() -> None:
    gate = PassGate(2)
    inside = 0
    most = 0
    order: list[int] = []
    release = anyio.Event()

    async def one_pass(number: int) -> None:
        nonlocal inside, most
        async with gate:
            order.append(number)
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1

    async with anyio.create_task_group() as tg:
        for number in range(6):
            tg.start_soon(one_pass, number)
            await anyio.wait_all_tasks_blocked()  # each asks in turn
        assert (inside, gate.waiting, order) == (2, 4, [0, 1])
        release.set()
    assert order == list(range(6))
    assert (most, gate.waiting, gate.passes) == (2, 0, 6)
    assert gate.waited_seconds > 0


async def test_a_free_place_is_taken_without_a_turn_of_the_loop() -> None:
    """A pass that finds a place free does not wait, not even a turn of the event loop
    (whose lateness would then be counted as a wait for its turn)."""
    gate = PassGate(1)
    with anyio.CancelScope() as scope:
        scope.cancel()  # any wait at all would end here
        async with gate:
            assert gate.borrowed == 1
    assert gate.passes == 1 and gate.borrowed == 0


def test_a_gate_lets_at_least_one_pass_through() -> None:
    with pytest.raises(ValueError, match="at least 1 pass"):
        PassGate(0)


def counting_passes(agent: NodeAgent, counts: dict[str, int]) -> None:
    """Count `agent`'s passes in progress at once, across agents (`counts`)."""
    original: Callable[[], Awaitable[None]] = agent._reconcile

    async def counted() -> None:
        counts["now"] += 1
        counts["most"] = max(counts["most"], counts["now"])
        try:
            await anyio.sleep(0.005)  # a pass that waits on NATS lets others run
            await original()
        finally:
            counts["now"] -= 1

    agent._reconcile = counted  # type: ignore[method-assign]


@pytest.mark.parametrize("parallel", [1, 0], ids=["gated", "ungated"])
async def test_agents_sharing_a_gate_pass_one_at_a_time(
    world: World,  # noqa: F811
    parallel: int,
) -> None:
    gate = PassGate(parallel) if parallel else None
    counts = {"now": 0, "most": 0}
    agents = []
    for node in ("node-a", "node-b", "node-c"):
        agent = world.agent(node_name=node)
        agent.pass_gate = gate
        counting_passes(agent, counts)
        agents.append(agent)
    async with anyio.create_task_group() as tg:
        for agent in agents:
            await tg.start(agent.run)
        for node in ("node-a", "node-b", "node-c"):
            for index in range(3):
                p = placement(f"{node}-r{index}", node=node)
                await world.placements.put(p.key, encode(p))
        replicas = [(n, f"{n}-r{i}") for n in ("node-a", "node-b", "node-c") for i in range(3)]
        await eventually(
            lambda: all(state_of(world, r, n) == ReplicaState.RUNNING for n, r in replicas)
        )
        tg.cancel_scope.cancel()
    if gate is None:
        assert counts["most"] > 1  # the agents' passes do overlap without a gate
    else:
        assert counts["most"] == 1
        assert gate.passes >= 3 and gate.waiting == 0


async def test_what_asks_for_a_pass_while_it_waits_is_seen_by_that_pass(
    world: World,  # noqa: F811
) -> None:
    """Pokes that come while an agent waits for its turn make one pass, not two."""
    async with a_settled_agent(world) as (agent, gate, tg):
        async with held(gate, tg):
            await anyio.wait_all_tasks_blocked()
            passes = agent.passes
            for _ in range(5):
                agent.poke()
                await anyio.wait_all_tasks_blocked()
            assert gate.waiting == 1 and agent.passes == passes  # it waits its turn
        await eventually(lambda: agent.passes > passes)
        await anyio.wait_all_tasks_blocked()
        assert agent.passes == passes + 1 and gate.waiting == 0


async def test_a_pass_cancelled_while_it_waits_leaves_no_place_taken() -> None:
    gate = PassGate(1)
    await gate.__aenter__()  # the one place, held by this task

    async def waits() -> None:
        async with gate:
            raise AssertionError("it never gets the place")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waits)
        await anyio.wait_all_tasks_blocked()
        assert (gate.waiting, gate.borrowed) == (1, 1)
        tg.cancel_scope.cancel()  # the agent stopped while its pass waited
    assert (gate.waiting, gate.borrowed) == (0, 1)
    await gate.__aexit__()
    assert gate.borrowed == 0
    async with gate:  # the place is free again
        assert gate.borrowed == 1


async def test_a_pass_that_removes_every_replica_never_waits_for_a_turn(
    world: World,  # noqa: F811
) -> None:
    """Stopping (cut off past F) removes the node's replicas at once: the time budget
    counts on it, whatever other nodes' passes queue at the gate."""
    gate = PassGate(1)
    agent = world.agent()
    agent.pass_gate = gate
    async with anyio.create_task_group() as tg, held(gate, tg):
        agent.mode = Mode.STOPPING
        with anyio.fail_after(2):
            async with agent._pass_turn():
                pass
        agent.mode = Mode.ACTIVE
        with anyio.move_on_after(0.2) as waited:  # an ordinary pass waits its turn
            async with agent._pass_turn():
                raise AssertionError("not while the place is held")
        assert waited.cancelled_caught


@asynccontextmanager
async def held(gate: PassGate, tg: TaskGroup) -> AsyncIterator[None]:
    """The gate's places all held, by another task (another node's passes)."""
    taken = anyio.Event()
    let_go = anyio.Event()

    async def hold() -> None:
        async with gate:
            taken.set()
            await let_go.wait()

    tg.start_soon(hold)
    await taken.wait()
    try:
        yield
    finally:
        let_go.set()


async def test_a_pass_waiting_for_its_turn_goes_at_once_when_its_agent_starts_removing(
    world: World,  # noqa: F811
) -> None:
    async with a_settled_agent(world) as (agent, gate, tg):
        async with held(gate, tg):  # another node's pass holds the only place
            passes = await a_pass_waiting(agent, gate)
            await agent._enter(Mode.STOPPING)
            await eventually(lambda: agent.passes > passes)  # while the place is held
            assert gate.waiting == 0


async def test_a_wait_let_go_for_a_removing_mode_that_has_passed_waits_again(
    world: World,  # noqa: F811
) -> None:
    async with a_settled_agent(world) as (agent, gate, tg):
        async with held(gate, tg):
            passes = await a_pass_waiting(agent, gate)
            assert agent._gate_wait is not None
            # Let go as entering Stopping does, the mode back to Active before the
            # waiting pass runs again: it waits its turn again.
            agent._gate_wait.cancel()
            await anyio.wait_all_tasks_blocked()
            assert gate.waiting == 1 and agent.passes == passes
        await eventually(lambda: agent.passes > passes)


@asynccontextmanager
async def a_settled_agent(
    world: World,  # noqa: F811
) -> AsyncIterator[tuple[NodeAgent, PassGate, TaskGroup]]:
    """An agent at a gate of one place, running one replica, with no periodic pass
    meanwhile (its task group: for the tasks that hold the gate)."""
    gate = PassGate(1)
    agent = world.agent(resync_seconds=3600.0)
    agent.pass_gate = gate
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run)
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        yield agent, gate, tg
        tg.cancel_scope.cancel()


async def a_pass_waiting(agent: NodeAgent, gate: PassGate) -> int:
    """Poke `agent` while `gate` is held elsewhere: its pass waits for its turn. The
    passes it had made before."""
    await anyio.wait_all_tasks_blocked()
    passes = agent.passes
    agent.poke()
    await eventually(lambda: gate.waiting == 1)
    return passes
