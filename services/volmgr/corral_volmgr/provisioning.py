"""Dynamic provisioning decisions (docs/volumes.md, "Dynamic provisioning"): pure
functions. A provisioned volume is named pvc-<first 12 hex digits of sha256(claim
uid)>, reserved for its claim (claimRef) and made with its class's reclaim policy. A
node offers NodeVolumes.capacityBytes; the volumes with no source placed on it
(VolumeStatus with countsRoom and that node: provisioned ones and those made by hand)
take their full size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final

from corral.contract.quantity import format_memory
from corral.contract.specs import ObjectMeta
from corral.contract.volume_specs import (
    PROVISIONER_DOCKER,
    PROVISIONER_LOCAL,
    DockerVolumeSource,
    PersistentVolume,
    PersistentVolumeClaim,
    PersistentVolumeSpec,
    StorageClass,
    StorageRequest,
)
from corral.contract.volume_state import (
    VOLUME_AVAILABLE,
    VOLUME_PENDING,
    NodeVolumes,
    VolumeStatus,
)
from corral_volmgr.binding import claim_ref_key

# Kubernetes' annotation on a volume a provisioner made: the provisioner's name.
PROVISIONED_BY_ANNOTATION: Final = "pv.kubernetes.io/provisioned-by"


def provisioned_name(claim_uid: str) -> str:
    """The name of the volume provisioned for the claim with this uid."""
    return "pvc-" + hashlib.sha256(claim_uid.encode()).hexdigest()[:12]


def provisioned_class(volume: PersistentVolume) -> str:
    """The class that provisioned `volume` ("" : made by hand)."""
    if PROVISIONED_BY_ANNOTATION not in volume.metadata.annotations:
        return ""
    return volume.spec.storage_class_name


def initial_status(volume: PersistentVolume, claim_uid: str = "") -> VolumeStatus:
    """A volume's first VolumeStatus: Available, or for one volmgr provisioned on a node,
    Pending (the node part makes it) and already its claim's. A volume with no source
    counts against its node's room (countsRoom), provisioned or made by hand."""
    spec = volume.spec
    provisioned_by = provisioned_class(volume)
    made_on_node = bool(provisioned_by) and spec.source == "provisioned"
    return VolumeStatus(
        name=volume.metadata.name,
        phase=VOLUME_PENDING if made_on_node else VOLUME_AVAILABLE,
        claim=claim_ref_key(spec.claim_ref) if made_on_node and spec.claim_ref else "",
        claim_uid=claim_uid if made_on_node else "",
        node=spec.node,
        size_bytes=spec.size_bytes,
        provisioned_by=provisioned_by,
        counts_room=spec.source == "provisioned",
    )


def used_room(statuses: Iterable[VolumeStatus]) -> dict[str, int]:
    """Bytes the volumes with no source (countsRoom) take on each node."""
    used: dict[str, int] = {}
    for status in statuses:
        if status.counts_room and status.node:
            used[status.node] = used.get(status.node, 0) + status.size_bytes
    return used


def free_room(nodes: Mapping[str, NodeVolumes], used: Mapping[str, int]) -> dict[str, int]:
    """Bytes each ready node part still offers (negative: promised more than it has)."""
    return {
        name: record.capacity_bytes - used.get(name, 0)
        for name, record in nodes.items()
        if record.ready
    }


def room_problem(
    node: str,
    size: int,
    nodes: Mapping[str, NodeVolumes],
    used: Mapping[str, int],
    *,
    needs: str = "the claim",
) -> str:
    """Why `node` cannot take a volume of `size` bytes with no source ("" : it can);
    `needs`: what asks for the room, in the message."""
    record = nodes.get(node)
    if record is None or not record.ready:
        return f"node {node} has no volume manager running"
    free = record.capacity_bytes - used.get(node, 0)
    if free < size:
        return (
            f"node {node} has {format_memory(max(free, 0))} free of "
            f"{format_memory(record.capacity_bytes)}; {needs} needs {format_memory(size)}"
        )
    return ""


def pick_node(
    size: int, nodes: Mapping[str, NodeVolumes], used: Mapping[str, int]
) -> tuple[str, str]:
    """The node for an Immediate volume of `size` bytes: a ready node part with room,
    the most free room first, then by name; or ("", why none)."""
    free = free_room(nodes, used)
    fitting = [(-room, name) for name, room in free.items() if room >= size]
    if fitting:
        return min(fitting)[1], ""
    if not free:
        return "", "no node has a volume manager running"
    largest = max(free.values())
    return "", (
        f"0/{len(free)} nodes have {format_memory(size)} of free volume room "
        f"(the most: {format_memory(max(largest, 0))})"
    )


# The least a node-local volume is made with: its ext4 file system needs room of its own
# (mkfs.ext4 fails on an image of 64 KiB: "inode_size (256) * inodes_count (0) too big").
# A claim asking for less gets this much, as a cloud disk is rounded up to its least size.
LOCAL_VOLUME_LEAST_BYTES: Final = 1 << 20


def provisioned_size(claim: PersistentVolumeClaim, storage_class: StorageClass) -> int:
    """The capacity `storage_class` provisions for `claim`: what it asks for, at least
    LOCAL_VOLUME_LEAST_BYTES for a node-local volume."""
    if storage_class.provisioner == PROVISIONER_LOCAL:
        return max(claim.spec.size_bytes, LOCAL_VOLUME_LEAST_BYTES)
    return claim.spec.size_bytes


def provisioned_volume(
    claim: PersistentVolumeClaim, storage_class: StorageClass, node: str
) -> PersistentVolume:
    """The PersistentVolume provisioned for `claim` by `storage_class` (on `node` for a
    node-local volume; a Docker volume is made on every node that uses it)."""
    docker_volume = None
    if storage_class.provisioner == PROVISIONER_DOCKER:
        parameters = dict(storage_class.parameters)
        driver = parameters.pop("driver", "local")
        docker_volume = DockerVolumeSource(driver=driver, options=parameters)
        node = ""
    return PersistentVolume(
        metadata=ObjectMeta(
            name=provisioned_name(claim.metadata.uid),
            annotations={PROVISIONED_BY_ANNOTATION: storage_class.provisioner},
        ),
        spec=PersistentVolumeSpec(
            capacity=StorageRequest(storage=provisioned_size(claim, storage_class)),
            access_modes=list(claim.spec.access_modes),
            persistent_volume_reclaim_policy=storage_class.reclaim_policy,
            storage_class_name=storage_class.metadata.name,
            node=node,
            docker_volume=docker_volume,
            claim_ref=f"{claim.metadata.namespace}/{claim.metadata.name}",
        ),
    )
