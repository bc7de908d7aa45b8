"""volmgr's cluster part on in-memory buckets: binding, provisioning, protection and
reclaim through its APIs and controllers (docs/volumes.md)."""

from __future__ import annotations

import anyio
from msgspec.structs import replace

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.volume_specs import PersistentVolume, PersistentVolumeClaim, StorageClass
from corral.contract.volume_state import VolumeStatus
from corral.natsio.controller import Result
from corral_volmgr.provisioning import provisioned_name
from corral_volmgr.volume_api import deleting
from tests.unit.volmgr_helpers import (
    MI,
    Told,
    attachment,
    delete,
    node_volumes,
    ok,
    placement,
    put,
    pv,
    pvc,
    release_node,
    storage_class,
    volmgr,
)


async def test_the_seeds_volume_and_claim_bind_to_each_other() -> None:
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("my-pv", "100Mi")))
        ok(await v.apis.claims.apply(pvc("my-pvc", "50Mi")))
        await v.drain()
        claim = await v.claim("my-pvc")
        assert claim.phase == "Bound" and claim.volume == "my-pv", claim
        assert claim.capacity_bytes == 100 * MI and claim.node == ""
        volume = await v.volume("my-pv")
        assert volume.phase == "Bound" and volume.claim == "default.my-pvc"
        assert volume.claim_uid


async def test_the_local_class_is_made_at_start_and_marked_default() -> None:
    async with volmgr() as v:
        local = await v.record(names.STORAGE_CLASSES_BUCKET, "local", StorageClass)
        assert local.is_default and local.volume_binding_mode == "WaitForFirstConsumer"
        assert local.provisioner == "corral.io/local-volume" and local.reclaim_policy == "Delete"


async def test_a_claim_without_a_volume_waits_for_a_first_consumer_then_is_provisioned_there() -> (
    None
):
    async with volmgr() as v:
        await put(v.buckets[names.NODE_VOLUMES_BUCKET], "n1", node_volumes("n1", 1024 * MI))
        await put(v.buckets[names.NODE_VOLUMES_BUCKET], "n2", node_volumes("n2", 1024 * MI))
        ok(await v.apis.claims.apply(pvc("data", "50Mi")))
        await v.drain()
        claim = await v.claim("data")
        assert claim.phase == "Pending" and claim.reason == "WaitForFirstConsumer"
        assert claim.wait_for_first_consumer and claim.request_bytes == 50 * MI
        await put(
            v.buckets[names.PLACEMENTS_BUCKET], "n2.default.app-1", placement("app-1", "n2", "data")
        )
        await v.drain()
        stored = await v.record(names.CLAIMS_BUCKET, "default.data", PersistentVolumeClaim)
        name = provisioned_name(stored.metadata.uid)
        volume = await v.volume(name)
        assert (
            volume.phase == "Pending" and volume.node == "n2" and volume.provisioned_by == "local"
        )
        made = await v.record(names.VOLUMES_BUCKET, name, PersistentVolume)
        assert made.spec.claim_ref == "default/data" and made.spec.node == "n2"
        assert made.spec.persistent_volume_reclaim_policy == "Delete"
        provisioning = await v.claim("data")
        assert provisioning.reason == "Provisioning" and provisioning.node == "n2"
        assert not provisioning.wait_for_first_consumer
        resized = await v.apis.claims.apply(pvc("data", "80Mi"))
        assert not resized.ok and resized.field == "spec.resources.requests.storage", resized
        await put(v.buckets[names.VOLUME_ATTACHMENTS_BUCKET], f"n2.{name}", attachment("n2", name))
        await v.drain()
        volume = await v.volume(name)
        assert volume.phase == "Bound" and volume.size_enforced is True
        claim = await v.claim("data")
        assert claim.phase == "Bound" and claim.volume == name and claim.node == "n2"


