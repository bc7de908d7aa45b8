"""Durable specs through real NATS: preconditions, no going backwards on redelivery
or replay, a lost consumer made again, a bounded delivery, and a warning before a
spec expires unapplied."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api

from corral.client.api import CorralClient
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import REASON_CONFLICT, Event, Reply
from corral.contract.specs import Deployment
from corral.natsio.bus import (
    EventPublisher,
    RetryPolicy,
    StoreSettings,
    connect,
    consume_spec_stream,
    ensure_streams,
    open_buckets,
)
from corral.natsio.kv import NatsBucket
from corral.natsio.spec_progress import progress_key, read_progress, recorded_progress
from corral_scheduler.main import DURABLE
from tests.integration.scheduler_harness import deployment_json, request, running_scheduler
from tests.waiting import eventually

APPLY = names.spec_subject("deployment", "apply")
DELETE = names.spec_subject("deployment", "delete")


@asynccontextmanager
async def publisher(nats_url: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    nc = await connect(nats_url, "publisher")
    try:
        yield nc, nc.jetstream()
    finally:
        await nc.close()


async def stored(buckets: dict[str, NatsBucket], name: str) -> Deployment | None:
    entry = await buckets[names.DEPLOYMENTS_BUCKET].get(f"default.{name}")
    if entry is None or entry.value is None:
        return None
    return decode(entry.value, Deployment)


async def events_of(nats_url: str, name: str | None = None) -> list[Event]:
    """What `corral events [--for deployment/NAME]` shows."""
    client = await CorralClient.connect(nats_url)
    async with client:
        return await client.events("deployment" if name else None, name)


async def test_a_stale_resource_version_is_refused_and_named_for_apply_scale_and_delete(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_scheduler(nats_url) as ctx:
        first = await request(ctx.nc, "deployment", "apply", deployment_json("web", 1))
        second = await request(ctx.nc, "deployment", "apply", deployment_json("web", 2))
        assert first.ok and second.ok and second.revision > first.revision

        def with_version(replicas: int, version: int) -> bytes:
            document = decode(deployment_json("web", replicas), dict)
            document["metadata"]["resourceVersion"] = version
            return encode(document)

        stale = await request(ctx.nc, "deployment", "apply", with_version(3, first.revision))
        assert not stale.ok and stale.reason == REASON_CONFLICT
        assert stale.error == (
            f"resourceVersion {first.revision} is stale: the stored deployment is at "
            f"revision {second.revision}"
        )
        assert stale.field == "metadata.resourceVersion"
        assert (await stored(buckets, "web")).spec.replicas == 2  # type: ignore[union-attr]

        fresh = await request(ctx.nc, "deployment", "apply", with_version(3, second.revision))
        assert fresh.ok and fresh.generation == 3

        scale = encode({"name": "web", "replicas": 9, "resourceVersion": second.revision})
        refused = await request(ctx.nc, "deployment", "scale", scale)
        assert not refused.ok and f"resourceVersion {second.revision} is stale" in refused.error
        delete = encode({"name": "web", "resourceVersion": second.revision})
        refused = await request(ctx.nc, "deployment", "delete", delete)
        assert not refused.ok and refused.reason == REASON_CONFLICT
        assert await stored(buckets, "web") is not None

        delete = encode({"name": "web", "resourceVersion": fresh.revision})
        assert (await request(ctx.nc, "deployment", "delete", delete)).ok
        assert await stored(buckets, "web") is None


async def test_a_replayed_older_spec_never_rolls_back_a_newer_request_write(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with publisher(nats_url) as (_, js):
        older = await js.publish(APPLY, deployment_json("web", 2))
        async with running_scheduler(nats_url) as ctx:
            await eventually(lambda: stored(buckets, "web"), lambda d: d is not None)
            newer = await request(ctx.nc, "deployment", "apply", deployment_json("web", 5))
            assert newer.ok and newer.generation == 2
        # Lose the durable consumer and rewind the progress record to "nothing
        # handled" (an old backup, say): the next scheduler replays the whole stream.
        await js.delete_consumer(names.SPEC_STREAM, DURABLE)
        await buckets[names.LEASES_BUCKET].put(progress_key("deployment"), encode({"applied": 0}))
        await js.publish(APPLY, deployment_json("marker", 1))
        async with running_scheduler(nats_url):
            await eventually(lambda: stored(buckets, "marker"), lambda d: d is not None)
            web = await stored(buckets, "web")
            assert web is not None and web.spec.replicas == 5  # not rolled back to 2
            assert web.metadata.spec_sequence >= older.seq
            found = await eventually(
                lambda: events_of(nats_url, "web"),
                lambda events: any(e.reason == "Superseded" for e in events),
            )
            superseded = next(e for e in found if e.reason == "Superseded")
            assert f"spec #{older.seq}" in superseded.message


async def test_a_lost_consumer_is_made_again_without_bringing_back_a_deleted_deployment(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with publisher(nats_url) as (_, js), running_scheduler(nats_url):
        await js.publish(APPLY, deployment_json("old", 1))
        await eventually(lambda: stored(buckets, "old"), lambda d: d is not None)
        deleted = await js.publish(DELETE, encode({"name": "old"}))
        await eventually(lambda: stored(buckets, "old"), lambda d: d is None)
        await eventually(
            lambda: read_progress(buckets[names.LEASES_BUCKET], "deployment"),
            lambda found: found[0].applied >= deleted.seq,
        )
        await js.delete_consumer(names.SPEC_STREAM, DURABLE)  # lost while running
        await js.publish(APPLY, deployment_json("fresh", 1))
        await eventually(lambda: stored(buckets, "fresh"), lambda d: d is not None)
        assert await stored(buckets, "old") is None  # the replay did not resurrect it
        consumer = await js.consumer_info(names.SPEC_STREAM, DURABLE)
        assert consumer.config.opt_start_seq == deleted.seq + 1
        events = await events_of(nats_url)
        assert any(e.reason == "ConsumerRecreated" for e in events), events


async def test_a_consumer_lost_with_its_progress_record_replays_nothing_and_says_so(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with publisher(nats_url) as (nc, js):
        async with running_scheduler(nats_url):
            applied = await js.publish(APPLY, deployment_json("old", 1))
            await eventually(lambda: stored(buckets, "old"), lambda d: d is not None)
            assert (await request(nc, "deployment", "delete", encode({"name": "old"}))).ok
        # Lose both the consumer and the record of how far specs were applied.
        await js.delete_consumer(names.SPEC_STREAM, DURABLE)
        await buckets[names.LEASES_BUCKET].delete(progress_key("deployment"))
        async with running_scheduler(nats_url):
            consumer = await js.consumer_info(names.SPEC_STREAM, DURABLE)
            assert consumer.config.deliver_policy == js_api.DeliverPolicy.NEW
            found = await eventually(
                lambda: events_of(nats_url),
                lambda events: any(e.reason == "SpecsSkipped" for e in events),
            )
            skipped = next(e for e in found if e.reason == "SpecsSkipped")
            assert skipped.type == "Warning"
            assert "corral_leases/specs.deployment) is missing" in skipped.message
            assert f"only new specs (after stream sequence {applied.seq})" in skipped.message
            assert "could bring back deleted objects" in skipped.message
            await js.publish(APPLY, deployment_json("fresh", 1))  # new specs still apply
            await eventually(lambda: stored(buckets, "fresh"), lambda d: d is not None)
            assert await stored(buckets, "old") is None  # not brought back by a replay
            progress, _ = await read_progress(buckets[names.LEASES_BUCKET], "deployment")
            assert progress.applied > applied.seq  # recorded again


async def test_a_consumer_lost_while_its_progress_record_is_unreadable_starts_at_new_specs(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    leases = buckets[names.LEASES_BUCKET]
    async with publisher(nats_url) as (_, js), running_scheduler(nats_url):
        first = await js.publish(APPLY, deployment_json("first", 1))
        await eventually(lambda: stored(buckets, "first"), lambda d: d is not None)
        await eventually(
            lambda: read_progress(leases, "deployment"),
            lambda found: found[0].applied >= first.seq,
        )
        await leases.put(progress_key("deployment"), b"{garbled")
        await js.delete_consumer(names.SPEC_STREAM, DURABLE)  # lost while running
        found = await eventually(
            lambda: events_of(nats_url),
            lambda events: any(e.reason == "SpecsSkipped" for e in events),
        )
        skipped = next(e for e in found if e.reason == "SpecsSkipped")
        assert "corral_leases/specs.deployment) cannot be read" in skipped.message
        consumer = await js.consumer_info(names.SPEC_STREAM, DURABLE)
        assert consumer.config.deliver_policy == js_api.DeliverPolicy.NEW
        readable, recorded = await recorded_progress(leases, "deployment")
        assert recorded and readable is not None and readable.applied >= first.seq
        await js.publish(APPLY, deployment_json("later", 1))
        await eventually(lambda: stored(buckets, "later"), lambda d: d is not None)


async def test_a_spec_that_keeps_failing_is_given_up_on_kept_and_told_and_the_stream_goes_on(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    applied: list[str] = []

    async def apply(raw: bytes, sequence: int = 0) -> Reply:
        name = decode(raw, Deployment).metadata.name
        if name == "bad":
            raise RuntimeError("the store said no")
        applied.append(name)
        return Reply(ok=True, kind="Deployment", name=name)

    async with publisher(nats_url) as (nc, js), anyio.create_task_group() as tg:
        bad = await js.publish(APPLY, deployment_json("bad", 1))
        await js.publish(APPLY, deployment_json("good", 1))
        await tg.start(
            lambda task_status: consume_spec_stream(
                js,
                "Deployment",
                {"apply": apply},
                EventPublisher(nc, "test"),
                durable="test-deployment",
                progress=buckets[names.LEASES_BUCKET],
                retry=RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.1),
                task_status=task_status,
            )
        )
        await eventually(lambda: _value(applied), lambda found: found == ["good"])
        found = await eventually(
            lambda: events_of(nats_url, "bad"),
            lambda events: any(e.reason == "SpecFailed" for e in events),
        )
        failed = next(e for e in found if e.reason == "SpecFailed")
        assert failed.type == "Warning"
        assert f"spec #{bad.seq}" in failed.message and "the store said no" in failed.message
        kept = await js.get_msg(names.SPEC_STREAM, bad.seq)
        assert kept.data == deployment_json("bad", 1)
        tg.cancel_scope.cancel()
    assert applied == ["good"]  # given up on: never delivered again


async def test_a_spec_about_to_expire_unapplied_is_warned_about(nats_url: str) -> None:
    settings = StoreSettings(specs_max_age=2.1)  # warned once older than 1.8 s
    stuck = anyio.Event()

    async def apply(raw: bytes, sequence: int = 0) -> Reply:
        await stuck.wait()  # an owner that cannot get on
        return Reply(ok=True)

    async with publisher(nats_url) as (nc, js), anyio.create_task_group() as tg:
        await ensure_streams(js, settings)
        buckets = await open_buckets(js, settings)
        waiting = await js.publish(APPLY, deployment_json("slow", 1))
        await tg.start(
            lambda task_status: consume_spec_stream(
                js,
                "Deployment",
                {"apply": apply},
                EventPublisher(nc, "test"),
                durable="test-deployment",
                progress=buckets[names.LEASES_BUCKET],
                settings=settings,
                expiry_check_every=0.1,
                task_status=task_status,
            )
        )
        found = await eventually(
            lambda: events_of(nats_url),
            lambda events: any(e.reason == "SpecExpiring" for e in events),
        )
        warning = next(e for e in found if e.reason == "SpecExpiring")
        assert warning.type == "Warning" and f"spec #{waiting.seq}" in warning.message
        stuck.set()
        tg.cancel_scope.cancel()


async def _value(items: list[str]) -> list[str]:
    return list(items)
