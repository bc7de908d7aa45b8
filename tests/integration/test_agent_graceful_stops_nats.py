"""Graceful stops through a real NATS (docs/rollouts.md, "Graceful stops"): a hollow
agent run as the service (main.run: --drain-timeout, the corral_replica_drains bucket)
writes Terminating when a placement is deleted, signals the container only once the
test writes its ReplicaDrain (or at the drain timeout, with a DrainTimeout event)."""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import nats
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Event
from corral.contract.network_state import ReplicaDrain
from corral.contract.specs import ContainerTemplate
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.natsio.bus import bucket_stream
from corral.natsio.kv import NatsBucket
from corral.natsio.lease import LeaseRecord, lease_key
from corral.natsio.service import run_service
from corral_node_agent import drains as drains_module
from corral_node_agent import main as agent_main
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.main import build_parser, run
from corral_node_agent.runtime import Runtime
from tests.integration.test_agent_nats import eventually

NODE = "hollow-drain-1"
IMAGE = "example/app:1"


class StampedRuntime(HollowRuntime):
    """A hollow engine that notes when each stop signal was sent (monotonic)."""

    signalled: dict[str, float]

    async def stop_container(self, container_id: str, grace: float) -> None:
        container = self.containers.get(container_id)
        if container is not None:
            replica = container.spec.labels.get(names.LABEL_REPLICA, "")
            self.signalled.setdefault(replica, time.monotonic())
        await super().stop_container(container_id, grace)


def agent_args(nats_url: str, state_dir: Path, drain_timeout: float) -> argparse.Namespace:
    return build_parser().parse_args(
        [
            "--nats",
            nats_url,
            "--state-dir",
            str(state_dir),
            "--metrics-port",
            "0",
            "--runtime",
            "hollow",
            "--node-name",
            NODE,
            "--heartbeat-seconds",
            "0.2",
            "--drain-timeout",
            str(drain_timeout),
        ]
    )