async def test_a_claim_whose_volume_the_node_could_not_make_says_why_and_is_bound_once_made() -> (
    None
):
    """The node part's failure (its attachment, not ready, with a message) is the claim's
    reason, not "being made"; a 1 KiB claim gets a volume of the least size (1 MiB)."""
    async with volmgr() as v:
        ok(await v.apis.classes.apply(storage_class("fast", volumeBindingMode="Immediate")))
        await put(v.buckets[names.NODE_VOLUMES_BUCKET], "n1", node_volumes("n1", 100 * MI))
        ok(await v.apis.claims.apply(pvc("tiny", "1Ki", storageClassName="fast")))
        await v.drain()
        stored = await v.record(names.CLAIMS_BUCKET, "default.tiny", PersistentVolumeClaim)
        name = provisioned_name(stored.metadata.uid)
        made = await v.record(names.VOLUMES_BUCKET, name, PersistentVolume)
        assert made.spec.size_bytes == MI
        assert (await v.claim("tiny")).reason == "Provisioning"
        failed = replace(
            attachment("n1", name),
            claim="default.tiny",
            ready=False,
            docker_volume="",
            message="CommandFailed: `mkfs.ext4 ...` exited 1: too big / or lower (-N).",
        )
        attachments = v.buckets[names.VOLUME_ATTACHMENTS_BUCKET]
        await put(attachments, f"n1.{name}", failed)
        await v.drain()
        claim = await v.claim("tiny")
        assert claim.phase == "Pending" and claim.reason == "ProvisioningFailed", claim
        assert claim.message == (
            f"volume {name} could not be made on node n1 (retried): {failed.message}"
        )
        await put(attachments, f"n1.{name}", attachment("n1", name))
        await v.drain()
        assert (await v.claim("tiny")).phase == "Bound"


async def test_an_immediate_class_provisions_on_the_roomiest_node_and_counts_what_it_gave() -> None:
    async with volmgr() as v:
        ok(await v.apis.classes.apply(storage_class("fast", volumeBindingMode="Immediate")))
        await put(v.buckets[names.NODE_VOLUMES_BUCKET], "n1", node_volumes("n1", 100 * MI))
        await put(v.buckets[names.NODE_VOLUMES_BUCKET], "n2", node_volumes("n2", 80 * MI))
        ok(await v.apis.claims.apply(pvc("a", "60Mi", storageClassName="fast")))
        await v.drain()
        a = await v.claim("a")
        assert a.reason == "Provisioning" and "node n1" in a.message, a
        ok(await v.apis.claims.apply(pvc("b", "60Mi", storageClassName="fast")))
        await v.drain()
        assert "node n2" in (await v.claim("b")).message
        ok(await v.apis.claims.apply(pvc("c", "60Mi", storageClassName="fast")))
        await v.drain()
        c = await v.claim("c")
        assert c.phase == "Pending" and c.reason == "NodeFull", c


async def test_a_node_without_room_for_a_first_consumer_leaves_the_claim_pending_node_full() -> (
    None
):
    async with volmgr() as v:
        await put(v.buckets[names.NODE_VOLUMES_BUCKET], "n1", node_volumes("n1", 10 * MI))
        ok(await v.apis.claims.apply(pvc("data", "50Mi")))
        await put(
            v.buckets[names.PLACEMENTS_BUCKET], "n1.default.app-1", placement("app-1", "n1", "data")
        )
        await v.drain()
        claim = await v.claim("data")
        assert claim.reason == "NodeFull" and "node n1 has 10Mi free" in claim.message, claim
        stored = await v.record(names.CLAIMS_BUCKET, "default.data", PersistentVolumeClaim)
        name = provisioned_name(stored.metadata.uid)
        assert await v.record(names.VOLUMES_BUCKET, name, PersistentVolume) is None


async def test_deleting_a_claim_a_placement_uses_makes_it_terminating_until_it_goes() -> None:
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("data")))
        placements = v.buckets[names.PLACEMENTS_BUCKET]
        await put(placements, "n1.default.app-1", placement("app-1", "n1", "data"))
        await v.drain()
        reply = ok(await v.apis.claims.delete(delete("data")))
        assert "in use by replica(s) app-1" in reply.message and "Terminating" in reply.message
        await v.drain()
        assert (await v.claim("data")).phase == "Terminating"
        assert await v.record(names.CLAIMS_BUCKET, "default.data", PersistentVolumeClaim)
        again = await v.apis.claims.apply(pvc("data"))
        assert not again.ok and again.reason == "Conflict", again
        await placements.delete("n1.default.app-1")
        await v.drain()
        assert await v.record(names.CLAIMS_BUCKET, "default.data", PersistentVolumeClaim) is None
        assert await v.claim("data") is None
        volume = await v.volume("pv1")
        assert volume.phase == "Released", volume


