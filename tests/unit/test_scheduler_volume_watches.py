"""The scheduler's control loop and volmgr's records (docs/volumes.md, "Replicas with
volumes"), on in-memory buckets: which changes decide which Deployments again, the index
of the nodes where each claim is used, the room taken per node, and the API refusing more
than one replica of a ReadWriteOncePod claim."""

from __future__ import annotations

from typing import Any

import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import (
    ClaimSource,
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
    Volume,
    VolumeMount,
)
from corral.contract.state import DeploymentStatus
from corral.contract.volume_specs import (
    DockerVolumeSource,
    PersistentVolume,
    PersistentVolumeClaim,
    PersistentVolumeClaimSpec,
    PersistentVolumeSpec,
    StorageRequest,
    VolumeResources,
)
from corral.contract.volume_state import ClaimStatus, NodeVolumes, VolumeStatus
from corral.natsio.kv import Mirror
from corral_scheduler.control_loop import ControlLoop
from corral_scheduler.deployment_api import DeploymentAPI
from tests.unit.test_scheduler_control_loop import Cluster, _value, running
from tests.unit.test_scheduler_incremental import record_reconciles
from tests.waiting import eventually

MiB = 2**20


def deployment(name: str, claim: str | None, replicas: int = 1, image: str = "app:1") -> Deployment:
    volumes = (
        []
        if claim is None
        else [Volume(name="v", persistent_volume_claim=ClaimSource(claim_name=claim))]
    )
    mounts = [] if claim is None else [VolumeMount(name="v", mount_path="/data")]
    return Deployment(
        metadata=ObjectMeta(name=name, generation=1),
        spec=DeploymentSpec(
            replicas=replicas,
            template=ContainerTemplate(image=image, volumes=volumes, volume_mounts=mounts),
        ),
    )


def claim(name: str, modes: tuple[str, ...] = ("ReadWriteOnce",)) -> PersistentVolumeClaim:
    return PersistentVolumeClaim(
        metadata=ObjectMeta(name=name),
        spec=PersistentVolumeClaimSpec(
            resources=VolumeResources(requests=StorageRequest(storage="100Mi")),
            access_modes=list(modes),  # type: ignore[arg-type]
        ),
    )


async def put(cluster: Cluster, mirror: Mirror[Any], key: str, value: Any) -> None:
    """Write a record as volmgr would, and wait until the loop's mirror has it."""
    await mirror.bucket.put(key, encode(value))
    await eventually(lambda: _value(mirror.get(key)), lambda found: found == value)


async def delete(mirror: Mirror[Any], key: str) -> None:
    await mirror.bucket.delete(key)
    await eventually(lambda: _value(mirror.get(key)), lambda found: found is None)


async def apply(cluster: Cluster, *deployments: Deployment) -> None:
    for d in deployments:
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].put(d.key, encode(d))


async def pending_reason(cluster: Cluster, name: str) -> str:
    entry = await cluster.buckets[names.DEPLOYMENT_STATUS_BUCKET].get(f"default.{name}")
    assert entry is not None and entry.value is not None
    return decode(entry.value, DeploymentStatus).pending_reason


def placed(loop: ControlLoop, name: str) -> list[str]:
    return sorted(p.node for p in loop.placements.values() if p.deployment == name)


def users_rebuilt(loop: ControlLoop) -> dict[str, dict[str, dict[str, int]]]:
    """The claim index built from scratch, to compare with the one kept per change."""
    found: dict[str, dict[str, dict[str, int]]] = {}
    for p in loop.placements.values():
        for volume in p.template.volumes:
            if volume.persistent_volume_claim is not None:
                key = names.object_key(p.namespace, volume.persistent_volume_claim.claim_name)
                found.setdefault(key, {}).setdefault(p.node, {})[p.replica] = 1
    return found


def waiting(name: str, request: int) -> ClaimStatus:
    return ClaimStatus(
        name=name, phase="Pending", wait_for_first_consumer=True, request_bytes=request
    )


