"""The rules every spec API follows (corral.natsio.spec_api), the same for the
scheduler's Deployments and netmgr's Networks, each reply in its kind's own words."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import (
    REASON_CONFLICT,
    REASON_INTERNAL,
    REASON_NOT_FOUND,
    REASON_SUPERSEDED,
    Reply,
)
from corral.natsio.kv import Entry, MemoryBucket
from corral.natsio.spec_api import SpecAPI
from corral.natsio.spec_progress import progress_key
from corral_scheduler.deployment_api import DeploymentAPI
from tests.integration.scheduler_harness import deployment_json
from tests.unit.netmgr_helpers import memory_buckets, netmgr, network


class FailingLeases(MemoryBucket):
    """A progress bucket whose writes fail (NATS away)."""

    async def create(self, key: str, value: bytes) -> int:
        raise ConnectionError("NATS is away")

    async def update(self, key: str, value: bytes, revision: int) -> int:
        raise ConnectionError("NATS is away")


async def five() -> int:
    return 5  # an older spec still waits in the stream


def unrecorded(noun: str, name: str, kind: str, brought_back: str) -> str:
    return (
        f"{noun} {name!r} was not deleted: the delete could not be recorded in "
        f"{names.LEASES_BUCKET}/{progress_key(kind)} (ConnectionError: NATS is away), and "
        f"without it an older spec still waiting in {names.SPEC_STREAM} could bring "
        f"{brought_back} back; try again"
    )


async def refusals(api: SpecAPI[Any], name: str, apply: bytes) -> list[Reply]:
    """A delete and a stale delete of a missing object, then an apply and an
    unrecorded delete (its progress bucket fails)."""
    return [
        await api.delete(encode({"name": name})),
        await api.delete(encode({"name": name, "resourceVersion": 7})),
        await api.apply(apply),
        await api.delete(encode({"name": name})),
    ]


def check(replies: list[Reply], noun: str, name: str, brought_back: str, kind: str) -> None:
    missing, stale, applied, unremembered = replies
    assert (missing.reason, missing.error, missing.field) == (
        REASON_NOT_FOUND,
        f"{noun} {name!r} not found",
        "name",
    )
    assert (stale.reason, stale.error, stale.field, stale.revision) == (
        REASON_CONFLICT,
        f"resourceVersion 7 is stale: {noun} {name!r} does not exist",
        "resourceVersion",
        0,
    )
    assert applied.ok and applied.generation == 1
    assert unremembered.reason == REASON_INTERNAL and unremembered.kind == kind
    assert unremembered.error == unrecorded(noun, name, kind, brought_back)


async def test_a_deployments_refusals_name_the_deployment() -> None:
    leases = FailingLeases(names.LEASES_BUCKET)
    api = DeploymentAPI(MemoryBucket("deployments"), leases, five)
    check(
        await refusals(api, "web", deployment_json("web", 1)),
        "deployment",
        "web",
        "the deployment",
        "Deployment",
    )


async def test_a_networks_refusals_name_the_network_and_say_it() -> None:
    buckets = memory_buckets()
    buckets[names.LEASES_BUCKET] = FailingLeases(names.LEASES_BUCKET)
    async with netmgr(buckets) as n:
        n.networks.spec_position = five
        check(
            await refusals(n.networks, "blue", network("blue")), "network", "blue", "it", "Network"
        )


async def test_a_record_that_cannot_be_read_is_replaced_at_its_next_generation() -> None:
    deployments = MemoryBucket("deployments")
    await deployments.put("default.web", b'{"metadata": {"generation": 4}, "spec": 1}')
    replaced = await DeploymentAPI(deployments).apply(deployment_json("web", 1))
    assert replaced.ok and replaced.generation == 5
    async with netmgr() as n:
        await n.buckets[names.NETWORKS_BUCKET].put("blue", b'{"metadata": {"generation": 2}}')
        await n.settle()
        replaced = await n.networks.apply(network("blue"))
        assert replaced.ok and replaced.generation == 3


class CreatedMeanwhile(MemoryBucket):
    """Another writer stores `other` under a key just before this one's first create."""

    def __init__(self, name: str, other: bytes) -> None:
        super().__init__(name)
        self.other: bytes | None = other

    async def create(self, key: str, value: bytes) -> int:
        if self.other is not None:
            other, self.other = self.other, None
            await super().create(key, other)
        return await super().create(key, value)