async def test_a_retain_volume_is_released_and_never_bound_again() -> None:
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        ok(await v.apis.claims.delete(delete("a")))
        await v.drain()
        assert (await v.volume("pv1")).phase == "Released"
        ok(await v.apis.claims.apply(pvc("a")))
        ok(await v.apis.claims.apply(pvc("b", storageClassName="")))
        await v.drain()
        b = await v.claim("b")
        assert b.phase == "Pending" and "released" in b.message, b


async def test_a_delete_volume_goes_with_its_claim() -> None:
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("pv1", persistentVolumeReclaimPolicy="Delete")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        assert (await v.volume("pv1")).phase == "Bound"
        ok(await v.apis.claims.delete(delete("a")))
        await v.drain()
        assert await v.record(names.VOLUMES_BUCKET, "pv1", PersistentVolume) is None
        assert await v.volume("pv1") is None


async def test_deleting_a_bound_volume_makes_it_terminating_until_its_claim_is_gone() -> None:
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        reply = ok(await v.apis.volumes.delete(delete("pv1")))
        assert "bound to claim default.a" in reply.message and "Terminating" in reply.message
        await v.drain()
        assert (await v.volume("pv1")).phase == "Terminating"
        assert (await v.claim("a")).phase == "Bound"
        ok(await v.apis.claims.delete(delete("a")))
        await v.drain()
        assert await v.record(names.VOLUMES_BUCKET, "pv1", PersistentVolume) is None
        assert await v.volume("pv1") is None


async def test_a_bound_volumes_spec_cannot_change_but_its_labels_can() -> None:
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        bigger = await v.apis.volumes.apply(pv("pv1", "200Mi"))
        assert not bigger.ok and bigger.field == "spec.capacity", bigger
        assert "bound to claim default.a" in bigger.error
        ok(await v.apis.volumes.apply(pv("pv1", labels={"tier": "gold"})))


async def test_a_bound_claims_size_modes_and_class_cannot_change() -> None:
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        for payload, field in (
            (pvc("a", "60Mi"), "spec.resources.requests.storage"),
            (pvc("a", accessModes=["ReadWriteMany"]), "spec.accessModes"),
            (pvc("a", storageClassName="gold"), "spec.storageClassName"),
        ):
            reply = await v.apis.claims.apply(payload)
            assert not reply.ok and reply.field == field, reply


async def test_a_storage_class_keeps_its_provisioner_and_parameters() -> None:
    async with volmgr() as v:
        ok(
            await v.apis.classes.apply(
                storage_class("nfs", "corral.io/docker-volume", parameters={"type": "nfs"})
            )
        )
        moved = await v.apis.classes.apply(storage_class("nfs", "kubernetes.io/no-provisioner"))
        assert not moved.ok and moved.field == "provisioner"
        other = await v.apis.classes.apply(
            storage_class("nfs", "corral.io/docker-volume", parameters={"type": "tmpfs"})
        )
        assert not other.ok and other.field == "parameters"
        marked = ok(
            await v.apis.classes.apply(
                storage_class(
                    "nfs",
                    "corral.io/docker-volume",
                    parameters={"type": "nfs"},
                    annotations={"storageclass.kubernetes.io/is-default-class": "true"},
                )
            )
        )
        assert not marked.unchanged
        stored = await v.record(names.STORAGE_CLASSES_BUCKET, "nfs", StorageClass)
        assert stored.is_default


async def test_a_system_host_path_is_refused_naming_the_field_and_nothing_is_stored() -> None:
    async with volmgr(host_path_allow=("/srv/data",)) as v:
        for path, field, words in (
            ("/etc", "spec.hostPath.path", "system location"),
            ("/var/lib/docker/volumes", "spec.hostPath.path", "system location"),
            ("/home/me", "spec.hostPath.path", "outside the allowed host paths"),
        ):
            reply = await v.apis.volumes.apply(pv("hp", hostPath={"path": path}))
            assert not reply.ok and reply.field == field and words in reply.error, reply
        local = await v.apis.volumes.apply(pv("hp", local={"path": "/proc/1"}, node="n1"))
        assert not local.ok and local.field == "spec.local.path"
        assert await v.record(names.VOLUMES_BUCKET, "hp", PersistentVolume) is None
        ok(await v.apis.volumes.apply(pv("hp", hostPath={"path": "/srv/data/x"})))


