"""Node liveness off the store, through a real nats-server: an idle agent proves
itself alive by heartbeats the scheduler acknowledges, and writes no record; a
killed agent is judged lost within R (docs/time-budget.md, "Liveness")."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

from corral.client.api import CorralClient
from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.time_budget import HEARTBEAT_SECONDS, NODE_LOST_SECONDS
from corral.natsio.bus import bucket_stream, connect, ensure_streams, open_buckets
from corral.natsio.cluster import ensure_cluster_identity
from corral.natsio.kv import NatsBucket
from corral_node_agent.agent import AgentSettings, NodeAgent
from corral_node_agent.heartbeat_link import NatsHeartbeats
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.safety import Budget, Mode
from corral_scheduler.control_loop import ControlLoop
from tests.conftest import NatsServer, free_port
from tests.integration.test_service_processes import console_script, healthz
from tests.partition_proxy import Mode as ProxyMode
from tests.partition_proxy import partition_proxy
from tests.waiting import current as _value
from tests.waiting import eventually


class NoEvents:
    async def emit(self, *args: object, **kwargs: object) -> None:
        return None


def hollow_agent(
    nc: NATS,
    buckets: Mapping[str, NatsBucket],
    settings: AgentSettings,
    runtime: HollowRuntime | None = None,
) -> NodeAgent:
    """A node agent in this process on a hollow engine, heard through `nc`."""
    return NodeAgent(
        settings,
        runtime or HollowRuntime(),
        placements=buckets[names.PLACEMENTS_BUCKET],
        nodes=buckets[names.NODES_BUCKET],
        statuses=buckets[names.REPLICA_STATUS_BUCKET],
        cluster=buckets[names.CLUSTER_BUCKET],
        events=NoEvents(),  # type: ignore[arg-type]
        heartbeats=NatsHeartbeats(nc),
    )


@asynccontextmanager
async def agent_process(nats_url: str, node: str, state_dir: Path) -> AsyncIterator[int]:
    """The pid of a started node agent process (hollow); killed after, if still there."""
    port = free_port()
    command = [console_script("corral-node-agent"), "--nats", nats_url, "--runtime", "hollow"]
    command += ["--node-name", node, "--state-dir", str(state_dir), "--metrics-host"]
    command += ["127.0.0.1", "--metrics-port", str(port), "--log-level", "WARNING"]
    process = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=None)
    try:

        async def status() -> int:
            assert process.returncode is None, f"the agent exited with {process.returncode}"
            return await anyio.to_thread.run_sync(healthz, port)

        await eventually(status, lambda code: code == 200, within=20)
        yield process.pid
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(15):
            if process.returncode is None:
                try:
                    process.kill()
                except ProcessLookupError:
                    pass
            await process.wait()
        await process.aclose()


@asynccontextmanager
async def scheduler_loop(nats_url: str, *, threaded: bool = False) -> AsyncIterator[ControlLoop]:
    """The control loop; `threaded`: its heartbeats judged on a thread of their own, with
    their own connection (as the scheduler runs it by default)."""
    nc = await connect(nats_url, name="test-scheduler")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        buckets = await open_buckets(js)
        await ensure_cluster_identity(buckets[names.CLUSTER_BUCKET])
        loop = ControlLoop(
            dict(buckets), None, nc=nc, heartbeats_url=nats_url if threaded else None
        )
        async with anyio.create_task_group() as tg:
            await tg.start(loop.run)
            await eventually(lambda: _value(loop.feed_fresh_since), lambda at: at is not None)
            yield loop
            tg.cancel_scope.cancel()
    finally:
        await nc.close()


async def record_revision(nodes: NatsBucket, node: str) -> int:
    entry = await nodes.get(node)
    return 0 if entry is None else entry.revision


@pytest.mark.parametrize("threaded", [False, True], ids=["on-the-loop", "on-a-thread"])
async def test_the_schedulers_acks_drive_an_idle_agents_clock_and_no_record_is_written(
    nats_url: str, tmp_path: Path, threaded: bool
) -> None:
    async with scheduler_loop(nats_url, threaded=threaded) as loop:
        nc = await connect(nats_url, name="test-agent")
        try:
            buckets = await open_buckets(nc.jetstream())
            agent = hollow_agent(
                nc, buckets, AgentSettings(node_name="hb-1", state_dir=tmp_path / "agent")
            )
            nodes = buckets[names.NODES_BUCKET]
            async with anyio.create_task_group() as tg:
                await tg.start(agent.run)
                assert agent.mode == Mode.ACTIVE
                await eventually(lambda: _value("hb-1" in loop.ready_nodes), bool)
                before = await record_revision(nodes, "hb-1")
                writes, seq = agent.record.writes, agent.record.seq
                acked = agent.record.last_acked
                await eventually(lambda: _value(agent.record.seq), lambda s: s >= seq + 4)
                assert await record_revision(nodes, "hb-1") == before  # idle: nothing written
                assert agent.record.writes == writes
                assert acked is not None and (agent.record.last_acked or 0) > acked  # the acks
                assert agent.mode == Mode.ACTIVE
                assert loop.silence("hb-1", loop.monotonic()) is not None
                assert (loop.silence("hb-1", loop.monotonic()) or 99) < 2.0  # heard
                # A reader (the CLI's `get nodes`) hears it too, record unchanged or not.
                async with await CorralClient.connect(nats_url) as client:
                    assert await client.heard_nodes({"hb-1", "gone"}, 1.5) == {"hb-1"}
                tg.cancel_scope.cancel()
        finally:
            await nc.close()


async def test_with_no_scheduler_to_hear_it_an_agent_proves_itself_alive_by_record_writes(
    nats_url: str, tmp_path: Path
) -> None:
    nc = await connect(nats_url, name="test-agent")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        buckets = await open_buckets(js)
        await ensure_cluster_identity(buckets[names.CLUSTER_BUCKET])
        agent = hollow_agent(
            nc,
            buckets,
            AgentSettings(node_name="hb-2", state_dir=tmp_path / "agent", heartbeat_seconds=0.2),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(agent.run)
            writes = agent.record.writes
            await eventually(lambda: _value(agent.record.writes), lambda w: w >= writes + 5)
            assert agent.mode == Mode.ACTIVE  # no judge, no stop: the writes are the proof
            tg.cancel_scope.cancel()
    finally:
        await nc.close()


@pytest.mark.parametrize("threaded", [False, True], ids=["on-the-loop", "on-a-thread"])
async def test_a_killed_agent_is_judged_lost_within_r(
    nats_url: str, tmp_path: Path, threaded: bool
) -> None:
    async with scheduler_loop(nats_url, threaded=threaded) as loop:
        nodes = loop.nodes
        async with agent_process(nats_url, "hb-kill", tmp_path / "agent") as pid:
            await eventually(lambda: _value("hb-kill" in loop.ready_nodes), bool, within=20)
            judge = loop.heartbeats
            assert judge is not None
            seq = judge.heard["hb-kill"].seq
            revision = nodes.revision("hb-kill")
            await eventually(lambda: _value(judge.heard["hb-kill"].seq), lambda s: s >= seq + 3)
            assert nodes.revision("hb-kill") == revision  # idle: heard, never rewritten
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()

            async def judged_lost() -> bool:  # by the loop's own passes
                return "hb-kill" not in loop.ready_nodes

            await eventually(judged_lost, bool, within=NODE_LOST_SECONDS + 3, interval=0.1)
            took = time.monotonic() - killed
            assert loop.snapshot().lost("hb-kill", loop.monotonic())
            # Judged from its last heartbeat (up to a heartbeat before the kill), by a pass
            # the loop wakes for when the silence passes R, not on its next 1 s tick (the
            # slack: this poll, and a busy machine).
            low = NODE_LOST_SECONDS - HEARTBEAT_SECONDS - 0.5
            assert low <= took <= NODE_LOST_SECONDS + 1.0, took


async def test_the_acks_tell_the_agent_its_placements_revision_and_it_writes_no_echo(
    nats_url: str, tmp_path: Path
) -> None:
    """The scheduler's acks name the newest revision of the node's placements (its own
    writes and deletes included); the agent's watch proves itself by delivering it,
    with no echo key written (corral_node_agent.watch_proof)."""
    async with scheduler_loop(nats_url) as loop:
        nc = await connect(nats_url, name="test-agent")
        try:
            buckets = await open_buckets(nc.jetstream())
            placements = buckets[names.PLACEMENTS_BUCKET]
            agent = hollow_agent(
                nc,
                buckets,
                AgentSettings(node_name="hb-4", state_dir=tmp_path / "agent"),
                HollowRuntime(images={"app:1"}),
            )
            deployments = buckets[names.DEPLOYMENTS_BUCKET]

            async with anyio.create_task_group() as tg:
                await tg.start(agent.run)
                await eventually(lambda: _value("hb-4" in loop.ready_nodes), bool)
                for generation, replicas in ((1, 2), (2, 1)):  # placed, then one deleted
                    deployment = Deployment(
                        metadata=ObjectMeta(name="told", generation=generation),
                        spec=DeploymentSpec(
                            replicas=replicas, template=ContainerTemplate(image="app:1")
                        ),
                    )
                    await deployments.put(deployment.key, encode(deployment))
                    await eventually(
                        lambda: _value(len(agent.placements.items)), lambda n, r=replicas: n == r
                    )
                    newest = loop.placements.newest("hb-4")
                    assert newest > 0
                    # Told by the next ack: the watch proof owes it, and the watch has it.
                    await eventually(
                        lambda: _value(agent.watch_proof.mark()), lambda t, n=newest: t >= n
                    )
                    assert agent.placements.delivered >= newest
                seq = agent.record.seq
                await eventually(lambda: _value(agent.record.seq), lambda s: s >= seq + 3)
                assert await placements.get(agent.echo_key) is None  # no echo written
                assert agent.watches == 1  # and no watch taken for stalled
                await deployments.delete(deployment.key)
                tg.cancel_scope.cancel()
        finally:
            await nc.close()


async def test_a_placement_whose_told_write_was_lost_is_read_when_an_ack_names_it(
    nats_url: str, tmp_path: Path
) -> None:
    """The agent follows its placements by reads the bucket's republished writes wake
    (NatsBucket.follow). With none arriving (taken off the stream: every wake-up lost),
    the next ack naming the placements' revision wakes the read: the placement arrives
    through the same watch, not a new one taken after it stalled."""
    async with scheduler_loop(nats_url) as loop:
        nc = await connect(nats_url, name="test-agent")
        try:
            js = nc.jetstream()
            buckets = await open_buckets(js)
            config = (await js.stream_info(bucket_stream(names.PLACEMENTS_BUCKET))).config
            config.republish = None
            await js.update_stream(config)
            agent = hollow_agent(
                nc,
                buckets,
                AgentSettings(
                    node_name="hb-6", state_dir=tmp_path / "agent", placements_watch="reads"
                ),
                HollowRuntime(images={"app:1"}),
            )
            deployments = buckets[names.DEPLOYMENTS_BUCKET]
            async with anyio.create_task_group() as tg:
                await tg.start(agent.run)
                await eventually(lambda: _value("hb-6" in loop.ready_nodes), bool)
                deployment = Deployment(
                    metadata=ObjectMeta(name="untold", generation=1),
                    spec=DeploymentSpec(replicas=2, template=ContainerTemplate(image="app:1")),
                )
                await deployments.put(deployment.key, encode(deployment))
                await eventually(lambda: _value(len(agent.placements.items)), lambda n: n == 2)
                assert agent.watches == 1
                await deployments.delete(deployment.key)
                tg.cancel_scope.cancel()
        finally:
            await nc.close()


@pytest.mark.parametrize(
    ("cut", "how", "watches"),
    [
        (ProxyMode.CLOSED, "consumer", 1),  # kept
        (ProxyMode.BLACKHOLE, "consumer", 2),  # read afresh
        (ProxyMode.CLOSED, "reads", 1),
        (ProxyMode.BLACKHOLE, "reads", 1),  # kept: nothing of it was skipped
    ],
    ids=["closed-kept", "blackholed-read-afresh", "reads-closed-kept", "reads-blackholed-kept"],
)
async def test_an_agent_cut_off_from_nats_keeps_its_watch_only_when_it_missed_nothing(
    nats_server: NatsServer, tmp_path: Path, cut: ProxyMode, how: str, watches: int
) -> None:
    """The agent's connection is cut until it is Isolated; meanwhile the Deployment is
    scaled down, deleting one of its placements. Closed (connections refused): the
    server holds the delete back until the agent is connected again, the scheduler's
    ack names it, the watch that ran on delivers it, so the placements are current
    again with no new watch (no consumer made). Blackholed (bytes dropped): the
    delete is lost on the way; a watch that keeps its consumer (`consumer`) is re-made
    by nats-py from after the last entry it delivered, and the agent reads its
    placements afresh rather than trust a watch that may have skipped purged entries;
    one that reads the bucket by sequence (`reads`) lost only the wake-up, and reads
    the delete when the ack names it: kept. Either way the replica scaled away is
    removed, and nothing else."""
    async with scheduler_loop(nats_server.url) as loop, partition_proxy(nats_server.port) as proxy:
        nc = await connect(proxy.url, name="test-agent")
        try:
            buckets = await open_buckets(nc.jetstream())
            settings = AgentSettings(
                node_name="hb-5",
                state_dir=tmp_path / "agent",
                budget=Budget(isolated_after=1.0, stop_after=20.0),
                placements_watch=how,
            )
            runtime = HollowRuntime(images={"app:1"})
            agent = hollow_agent(nc, buckets, settings, runtime)
            deployments = loop.deployments.bucket

            async def scale(replicas: int, generation: int) -> None:
                deployment = Deployment(
                    metadata=ObjectMeta(name="kept", generation=generation),
                    spec=DeploymentSpec(
                        replicas=replicas, template=ContainerTemplate(image="app:1")
                    ),
                )
                await deployments.put(deployment.key, encode(deployment))

            async with anyio.create_task_group() as tg:
                await tg.start(agent.run)
                await eventually(lambda: _value("hb-5" in loop.ready_nodes), bool)
                await scale(2, 1)
                await eventually(lambda: _value(len(runtime.running("hb-5"))), lambda n: n == 2)
                proxy.cut(cut)
                await eventually(lambda: _value(agent.mode), lambda m: m == Mode.ISOLATED)
                await scale(1, 2)  # the scheduler deletes one of hb-5's placements
                await eventually(lambda: _value(len(loop.placements.items)), lambda n: n == 1)
                assert len(runtime.running("hb-5")) == 2  # cut off: nothing removed yet
                proxy.heal()
                await eventually(lambda: _value(agent.mode), lambda m: m == Mode.ACTIVE)
                assert agent.watches == watches
                assert sum(agent.watches_kept.values()) == 2 - watches
                # Read afresh because the watch said it went on from a new consumer.
                assert agent.watch_resets == watches - 1
                await eventually(lambda: _value(len(runtime.running("hb-5"))), lambda n: n == 1)
                await deployments.delete("default.kept")
                tg.cancel_scope.cancel()
        finally:
            await nc.close()
