"""What volmgr decides and observes: its records in KV (docs/volumes.md).

    VolumeStatus      volmgr (cluster part)   corral_volume_status[volume]
    ClaimStatus       volmgr (cluster part)   corral_claim_status[namespace.claim]
    NodeVolumes       volmgr (node part)      corral_node_volumes[node]
    VolumeAttachment  volmgr (node part)      corral_volume_attachments[node.volume]

The specs (PersistentVolume, PersistentVolumeClaim, StorageClass) are stored as applied,
in corral_volumes, corral_claims and corral_storage_classes; what binding decides is
in the status records, so that every record has one writer.
New fields always get defaults; a field's type never changes.
"""

from __future__ import annotations

import msgspec

from corral.contract.names import DEFAULT_NAMESPACE, object_key


class _Record(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """Base of stored records: immutable, camelCase JSON, tolerant of newer fields."""


# VolumeStatus.phase
VOLUME_PENDING = "Pending"  # dynamic: decided, the node has not made it yet
VOLUME_AVAILABLE = "Available"
VOLUME_BOUND = "Bound"
VOLUME_RELEASED = "Released"  # its claim was deleted; Retain keeps the data
VOLUME_FAILED = "Failed"
VOLUME_TERMINATING = "Terminating"  # deleted while bound: removed once its claim is gone
# Being removed: every node part takes it down (deleting its data unless `keepData`)
# and deletes its attachment; then the cluster part deletes the records. A volume is only
# ever taken down through this phase: a record that is merely missing is left alone.
VOLUME_DELETING = "Deleting"
# ClaimStatus.phase
CLAIM_PENDING = "Pending"
CLAIM_BOUND = "Bound"
CLAIM_LOST = "Lost"  # its volume was deleted under it
CLAIM_TERMINATING = "Terminating"  # deleted while a replica uses it


class VolumeStatus(_Record, frozen=True, kw_only=True):
    """A PersistentVolume as volmgr sees it: bound to which claim, living on which node."""

    name: str
    phase: str = VOLUME_AVAILABLE
    claim: str = ""  # <namespace>.<name> of the claim bound to it
    # That claim's metadata.uid: a claim deleted and made again under the same name is
    # another claim, never bound to the volume the first one had.
    claim_uid: str = ""
    # The node it lives on: a node-local volume's (set on first use when its spec names
    # none); "" for a dockerVolume (any node) or a node-local one not used yet.
    node: str = ""
    size_bytes: int = 0
    # Made by corral from a StorageClass (dynamic provisioning): its class; its image
    # file takes `sizeBytes` of its node's disk (NodeVolumes.capacityBytes).
    provisioned_by: str = ""
    # For a ReadWriteOnce/ReadWriteOncePod dockerVolume: the one node allowed to mount it
    # now ("" : none yet). Moved to another node only once no attachment remains on
    # this one (docs/volumes.md, "Never two writers").
    attach_node: str = ""
    # The size is enforced by a filesystem of that size (a loop device); None: unknown.
    size_enforced: bool | None = None
    # Deleting: keep the data on the node (an image file, a Docker volume) when taking the
    # volume down (its reclaim policy is Retain, or it was deleted by hand with Retain).
    keep_data: bool = False
    # An image (or directory) corral makes on its node for it (a volume with no source,
    # dynamic or made by hand): its sizeBytes are charged against the node's room.
    counts_room: bool = False
    message: str = ""
    updated_at: float = 0.0


class ClaimStatus(_Record, frozen=True, kw_only=True):
    """A claim as volmgr sees it: bound or pending (with why), and what the scheduler
    needs to place replicas that use it."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    phase: str = CLAIM_PENDING
    volume: str = ""
    capacity_bytes: int = 0  # the bound volume's size
    access_modes: list[str] = []  # the bound volume's (the claim's while pending)
    storage_class: str = ""  # the class it binds or provisions by ("" none)
    # Replicas using it must run on this node (a node-local volume's); "" : any node.
    node: str = ""
    # Pending until a replica using it is placed: then provisioned on that node.
    wait_for_first_consumer: bool = False
    # Bytes a first consumer's node must have free (for its WaitForFirstConsumer provisioning).
    request_bytes: int = 0
    reason: str = ""  # a short CamelCase word when pending (e.g. "NoMatchingVolume")
    message: str = ""
    updated_at: float = 0.0

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)


class NodeVolumes(_Record, frozen=True, kw_only=True):
    """What a node's volmgr part reports: can it provision, and how much room it offers."""

    node: str
    ready: bool = False
    # Loop devices work here: provisioned volumes have an enforced size. False: they are
    # directories, not size-enforced (the message says why).
    loop_devices: bool = False
    # Bytes this node offers to provisioned volumes (the volumes folder's filesystem:
    # free space plus what corral's images already hold, or the operator's --capacity).
    capacity_bytes: int = 0
    volumes_dir: str = ""
    message: str = ""
    updated_at: float = 0.0


class VolumeAttachment(_Record, frozen=True, kw_only=True):
    """A volume made usable on one node: the Docker volume the agent mounts."""

    volume: str
    node: str
    claim: str = ""  # <namespace>.<name> it serves
    ready: bool = False
    docker_volume: str = ""  # the name to mount (docker volume ls shows it)
    # The host directory behind it, when there is one (node-local volumes): subPath
    # mounts bind <hostPath>/<subPath>.
    host_path: str = ""
    size_enforced: bool | None = None
    read_only: bool = False
    message: str = ""
    updated_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.node}.{self.volume}"