async def test_an_unpinned_node_local_volume_is_pinned_to_its_first_placements_node() -> None:
    async with volmgr() as v:
        await put(v.buckets[names.NODE_VOLUMES_BUCKET], "n1", node_volumes("n1", 1024 * MI))
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        placements = v.buckets[names.PLACEMENTS_BUCKET]
        await put(placements, "n2.default.r2", placement("r2", "n2", "a", created_at=2.0))
        await put(placements, "n1.default.r1", placement("r1", "n1", "a", created_at=1.0))
        await v.drain()
        assert (await v.volume("pv1")).node == "n1"
        assert (await v.claim("a")).node == "n1"


async def test_a_rwo_docker_volume_moves_its_attach_node_only_once_the_old_node_let_go() -> None:
    async with volmgr() as v:
        ok(
            await v.apis.volumes.apply(
                pv("nfs", dockerVolume={"driver": "local", "options": {"type": "nfs"}})
            )
        )
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        placements = v.buckets[names.PLACEMENTS_BUCKET]
        attachments = v.buckets[names.VOLUME_ATTACHMENTS_BUCKET]
        await put(placements, "n1.default.r1", placement("r1", "n1", "a"))
        await v.drain()
        assert (await v.volume("nfs")).attach_node == "n1"
        await put(attachments, "n1.nfs", attachment("n1", "nfs"))
        await placements.delete("n1.default.r1")
        await put(placements, "n2.default.r2", placement("r2", "n2", "a"))
        await v.drain()
        held = await v.volume("nfs")
        assert held.attach_node == "n1" and "still attached to node n1" in held.message
        await attachments.delete("n1.nfs")
        await v.drain()
        assert (await v.volume("nfs")).attach_node == "n2"


async def test_release_forgets_an_attachment_and_refuses_when_there_is_none() -> None:
    async with volmgr() as v:
        attachments = v.buckets[names.VOLUME_ATTACHMENTS_BUCKET]
        await put(attachments, "n2.nfs", attachment("n2", "nfs"))
        await release_node(v, "n2")
        await v.settle()
        reply = ok(await v.apis.volumes.release(encode({"name": "nfs", "node": "n2"})))
        assert "n2" in reply.message
        assert (await attachments.get("n2.nfs")) is None or (
            await attachments.get("n2.nfs")
        ).value is None
        again = await v.apis.volumes.release(encode({"name": "nfs", "node": "n2"}))
        assert not again.ok and again.field == "node" and "no attachment" in again.error


