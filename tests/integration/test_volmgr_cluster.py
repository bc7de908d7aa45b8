"""volmgr's cluster part through a real nats-server: PersistentVolumes, claims and
StorageClasses over request/reply and the durable stream, binding, provisioning,
protection, reclaim, the release command, bad input, and restarts (docs/volumes.md)."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Event
from corral.contract.volume_specs import PersistentVolume, PersistentVolumeClaim, StorageClass
from corral.contract.volume_state import ClaimStatus, VolumeStatus
from corral.natsio.kv import NatsBucket
from corral.natsio.lease import LeaseRecord, lease_key
from corral_volmgr.cluster_loop import ClusterLoop
from corral_volmgr.provisioning import provisioned_name
from tests.integration.cluster_part_harness import absent, record, request
from tests.integration.volmgr_harness import running_volmgr
from tests.unit.volmgr_helpers import (
    MI,
    attachment,
    node_volumes,
    placement,
    pv,
    pvc,
    storage_class,
)
from tests.waiting import eventually


async def until(bucket: NatsBucket, key: str, kind: type[Any], accept: Any) -> Any:
    return await eventually(lambda: record(bucket, key, kind), accept)


def phase(wanted: str) -> Any:
    return lambda r: r is not None and r.phase == wanted


async def test_the_seeds_two_specs_bind_and_a_restart_changes_nothing(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    claims = buckets[names.CLAIM_STATUS_BUCKET]
    statuses = buckets[names.VOLUME_STATUS_BUCKET]
    async with running_volmgr(nats_url) as ctx:
        local = await until(buckets[names.STORAGE_CLASSES_BUCKET], "local", StorageClass, bool)
        assert local.is_default
        told = await ctx.nc.subscribe(
            names.event_subject("persistentvolumeclaim", "my-pvc", "default")
        )
        made = await request(ctx.nc, "persistentvolume", "apply", pv("my-pv", "100Mi"))
        assert made.ok, made
        made = await request(ctx.nc, "persistentvolumeclaim", "apply", pvc("my-pvc", "50Mi"))
        assert made.ok, made
        bound = await until(claims, "default.my-pvc", ClaimStatus, phase("Bound"))
        assert bound.volume == "my-pv" and bound.capacity_bytes == 100 * MI
        volume = await record(statuses, "my-pv", VolumeStatus)
        assert volume.phase == "Bound" and volume.claim == "default.my-pvc"
        event = decode((await told.next_msg(timeout=5)).data, Event)
        assert (event.reason, event.message) == ("Bound", "bound to volume my-pv")
    before = {
        key: (await statuses.get(key), await claims.get(key)) for key in ("my-pv", "default.my-pvc")
    }
    async with running_volmgr(nats_url) as ctx:
        # a claim and a volume made after the restart bind: the controllers went through
        # every key enqueued at start before them
        await eventually(
            lambda: request(ctx.nc, "persistentvolume", "apply", pv("later", "10Mi")),
            lambda r: r.ok,
        )
        assert (await request(ctx.nc, "persistentvolumeclaim", "apply", pvc("later", "10Mi"))).ok
        later = await until(claims, "default.later", ClaimStatus, phase("Bound"))
        assert later.volume == "later"
        after = {
            key: (await statuses.get(key), await claims.get(key))
            for key in ("my-pv", "default.my-pvc")
        }
    assert {k: (a and a.revision, b and b.revision) for k, (a, b) in after.items()} == {
        k: (a and a.revision, b and b.revision) for k, (a, b) in before.items()
    }


async def test_a_pending_claim_says_why_and_binds_when_a_volume_appears(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    claims = buckets[names.CLAIM_STATUS_BUCKET]
    async with running_volmgr(nats_url) as ctx:
        await request(
            ctx.nc, "persistentvolume", "apply", pv("small", "40Mi", storageClassName="manual")
        )
        reply = await request(
            ctx.nc, "persistentvolumeclaim", "apply", pvc("data", "50Mi", storageClassName="manual")
        )
        assert reply.ok
        pending = await until(claims, "default.data", ClaimStatus, phase("Pending"))
        assert pending.reason == "NoMatchingVolume"
        assert pending.message == (
            'no volume of class "manual" fits: 1 volume too small (largest 40Mi, 50Mi asked)'
        )
        js = ctx.nc.jetstream()
        await js.publish(
            names.spec_subject("persistentvolume", "apply"),
            pv("bigger", "60Mi", storageClassName="manual"),
        )
        bound = await until(claims, "default.data", ClaimStatus, phase("Bound"))
        assert bound.volume == "bigger"


async def test_two_claims_racing_for_one_volume_never_both_bind_it(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    """Two cluster parts at once (as across a lease failover), each binding its own
    claim, both choosing the one volume: the compare-and-set on its status lets one."""
    async with running_volmgr(nats_url) as ctx:
        assert (await request(ctx.nc, "persistentvolume", "apply", pv("only"))).ok
        await until(buckets[names.VOLUME_STATUS_BUCKET], "only", VolumeStatus, phase("Available"))
    for claim in ("a", "b"):
        raw = pvc(claim, storageClassName="")
        stored = decode(raw, PersistentVolumeClaim)
        stored = msgspec.structs.replace(
            stored, metadata=msgspec.structs.replace(stored.metadata, uid=f"uid-{claim}")
        )
        await buckets[names.CLAIMS_BUCKET].put(f"default.{claim}", encode(stored))
    first = ClusterLoop(dict(buckets))
    second = ClusterLoop(dict(buckets))
    async with anyio.create_task_group() as tg:
        await tg.start(first.start_mirrors)
        await tg.start(second.start_mirrors)
        async with anyio.create_task_group() as race:
            race.start_soon(first.reconcile_claim, "default.a")
            race.start_soon(second.reconcile_claim, "default.b")
        tg.cancel_scope.cancel()
    volume = await record(buckets[names.VOLUME_STATUS_BUCKET], "only", VolumeStatus)
    assert volume.phase == "Bound" and volume.claim in ("default.a", "default.b")
    a = await record(buckets[names.CLAIM_STATUS_BUCKET], "default.a", ClaimStatus)
    b = await record(buckets[names.CLAIM_STATUS_BUCKET], "default.b", ClaimStatus)
    bound = [s for s in (a, b) if s is not None and s.phase == "Bound"]
    assert len(bound) == 1 and f"default.{bound[0].name}" == volume.claim
    # the loser looks again and waits, naming why
    async with running_volmgr(nats_url):
        loser = "default.b" if volume.claim == "default.a" else "default.a"
        waiting = await until(
            buckets[names.CLAIM_STATUS_BUCKET], loser, ClaimStatus, phase("Pending")
        )
        assert "1 volume bound to another claim" in waiting.message


async def test_an_immediate_class_provisions_a_volume_on_a_node_with_room(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await buckets[names.NODE_VOLUMES_BUCKET].put("n1", encode(node_volumes("n1", 10 * MI)))
    await buckets[names.NODE_VOLUMES_BUCKET].put("n2", encode(node_volumes("n2", 1024 * MI)))
    async with running_volmgr(nats_url) as ctx:
        fast = storage_class("fast", volumeBindingMode="Immediate")
        assert (await request(ctx.nc, "storageclass", "apply", fast)).ok
        assert (
            await request(
                ctx.nc, "persistentvolumeclaim", "apply", pvc("data", storageClassName="fast")
            )
        ).ok
        claim = await until(
            buckets[names.CLAIMS_BUCKET], "default.data", PersistentVolumeClaim, bool
        )
        name = provisioned_name(claim.metadata.uid)
        status = await until(
            buckets[names.VOLUME_STATUS_BUCKET], name, VolumeStatus, phase("Pending")
        )
        assert (
            status.node == "n2" and status.provisioned_by == "fast" and status.size_bytes == 50 * MI
        )
        await buckets[names.VOLUME_ATTACHMENTS_BUCKET].put(
            f"n2.{name}", encode(attachment("n2", name))
        )
        bound = await until(
            buckets[names.CLAIM_STATUS_BUCKET], "default.data", ClaimStatus, phase("Bound")
        )
        assert bound.volume == name and bound.node == "n2"
        volume = await record(buckets[names.VOLUME_STATUS_BUCKET], name, VolumeStatus)
        assert volume.phase == "Bound" and volume.size_enforced is True


async def test_wait_for_first_consumer_provisions_on_the_node_of_the_placement(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await buckets[names.NODE_VOLUMES_BUCKET].put("n1", encode(node_volumes("n1", 1024 * MI)))
    await buckets[names.NODE_VOLUMES_BUCKET].put("n2", encode(node_volumes("n2", 1024 * MI)))
    async with running_volmgr(nats_url) as ctx:
        assert (await request(ctx.nc, "persistentvolumeclaim", "apply", pvc("data"))).ok
        waiting = await until(
            buckets[names.CLAIM_STATUS_BUCKET], "default.data", ClaimStatus, phase("Pending")
        )
        await eventually(
            lambda: record(buckets[names.CLAIM_STATUS_BUCKET], "default.data", ClaimStatus),
            lambda s: s.reason == "WaitForFirstConsumer" and s.wait_for_first_consumer,
        )
        assert waiting.request_bytes == 50 * MI
        await buckets[names.PLACEMENTS_BUCKET].put(
            "n1.default.app-1", encode(placement("app-1", "n1", "data"))
        )
        claim = await record(buckets[names.CLAIMS_BUCKET], "default.data", PersistentVolumeClaim)
        name = provisioned_name(claim.metadata.uid)
        status = await until(
            buckets[names.VOLUME_STATUS_BUCKET], name, VolumeStatus, phase("Pending")
        )
        assert status.node == "n1" and status.claim == "default.data"


async def test_retain_releases_and_delete_removes_the_volume(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    statuses = buckets[names.VOLUME_STATUS_BUCKET]
    async with running_volmgr(nats_url) as ctx:
        for volume, claim, policy in (("keep", "a", "Retain"), ("drop", "b", "Delete")):
            spec = pv(volume, storageClassName=volume, persistentVolumeReclaimPolicy=policy)
            assert (await request(ctx.nc, "persistentvolume", "apply", spec)).ok
            claim_spec = pvc(claim, storageClassName=volume)
            assert (await request(ctx.nc, "persistentvolumeclaim", "apply", claim_spec)).ok
            await until(statuses, volume, VolumeStatus, phase("Bound"))
            deleted = await request(
                ctx.nc, "persistentvolumeclaim", "delete", encode({"name": claim})
            )
            assert deleted.ok and not deleted.message
        released = await until(statuses, "keep", VolumeStatus, phase("Released"))
        assert released.claim == "default.a"
        await absent(buckets[names.VOLUMES_BUCKET], "drop")
        await absent(statuses, "drop")
        await absent(buckets[names.CLAIM_STATUS_BUCKET], "default.a")


async def test_a_deleted_volume_is_deleting_until_no_node_has_an_attachment_for_it(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    statuses = buckets[names.VOLUME_STATUS_BUCKET]
    attachments = buckets[names.VOLUME_ATTACHMENTS_BUCKET]
    async with running_volmgr(nats_url) as ctx:
        spec = pv("drop", persistentVolumeReclaimPolicy="Delete")
        assert (await request(ctx.nc, "persistentvolume", "apply", spec)).ok
        assert (await request(ctx.nc, "persistentvolumeclaim", "apply", pvc("b"))).ok
        await until(statuses, "drop", VolumeStatus, phase("Bound"))
        for node in ("n1", "n2"):
            await attachments.put(f"{node}.drop", encode(attachment(node, "drop")))
        deleted = await request(ctx.nc, "persistentvolumeclaim", "delete", encode({"name": "b"}))
        assert deleted.ok, deleted
        going = await until(statuses, "drop", VolumeStatus, phase("Deleting"))
        assert not going.keep_data and going.message == "Deleting: deleted with its data"
        await attachments.delete("n1.drop")
        assert await record(buckets[names.VOLUMES_BUCKET], "drop", PersistentVolume)
        assert (await record(statuses, "drop", VolumeStatus)).phase == "Deleting"
        await attachments.delete("n2.drop")
        await absent(buckets[names.VOLUMES_BUCKET], "drop")
        await absent(statuses, "drop")
        kept = pv("keep", node="n1")
        assert (await request(ctx.nc, "persistentvolume", "apply", kept)).ok
        await until(statuses, "keep", VolumeStatus, phase("Available"))
        await attachments.put("n1.keep", encode(attachment("n1", "keep")))
        reply = await request(ctx.nc, "persistentvolume", "delete", encode({"name": "keep"}))
        assert reply.ok and reply.message.startswith("Deleting: its data is kept on node n1")
        assert (await until(statuses, "keep", VolumeStatus, phase("Deleting"))).keep_data
        await attachments.delete("n1.keep")
        await absent(buckets[names.VOLUMES_BUCKET], "keep")


async def test_a_claim_in_use_is_terminating_until_its_replica_goes(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    placements = buckets[names.PLACEMENTS_BUCKET]
    await buckets[names.NODE_VOLUMES_BUCKET].put("n1", encode(node_volumes("n1", 1024 * MI)))
    async with running_volmgr(nats_url) as ctx:
        assert (await request(ctx.nc, "persistentvolume", "apply", pv("pv1"))).ok
        assert (await request(ctx.nc, "persistentvolumeclaim", "apply", pvc("data"))).ok
        await until(buckets[names.CLAIM_STATUS_BUCKET], "default.data", ClaimStatus, phase("Bound"))
        await placements.put("n1.default.app-1", encode(placement("app-1", "n1", "data")))
        pinned = await until(
            buckets[names.VOLUME_STATUS_BUCKET], "pv1", VolumeStatus, lambda s: s.node == "n1"
        )
        assert pinned.phase == "Bound"
        deleted = await eventually(
            lambda: request(ctx.nc, "persistentvolumeclaim", "delete", encode({"name": "data"})),
            lambda r: r.ok and "in use" in r.message,
        )
        assert "app-1" in deleted.message and "Terminating" in deleted.message
        await until(
            buckets[names.CLAIM_STATUS_BUCKET], "default.data", ClaimStatus, phase("Terminating")
        )
        again = await request(ctx.nc, "persistentvolumeclaim", "apply", pvc("data"))
        assert not again.ok and again.reason == "Conflict"
        assert await record(buckets[names.CLAIMS_BUCKET], "default.data", PersistentVolumeClaim)
        refused = await request(ctx.nc, "persistentvolume", "delete", encode({"name": "pv1"}))
        assert refused.ok and "Terminating" in refused.message
        await placements.delete("n1.default.app-1")
        await absent(buckets[names.CLAIMS_BUCKET], "default.data")
        await absent(buckets[names.VOLUMES_BUCKET], "pv1")


async def test_release_forgets_a_gone_nodes_attachment(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    attachments = buckets[names.VOLUME_ATTACHMENTS_BUCKET]
    await attachments.put("n2.nfs", encode(attachment("n2", "nfs")))
    await buckets[names.NODES_BUCKET].put("n2", b'{"name": "n2"}')
    async with running_volmgr(nats_url) as ctx:
        alive = await request(
            ctx.nc, "persistentvolume", "release", encode({"name": "nfs", "node": "n2"})
        )
        assert not alive.ok and alive.field == "node", alive
        assert "run `corral node release n2` first" in alive.error
        assert await attachments.get("n2.nfs") is not None
        # what `corral node release n2` leaves (services/scheduler: node_api.py)
        await buckets[names.LEASES_BUCKET].put("released.n2", encode({"node": "n2"}))
        await buckets[names.NODES_BUCKET].delete("n2")
        done = await request(
            ctx.nc, "persistentvolume", "release", encode({"name": "nfs", "node": "n2"})
        )
        assert done.ok, done
        await absent(attachments, "n2.nfs")
        none = await request(
            ctx.nc, "persistentvolume", "release", encode({"name": "nfs", "node": "n2"})
        )
        assert not none.ok and none.field == "node" and "no attachment on node 'n2'" in none.error
        bad = await request(ctx.nc, "persistentvolume", "release", encode({"name": "nfs"}))
        assert not bad.ok and bad.field == "node"


async def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_volmgr(nats_url, "--host-path-allow", "/srv") as ctx:
        for kind, payload, field in (
            ("persistentvolume", pv("zero", "0"), "spec.capacity.storage"),
            ("persistentvolumeclaim", pvc("zero", "0"), "spec.resources.requests.storage"),
            (
                "persistentvolume",
                pv("odd", accessModes=["ReadWriteSometimes"]),
                "spec.accessModes[0]",
            ),
            ("persistentvolume", pv("sys", hostPath={"path": "/etc"}), "spec.hostPath.path"),
            ("persistentvolume", pv("out", hostPath={"path": "/home/me"}), "spec.hostPath.path"),
        ):
            reply = await request(ctx.nc, kind, "apply", payload)
            assert not reply.ok and reply.field == field, (payload, reply)
        for key in ("zero", "odd", "sys", "out"):
            assert await buckets[names.VOLUMES_BUCKET].get(key) is None
        assert await buckets[names.CLAIMS_BUCKET].get("default.zero") is None
        assert (
            await request(
                ctx.nc, "persistentvolume", "apply", pv("ok", hostPath={"path": "/srv/a"})
            )
        ).ok


async def test_one_volmgr_is_active_and_another_takes_over_when_it_stops(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    leases = buckets[names.LEASES_BUCKET]
    async with running_volmgr(nats_url) as first:
        holder = await until(leases, lease_key("volmgr"), LeaseRecord, bool)
        assert holder.holder.startswith("volmgr-")
        async with running_volmgr(nats_url) as second:
            # the second stands by: the lease stays the first's, the second serves health
            assert (await record(leases, lease_key("volmgr"), LeaseRecord)).holder == holder.holder
            assert second.health.get("cluster_part") is True
            assert (await request(first.nc, "persistentvolume", "apply", pv("one"))).ok
    # the first stopped cleanly and handed the lease back: a new one is active at once
    async with running_volmgr(nats_url) as ctx:
        assert (await request(ctx.nc, "persistentvolumeclaim", "apply", pvc("data"))).ok
        bound = await until(
            buckets[names.CLAIM_STATUS_BUCKET], "default.data", ClaimStatus, phase("Bound")
        )
        assert bound.volume == "one"


async def test_durable_claim_and_class_specs_are_applied_and_deleted(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    classes = buckets[names.STORAGE_CLASSES_BUCKET]
    claims = buckets[names.CLAIMS_BUCKET]
    async with running_volmgr(nats_url) as ctx:
        js = ctx.nc.jetstream()
        gold = storage_class("gold", "kubernetes.io/no-provisioner")
        await js.publish(names.spec_subject("storageclass", "apply"), gold)
        stored = await until(classes, "gold", StorageClass, bool)
        assert stored.metadata.spec_sequence > 0
        await js.publish(
            names.spec_subject("persistentvolumeclaim", "apply"), pvc("c", storageClassName="gold")
        )
        waiting = await until(
            buckets[names.CLAIM_STATUS_BUCKET], "default.c", ClaimStatus, phase("Pending")
        )
        assert waiting.reason == "NoMatchingVolume" and "provisions nothing" in waiting.message
        await js.publish(
            names.spec_subject("persistentvolumeclaim", "delete"), encode({"name": "c"})
        )
        await absent(claims, "default.c")
        await absent(buckets[names.CLAIM_STATUS_BUCKET], "default.c")
        await js.publish(names.spec_subject("storageclass", "delete"), encode({"name": "gold"}))
        await absent(classes, "gold")
        deleted = await request(ctx.nc, "storageclass", "delete", encode({"name": "local"}))
        assert deleted.ok, deleted
        await absent(classes, "local")


async def test_a_placement_in_its_nodes_shard_provisions_its_claim_there(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cluster made with its placements in 3 shards: volmgr watches each of them.
    monkeypatch.setenv("CORRAL_PLACEMENT_SHARDS", "3")
    node = next(f"n{i}" for i in range(1, 20) if names.placement_shard(f"n{i}", 3) == 2)
    async with running_volmgr(nats_url) as ctx:
        buckets = ctx.buckets
        await buckets[names.NODE_VOLUMES_BUCKET].put(node, encode(node_volumes(node, 1024 * MI)))
        assert (await request(ctx.nc, "persistentvolumeclaim", "apply", pvc("data"))).ok
        await until(
            buckets[names.CLAIM_STATUS_BUCKET], "default.data", ClaimStatus, phase("Pending")
        )
        await buckets[names.placements_bucket_of(node, 3)].put(
            f"{node}.default.app-1", encode(placement("app-1", node, "data"))
        )
        claim = await record(buckets[names.CLAIMS_BUCKET], "default.data", PersistentVolumeClaim)
        name = provisioned_name(claim.metadata.uid)
        status = await until(
            buckets[names.VOLUME_STATUS_BUCKET], name, VolumeStatus, phase("Pending")
        )
        assert status.node == node and status.claim == "default.data"