async def test_a_claim_status_appearing_decides_again_only_the_deployments_that_name_it() -> None:
    async with running() as cluster:
        loop = cluster.loop
        await cluster.heartbeat("a")
        await cluster.heartbeat("b")
        await cluster.tick(1, beating=("a", "b"))
        await apply(
            cluster, deployment("web", "data"), deployment("db", "other"), deployment("plain", None)
        )
        await cluster.tick(1, beating=("a", "b"))
        assert await pending_reason(cluster, "web") == 'persistentvolumeclaim "data" not found'
        assert placed(loop, "plain") != []
        seen = record_reconciles(loop)
        await put(cluster, loop.claims, "default.data", claim("data"))
        await loop.drain()
        assert set(seen) == {"default.web"}
        assert await pending_reason(cluster, "web") == 'persistentvolumeclaim "data" is not bound'
        seen.clear()
        bound = ClaimStatus(name="data", phase="Bound", volume="pv-1", node="b")
        await put(cluster, loop.claim_statuses, "default.data", bound)
        await loop.drain()
        assert set(seen) == {"default.web"}
        assert placed(loop, "web") == ["b"]


async def test_the_claim_index_follows_every_placement_change() -> None:
    async with running() as cluster:
        loop = cluster.loop
        await put(cluster, loop.claims, "default.data", claim("data"))
        bound = ClaimStatus(name="data", phase="Bound", volume="pv-1", node="a")
        await put(cluster, loop.claim_statuses, "default.data", bound)
        await apply(cluster, deployment("web", "data", replicas=3), deployment("plain", None, 2))
        for name in ("a", "b"):
            await cluster.heartbeat(name)
        await cluster.tick(2, beating=("a", "b"))
        assert placed(loop, "web") == ["a", "a", "a"]
        assert (
            loop.claim_users == users_rebuilt(loop)
            and len(loop.claim_users["default.data"]["a"]) == 3
        )
        await apply(cluster, deployment("web", "data", replicas=1))
        await cluster.tick(1, beating=("a", "b"))
        assert (
            loop.claim_users == users_rebuilt(loop)
            and len(loop.claim_users["default.data"]["a"]) == 1
        )
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].delete("default.web")
        await cluster.tick(1, beating=("a", "b"))
        assert loop.claim_users == {}


async def test_a_volume_manager_getting_ready_decides_again_only_the_pending_ones_with_claims() -> (
    None
):
    async with running() as cluster:
        loop = cluster.loop
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        await put(cluster, loop.claims, "default.data", claim("data"))
        await put(cluster, loop.claim_statuses, "default.data", waiting("data", 100 * MiB))
        await apply(cluster, deployment("web", "data"), deployment("plain", None))
        await cluster.tick(1, beating=("a",))
        assert await pending_reason(cluster, "web") == (
            "0/1 nodes are available: 1 node(s) had no volume manager running"
        )
        seen = record_reconciles(loop)
        offer = NodeVolumes(node="a", ready=True, capacity_bytes=1024 * MiB)
        await put(cluster, loop.node_volumes, "a", offer)
        await loop.drain()
        assert set(seen) == {"default.web"} and placed(loop, "web") == ["a"]
        seen.clear()
        # the node part writing again what placement does not depend on decides nothing
        await put(
            cluster,
            loop.node_volumes,
            "a",
            NodeVolumes(
                node="a", ready=True, capacity_bytes=1024 * MiB, message="measured", updated_at=5.0
            ),
        )
        await loop.drain()
        assert seen == []


async def test_room_is_taken_by_a_first_consumer_until_provisioned_and_then_by_the_volume() -> None:
    async with running() as cluster:
        loop = cluster.loop
        for name in ("a", "b"):
            await cluster.heartbeat(name)
        await cluster.tick(1, beating=("a", "b"))
        await put(
            cluster,
            loop.node_volumes,
            "a",
            NodeVolumes(node="a", ready=True, capacity_bytes=1024 * MiB),
        )
        for name in ("one", "two"):
            await put(cluster, loop.claims, f"default.{name}", claim(name))
            await put(cluster, loop.claim_statuses, f"default.{name}", waiting(name, 600 * MiB))
        await apply(cluster, deployment("first", "one"))
        await cluster.tick(1, beating=("a", "b"))
        assert placed(loop, "first") == ["a"]
        assert loop.storage_taken == {"a": 600 * MiB}  # not provisioned yet: reserved
        await apply(cluster, deployment("second", "two"))
        await cluster.tick(1, beating=("a", "b"))
        assert await pending_reason(cluster, "second") == (
            "0/2 nodes are available: 1 node(s) did not have enough free storage, "
            "1 node(s) had no volume manager running"
        )
        # volmgr provisions on a: the volume's size counts, the reservation goes
        provisioned = VolumeStatus(
            name="pvc-1",
            phase="Bound",
            claim="default.one",
            node="a",
            size_bytes=600 * MiB,
            provisioned_by="local",
            counts_room=True,
        )
        await put(cluster, loop.volume_statuses, "pvc-1", provisioned)
        bound = ClaimStatus(name="one", phase="Bound", volume="pvc-1", node="a")
        await put(cluster, loop.claim_statuses, "default.one", bound)
        assert loop.storage_taken == {"a": 600 * MiB}
        # the volume deleted (its claim too): the room is back and the pending one placed
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].delete("default.first")
        await cluster.tick(1, beating=("a", "b"))
        await delete(loop.volume_statuses, "pvc-1")
        assert loop.storage_taken == {}
        await loop.drain()
        assert placed(loop, "second") == ["a"]
        assert loop.storage_taken == {"a": 600 * MiB}  # now the second one's reservation