async def test_a_claim_made_again_under_a_released_volumes_old_name_is_another_claim() -> None:
    """The volume's status names its claim's uid: a new claim of the same name made
    before the volume controller saw the old one go is not taken for it."""
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        first = (await v.volume("pv1")).claim_uid
        ok(await v.apis.claims.delete(delete("a")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        volume: VolumeStatus = await v.volume("pv1")
        assert volume.phase == "Released" and volume.claim_uid == first
        claim = await v.claim("a")
        assert claim.phase == "Pending", claim


async def test_a_docker_volume_has_an_attach_node_only_with_a_single_writer_mode() -> None:
    async with volmgr() as v:
        shared = {"driver": "local", "options": {"type": "nfs"}}
        ok(
            await v.apis.volumes.apply(
                pv("nfs", dockerVolume=shared, accessModes=["ReadWriteMany"])
            )
        )
        ok(await v.apis.claims.apply(pvc("a", accessModes=["ReadWriteMany"])))
        placements = v.buckets[names.PLACEMENTS_BUCKET]
        await put(placements, "n1.default.r1", placement("r1", "n1", "a"))
        await put(placements, "n2.default.r2", placement("r2", "n2", "a"))
        await v.drain()
        volume = await v.volume("nfs")
        assert volume.phase == "Bound" and volume.attach_node == "" and volume.node == ""
        both = ["ReadWriteOnce", "ReadWriteMany"]
        ok(await v.apis.volumes.apply(pv("mixed", dockerVolume=shared, accessModes=both)))
        ok(await v.apis.claims.apply(pvc("b", accessModes=["ReadWriteMany"])))
        await put(placements, "n2.default.r3", placement("r3", "n2", "b"))
        await v.drain()
        mixed = await v.volume("mixed")
        # one rule everywhere (volume_specs.single_node): with ReadWriteMany among its modes
        # it may be mounted on any number of nodes, as the scheduler spreads it
        assert mixed.claim == "default.b" and mixed.attach_node == "" and mixed.node == ""


async def test_a_local_driver_docker_volume_is_pinned_like_a_node_local_volume() -> None:
    """A dockerVolume of driver `local` that is not a network filesystem keeps its data
    in its engine: pinned to the node of its first placement, never given an attachNode."""
    async with volmgr() as v:
        tmpfs = {"driver": "local", "options": {"type": "tmpfs", "device": "tmpfs"}}
        ok(await v.apis.volumes.apply(pv("scratch", dockerVolume=tmpfs)))
        ok(await v.apis.claims.apply(pvc("a")))
        placements = v.buckets[names.PLACEMENTS_BUCKET]
        await put(placements, "n2.default.r2", placement("r2", "n2", "a", created_at=2.0))
        await put(placements, "n1.default.r1", placement("r1", "n1", "a", created_at=1.0))
        await v.drain()
        volume = await v.volume("scratch")
        assert volume.node == "n1" and volume.attach_node == "" and not volume.counts_room
        assert (await v.claim("a")).node == "n1"


async def test_an_unbound_volumes_status_follows_its_spec_node_and_size() -> None:
    async with volmgr() as v:
        ok(await v.apis.volumes.apply(pv("pv1", "10Mi", storageClassName="manual")))
        await v.drain()
        ok(await v.apis.volumes.apply(pv("pv1", "20Mi", storageClassName="manual", node="n3")))
        await v.drain()
        volume = await v.volume("pv1")
        assert volume.phase == "Available" and volume.node == "n3" and volume.size_bytes == 20 * MI


async def test_the_local_class_is_made_at_start_when_missing_and_a_class_can_be_deleted() -> None:
    async with volmgr() as v:
        ok(await v.apis.classes.delete(delete("local")))
        async with anyio.create_task_group() as tg:
            await tg.start(v.loop.run_controllers, v.apis.classes.ensure_default)
            tg.cancel_scope.cancel()
        assert await v.record(names.STORAGE_CLASSES_BUCKET, "local", StorageClass) is not None
        ok(await v.apis.classes.delete(delete("local")))
        await v.drain()
        assert await v.record(names.STORAGE_CLASSES_BUCKET, "local", StorageClass) is None


async def test_a_docker_volume_provisioned_for_a_claim_deleted_before_binding_is_reclaimed() -> (
    None
):
    async with volmgr() as v:
        nfs = storage_class(
            "nfs", "corral.io/docker-volume", parameters={"type": "tmpfs"}, reclaimPolicy="Delete"
        )
        ok(await v.apis.classes.apply(nfs))
        ok(await v.apis.claims.apply(pvc("a", storageClassName="nfs")))
        stored = await v.record(names.CLAIMS_BUCKET, "default.a", PersistentVolumeClaim)
        name = provisioned_name(stored.metadata.uid)
        await v.settle()
        await v.loop.claim_controller.process("default.a")  # provisions; binds next time
        assert (await v.volume(name)).phase == "Available"
        ok(await v.apis.claims.delete(delete("a")))
        await v.drain()
        assert await v.record(names.VOLUMES_BUCKET, name, PersistentVolume) is None
        assert await v.volume(name) is None


async def test_what_happens_to_claims_and_volumes_is_told_as_events_once() -> None:
    told = Told()
    async with volmgr(told=told) as v:
        await put(v.buckets[names.NODE_VOLUMES_BUCKET], "n1", node_volumes("n1", 10 * MI))
        ok(await v.apis.classes.apply(storage_class("fast", volumeBindingMode="Immediate")))
        ok(await v.apis.claims.apply(pvc("big", "50Mi", storageClassName="fast")))
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("a")))
        await v.drain()
        await v.loop.claim_controller.resync()
        await v.drain()
        claim = "PersistentVolumeClaim"
        assert told.reasons(claim, "a") == ["Bound"]
        assert told.reasons("PersistentVolume", "pv1") == ["Bound"]
        assert told.reasons(claim, "big") == ["NodeFull"]  # once, not at every resync
        full = next(e for e in told.events if e[1] == "big")
        assert full[4] is True and "0/1 nodes have 50Mi of free volume room" in full[3]
        ok(await v.apis.claims.delete(delete("a")))
        await v.drain()
        assert told.reasons("PersistentVolume", "pv1") == ["Bound", "Released"]


