"""Graceful stops (docs/rollouts.md, "Graceful stops") and restart times, on the hollow
runtime: a replica going away is Terminating, waits for its drain record (or the drain
timeout), then gets its template's stop signal and grace; a fenced agent gives at most
FENCED_STOP_GRACE_SECONDS and waits for no drain."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from corral.contract import names, time_budget
from corral.contract.codec import decode, encode
from corral.contract.network_state import ReplicaDrain
from corral.contract.specs import MAX_CRASH_LOOP_RESTARTS, ContainerTemplate, ExecAction, Probe
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import MemoryBucket
from corral_node_agent.agent import NodeAgent
from corral_node_agent.backoff import ReplicaTrack, after_restart
from corral_node_agent.docker_runtime import container_config
from corral_node_agent.executor import container_spec
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.local_record import LocalRecord, LocalRecordFile
from corral_node_agent.main import build_parser
from corral_node_agent.offline import stop_if_never_started
from corral_node_agent.runtime import ContainerSpec
from corral_node_agent.safety import Mode
from corral_node_agent.settings import settings_from_args
from tests.unit.agent_helpers import CLUSTER_ID, NODE, cluster_bucket, fast_settings
from tests.unit.test_agent_loop import RecordedEvents, eventually
from tests.unit.test_agent_safety import FlakyBucket

IMAGE = "corral-test/busybox:1"


def placed(replica: str, *, grace: int = 30, signal: str = "") -> Placement:
    template = ContainerTemplate(
        image=IMAGE,
        termination_grace_period_seconds=grace,
        stop_signal=signal,  # type: ignore[arg-type]
    )
    return Placement(
        replica=replica,
        deployment="web",
        node=NODE,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


@dataclass
class Rig:
    runtime: HollowRuntime = field(default_factory=lambda: HollowRuntime(images={IMAGE}))
    placements: MemoryBucket = field(default_factory=lambda: MemoryBucket("placements"))
    nodes: FlakyBucket = field(default_factory=lambda: FlakyBucket("nodes"))
    statuses: MemoryBucket = field(default_factory=lambda: MemoryBucket("statuses"))
    drains: MemoryBucket = field(default_factory=lambda: MemoryBucket("drains"))
    cluster: MemoryBucket = field(default_factory=cluster_bucket)
    events: RecordedEvents = field(default_factory=RecordedEvents)
    clock: Callable[[], float] = time.time

    def agent(self, **settings: object) -> NodeAgent:
        return NodeAgent(
            fast_settings(**settings),
            self.runtime,
            placements=self.placements,
            nodes=self.nodes,
            statuses=self.statuses,
            cluster=self.cluster,
            events=self.events,
            drains=self.drains,
            clock=self.clock,
        )

    async def place(self, p: Placement) -> None:
        await self.placements.put(p.key, encode(p))

    async def unplace(self, replica: str) -> None:
        await self.placements.delete(names.placement_key(NODE, "default", replica))

    async def drain(self, replica: str) -> None:
        record = ReplicaDrain(node=NODE, replica=replica, endpoints_revision=7, nodes=1)
        await self.drains.put(record.key, encode(record))

    def status(self, replica: str) -> ReplicaStatus | None:
        entry = self.statuses.items.get(names.placement_key(NODE, "default", replica))
        return None if entry is None or entry.value is None else decode(entry.value, ReplicaStatus)

    def state(self, replica: str) -> ReplicaState | None:
        status = self.status(replica)
        return None if status is None else status.state

    def running(self) -> set[str]:
        return {c.spec.labels[names.LABEL_REPLICA] for c in self.runtime.running(NODE)}

    def present(self) -> set[str]:
        return {c.spec.labels[names.LABEL_REPLICA] for c in self.runtime.containers.values()}


@asynccontextmanager
async def running_agent(rig: Rig, **settings: object) -> AsyncIterator[NodeAgent]:
    async with anyio.create_task_group() as tg:
        agent = rig.agent(**settings)
        await tg.start(agent.run)
        yield agent
        tg.cancel_scope.cancel()


async def passes(agent: NodeAgent, count: int) -> None:
    """Let `count` more reconcile passes run (each poked)."""
    target = agent.passes + count
    while agent.passes < target:
        agent.poke()
        await anyio.sleep(0.01)


async def test_terminating_is_written_then_no_stop_until_the_drain_then_its_signal_and_grace() -> (
    None
):
    rig = Rig()
    await rig.place(placed("web-a1", grace=7, signal="SIGINT"))
    async with running_agent(rig, drain_timeout=60.0) as agent:
        await eventually(lambda: rig.state("web-a1") == ReplicaState.RUNNING)
        made = next(iter(rig.runtime.containers.values())).spec
        assert (made.stop_signal, made.stop_timeout) == ("SIGINT", 7)  # in its config
        await rig.unplace("web-a1")
        await eventually(lambda: rig.state("web-a1") == ReplicaState.TERMINATING)
        status = rig.status("web-a1")
        assert status is not None and not status.is_ready  # netmgr drops it
        await passes(agent, 5)
        assert rig.runtime.stops == [] and rig.running() == {"web-a1"}  # no drain yet
        await rig.drain("web-a1")
        await eventually(lambda: rig.runtime.stops == [("web-a1", "SIGINT", 7.0)])
        await eventually(lambda: rig.present() == set() and rig.status("web-a1") is None)
        assert rig.runtime.operations[-2:] == ["stop web-a1", "remove web-a1"]
        assert "DrainTimeout" not in rig.events.reasons()
        assert rig.drains.items  # the record stays: netmgr deletes it
        assert agent.drains.watches == 1  # one watch per agent


async def test_the_drains_watch_ends_when_no_stop_waits_and_a_later_stop_makes_it_again() -> None:
    # Kept for good, it was a consumer per node on the server (954 at 2,001 hollow nodes).
    rig = Rig()
    await rig.place(placed("web-a1", grace=3))
    async with running_agent(rig, drain_timeout=60.0) as agent:
        agent.drains.idle_seconds = 0.3
        await eventually(lambda: rig.running() == {"web-a1"})
        await rig.unplace("web-a1")
        await eventually(lambda: rig.state("web-a1") == ReplicaState.TERMINATING)
        await eventually(lambda: agent.drains.watching)
        await rig.drain("web-a1")
        await eventually(lambda: rig.present() == set())
        await eventually(lambda: not agent.drains.watching)
        assert agent.drains.watches == 1
        await rig.place(placed("web-b2", grace=3))
        await eventually(lambda: rig.running() == {"web-b2"})
        await rig.unplace("web-b2")
        await eventually(lambda: rig.state("web-b2") == ReplicaState.TERMINATING)
        await rig.drain("web-b2")  # seen by a new watch: stopped long before the timeout
        await eventually(lambda: rig.present() == set(), within=5)
        assert agent.drains.watches == 2
        assert "DrainTimeout" not in rig.events.reasons()


async def test_without_a_drain_record_it_stops_at_the_drain_timeout_with_a_warning() -> None:
    rig = Rig()
    await rig.place(placed("web-a1", grace=3))
    await rig.place(placed("web-b2", grace=3))
    async with running_agent(rig, drain_timeout=0.5) as agent:
        await eventually(lambda: rig.running() == {"web-a1", "web-b2"})
        await rig.unplace("web-a1")
        await rig.unplace("web-b2")
        unplaced = time.monotonic()
        await eventually(lambda: rig.present() == set(), within=5)
        assert time.monotonic() - unplaced >= 0.5
        assert sorted(rig.runtime.stops) == [("web-a1", "", 3.0), ("web-b2", "", 3.0)]
        assert rig.events.reasons().count("DrainTimeout") == 2
        assert agent.drains.watches == 1  # one watch for both, not one per replica


async def test_four_long_stops_never_hold_the_create_slots_and_each_stops_once() -> None:
    rig = Rig()
    rig.runtime.stop_seconds = 60.0  # they take their whole grace
    old = [f"old-{i}" for i in range(5)]
    for replica in old:
        await rig.place(placed(replica, grace=30))
    async with running_agent(rig, drain_timeout=0.0, max_parallel=2) as agent:
        await eventually(lambda: rig.running() == set(old))
        for replica in old:
            await rig.unplace(replica)
        await eventually(lambda: len(rig.runtime.stops) == 5)
        for replica in ("new-1", "new-2", "new-3"):
            await rig.place(placed(replica))
        await eventually(lambda: {"new-1", "new-2", "new-3"} <= rig.running(), within=3)
        await passes(agent, 5)
        assert set(old) <= rig.running()  # still in their grace period
        assert sorted(r for r, _, _ in rig.runtime.stops) == old  # each stopped once
        assert agent.graceful_stops == 5


async def test_a_fenced_agent_kills_within_the_fenced_grace_and_waits_for_no_drain() -> None:
    rig = Rig()
    rig.runtime.stop_seconds = 60.0  # the replica ignores its stop signal
    await rig.place(placed("web-a1", grace=30))
    await rig.place(placed("web-b2", grace=30))
    async with running_agent(rig, drain_timeout=60.0) as agent:
        await eventually(lambda: rig.running() == {"web-a1", "web-b2"})
        await rig.unplace("web-b2")  # waiting for a drain that never comes
        await eventually(lambda: rig.state("web-b2") == ReplicaState.TERMINATING)
        rig.nodes.failing_writes = True  # cut off: Stopping at F (2 s here)
        await eventually(lambda: agent.mode == Mode.STOPPING, within=5)
        fenced = time.monotonic()
        await eventually(lambda: rig.present() == set(), within=time_budget.STOP_SECONDS)
        assert time.monotonic() - fenced < time_budget.STOP_SECONDS
        grace = time_budget.FENCED_STOP_GRACE_SECONDS
        assert sorted(rig.runtime.stops) == [("web-a1", "", grace), ("web-b2", "", grace)]
        assert "DrainTimeout" not in rig.events.reasons()


async def test_an_agent_restarted_mid_stop_resumes_it() -> None:
    rig = Rig()
    await rig.place(placed("web-a1", grace=5))
    async with running_agent(rig, drain_timeout=60.0):
        await eventually(lambda: rig.state("web-a1") == ReplicaState.RUNNING)
        await rig.unplace("web-a1")
        await eventually(lambda: rig.state("web-a1") == ReplicaState.TERMINATING)
    assert rig.running() == {"web-a1"} and rig.runtime.stops == []
    async with running_agent(rig, drain_timeout=60.0):
        await rig.drain("web-a1")
        await eventually(lambda: rig.present() == set() and rig.status("web-a1") is None)
        assert rig.runtime.stops == [("web-a1", "", 5.0)]


async def test_an_exited_replica_going_away_is_removed_at_once() -> None:
    rig = Rig()
    await rig.place(placed("web-a1"))
    async with running_agent(rig, drain_timeout=60.0):
        await eventually(lambda: rig.state("web-a1") == ReplicaState.RUNNING)
        rig.runtime.exit_on_start[IMAGE] = 1
        rig.runtime.crash(next(iter(rig.runtime.containers)), 1)
        await eventually(lambda: rig.state("web-a1") != ReplicaState.RUNNING)
        await rig.unplace("web-a1")
        await eventually(lambda: rig.present() == set(), within=2)
        assert rig.runtime.stops == []


# Restart times.


def test_restart_times_keep_the_last_few_oldest_first() -> None:
    track = ReplicaTrack()
    for at in range(MAX_CRASH_LOOP_RESTARTS + 3):
        track = after_restart(track, float(at))
    assert track.restarts == MAX_CRASH_LOOP_RESTARTS + 3
    assert track.restart_times == tuple(float(at) for at in range(3, MAX_CRASH_LOOP_RESTARTS + 3))


async def test_each_restart_is_stamped_on_the_agents_clock_and_kept_across_agent_restarts() -> None:
    now = [1_000.0]
    rig = Rig(clock=lambda: now[0])
    await rig.place(placed("web-a1"))

    def restarted(times: list[float]) -> bool:
        status = rig.status("web-a1")
        return (
            status is not None
            and status.restart_times == times
            and status.state == ReplicaState.RUNNING
        )

    async with running_agent(rig):
        await eventually(lambda: rig.state("web-a1") == ReplicaState.RUNNING)
        now[0] = 1_010.0
        rig.runtime.crash(rig.runtime.running(NODE)[0].id, 1)
        await eventually(lambda: restarted([1_010.0]))
    async with running_agent(rig):  # a new agent: the times are carried over
        await eventually(lambda: rig.state("web-a1") == ReplicaState.RUNNING)
        now[0] = 1_020.0
        rig.runtime.crash(rig.runtime.running(NODE)[0].id, 1)
        await eventually(lambda: restarted([1_010.0, 1_020.0]), within=4)
        status = rig.status("web-a1")
        assert status is not None and status.restarts == 2
        assert status.restarts_within(5.0) == 1  # updated_at is 1_020, on the same clock


async def test_a_liveness_kill_is_a_restart_with_its_time() -> None:
    now = [2_000.0]
    rig = Rig(clock=lambda: now[0])
    probe = Probe(exec=ExecAction(command=["true"]), period_seconds=1, failure_threshold=1)
    template = ContainerTemplate(image=IMAGE, liveness_probe=probe)
    await rig.place(
        Placement(
            replica="web-a1",
            deployment="web",
            node=NODE,
            template=template,
            template_hash=template.template_hash(),
            generation=1,
        )
    )
    async with running_agent(rig):
        await eventually(lambda: rig.state("web-a1") == ReplicaState.RUNNING)
        rig.runtime.probe_failures[("web-a1", "liveness")] = "boom"
        await eventually(lambda: rig.runtime.kills >= 1, within=4)
        del rig.runtime.probe_failures[("web-a1", "liveness")]

        def restarted() -> bool:
            status = rig.status("web-a1")
            return status is not None and status.restart_times[:1] == [2_000.0]

        await eventually(restarted, within=4)


async def test_an_agent_that_never_started_stops_its_replicas_within_the_fenced_grace(
    tmp_path: Path,
) -> None:
    runtime = HollowRuntime(images={IMAGE}, stop_seconds=60.0)  # the signal is ignored
    container_id = await runtime.create_container(
        ContainerSpec(
            name="made-web-a1",
            image=IMAGE,
            labels={
                names.LABEL_MANAGED: "true",
                names.LABEL_CLUSTER: CLUSTER_ID,
                names.LABEL_NODE: NODE,
                names.LABEL_DEPLOYMENT: "web",
                names.LABEL_REPLICA: "web-a1",
            },
            stop_signal="SIGINT",
            stop_timeout=30,
        )
    )
    await runtime.start_container(container_id)
    record = LocalRecordFile(tmp_path)
    record.save(LocalRecord(node=NODE, cluster_id=CLUSTER_ID))
    began = time.monotonic()
    removed = await stop_if_never_started(
        runtime, record, NODE, anyio.Event(), stop_after=0.1, counting_from=began
    )
    assert removed == 1 and runtime.containers == {}
    grace = time_budget.FENCED_STOP_GRACE_SECONDS
    assert runtime.stops == [("web-a1", "SIGINT", grace)]  # signalled first
    assert time.monotonic() - began < 0.1 + time_budget.STOP_SECONDS


def test_the_drain_timeout_flag_defaults_to_10_s_and_refuses_a_negative_one() -> None:
    parser = build_parser()
    assert settings_from_args(parser.parse_args([])).drain_timeout == 10.0
    assert settings_from_args(parser.parse_args(["--drain-timeout", "2.5"])).drain_timeout == 2.5
    with pytest.raises(ValueError, match="--drain-timeout"):
        settings_from_args(parser.parse_args(["--drain-timeout", "-1"]))


async def test_a_restarted_agent_counts_the_drain_timeout_from_the_terminating_it_finds() -> None:
    now = [5_000.0]
    rig = Rig(clock=lambda: now[0])
    await rig.place(placed("web-a1", grace=4))
    async with running_agent(rig, drain_timeout=60.0):
        await eventually(lambda: rig.state("web-a1") == ReplicaState.RUNNING)
        await rig.unplace("web-a1")
        await eventually(lambda: rig.state("web-a1") == ReplicaState.TERMINATING)
    now[0] += 61.0  # the agent was down past the drain timeout
    async with running_agent(rig, drain_timeout=60.0):
        await eventually(lambda: rig.present() == set(), within=3)
        assert rig.runtime.stops == [("web-a1", "", 4.0)]
        assert rig.events.reasons().count("DrainTimeout") == 1


def test_the_docker_create_body_carries_the_stop_signal_and_grace_only_when_set() -> None:
    spec = ContainerSpec(name="c", image=IMAGE, stop_signal="SIGINT", stop_timeout=7)
    body = container_config(spec)
    assert (body["StopSignal"], body["StopTimeout"]) == ("SIGINT", 7)
    plain = container_config(ContainerSpec(name="c", image=IMAGE))
    assert "StopSignal" not in plain and "StopTimeout" not in plain
    made = container_spec(placed("web-a1", grace=0, signal="SIGQUIT"), CLUSTER_ID)
    assert (made.stop_signal, made.stop_timeout) == ("SIGQUIT", 0)