async def test_a_read_write_once_pod_claim_freed_by_one_deployment_is_placed_for_another() -> None:
    async with running() as cluster:
        loop = cluster.loop
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        await put(cluster, loop.claims, "default.data", claim("data", ("ReadWriteOncePod",)))
        bound = ClaimStatus(
            name="data", phase="Bound", volume="pv-1", access_modes=["ReadWriteOncePod"]
        )
        await put(cluster, loop.claim_statuses, "default.data", bound)
        await apply(cluster, deployment("first", "data"))
        await cluster.tick(1, beating=("a",))
        await apply(cluster, deployment("second", "data"))
        await cluster.tick(1, beating=("a",))
        (replica,) = [p.replica for p in loop.placements.values()]
        assert await pending_reason(cluster, "second") == (
            f'persistentvolumeclaim "data" is in use by replica {replica} (ReadWriteOncePod)'
        )
        seen = record_reconciles(loop)
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].delete("default.first")
        await loop.drain()
        assert "default.second" in seen and placed(loop, "second") == ["a"]


async def test_the_api_refuses_more_than_one_replica_of_a_read_write_once_pod_claim() -> None:
    async with running() as cluster:
        loop = cluster.loop
        api = DeploymentAPI(
            cluster.buckets[names.DEPLOYMENTS_BUCKET], exclusive_claim=loop.exclusive_claim
        )
        # no claim yet, or one that is not exclusive: accepted
        assert (await api.apply(encode(deployment("web", "data", replicas=2)))).ok
        await put(cluster, loop.claims, "default.data", claim("data", ("ReadWriteOncePod",)))
        refused = await api.apply(encode(deployment("web", "data", replicas=3, image="app:2")))
        assert (refused.ok, refused.field) == (False, "spec.replicas")
        assert "'data'" in refused.error and "ReadWriteOncePod" in refused.error
        assert (await api.apply(encode(deployment("web", "data", replicas=1)))).ok
        scaled = await api.scale(encode({"name": "web", "replicas": 2}))
        assert (scaled.ok, scaled.field) == (False, "spec.replicas")
        # the bound volume's modes count too (the claim asked ReadWriteOnce)
        await put(cluster, loop.claims, "default.logs", claim("logs"))
        bound = ClaimStatus(
            name="logs", phase="Bound", volume="pv-2", access_modes=["ReadWriteOncePod"]
        )
        await put(cluster, loop.claim_statuses, "default.logs", bound)
        refused = await api.apply(encode(deployment("db", "logs", replicas=2)))
        assert (refused.ok, refused.field) == (False, "spec.replicas")
        assert (await api.apply(encode(deployment("plain", None, replicas=5)))).ok


async def test_a_first_consumer_going_before_it_was_provisioned_frees_the_room_it_took() -> None:
    async with running() as cluster:
        loop = cluster.loop
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        offer = NodeVolumes(node="a", ready=True, capacity_bytes=1024 * MiB)
        await put(cluster, loop.node_volumes, "a", offer)
        for name in ("one", "two"):
            await put(cluster, loop.claims, f"default.{name}", claim(name))
            await put(cluster, loop.claim_statuses, f"default.{name}", waiting(name, 600 * MiB))
        await apply(cluster, deployment("first", "one"))
        await cluster.tick(1, beating=("a",))
        await apply(cluster, deployment("second", "two"))
        await cluster.tick(1, beating=("a",))
        assert placed(loop, "second") == [] and loop.pending == {"default.second"}
        seen = record_reconciles(loop)
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].delete("default.first")
        await loop.drain()
        assert "default.second" in seen and placed(loop, "second") == ["a"]