async def test_deleting_an_unbound_retain_volume_keeps_data_and_record_till_no_node_has_it() -> (
    None
):
    told = Told()
    async with volmgr(told=told) as v:
        attachments = v.buckets[names.VOLUME_ATTACHMENTS_BUCKET]
        ok(await v.apis.volumes.apply(pv("pv1", node="n1")))
        held = attachment("n1", "pv1")
        await put(attachments, "n1.pv1", replace(held, host_path="/vols/c/pv1"))
        await v.drain()
        reply = ok(await v.apis.volumes.delete(delete("pv1")))
        assert reply.message == "Deleting: its data is kept on node n1 at /vols/c/pv1.img", reply
        await v.drain()
        status = await v.volume("pv1")
        assert status.phase == "Deleting" and status.keep_data, status
        assert await v.record(names.VOLUMES_BUCKET, "pv1", PersistentVolume) is not None
        again = await v.apis.volumes.apply(pv("pv1", node="n1"))
        assert not again.ok and again.reason == "Conflict", again
        ok(await v.apis.claims.apply(pvc("a", storageClassName="")))
        await v.drain()
        assert (await v.claim("a")).phase == "Pending"  # a Deleting volume is never bound
        await attachments.delete("n1.pv1")  # the node part took it down
        await v.drain()
        assert await v.record(names.VOLUMES_BUCKET, "pv1", PersistentVolume) is None
        assert await v.volume("pv1") is None
        assert told.reasons("PersistentVolume", "pv1")[-1] == "Deleted"


def test_deleting_a_host_path_volume_its_node_refused_names_the_directory_not_a_docker_volume() -> (
    None
):
    """The node part refused the path (an attachment not ready, with no Docker volume and
    no directory of its own): the data is where the operator put it, on that node."""
    volume = decode(pv("hp", node="n1", hostPath={"path": "/srv/hp"}), PersistentVolume)
    refused = replace(
        attachment("n1", "hp"), ready=False, docker_volume="", message="the path is refused"
    )
    status = VolumeStatus(name="hp", phase="Available", node="n1")
    gone = deleting(volume, status, [refused], keep_data=True)
    assert gone.message == (
        "Deleting: its directory is kept on node n1 at /srv/hp (a host path is the operator's)"
    )


async def test_a_delete_volume_whose_claim_goes_is_deleting_without_keeping_data() -> None:
    told = Told()
    async with volmgr(told=told) as v:
        attachments = v.buckets[names.VOLUME_ATTACHMENTS_BUCKET]
        ok(await v.apis.volumes.apply(pv("pv1", persistentVolumeReclaimPolicy="Delete")))
        ok(await v.apis.claims.apply(pvc("a")))
        await put(attachments, "n1.pv1", attachment("n1", "pv1"))
        await v.drain()
        ok(await v.apis.claims.delete(delete("a")))
        await v.drain()
        status = await v.volume("pv1")
        assert status.phase == "Deleting" and not status.keep_data, status
        assert status.message == "Deleting: deleted with its data"
        assert await v.record(names.VOLUMES_BUCKET, "pv1", PersistentVolume) is not None
        deleting = next(e for e in told.events if e[1] == "pv1" and e[2] == "Deleting")
        assert "its claim default.a was deleted" in deleting[3]
        await attachments.delete("n1.pv1")
        await v.drain()
        assert await v.record(names.VOLUMES_BUCKET, "pv1", PersistentVolume) is None


