"""A Deployment's rolling update settings through a real nats-server: the scheduler and
two node agents (hollow runtime), every change of corral_placements and
corral_replica_status recorded as it happens and replayed in the server's own order
(each message's JetStream timestamp, one clock), so the bounds are checked at every
moment of the update, not at samples:

- maxSurge 0 / maxUnavailable 1 on 4 replicas: never more than 4 placed, never fewer
  than 3 placed and Running;
- Recreate: never an old and a new template placed at once;
- minReadySeconds: no old replica stops before a new one has run that long (and the
  Deployment is decided again then, not at the next resync);
- paused (through `corral rollout pause`): the template change waits, a scale-up still
  happens (with the old template), and `corral rollout resume` completes the rollout.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
from click.testing import CliRunner, Result

from corral.client.cli.main import cli
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import ContainerTemplate
from corral.contract.state import DeploymentStatus, Placement, ReplicaState, ReplicaStatus
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext
from tests.agents import running_agent
from tests.integration.scheduler_harness import request, running_scheduler
from tests.waiting import eventually

IMAGE = "corral-test/busybox:1"


def hollow_agent(nats_url: str, node: str) -> AbstractAsyncContextManager[ServiceContext]:
    flags = ("--runtime", "hollow", "--cpu", "2", "--memory", "4Gi", "--heartbeat-seconds", "0.5")
    return running_agent(nats_url, node, *flags)


def template(version: str) -> dict[str, Any]:
    return {"image": IMAGE, "env": {"VERSION": version}}


def hash_of(version: str) -> str:
    return msgspec.convert(template(version), ContainerTemplate).template_hash()


def deployment(replicas: int, version: str, **spec: Any) -> bytes:
    return encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "template": template(version), **spec},
        }
    )


@dataclass
class Moment:
    """The cluster as the two buckets said at one instant of the server's clock."""

    time: datetime.datetime
    placed: dict[str, str]  # placement key -> template hash
    running: set[str]  # placement keys whose status says Running

    @property
    def ready(self) -> int:
        return len(self.running & self.placed.keys())


@dataclass
class Recorder:
    """Every change of the two buckets, with the server's timestamp."""

    changes: list[tuple[datetime.datetime, int, str, bytes | None]] = field(default_factory=list)

    def timeline(self) -> list[Moment]:
        placed: dict[str, str] = {}
        running: set[str] = set()
        moments = []
        # a placement change (0) and a status change (1) at the same instant: the status
        # first, since a stop was decided on a status the scheduler had already seen
        for time, bucket, key, value in sorted(self.changes, key=lambda c: (c[0], -c[1])):
            if bucket == 0:
                if value is None:
                    placed.pop(key, None)
                else:
                    placed[key] = decode(value, Placement).template_hash
            elif value is not None and decode(value, ReplicaStatus).state == ReplicaState.RUNNING:
                running.add(key)
            else:
                running.discard(key)
            moments.append(Moment(time, dict(placed), set(running)))
        return moments


@asynccontextmanager
async def recording(nats_url: str) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    nc = await connect(nats_url, name="recorder")
    js = nc.jetstream()

    async def follow(bucket: str, index: int) -> None:
        kv = await js.key_value(bucket)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None or "_echo" in entry.key or entry.created is None:
                continue
            deleted = entry.operation in ("DEL", "PURGE") or not entry.value
            recorder.changes.append(
                (entry.created, index, entry.key, None if deleted else entry.value)
            )

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, names.PLACEMENTS_BUCKET, 0)
            tg.start_soon(follow, names.REPLICA_STATUS_BUCKET, 1)
            yield recorder
            tg.cancel_scope.cancel()
    finally:
        await nc.close()


async def current(buckets: dict[str, NatsBucket]) -> Moment:
    placed: dict[str, str] = {}
    running: set[str] = set()
    async for entry in buckets[names.PLACEMENTS_BUCKET].watch():
        if entry is None:
            break
        if entry.value and "_echo" not in entry.key:
            placed[entry.key] = decode(entry.value, Placement).template_hash
    async for entry in buckets[names.REPLICA_STATUS_BUCKET].watch():
        if entry is None:
            break
        if entry.value and decode(entry.value, ReplicaStatus).state == ReplicaState.RUNNING:
            running.add(entry.key)
    return Moment(datetime.datetime.now(datetime.UTC), placed, running)


def rolled_to(version: str, replicas: int) -> Any:
    def done(moment: Moment) -> bool:
        hashes = set(moment.placed.values())
        return (
            len(moment.placed) == replicas and hashes == {hash_of(version)}
        ) and moment.ready == replicas

    return done


@asynccontextmanager
async def cluster(nats_url: str) -> AsyncIterator[ServiceContext]:
    async with (
        running_scheduler(nats_url) as scheduler,
        hollow_agent(nats_url, "node-1"),
        hollow_agent(nats_url, "node-2"),
    ):
        yield scheduler


def from_first_full(moments: list[Moment], replicas: int) -> list[Moment]:
    """The moments from when the first version was all placed and Running."""
    for index, moment in enumerate(moments):
        if moment.ready == replicas:
            return moments[index:]
    raise AssertionError("the Deployment never had all its replicas Running")