async def test_a_create_only_apply_racing_another_create_is_refused_and_keeps_it() -> None:
    import msgspec

    def create_only(raw: bytes) -> bytes:
        document = msgspec.json.decode(raw)
        document["metadata"]["createOnly"] = True
        return encode(document)

    others = deployment_json("web", 1, image="theirs:1")
    bucket = CreatedMeanwhile("deployments", others)
    api = DeploymentAPI(bucket)
    refused = await api.apply(create_only(deployment_json("web", 1, image="mine:1")))
    assert (refused.ok, refused.reason, refused.field) == (
        False,
        REASON_CONFLICT,
        "metadata.createOnly",
    )
    assert refused.error.startswith("deployment 'web' already exists (revision 1)")
    entry = await bucket.get("default.web")
    assert entry is not None and entry.value == others and entry.revision == 1
    # without the race it is created, and createOnly is not stored
    made = await DeploymentAPI(MemoryBucket("d2")).apply(create_only(deployment_json("x", 1)))
    assert made.ok and made.generation == 1


class GetSeen(MemoryBucket):
    """A bucket that says when a read of it is under way."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.reading = anyio.Event()

    async def get(self, key: str) -> Entry | None:
        self.reading.set()
        return await super().get(key)


async def test_an_apply_reads_the_stream_position_and_the_stored_object_at_once() -> None:
    # Two round trips in the time of one: the position is still being read (it waits
    # here until the object's read has begun) when the object is read.
    deployments = GetSeen("deployments")

    async def position_waiting_for_the_read() -> int:
        await deployments.reading.wait()
        return 5

    api = DeploymentAPI(deployments, spec_position=position_waiting_for_the_read)
    with anyio.fail_after(5):
        first = await api.apply(deployment_json("web", 1))
    assert first.ok and first.generation == 1
    stored = await deployments.get(names.object_key("default", "web"))
    assert stored is not None and b'"specSequence":5' in stored.value.replace(b" ", b"")


async def test_an_apply_whose_early_read_went_stale_reads_again_and_writes() -> None:
    deployments = MemoryBucket("deployments")
    api = DeploymentAPI(deployments)
    assert (await api.apply(deployment_json("web", 1))).ok
    real_position = api.spec_position

    async def position_while_another_writes() -> int:
        # Another writer changes the object after this apply's early read of it.
        await anyio.lowlevel.checkpoint()
        assert (await DeploymentAPI(deployments).apply(deployment_json("web", 2))).ok
        return await real_position()

    api.spec_position = position_while_another_writes
    third = await api.apply(deployment_json("web", 3))
    assert third.ok and third.generation == 3, third


async def test_an_unchanged_apply_records_its_position_so_an_older_durable_spec_is_skipped() -> (
    None
):
    # A durable spec D is published (stream sequence 7) before a request asks for what is
    # stored already; D is applied after the request's answer. D is older: skipped.
    deployments = MemoryBucket("deployments")
    position = {"now": 5}

    async def stream_position() -> int:
        return position["now"]

    api = DeploymentAPI(deployments, spec_position=stream_position)
    assert (await api.apply(deployment_json("web", 2))).ok  # recorded at sequence 5
    position["now"] = 7  # D published
    same = await api.apply(deployment_json("web", 2))
    assert same.ok and same.unchanged
    durable = await api.apply(deployment_json("web", 3), sequence=7)
    assert durable.reason == REASON_SUPERSEDED, durable
    stored = await deployments.get(names.object_key("default", "web"))
    assert stored is not None and b'"replicas":2' in stored.value.replace(b" ", b"")