async def test_a_terminating_retain_volume_whose_claim_goes_is_deleting_keeping_its_data() -> None:
    async with volmgr() as v:
        attachments = v.buckets[names.VOLUME_ATTACHMENTS_BUCKET]
        ok(await v.apis.volumes.apply(pv("pv1")))
        ok(await v.apis.claims.apply(pvc("a")))
        await put(attachments, "n1.pv1", attachment("n1", "pv1"))
        await v.drain()
        ok(await v.apis.volumes.delete(delete("pv1")))
        ok(await v.apis.claims.delete(delete("a")))
        await v.drain()
        status = await v.volume("pv1")
        assert status.phase == "Deleting" and status.keep_data, status
        assert status.message.startswith("Deleting: its data is kept on node n1"), status
        await attachments.delete("n1.pv1")
        await v.drain()
        assert await v.volume("pv1") is None


async def test_release_is_refused_until_the_scheduler_released_the_node() -> None:
    async with volmgr() as v:
        attachments = v.buckets[names.VOLUME_ATTACHMENTS_BUCKET]
        await put(attachments, "n2.nfs", attachment("n2", "nfs"))
        await v.buckets[names.NODES_BUCKET].put("n2", b'{"name": "n2"}')
        await v.settle()
        refused = await v.apis.volumes.release(encode({"name": "nfs", "node": "n2"}))
        assert not refused.ok and refused.field == "node", refused
        assert "run `corral node release n2` first" in refused.error
        assert (await attachments.get("n2.nfs")) is not None
        await release_node(v, "n2")
        ok(await v.apis.volumes.release(encode({"name": "nfs", "node": "n2"})))


async def test_a_hand_made_volume_with_no_source_is_pinned_only_to_a_node_with_its_room() -> None:
    told = Told()
    async with volmgr(told=told) as v:
        room = v.buckets[names.NODE_VOLUMES_BUCKET]
        await put(room, "n1", node_volumes("n1", 10 * MI))
        ok(await v.apis.volumes.apply(pv("big", "100Mi")))
        ok(await v.apis.claims.apply(pvc("a", "50Mi")))
        await put(v.buckets[names.PLACEMENTS_BUCKET], "n1.default.r1", placement("r1", "n1", "a"))
        await v.drain()
        volume = await v.volume("big")
        assert volume.counts_room and volume.node == "", volume
        claim = await v.claim("a")
        assert claim.reason == "NodeFull" and "node n1 has 10Mi free" in claim.message, claim
        assert "volume big needs 100Mi" in claim.message
        assert "NodeFull" in told.reasons("PersistentVolumeClaim", "a")
        await put(room, "n1", node_volumes("n1", 200 * MI))  # the operator gave it room
        await v.drain()
        assert (await v.volume("big")).node == "n1"
        claim = await v.claim("a")
        assert claim.phase == "Bound" and claim.node == "n1" and claim.reason == "", claim


async def test_a_docker_volume_class_with_a_bad_parameter_is_refused_naming_it() -> None:
    async with volmgr() as v:
        bad = await v.apis.classes.apply(
            storage_class("odd", "corral.io/docker-volume", parameters={"driver": "no good!"})
        )
        assert not bad.ok and bad.field == "parameters.driver", bad
        assert "not a Docker volume driver name" in bad.error
        assert await v.record(names.STORAGE_CLASSES_BUCKET, "odd", StorageClass) is None
        ok(
            await v.apis.classes.apply(
                storage_class("nfs", "corral.io/docker-volume", parameters={"type": "nfs"})
            )
        )