async def test_no_surge_one_unavailable_keeps_4_placed_and_3_ready_throughout(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    strategy = {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    async with cluster(nats_url) as scheduler, recording(nats_url) as recorder:
        reply = await request(scheduler.nc, "deployment", "apply", deployment(4, "1"))
        assert reply.ok, reply.error
        await eventually(lambda: current(buckets), rolled_to("1", 4))
        reply = await request(
            scheduler.nc, "deployment", "apply", deployment(4, "2", strategy=strategy)
        )
        assert reply.ok, reply.error
        await eventually(lambda: current(buckets), rolled_to("2", 4), within=20)
    moments = from_first_full(recorder.timeline(), 4)
    assert max(len(m.placed) for m in moments) == 4
    assert min(m.ready for m in moments) == 3  # it did go down to 3, never below
    assert any(hash_of("2") in m.placed.values() for m in moments)


async def test_recreate_never_has_old_and_new_placed_at_once(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler, recording(nats_url) as recorder:
        recreate = {"type": "Recreate"}
        reply = await request(
            scheduler.nc, "deployment", "apply", deployment(4, "1", strategy=recreate)
        )
        assert reply.ok, reply.error
        await eventually(lambda: current(buckets), rolled_to("1", 4))
        reply = await request(
            scheduler.nc, "deployment", "apply", deployment(4, "2", strategy=recreate)
        )
        assert reply.ok, reply.error
        await eventually(lambda: current(buckets), rolled_to("2", 4), within=20)
    moments = from_first_full(recorder.timeline(), 4)
    assert all(len(set(m.placed.values())) <= 1 for m in moments)
    assert any(not m.placed for m in moments)  # every old one gone before a new one


async def test_min_ready_seconds_keeps_old_replicas_until_a_new_one_ran_that_long(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    settings = {"minReadySeconds": 2, "strategy": {"rollingUpdate": {"maxUnavailable": 0}}}
    async with cluster(nats_url) as scheduler, recording(nats_url) as recorder:
        reply = await request(scheduler.nc, "deployment", "apply", deployment(2, "1", **settings))
        assert reply.ok, reply.error
        await eventually(lambda: current(buckets), rolled_to("1", 2), within=15)
        reply = await request(scheduler.nc, "deployment", "apply", deployment(2, "2", **settings))
        assert reply.ok, reply.error
        # two new replicas one after the other, each held 2 s: well before a 30 s resync
        await eventually(lambda: current(buckets), rolled_to("2", 2), within=15)
    moments = from_first_full(recorder.timeline(), 2)
    new = hash_of("2")
    first_new_running = next(
        m.time for m in moments if any(m.placed.get(k) == new for k in m.running)
    )
    old_keys = {k for k, h in moments[0].placed.items() if h != new}
    first_old_gone = next(m.time for m in moments if not old_keys <= m.placed.keys())
    assert (first_old_gone - first_new_running).total_seconds() >= 1.9
    assert min(m.ready for m in moments) >= 2  # maxUnavailable 0


async def corral(url: str, *args: str) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, *args])

    return await anyio.to_thread.run_sync(invoke)


async def generation_observed(buckets: dict[str, NatsBucket]) -> bool:
    stored = await buckets[names.DEPLOYMENTS_BUCKET].get(names.object_key("default", "web"))
    status = await buckets[names.DEPLOYMENT_STATUS_BUCKET].get(names.object_key("default", "web"))
    if stored is None or status is None or not stored.value or not status.value:
        return False
    generation = msgspec.json.decode(stored.value)["metadata"]["generation"]
    return decode(status.value, DeploymentStatus).observed_generation == generation


async def test_pause_holds_the_rollout_scaling_applies_and_resume_completes_it(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler:
        assert (await request(scheduler.nc, "deployment", "apply", deployment(4, "1"))).ok
        await eventually(lambda: current(buckets), rolled_to("1", 4))

        paused = await corral(nats_url, "rollout", "pause", "deployment/web")
        assert paused.exit_code == 0, paused.output
        assert paused.output == "deployment/web paused\n"
        again = await corral(nats_url, "rollout", "pause", "deployment", "web")
        assert again.exit_code == 1 and "already paused" in again.output
        described = await corral(nats_url, "describe", "deployment", "web")
        assert "Paused:       yes" in described.output

        # a new template and one more replica while paused
        reply = await request(scheduler.nc, "deployment", "apply", deployment(5, "2", paused=True))
        assert reply.ok, reply.error
        await eventually(lambda: generation_observed(buckets), bool)
        held = await eventually(lambda: current(buckets), rolled_to("1", 5))
        assert set(held.placed.values()) == {hash_of("1")}

        resumed = await corral(nats_url, "rollout", "resume", "deployment/web")
        assert resumed.exit_code == 0, resumed.output
        assert resumed.output == "deployment/web resumed\n"
        await eventually(lambda: current(buckets), rolled_to("2", 5), within=20)
        again = await corral(nats_url, "rollout", "resume", "deployment/web")
        assert again.exit_code == 1 and "not paused" in again.output
        missing = await corral(nats_url, "rollout", "pause", "deployment/nope")
        assert missing.exit_code == 1 and "not found" in missing.output
