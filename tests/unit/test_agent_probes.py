"""Probes (docs/rollouts.md, "Probes"): the pure state machine on a fake clock, the
network checks against local listeners, and the agent's wiring on the hollow runtime."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import anyio.lowlevel
import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import (
    ContainerPort,
    ContainerTemplate,
    ExecAction,
    HTTPGetAction,
    Probe,
    TCPSocketAction,
)
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import MemoryBucket
from corral_node_agent.agent import NodeAgent
from corral_node_agent.backoff import ReplicaTrack
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.probes import (
    LIVENESS,
    OK,
    READINESS,
    STARTUP,
    UNKNOWN,
    Prober,
    ProbeRunner,
    ReplicaProbes,
    http_check,
    probe_address,
    probe_port,
    tcp_check,
)
from corral_node_agent.replica_status import replica_status
from corral_node_agent.runtime import RuntimeFailure
from corral_node_agent.safety import Mode
from tests.unit.agent_helpers import NODE, cluster_bucket, container, fast_settings
from tests.unit.test_agent_loop import RecordedEvents, eventually

IMAGE = "corral-test/busybox:1"
EXEC = ExecAction(command=["true"])


def probe(**fields: object) -> Probe:
    return Probe(exec=EXEC, **fields)  # type: ignore[arg-type]


# The state machine, on a fake clock.


def test_initial_delay_then_every_period() -> None:
    machine = ReplicaProbes({READINESS: probe(initial_delay_seconds=5, period_seconds=2)}, 100.0)
    assert machine.wait(READINESS, 100.0) == 5.0
    assert machine.wait(READINESS, 104.0) == 1.0
    assert machine.wait(READINESS, 106.0) == 0.0
    machine.observe(READINESS, "", 106.0)
    assert machine.wait(READINESS, 106.0) == 2.0
    assert machine.wait(READINESS, 109.0) == 0.0


def test_readiness_thresholds_and_success_after_failures() -> None:
    machine = ReplicaProbes({READINESS: probe(success_threshold=2, failure_threshold=2)}, 0.0)
    assert machine.ready is False  # from the start, until it passes
    machine.observe(READINESS, "", 0.0)
    assert machine.ready is False  # one success of two
    machine.observe(READINESS, "", 10.0)
    assert machine.ready is True
    machine.observe(READINESS, "refused", 20.0)
    assert machine.ready is True  # one failure of two
    assert machine.results == {READINESS: "refused"}
    machine.observe(READINESS, "refused", 30.0)
    assert machine.ready is False
    machine.observe(READINESS, "", 40.0)
    machine.observe(READINESS, "nope", 50.0)  # a failure breaks the run of successes
    machine.observe(READINESS, "", 60.0)
    assert machine.ready is False
    machine.observe(READINESS, OK, 70.0)
    assert machine.ready is True
    assert machine.results == {READINESS: OK}


def test_no_readiness_probe_means_no_verdict() -> None:
    machine = ReplicaProbes({LIVENESS: probe()}, 0.0)
    assert machine.ready is None


def test_liveness_restarts_at_its_failure_threshold_only() -> None:
    machine = ReplicaProbes({LIVENESS: probe(failure_threshold=3)}, 0.0)
    assert machine.observe(LIVENESS, "exit code 1", 0.0) is None
    assert machine.observe(LIVENESS, "exit code 1", 10.0) is None
    assert machine.observe(LIVENESS, "", 20.0) is None  # a success resets the count
    assert machine.observe(LIVENESS, "exit code 1", 30.0) is None
    assert machine.observe(LIVENESS, "exit code 1", 40.0) is None
    assert machine.observe(LIVENESS, "exit code 1", 50.0) == ("liveness probe failed: exit code 1")


def test_startup_gates_the_others() -> None:
    machine = ReplicaProbes(
        {
            STARTUP: probe(period_seconds=1, failure_threshold=5),
            LIVENESS: probe(initial_delay_seconds=2, period_seconds=10),
            READINESS: probe(period_seconds=10),
        },
        0.0,
    )
    assert machine.wait(STARTUP, 0.0) == 0.0
    assert machine.wait(LIVENESS, 50.0) is None  # held back
    assert machine.wait(READINESS, 50.0) is None
    assert machine.observe(STARTUP, "refused", 0.0) is None
    assert machine.wait(LIVENESS, 1.0) is None
    assert machine.ready is False
    machine.observe(STARTUP, "", 7.0)
    assert machine.started_up
    assert machine.wait(STARTUP, 7.0) is None  # done
    assert machine.wait(LIVENESS, 7.0) == 0.0  # its delay has passed since the start
    assert machine.wait(READINESS, 7.0) == 0.0
    assert machine.ready is False  # readiness has not run yet
    machine.observe(READINESS, "", 7.0)
    assert machine.ready is True


def test_startup_failing_restarts() -> None:
    machine = ReplicaProbes({STARTUP: probe(failure_threshold=2), LIVENESS: probe()}, 0.0)
    assert machine.observe(STARTUP, "no", 0.0) is None
    assert machine.observe(STARTUP, "no", 10.0) == "startup probe failed: no"


def test_named_port_and_address() -> None:
    http = Probe(http_get=HTTPGetAction(port="web"))
    template = ContainerTemplate(
        image=IMAGE,
        ports=[ContainerPort(container_port=8080, name="web")],
        networks=["back", "front"],
        readiness_probe=http,
    )
    assert probe_port(http, template) == 8080
    assert probe_port(Probe(tcp_socket=TCPSocketAction(port=81)), template) == 81
    on_both = replace(
        container("r"), ips={"front": "10.0.0.2", "back": "10.0.1.2"}, bridge_ip="172.17.0.2"
    )
    assert probe_address(on_both, template) == "10.0.1.2"  # the template's first network
    assert probe_address(container("r"), template) == ""
    bridged = replace(container("r"), bridge_ip="172.17.0.2")
    assert probe_address(bridged, template) == "172.17.0.2"


# The network checks, against listeners on this host.


async def test_tcp_and_http_checks() -> None:
    answers = {b"/ok": b"HTTP/1.0 204 No Content\r\n\r\n", b"/bad": b"HTTP/1.0 404 Nope\r\n\r\n"}

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                request = await stream.receive()
            except anyio.EndOfStream:  # a TCP check: connected, then closed
                return
            path = request.split(b" ")[1]
            await stream.send(answers.get(path, b"HTTP/1.0 500 x\r\n\r\n"))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        assert await tcp_check("127.0.0.1", port, 1.0) == ""
        assert await http_check("127.0.0.1", port, "/ok", 1.0) == ""
        assert "status 404" in await http_check("127.0.0.1", port, "/bad", 1.0)
        tg.cancel_scope.cancel()
    await listener.aclose()
    assert "tcp 127.0.0.1" in await tcp_check("127.0.0.1", port, 1.0)
    assert f"GET http://127.0.0.1:{port}/ok" in await http_check("127.0.0.1", port, "/ok", 1.0)


# The wiring: the whole agent on the hollow runtime.


def probed(replica: str, **probes: Probe) -> Placement:
    template = ContainerTemplate(image=IMAGE, args=["sleep", "3600"], **probes)  # type: ignore[arg-type]
    return Placement(
        replica=replica,
        deployment="web",
        node=NODE,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


class Statuses(MemoryBucket):
    """Counts the writes of each key."""

    def __init__(self) -> None:
        super().__init__("statuses")
        self.writes: dict[str, int] = {}

    def _write(self, key: str, value: bytes | None) -> int:
        self.writes[key] = self.writes.get(key, 0) + 1
        return super()._write(key, value)


@asynccontextmanager
async def running_agent(
    runtime: HollowRuntime, placement: Placement
) -> AsyncIterator[tuple[NodeAgent, Statuses, RecordedEvents]]:
    statuses = Statuses()
    events = RecordedEvents()
    placements = MemoryBucket("placements")
    await placements.put(placement.key, encode(placement))
    agent = NodeAgent(
        fast_settings(),
        runtime,
        placements=placements,
        nodes=MemoryBucket("nodes"),
        statuses=statuses,
        cluster=cluster_bucket(),
        events=events,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run)
        yield agent, statuses, events
        tg.cancel_scope.cancel()


def status_of(statuses: MemoryBucket, replica: str) -> ReplicaStatus | None:
    entry = statuses.items.get(names.placement_key(NODE, "default", replica))
    return None if entry is None or entry.value is None else decode(entry.value, ReplicaStatus)


async def test_readiness_flips_ready_and_writes_once_per_change() -> None:
    runtime = HollowRuntime(images={IMAGE})
    runtime.probe_failures[("r1", READINESS)] = "connection refused"
    placement = probed(
        "r1", readiness_probe=Probe(tcp_socket=TCPSocketAction(port=80), period_seconds=1)
    )
    key = placement.key
    async with running_agent(runtime, placement) as (_, statuses, _):

        def failing() -> bool:
            status = status_of(statuses, "r1")
            return status is not None and status.probes.get(READINESS) == "connection refused"

        await eventually(failing)
        status = status_of(statuses, "r1")
        assert status is not None
        assert status.state == ReplicaState.RUNNING and status.ready is False
        assert not status.is_ready
        assert status.last_probe_failure == "readiness probe failed: connection refused"
        del runtime.probe_failures[("r1", READINESS)]

        def ready() -> bool:
            found = status_of(statuses, "r1")
            return found is not None and found.ready is True

        await eventually(ready, within=5.0)
        found = status_of(statuses, "r1")
        assert found is not None and found.is_ready and found.probes == {READINESS: OK}
        writes = statuses.writes[key]
        probes_run = runtime.probes_run
        await eventually(lambda: runtime.probes_run >= probes_run + 2, within=5.0)
        assert statuses.writes[key] == writes  # the same verdict: no write


async def test_no_readiness_probe_leaves_ready_absent() -> None:
    runtime = HollowRuntime(images={IMAGE})
    placement = probed("r2", liveness_probe=probe())
    async with running_agent(runtime, placement) as (_, statuses, _):

        def checked() -> bool:
            status = status_of(statuses, "r2")
            return status is not None and status.probes.get(LIVENESS) == OK

        await eventually(checked)
        status = status_of(statuses, "r2")
        assert status is not None and status.ready is None and status.is_ready


async def test_liveness_failure_restarts_with_back_off() -> None:
    runtime = HollowRuntime(images={IMAGE})
    runtime.probe_failures[("r3", LIVENESS)] = "exit code 1"
    placement = probed("r3", liveness_probe=probe(failure_threshold=1))
    states: set[ReplicaState] = set()
    async with running_agent(runtime, placement) as (_, statuses, events):

        def restarted_twice() -> bool:
            status = status_of(statuses, "r3")
            if status is not None:
                states.add(status.state)
            return status is not None and status.restarts >= 2

        await eventually(restarted_twice, within=8.0)
        status = status_of(statuses, "r3")
        assert status is not None
        assert status.last_probe_failure == "liveness probe failed: exit code 1"
        assert runtime.kills >= 2
        unhealthy = [m for _, reason, m in events.seen if reason == "Unhealthy"]
        assert unhealthy and "liveness probe failed: exit code 1" in unhealthy[0]
        # The second kill waits out the back-off: CrashLoopBackOff meanwhile.
        del runtime.probe_failures[("r3", LIVENESS)]

        def backed_off() -> bool:
            status = status_of(statuses, "r3")
            if status is not None:
                states.add(status.state)
            return ReplicaState.CRASH_LOOP in states

        await eventually(backed_off, within=5.0)
        # The restarted container passes now and is left alone.
        await eventually(
            lambda: (
                (s := status_of(statuses, "r3")) is not None
                and s.state == ReplicaState.RUNNING
                and s.probes.get(LIVENESS) == OK
            ),
            within=8.0,
        )


async def test_probes_stop_with_the_container() -> None:
    runtime = HollowRuntime(images={IMAGE})
    placement = probed("r4", readiness_probe=probe(period_seconds=1))
    async with running_agent(runtime, placement) as (agent, statuses, _):
        await eventually(lambda: (s := status_of(statuses, "r4")) is not None and s.ready is True)
        runner = agent.prober.runners["r4"]
        runtime.crash(runner.container.id)
        await eventually(lambda: runner.scope.cancel_called)
        await eventually(
            lambda: (
                (s := status_of(statuses, "r4")) is not None
                and s.state == ReplicaState.RUNNING
                and s.ready is True
                and agent.prober.runners["r4"] is not runner
            )
        )


# Review fixes: unknown results, failed kills, kills only while Active, kept verdicts.


def test_unknown_is_neither_success_nor_failure() -> None:
    machine = ReplicaProbes(
        {LIVENESS: probe(failure_threshold=1), READINESS: probe(success_threshold=1)}, 0.0
    )
    assert machine.observe(LIVENESS, UNKNOWN + "engine unreachable", 0.0) is None
    assert machine.observe(READINESS, UNKNOWN + "engine unreachable", 0.0) is None
    assert machine.ready is False and not machine.decided
    assert machine.results == {
        LIVENESS: "unknown: engine unreachable",
        READINESS: "unknown: engine unreachable",
    }
    machine.observe(READINESS, "", 10.0)
    assert machine.observe(READINESS, UNKNOWN + "x", 20.0) is None
    assert machine.ready is True  # an unknown does not undo the verdict


class ScriptedRuntime:
    """exec_probe answers from `answers` (an exception is raised), the last one repeated."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def exec_probe(
        self, container_id: str, command: list[str], seconds: float, kind: str
    ) -> str:
        await anyio.lowlevel.checkpoint()
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