async def test_an_unreadable_provisioned_volume_makes_the_claim_pending_on_back_off() -> None:
    """A class stored before its parameters were checked makes a volume nobody can read:
    the claim says ProvisioningFailed, and is retried on the back-off, not every 0.05 s."""
    async with volmgr() as v:
        odd = {
            "kind": "StorageClass",
            "metadata": {"name": "odd"},
            "provisioner": "corral.io/docker-volume",
            "parameters": {"driver": "no good!"},
        }
        await v.buckets[names.STORAGE_CLASSES_BUCKET].put("odd", encode(odd))
        ok(await v.apis.claims.apply(pvc("a", storageClassName="odd")))
        stored = await v.record(names.CLAIMS_BUCKET, "default.a", PersistentVolumeClaim)
        name = provisioned_name(stored.metadata.uid)
        calls = 0
        reconcile = v.loop.claim_controller.reconcile

        async def counted(key: str) -> Result | None:
            nonlocal calls
            calls += key == "default.a"
            return await reconcile(key)

        v.loop.claim_controller.reconcile = counted
        async with anyio.create_task_group() as tg:
            await tg.start(v.loop.claim_controller.run)
            await anyio.sleep(1.0)
            tg.cancel_scope.cancel()
        claim = await v.claim("a")
        assert claim.phase == "Pending" and claim.reason == "ProvisioningFailed", claim
        assert "not a Docker volume driver name" in claim.message
        assert await v.record(names.VOLUMES_BUCKET, name, PersistentVolume) is None
        assert 1 <= calls <= 8, calls
        # a volume stored under its name that cannot be read: said too, same back-off
        await v.buckets[names.VOLUMES_BUCKET].put(name, b'{"kind": "PersistentVolume"}')
        await v.buckets[names.STORAGE_CLASSES_BUCKET].delete("odd")
        ok(
            await v.apis.classes.apply(
                storage_class("odd", "corral.io/docker-volume", parameters={"type": "nfs"})
            )
        )
        calls = 0
        async with anyio.create_task_group() as tg:
            await tg.start(v.loop.claim_controller.run)
            await anyio.sleep(1.0)
            tg.cancel_scope.cancel()
        claim = await v.claim("a")
        assert claim.reason == "ProvisioningFailed" and "cannot be read" in claim.message, claim
        assert 1 <= calls <= 8, calls


async def test_a_volumes_source_cannot_change_once_it_was_made_but_its_labels_can() -> None:
    async with volmgr() as v:
        tmpfs = {"driver": "local", "options": {"type": "tmpfs", "device": "tmpfs"}}
        other = {"driver": "local", "options": {"type": "tmpfs", "device": "other"}}
        ok(await v.apis.volumes.apply(pv("d1", dockerVolume=tmpfs)))
        ok(await v.apis.volumes.apply(pv("d1", dockerVolume=other)))  # nothing made yet
        ok(await v.apis.volumes.apply(pv("d1", dockerVolume=tmpfs)))
        await put(v.buckets[names.VOLUME_ATTACHMENTS_BUCKET], "n1.d1", attachment("n1", "d1"))
        await v.settle()
        moved = await v.apis.volumes.apply(pv("d1", dockerVolume=other))
        assert not moved.ok and moved.field == "spec.dockerVolume", moved
        assert "attached on node n1" in moved.error
        ok(await v.apis.volumes.apply(pv("d1", dockerVolume=tmpfs, labels={"tier": "gold"})))
        # a Released volume (its claim gone, Retain) keeps its source too
        ok(await v.apis.volumes.apply(pv("h1", hostPath={"path": "/srv/a"}, node="n1")))
        ok(await v.apis.claims.apply(pvc("a", volumeName="h1")))
        await v.drain()
        ok(await v.apis.claims.delete(delete("a")))
        await v.drain()
        assert (await v.volume("h1")).phase == "Released"  # type: ignore[union-attr]
        for spec, field in (
            ({"hostPath": {"path": "/srv/b"}, "node": "n1"}, "spec.hostPath"),
            ({"hostPath": {"path": "/srv/a"}, "node": "n2"}, "spec.node"),
        ):
            refused = await v.apis.volumes.apply(pv("h1", **spec))
            assert not refused.ok and refused.field == field, refused
            assert "bound to claim default.a" in refused.error


def test_deleting_a_volume_never_made_on_a_node_says_no_data_is_kept() -> None:
    from corral.contract.codec import decode
    from corral_volmgr.volume_api import deleting

    volume = decode(pv("never-used"), PersistentVolume)
    status = VolumeStatus(name="never-used")
    made = deleting(volume, status, [], keep_data=True)
    assert made.message == "Deleting: it was never made on a node, so no data is kept"
    placed = deleting(volume, replace(status, node="n1"), [], keep_data=True)
    assert placed.message == "Deleting: its data is kept on node n1"