async def test_a_claim_used_on_a_new_node_decides_again_only_the_pending_ones_naming_it() -> None:
    async with running() as cluster:
        loop = cluster.loop
        for name in ("a", "b"):
            await cluster.heartbeat(name)
        await cluster.tick(1, beating=("a", "b"))
        await put(cluster, loop.claims, "default.data", claim("data", ("ReadWriteMany",)))
        nfs = PersistentVolume(
            metadata=ObjectMeta(name="nfs"),
            spec=PersistentVolumeSpec(
                capacity=StorageRequest(storage="1Gi"),
                access_modes=["ReadWriteMany"],
                docker_volume=DockerVolumeSource(options={"type": "nfs"}),
            ),
        )
        await put(cluster, loop.volumes, "nfs", nfs)
        shared = ClaimStatus(
            name="data", phase="Bound", volume="nfs", access_modes=["ReadWriteMany"]
        )
        await put(cluster, loop.claim_statuses, "default.data", shared)
        await apply(cluster, deployment("web", "data", replicas=1))
        await cluster.tick(1, beating=("a", "b"))
        assert placed(loop, "web") != []
        seen = record_reconciles(loop)
        await apply(cluster, deployment("api", "data", replicas=2))
        await loop.drain()
        assert placed(loop, "api") == ["a", "b"]  # a volume many nodes mount: spread
        assert "default.web" not in seen  # placed: nothing to decide when others use it
        # and the whole-cluster view holds the same facts as the per-Deployment ones
        assert loop.snapshot().volumes.claims["default.data"] == loop.claim_facts("default.data")


def volume(name: str, size: str = "1Gi", **spec: Any) -> PersistentVolume:
    return PersistentVolume(
        metadata=ObjectMeta(name=name),
        spec=PersistentVolumeSpec(capacity=StorageRequest(storage=size), **spec),
    )


async def test_a_volume_made_by_hand_with_no_source_counts_against_its_nodes_room() -> None:
    async with running() as cluster:
        loop = cluster.loop
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        offer = NodeVolumes(node="a", ready=True, capacity_bytes=1024 * MiB)
        await put(cluster, loop.node_volumes, "a", offer)
        # made by hand (no provisionedBy), an image on a: volmgr says it counts
        by_hand = VolumeStatus(
            name="pv-hand", phase="Available", node="a", size_bytes=600 * MiB, counts_room=True
        )
        await put(cluster, loop.volume_statuses, "pv-hand", by_hand)
        assert loop.storage_taken == {"a": 600 * MiB}
        await put(cluster, loop.claims, "default.data", claim("data"))
        await put(cluster, loop.claim_statuses, "default.data", waiting("data", 600 * MiB))
        await apply(cluster, deployment("web", "data"))
        await cluster.tick(1, beating=("a",))
        assert placed(loop, "web") == []
        assert await pending_reason(cluster, "web") == (
            "0/1 nodes are available: 1 node(s) did not have enough free storage"
        )
        # a volume that does not count (a hostPath, say) takes nothing, provisioned or not
        not_counted = msgspec.structs.replace(by_hand, counts_room=False)
        await put(cluster, loop.volume_statuses, "pv-hand", not_counted)
        assert loop.storage_taken == {}
        await loop.drain()
        assert placed(loop, "web") == ["a"]