def ticking() -> Callable[[], float]:
    """A clock that jumps a long way at each reading: every probe is always due."""
    ticks = itertools.count()
    return lambda: next(ticks) * 1000.0


async def test_engine_errors_never_kill() -> None:
    runtime = ScriptedRuntime(RuntimeFailure("exec: engine said 500"))
    kills: list[str] = []

    async def on_restart(why: str) -> bool:
        kills.append(why)
        return True

    runner = ProbeRunner(
        runtime,  # type: ignore[arg-type]
        probed("u1", liveness_probe=probe(failure_threshold=1)),
        container("u1"),
        on_change=lambda: None,
        on_restart=on_restart,
        monotonic=ticking(),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await eventually(lambda: runtime.calls >= 5)
        runner.scope.cancel()
    assert kills == []
    assert runner.machine.results == {LIVENESS: "unknown: exec: engine said 500"}


async def test_a_failed_kill_probes_on_and_retries() -> None:
    runtime = ScriptedRuntime("exit code 1")
    kills: list[str] = []

    async def on_restart(why: str) -> bool:
        kills.append(why)
        return len(kills) >= 3  # the first two kills fail

    runner = ProbeRunner(
        runtime,  # type: ignore[arg-type]
        probed("u2", liveness_probe=probe(failure_threshold=2)),
        container("u2"),
        on_change=lambda: None,
        on_restart=on_restart,
        monotonic=ticking(),
    )
    with anyio.fail_after(5):
        await runner.run()  # ends with the kill that worked
    assert kills == ["liveness probe failed: exit code 1"] * 3
    assert runtime.calls == 6  # each kill at the threshold, never a stuck runner
    assert runner.restarting()


def idle_agent(runtime: HollowRuntime) -> NodeAgent:
    return NodeAgent(
        fast_settings(),
        runtime,
        placements=MemoryBucket("placements"),
        nodes=MemoryBucket("nodes"),
        statuses=MemoryBucket("statuses"),
        cluster=cluster_bucket(),
        events=RecordedEvents(),
    )


async def test_probes_kill_only_while_active_with_the_engine_up() -> None:
    runtime = HollowRuntime(images={IMAGE})
    agent = idle_agent(runtime)
    placement = probed("u3", liveness_probe=probe())
    for mode, engine_ok in ((Mode.HELD, True), (Mode.ISOLATED, True), (Mode.ACTIVE, False)):
        agent.mode, agent.engine_ok = mode, engine_ok
        assert await agent._probe_restart(placement, container("u3"), "liveness") is False
    assert runtime.kills == 0
    agent.mode, agent.engine_ok = Mode.ACTIVE, True
    assert await agent._probe_restart(placement, container("u3"), "liveness") is True
    assert runtime.kills == 1
    runtime.set_available(False)  # the kill itself fails: not killed, probe on
    assert await agent._probe_restart(placement, container("u3"), "liveness") is False


async def test_runners_stop_when_leaving_active_or_the_engine_goes_and_keep_verdicts() -> None:
    runtime = HollowRuntime(images={IMAGE})
    # Three successes to be ready: a runner starting afresh would say not ready a while.
    placement = probed("u4", readiness_probe=probe(period_seconds=1, success_threshold=3))
    async with running_agent(runtime, placement) as (agent, statuses, _):
        await eventually(
            lambda: (s := status_of(statuses, "u4")) is not None and s.ready is True, within=8.0
        )
        first = agent.prober.runners["u4"]
        await agent._enter(Mode.HELD)
        assert agent.prober.runners == {}  # at once, not on a later pass
        assert first.scope.cancel_called
        await agent._enter(Mode.ACTIVE)

        await eventually(lambda: "u4" in agent.prober.runners)
        second = agent.prober.runners["u4"]
        assert second is not first
        view = agent.prober.view("u4", second.container)
        assert view is not None and view.ready is True  # its last verdict, kept

        runtime.set_available(False)
        await eventually(lambda: agent.prober.runners == {})
        assert second.scope.cancel_called
        runtime.set_available(True)
        await eventually(lambda: "u4" in agent.prober.runners)
        view = agent.prober.view("u4", agent.prober.runners["u4"].container)
        assert view is not None and view.ready is True
        status = status_of(statuses, "u4")
        assert status is not None and status.ready is True


class NoSpawn:
    """A task group that starts nothing (the test runs the runner itself)."""

    def start_soon(self, *_: object) -> None:
        return None


async def no_kill(*_: object) -> bool:
    return False


async def test_a_container_running_before_the_agent_keeps_its_stored_ready() -> None:
    placement = probed("u5", readiness_probe=probe())
    running = container("u5", started_at=100.0)
    runtime = ScriptedRuntime("")
    prober = Prober(
        runtime,  # type: ignore[arg-type]
        on_change=lambda: None,
        on_restart=no_kill,
        wall=lambda: 200.0,
    )
    prober.sync({"u5": placement}, {"u5": running}, NoSpawn())  # type: ignore[arg-type]
    view = prober.view("u5", running)
    assert view is not None and view.pending and view.ready is False
    track = ReplicaTrack()
    stored = replica_status(placement, running, track, 0.0, probes=view)
    assert stored.ready is False  # nothing stored: not ready
    kept = replica_status(
        placement,
        running,
        track,
        0.0,
        probes=view,
        previous=msgspec.structs.replace(stored, ready=True),
    )
    assert kept.ready is True  # the stored value, until the first verdict
    other = msgspec.structs.replace(stored, ready=True, container_id="another")
    assert (
        replica_status(placement, running, track, 0.0, probes=view, previous=other).ready is False
    )
    # A container started after the agent began: not ready until its probe says so.
    fresh = Prober(
        runtime,  # type: ignore[arg-type]
        on_change=lambda: None,
        on_restart=no_kill,
        wall=lambda: 50.0,
    )
    fresh.sync({"u5": placement}, {"u5": running}, NoSpawn())  # type: ignore[arg-type]
    view = fresh.view("u5", running)
    assert view is not None and not view.pending
    # The first verdict ends the wait.
    runner = prober.runners["u5"]
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await eventually(lambda: not runner.pending)
        runner.scope.cancel()
    view = prober.view("u5", running)
    assert view is not None and view.ready is True and not view.pending