def placement(replica: str) -> Placement:
    template = ContainerTemplate(
        image=IMAGE, termination_grace_period_seconds=9, stop_signal="SIGINT"
    )
    return Placement(
        replica=replica,
        deployment="web",
        node=NODE,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


class Rig:
    def __init__(self, buckets: dict[str, NatsBucket], runtime: StampedRuntime) -> None:
        self.placements = buckets[names.PLACEMENTS_BUCKET]
        self.statuses = buckets[names.REPLICA_STATUS_BUCKET]
        self.drains = buckets[names.REPLICA_DRAINS_BUCKET]
        self.nodes = buckets[names.NODES_BUCKET]
        self.runtime = runtime

    async def status(self, replica: str) -> ReplicaStatus | None:
        entry = await self.statuses.get(names.placement_key(NODE, "default", replica))
        return None if entry is None or entry.value is None else decode(entry.value, ReplicaStatus)

    async def state_is(self, replica: str, state: ReplicaState) -> bool:
        found = await self.status(replica)
        return found is not None and found.state == state

    async def place(self, replica: str) -> None:
        p = placement(replica)
        await self.placements.put(p.key, encode(p))
        await eventually(lambda: self.state_is(replica, ReplicaState.RUNNING))

    async def unplace(self, replica: str) -> None:
        await self.placements.delete(names.placement_key(NODE, "default", replica))

    async def drain(self, replica: str) -> None:
        record = ReplicaDrain(node=NODE, replica=replica, endpoints_revision=1, nodes=1)
        await self.drains.put(record.key, encode(record))

    async def gone(self, replica: str) -> bool:
        present = {c.spec.labels[names.LABEL_REPLICA] for c in self.runtime.containers.values()}
        return replica not in present and await self.status(replica) is None

    async def beats(self, count: int) -> None:
        """Wait for `count` more heartbeats of the node (time passing, as a condition)."""
        entry = await self.nodes.get(NODE)
        assert entry is not None
        start = entry.revision

        async def later() -> bool:
            now = await self.nodes.get(NODE)
            return now is not None and now.revision >= start + count

        await eventually(later)


@asynccontextmanager
async def hollow_agent(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    drain_timeout: float,
    netmgr: bool = True,
) -> AsyncIterator[Rig]:
    """A hollow agent; `netmgr`: a netmgr holds its lease (so stops wait for drains)."""
    if netmgr:
        lease = LeaseRecord(holder="netmgr-test", renewed_at=time.time())
        await buckets[names.LEASES_BUCKET].put(lease_key("netmgr"), encode(lease))
    runtime = StampedRuntime(images={IMAGE}, engine_id=f"hollow-{NODE}")
    runtime.signalled = {}

    def build_runtime(args: argparse.Namespace) -> Runtime:
        return runtime

    monkeypatch.setattr(agent_main, "build_runtime", build_runtime)
    async with anyio.create_task_group() as tg:
        await tg.start(
            run_service, "node-agent", run, agent_args(nats_url, tmp_path, drain_timeout)
        )
        yield Rig(buckets, runtime)
        tg.cancel_scope.cancel()
    if netmgr:
        await buckets[names.LEASES_BUCKET].delete(lease_key("netmgr"))


async def test_without_netmgr_a_deleted_placement_is_stopped_at_once(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No netmgr lease: nothing writes drains and no Service routes to the replica, so
    its stop waits for nothing (not the 30 s drain timeout)."""
    async with hollow_agent(nats_url, buckets, tmp_path, monkeypatch, 30.0, netmgr=False) as rig:
        await rig.place("web-a1")
        await rig.unplace("web-a1")
        unplaced = time.monotonic()
        await eventually(lambda: rig.gone("web-a1"), within=10)
        assert rig.runtime.signalled["web-a1"] - unplaced < 5.0
        assert rig.runtime.stops == [("web-a1", "SIGINT", 9.0)]


async def test_a_deleted_placement_is_terminating_and_stopped_only_after_its_drain_record(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with hollow_agent(nats_url, buckets, tmp_path, monkeypatch, 30.0) as rig:
        await rig.place("web-a1")
        await rig.unplace("web-a1")
        await eventually(lambda: rig.state_is("web-a1", ReplicaState.TERMINATING))
        await rig.beats(3)  # the agent goes on beating; the replica waits for its drain
        assert rig.runtime.stops == [] and len(rig.runtime.running(NODE)) == 1
        await rig.drain("web-a1")
        await eventually(lambda: rig.gone("web-a1"))
        assert rig.runtime.stops == [("web-a1", "SIGINT", 9.0)]


async def test_without_a_drain_record_the_replica_stops_at_the_drain_timeout(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nc = await nats.connect(nats_url)
    seen: list[Event] = []

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        seen.append(decode(msg.data, Event))

    await nc.subscribe(names.event_subject("deployment", "web", "default"), cb=on_event)
    try:
        async with hollow_agent(nats_url, buckets, tmp_path, monkeypatch, 1.0) as rig:
            await rig.place("web-a1")
            await rig.unplace("web-a1")
            unplaced = time.monotonic()
            await eventually(lambda: rig.gone("web-a1"))
            assert rig.runtime.signalled["web-a1"] - unplaced >= 1.0
            assert rig.runtime.stops == [("web-a1", "SIGINT", 9.0)]
            timeouts = [e for e in seen if e.reason == "DrainTimeout"]
            assert len(timeouts) == 1 and timeouts[0].type == "Warning"
    finally:
        await nc.close()


async def test_with_its_drain_record_written_at_once_the_replica_is_signalled_promptly(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The number the report gives: placement deleted -> stop signal, the drain record
    written right after the delete (what a prompt netmgr does at best)."""
    async with hollow_agent(nats_url, buckets, tmp_path, monkeypatch, 30.0) as rig:
        delays = []
        for i in range(5):
            replica = f"web-a{i}"
            await rig.place(replica)
            await rig.unplace(replica)
            unplaced = time.monotonic()
            await rig.drain(replica)
            await eventually(lambda replica=replica: rig.gone(replica))  # type: ignore[misc]
            delays.append(rig.runtime.signalled[replica] - unplaced)
        print(f"placement deleted -> stop signal: {[round(d * 1000) for d in delays]} ms")
        assert max(delays) < 2.0  # far from the 30 s drain timeout


async def test_the_drains_watch_and_its_consumer_go_when_no_stop_waits_and_come_back_with_one(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(drains_module, "IDLE_SECONDS", 0.5)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()

    async def consumers(count: int) -> bool:
        infos = await js.consumers_info(bucket_stream(names.REPLICA_DRAINS_BUCKET))
        return len(infos) == count

    try:
        async with hollow_agent(nats_url, buckets, tmp_path, monkeypatch, 30.0) as rig:
            await rig.place("web-a1")
            await rig.unplace("web-a1")
            await eventually(lambda: consumers(1))  # the first stop's wait watches
            await rig.drain("web-a1")
            await eventually(lambda: rig.gone("web-a1"))
            await eventually(lambda: consumers(0))  # no stop waits: no watch, no consumer
            await rig.place("web-b2")
            await rig.unplace("web-b2")
            unplaced = time.monotonic()
            await rig.drain("web-b2")
            await eventually(lambda: rig.gone("web-b2"))
            assert rig.runtime.signalled["web-b2"] - unplaced < 5.0  # a new watch saw it
    finally:
        await nc.close()


async def test_while_netmgr_restarts_with_its_lease_handed_back_stops_still_wait_for_drains(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A netmgr stopped cleanly leaves its lease record with no holder (a restart or a
    failover is under way, the node parts' rules still in force): stops still wait for
    their drain record, not go at once as in a cluster that never ran netmgr."""
    handed_back = LeaseRecord(holder="", renewed_at=time.time())
    await buckets[names.LEASES_BUCKET].put(lease_key("netmgr"), encode(handed_back))
    async with hollow_agent(nats_url, buckets, tmp_path, monkeypatch, 30.0, netmgr=False) as rig:
        await rig.place("web-a1")
        await rig.unplace("web-a1")
        await eventually(lambda: rig.state_is("web-a1", ReplicaState.TERMINATING))
        await rig.beats(3)
        assert rig.runtime.stops == [] and len(rig.runtime.running(NODE)) == 1
        await rig.drain("web-a1")
        await eventually(lambda: rig.gone("web-a1"))