async def test_the_first_replica_of_a_volume_with_no_source_goes_where_its_size_fits() -> None:
    async with running() as cluster:
        loop = cluster.loop
        for name in ("a", "b", "c"):
            await cluster.heartbeat(name)
        await cluster.tick(1, beating=("a", "b", "c"))
        small = NodeVolumes(node="a", ready=True, capacity_bytes=100 * MiB)
        await put(cluster, loop.node_volumes, "a", small)
        await put(cluster, loop.node_volumes, "c", NodeVolumes(node="c", ready=False))
        await put(cluster, loop.volumes, "pv-hand", volume("pv-hand"))  # 1Gi, no source
        await put(cluster, loop.claims, "default.data", claim("data"))
        bound = ClaimStatus(name="data", phase="Bound", volume="pv-hand", capacity_bytes=1024 * MiB)
        await put(cluster, loop.claim_statuses, "default.data", bound)
        await apply(cluster, deployment("web", "data", replicas=2))
        await cluster.tick(1, beating=("a", "b", "c"))
        assert placed(loop, "web") == []
        assert await pending_reason(cluster, "web") == (
            "0/3 nodes are available: 1 node(s) did not have enough free storage, "
            "2 node(s) had no volume manager running"
        )
        big = NodeVolumes(node="b", ready=True, capacity_bytes=2048 * MiB)
        await put(cluster, loop.node_volumes, "b", big)
        await loop.drain()
        assert placed(loop, "web") == ["b", "b"]
        assert loop.storage_taken == {"b": 1024 * MiB}  # not made yet: reserved
        # volmgr pins it to b and makes it there: it counts once, not twice
        made = VolumeStatus(
            name="pv-hand",
            phase="Bound",
            claim="default.data",
            node="b",
            size_bytes=1024 * MiB,
            counts_room=True,
        )
        await put(cluster, loop.volume_statuses, "pv-hand", made)
        assert loop.storage_taken == {"b": 1024 * MiB}
        pinned = msgspec.structs.replace(bound, node="b")
        await put(cluster, loop.claim_statuses, "default.data", pinned)
        assert loop.storage_taken == {"b": 1024 * MiB}


async def test_a_claim_whose_volume_becomes_deleting_is_not_placed_with_any_more() -> None:
    async with running() as cluster:
        loop = cluster.loop
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        await put(cluster, loop.volumes, "pv-1", volume("pv-1", node="a"))
        await put(cluster, loop.claims, "default.data", claim("data"))
        bound = ClaimStatus(name="data", phase="Bound", volume="pv-1", node="a")
        await put(cluster, loop.claim_statuses, "default.data", bound)
        await apply(cluster, deployment("web", "data"), deployment("db", "data", replicas=0))
        await cluster.tick(1, beating=("a",))
        assert placed(loop, "web") == ["a"]
        await apply(cluster, deployment("web", "data", replicas=3))  # queued: decided below
        seen = record_reconciles(loop)
        status = VolumeStatus(name="pv-1", phase="Deleting", claim="default.data", node="a")
        await put(cluster, loop.volume_statuses, "pv-1", status)
        await loop.drain()
        assert {"default.web", "default.db"} <= set(seen)
        await apply(cluster, deployment("db", "data", replicas=1))
        await loop.drain()
        deleting = 'persistentvolumeclaim "data"\'s volume is being deleted'
        assert placed(loop, "db") == [] and await pending_reason(cluster, "db") == deleting
        assert placed(loop, "web") == ["a"] and await pending_reason(cluster, "web") == deleting


async def test_a_local_driver_docker_volume_is_used_on_one_node_a_network_one_spreads() -> None:
    async with running() as cluster:
        loop = cluster.loop
        for name in ("a", "b"):
            await cluster.heartbeat(name)
        await cluster.tick(1, beating=("a", "b"))
        modes = ["ReadWriteOnce", "ReadWriteMany"]
        engine_data = volume("engine", access_modes=modes, docker_volume=DockerVolumeSource())
        nfs = volume(
            "nfs", access_modes=modes, docker_volume=DockerVolumeSource(options={"type": "nfs"})
        )
        for pv, name in ((engine_data, "local"), (nfs, "shared")):
            await put(cluster, loop.volumes, pv.metadata.name, pv)
            await put(cluster, loop.claims, f"default.{name}", claim(name, tuple(modes)))
            status = ClaimStatus(
                name=name, phase="Bound", volume=pv.metadata.name, access_modes=modes
            )
            await put(cluster, loop.claim_statuses, f"default.{name}", status)
        await apply(cluster, deployment("one", "local", replicas=2), deployment("two", "shared", 2))
        await cluster.tick(1, beating=("a", "b"))
        assert len(set(placed(loop, "one"))) == 1 and len(placed(loop, "one")) == 2
        assert placed(loop, "two") == ["a", "b"]
