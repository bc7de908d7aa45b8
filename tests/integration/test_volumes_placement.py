"""The scheduler on a real nats-server, the test playing volmgr (its ClaimStatus,
NodeVolumes and claim records written by hand into the buckets) and the nodes:
volume-aware placement (docs/volumes.md, "Replicas with volumes")."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import ObjectMeta, claim_names
from corral.contract.state import DeploymentStatus, Placement, ReplicaState, ReplicaStatus
from corral.contract.volume_specs import (
    PersistentVolume,
    PersistentVolumeClaim,
    PersistentVolumeClaimSpec,
    PersistentVolumeSpec,
    StorageRequest,
    VolumeResources,
)
from corral.contract.volume_state import ClaimStatus, NodeVolumes, VolumeStatus
from corral.natsio.kv import NatsBucket
from tests.integration.scheduler_harness import (
    deployment_json,
    placements,
    request,
    running_scheduler,
)
from tests.waiting import eventually

MiB = 2**20
TWO_NODES: dict[str, dict[str, int]] = {"n1": {}, "n2": {}}


def with_claim(name: str, replicas: int, claim: str = "data", **extra: Any) -> bytes:
    return deployment_json(
        name,
        replicas,
        volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": claim}}],
        volumeMounts=[{"name": "v", "mountPath": "/data"}],
        **extra,
    )


async def write_claim(
    buckets: dict[str, NatsBucket], name: str, modes: tuple[str, ...] = ("ReadWriteOnce",)
) -> None:
    claim = PersistentVolumeClaim(
        metadata=ObjectMeta(name=name),
        spec=PersistentVolumeClaimSpec(
            resources=VolumeResources(requests=StorageRequest(storage="100Mi")),
            access_modes=list(modes),  # type: ignore[arg-type]
        ),
    )
    await buckets[names.CLAIMS_BUCKET].put(claim.key, encode(claim))


async def write_status(buckets: dict[str, NatsBucket], status: ClaimStatus) -> None:
    await buckets[names.CLAIM_STATUS_BUCKET].put(status.key, encode(status))


async def status_of(buckets: dict[str, NatsBucket], name: str) -> DeploymentStatus | None:
    entry = await buckets[names.DEPLOYMENT_STATUS_BUCKET].get(f"default.{name}")
    return None if entry is None or not entry.value else decode(entry.value, DeploymentStatus)


async def test_a_deployment_waits_for_its_claim_and_goes_to_the_node_it_is_bound_on(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_scheduler(nats_url, nodes=TWO_NODES) as ctx:
        applied = await request(ctx.nc, "deployment", "apply", with_claim("web", 2))
        assert applied.ok, applied.error
        waiting = await eventually(
            lambda: status_of(buckets, "web"), lambda s: s is not None and s.pending == 2
        )
        assert waiting is not None
        assert waiting.pending_reason == 'persistentvolumeclaim "data" not found'
        await write_claim(buckets, "data")
        await write_status(
            buckets, ClaimStatus(name="data", phase="Bound", volume="pv-1", node="n2")
        )
        found = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 2
        )
        assert sorted(p.node for p in found.values()) == ["n2", "n2"]
        done = await status_of(buckets, "web")
        assert done is not None and (done.pending, done.pending_reason) == (0, "")


async def test_a_replica_waiting_for_its_first_consumer_goes_only_to_a_node_with_room(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    offers = {
        "n1": NodeVolumes(node="n1", ready=True, capacity_bytes=50 * MiB),  # too small
        "n2": NodeVolumes(node="n2", ready=True, capacity_bytes=1024 * MiB),
    }
    nodes = {**TWO_NODES, "n3": {}}  # n3 runs no volume manager
    for node, offer in offers.items():
        await buckets[names.NODE_VOLUMES_BUCKET].put(node, encode(offer))
    await write_claim(buckets, "data")
    await write_status(
        buckets,
        ClaimStatus(
            name="data",
            phase="Pending",
            wait_for_first_consumer=True,
            request_bytes=100 * MiB,
            reason="WaitForFirstConsumer",
        ),
    )
    async with running_scheduler(nats_url, nodes=nodes) as ctx:
        applied = await request(ctx.nc, "deployment", "apply", with_claim("web", 3))
        assert applied.ok, applied.error
        found = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 3
        )
        assert sorted(p.node for p in found.values()) == ["n2", "n2", "n2"]
        # another claim of 1000Mi fits nowhere now (n2 has 924Mi left): Pending, with why
        await write_claim(buckets, "big")
        await write_status(
            buckets,
            ClaimStatus(
                name="big", phase="Pending", wait_for_first_consumer=True, request_bytes=1000 * MiB
            ),
        )
        applied = await request(ctx.nc, "deployment", "apply", with_claim("db", 1, claim="big"))
        assert applied.ok, applied.error
        waiting = await eventually(
            lambda: status_of(buckets, "db"), lambda s: s is not None and s.pending == 1
        )
        assert waiting is not None and waiting.pending_reason == (
            "0/3 nodes are available: 2 node(s) did not have enough free storage, "
            "1 node(s) had no volume manager running"
        )


async def test_a_read_write_once_pod_claim_refuses_two_replicas_at_apply_and_scale(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await write_claim(buckets, "solo", ("ReadWriteOncePod",))
    async with running_scheduler(nats_url, nodes=TWO_NODES) as ctx:
        refused = await eventually(
            lambda: request(ctx.nc, "deployment", "apply", with_claim("db", 2, claim="solo")),
            lambda reply: not reply.ok,  # once the scheduler's mirror has the claim
        )
        assert refused.field == "spec.replicas"
        assert "'solo'" in refused.error and "ReadWriteOncePod" in refused.error
        assert await buckets[names.DEPLOYMENTS_BUCKET].get("default.db") is None
        applied = await request(ctx.nc, "deployment", "apply", with_claim("db", 1, claim="solo"))
        assert applied.ok, applied.error
        scaled = await request(ctx.nc, "deployment", "scale", encode({"name": "db", "replicas": 2}))
        assert (scaled.ok, scaled.field) == (False, "spec.replicas")


async def test_a_read_write_once_pod_update_never_has_two_placements_using_the_claim(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await write_claim(buckets, "solo", ("ReadWriteOncePod",))
    await write_status(
        buckets,
        ClaimStatus(name="solo", phase="Bound", volume="pv-1", access_modes=["ReadWriteOncePod"]),
    )
    bucket = buckets[names.PLACEMENTS_BUCKET]
    using: dict[str, Placement] = {}  # the placements using the claim, now
    most = 0
    seen: list[str] = []  # every template hash placed with the claim, in order

    async def watch_placements() -> None:
        nonlocal most
        async for entry in bucket.watch():
            if entry is None:
                continue
            if entry.value is None:
                using.pop(entry.key, None)
                continue
            try:
                placement = decode(entry.value, Placement)
            except msgspec.DecodeError:
                continue  # an echo key
            if "solo" in claim_names(placement.template):
                using[entry.key] = placement
                seen.append(placement.template_hash)
                most = max(most, len(using))

    async def run_them(found: dict[str, Placement]) -> dict[str, Placement]:
        """Play the agent: every placement reports Running."""
        for key, placement in found.items():
            status = ReplicaStatus(
                replica=placement.replica,
                deployment=placement.deployment,
                node=placement.node,
                state=ReplicaState.RUNNING,
                template_hash=placement.template_hash,
            )
            await buckets[names.REPLICA_STATUS_BUCKET].put(key, encode(status))
        return found

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_placements)
        async with running_scheduler(nats_url, nodes=TWO_NODES) as ctx:
            for image, env in (
                ("corral-test/busybox:1", {}),
                ("corral-test/busybox:1", {"V": "2"}),
            ):
                applied = await request(
                    ctx.nc,
                    "deployment",
                    "apply",
                    with_claim("db", 1, claim="solo", image=image, env=env),
                )
                assert applied.ok, applied.error
                generation = applied.generation

                def observed(s: DeploymentStatus | None, g: int = generation) -> bool:
                    return s is not None and s.observed_generation == g

                def only_current(p: dict[str, Placement], g: int = generation) -> bool:
                    return [q.generation for q in p.values()] == [g]

                await eventually(lambda: status_of(buckets, "db"), observed)
                current = await eventually(lambda: placements(bucket), only_current)
                await run_them(current)
                await eventually(
                    lambda: status_of(buckets, "db"),
                    lambda s: s is not None and (s.ready, s.updated, s.placed) == (1, 1, 1),
                )
        tg.cancel_scope.cancel()
    assert most == 1
    assert len(set(seen)) == 2  # the old template's replica, then the new one's


async def test_a_volume_made_by_hand_with_no_source_is_placed_only_where_its_size_fits(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    # n1 offers 2Gi, but a 1.5Gi volume made by hand already lives there (it counts)
    offers = {
        "n1": NodeVolumes(node="n1", ready=True, capacity_bytes=2048 * MiB),
        "n2": NodeVolumes(node="n2", ready=True, capacity_bytes=1024 * MiB),
    }
    for node, offer in offers.items():
        await buckets[names.NODE_VOLUMES_BUCKET].put(node, encode(offer))
    older = VolumeStatus(
        name="old", phase="Available", node="n1", size_bytes=1536 * MiB, counts_room=True
    )
    await buckets[names.VOLUME_STATUS_BUCKET].put("old", encode(older))
    volume = PersistentVolume(
        metadata=ObjectMeta(name="hand"),
        spec=PersistentVolumeSpec(capacity=StorageRequest(storage="1Gi")),  # no source
    )
    await buckets[names.VOLUMES_BUCKET].put("hand", encode(volume))
    await write_claim(buckets, "data")
    bound = ClaimStatus(name="data", phase="Bound", volume="hand", capacity_bytes=1024 * MiB)
    await write_status(buckets, bound)
    await write_claim(buckets, "gone")
    await write_status(buckets, ClaimStatus(name="gone", phase="Bound", volume="old", node="n1"))
    deleting = msgspec.structs.replace(older, phase="Deleting", claim="default.gone")
    await buckets[names.VOLUME_STATUS_BUCKET].put("old", encode(deleting))
    async with running_scheduler(nats_url, nodes={**TWO_NODES, "n3": {}}) as ctx:
        applied = await request(ctx.nc, "deployment", "apply", with_claim("web", 2))
        assert applied.ok, applied.error
        found = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 2
        )
        assert sorted(p.node for p in found.values()) == ["n2", "n2"]
        # a claim whose volume is being deleted: nothing placed, and why
        applied = await request(ctx.nc, "deployment", "apply", with_claim("db", 1, claim="gone"))
        assert applied.ok, applied.error
        waiting = await eventually(
            lambda: status_of(buckets, "db"), lambda s: s is not None and s.pending == 1
        )
        assert waiting is not None
        assert waiting.pending_reason == 'persistentvolumeclaim "gone"\'s volume is being deleted'
