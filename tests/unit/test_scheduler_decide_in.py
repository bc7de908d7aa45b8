"""The scheduler's decision in the event loop or in a worker thread (control_loop.DecideIn):
the same placements either way, requests answered while a long decision runs in the
thread, and a name taken meanwhile decided again."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
    ResourceList,
    Resources,
)
from corral.contract.state import Node, NodeCapacity, Placement
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.natsio.kv import write_record
from corral_scheduler import control_loop
from corral_scheduler.control_loop import ControlLoop, DecideIn
from corral_scheduler.decide import Plan
from corral_scheduler.deployment_api import DeploymentAPI
from tests.unit.test_scheduler_control_loop import Cluster, _value, running
from tests.waiting import eventually


def counting_suffixes(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = itertools.count()
    monkeypatch.setattr(control_loop, "random_suffix", lambda: f"{next(counter):05d}")


def deployment(name: str, replicas: int, cpu: str = "500m") -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, generation=1),
        spec=DeploymentSpec(
            replicas=replicas,
            template=ContainerTemplate(
                image="app:1", resources=Resources(requests=ResourceList(cpu=cpu))
            ),
        ),
    )


async def join(cluster: Cluster, name: str, cpu_millis: int = 4000) -> None:
    node = Node(name=name, capacity=NodeCapacity(cpu_millis=cpu_millis, memory_bytes=2**33))
    entry = await cluster.nodes.get(name)
    await write_record(cluster.nodes, name, node, None if entry is None else entry.revision)


async def history(mode: DecideIn, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What the loop decides in `mode` over a scenario: placing several Deployments on
    nodes of unequal room (some pending), scaling, a node lost."""
    monkeypatch.setattr(control_loop, "DECIDE_IN", mode)
    counting_suffixes(monkeypatch)
    seen: list[object] = []
    async with running() as cluster:
        assert cluster.loop.decide_in is mode
        for name, cpu in (("a", 4000), ("b", 2000), ("c", 1000)):
            await join(cluster, name, cpu)
        await cluster.tick(1, beating=("a", "b", "c"))
        for index, replicas in enumerate((10, 6, 12)):
            spec = deployment(f"app-{index}", replicas)
            await cluster.buckets[names.DEPLOYMENTS_BUCKET].put(spec.key, encode(spec))
        await eventually(lambda: _value(len(cluster.loop.deployments.items)), lambda n: n == 3)
        await cluster.loop.drain()

        def state() -> list[object]:
            placed = sorted((key, p.node) for key, (p, _) in cluster.loop.placements.items.items())
            statuses = sorted(
                (key, s.placed, s.pending, s.pending_reason)
                for key, (s, _) in cluster.loop.statuses.items.items()
            )
            return [placed, statuses]

        seen.append(state())
        spec = deployment("app-1", 1)
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].put(spec.key, encode(spec))
        await eventually(
            lambda: _value(cluster.loop.deployments.get(spec.key)), lambda d: d == spec
        )
        await cluster.loop.drain()
        seen.append(state())
        await cluster.tick(NODE_LOST_SECONDS + 1, beating=("a", "b"))  # c falls silent
        seen.append(state())
        assert cluster.loop.redecided == 0
    return seen


async def test_a_decision_in_the_thread_places_exactly_as_one_in_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_loop = await history(DecideIn.LOOP, monkeypatch)
    in_thread = await history(DecideIn.THREAD, monkeypatch)
    assert in_thread == in_loop
    placed, statuses = in_loop[0]  # type: ignore[misc]
    assert len(placed) > 0 and any(pending for _, _, pending, _ in statuses)
    assert not any(node == "c" for _, node in in_loop[-1][0])  # type: ignore[index]


async def test_a_request_is_answered_while_a_long_decision_runs_in_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control_loop, "DECIDE_IN", DecideIn.THREAD)
    deciding = threading.Event()  # the decision has started (in its thread)
    finish = threading.Event()  # the test lets it end
    decided_in: list[str] = []
    inner = control_loop.schedule_deployment

    def long_decision(*args: Any, **kwargs: Any) -> Plan:
        decided_in.append(threading.current_thread().name)
        deciding.set()
        assert finish.wait(10), "the test never let the decision end"
        return inner(*args, **kwargs)

    monkeypatch.setattr(control_loop, "schedule_deployment", long_decision)
    async with running() as cluster:
        loop = cluster.loop
        await join(cluster, "a")
        await cluster.tick(1, beating=("a",))
        spec = deployment("web", 2)
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].put(spec.key, encode(spec))
        await eventually(lambda: _value(loop.deployments.get(spec.key)), lambda d: d == spec)
        api = DeploymentAPI(cluster.buckets[names.DEPLOYMENTS_BUCKET])
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.reconcile, spec.key)
            await anyio.to_thread.run_sync(deciding.wait)
            # The decision runs and has not returned: a request is answered meanwhile,
            # by the same event loop.
            reply = await api.apply(encode(deployment("other", 1)))
            assert reply.ok
            assert not finish.is_set() and not loop.placements.items
            finish.set()
        assert decided_in and decided_in[0] != threading.current_thread().name
        assert sorted(p.node for p in loop.placements.values()) == ["a", "a"]


async def test_a_name_taken_while_the_thread_decided_is_decided_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control_loop, "DECIDE_IN", DecideIn.THREAD)
    counting_suffixes(monkeypatch)
    inner = control_loop.schedule_deployment
    loops: list[ControlLoop] = []
    calls: list[str] = []

    def meanwhile(*args: Any, **kwargs: Any) -> Plan:
        plan = inner(*args, **kwargs)
        calls.append(threading.current_thread().name)
        if len(calls) == 1:  # another writer takes the first name while this one decided
            loops[0].taken_names[plan.place[0].replica] = 1
        return plan

    monkeypatch.setattr(control_loop, "schedule_deployment", meanwhile)
    async with running() as cluster:
        loops.append(cluster.loop)
        await join(cluster, "a")
        await cluster.tick(1, beating=("a",))
        spec = deployment("web", 1)
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].put(spec.key, encode(spec))
        await eventually(
            lambda: _value(cluster.loop.deployments.get(spec.key)), lambda d: d == spec
        )
        await cluster.loop.reconcile(spec.key)
        assert cluster.loop.redecided == 1
        assert calls[1] == threading.current_thread().name  # decided again in the loop
        assert [p.replica for p in cluster.loop.placements.values()] == ["web-00001"]


def test_the_loop_replaces_usage_records_so_a_shallow_copy_is_a_snapshot() -> None:
    loop = Cluster().loop
    placement = Placement(
        replica="web-1",
        deployment="web",
        node="a",
        template=ContainerTemplate(image="app:1"),
        template_hash="h",
        generation=1,
        cpu_millis=100,
    )
    loop._count(None, placement)
    copy = dict(loop.usage)
    loop._count(None, placement)
    assert copy["a"].cpu_millis == 100 and loop.usage["a"].cpu_millis == 200
    loop._count(placement, None)
    loop._count(placement, None)
    assert loop.usage == {} and copy["a"].pods == 1
