"""The pure translation of a replica's volumes into its container's mounts
(docs/volumes.md, "Replicas with volumes").

A claim is mounted through the `VolumeAttachment` of this node that serves it, found
through the claim's `ClaimStatus`: Bound, its `volume` -> the attachment
`names.attachment_key(node, volume)`, which must name that volume and the claim (never
"any attachment naming the claim": a Released volume keeps its old claim's name). Its
Docker volume (made by volmgr's node part), or with a `subPath` a bind of
`<hostPath>/<subPath>`, resolved on the host without following symlinks before the
create (`SubPathBind`; the runtime's `sub_path_source`). An emptyDir is a Docker
volume of the replica's own (`names.empty_dir_volume_name`), made by the engine with
the container, with corral's labels; `medium: Memory` makes it a tmpfs. Nothing here
touches the engine, the host or NATS: what is missing raises `VolumeNotReady` (the
replica waits) or `VolumeRefused` (a mount this node cannot give; the message names the
field).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from corral.contract import names
from corral.contract.quantity import memory_bytes
from corral.contract.specs import EmptyDirSource
from corral.contract.state import Placement
from corral.contract.volume_state import CLAIM_BOUND, ClaimStatus, VolumeAttachment
from corral_node_agent.runtime import Mount, VolumeNotReady, VolumeRefused

WAITING_FOR_VOLUME = "waiting for volume"  # how a waiting replica's message begins
WAITING_FOR_CLAIM = "waiting for claim"
_STILL_USED = " is still used by container "
EMPTY_DIR_PREFIX = "corral_empty_"  # names.empty_dir_volume_name
READ_WRITE_ONCE_POD = "ReadWriteOncePod"

# The status of a claim (key <namespace>.<claim>), or None: not known (yet).
ClaimStatusOf = Callable[[str], ClaimStatus | None]
# This node's attachment record at a key (names.attachment_key), or None.
AttachmentAt = Callable[[str], VolumeAttachment | None]


def waiting_for_claim(claim: str) -> str:
    return f"{WAITING_FOR_CLAIM} {claim} to be bound"


def waiting_for_volume(volume: str, detail: str = "") -> str:
    message = f"{WAITING_FOR_VOLUME} {volume} on this node"
    return f"{message}: {detail}" if detail else message


def volume_in_use(volume: str, container: str) -> str:
    return f"volume {volume}{_STILL_USED}{container}"


def is_volume_wait(message: str) -> bool:
    """The message of a replica waiting for a volume (an attachment's change retries it)."""
    return message.startswith((WAITING_FOR_VOLUME, WAITING_FOR_CLAIM)) or (
        message.startswith("volume ") and _STILL_USED in message
    )


def is_volume_in_use(message: str) -> bool:
    """The message of a replica waiting for another container to let a volume go."""
    return message.startswith("volume ") and _STILL_USED in message


@dataclass(frozen=True, slots=True)
class ClaimUse:
    """A claim the replica mounts, and the attachment that serves it here."""

    claim: str  # <namespace>.<claim>
    volume: str  # the PersistentVolume
    docker_volume: str  # "" : a host directory only


@dataclass(frozen=True, slots=True)
class SubPathBind:
    """mounts[index] binds <host_path>/<sub_path>: its source is replaced by the real
    path the runtime resolves (without following symlinks) before the create."""

    index: int
    host_path: str
    sub_path: str
    field: str  # volumeMounts[i].subPath


@dataclass(frozen=True, slots=True)
class MountPlan:
    mounts: tuple[Mount, ...] = ()
    sub_paths: tuple[SubPathBind, ...] = ()
    claims: tuple[ClaimUse, ...] = ()

    @property
    def volumes(self) -> tuple[str, ...]:
        """The PersistentVolumes the container uses (one label each on it)."""
        return tuple(dict.fromkeys(use.volume for use in self.claims))


def serving_attachment(
    node: str,
    claim: str,
    status: ClaimStatus | None,
    attachment_at: AttachmentAt,
) -> VolumeAttachment:
    """The ready attachment of this node serving `claim` (<namespace>.<name>): the
    claim's status is Bound to a volume, this node's attachment of that volume names
    that volume and that claim. VolumeNotReady (the replica waits) otherwise."""
    name = claim.partition(".")[2] or claim
    if status is None or status.phase != CLAIM_BOUND or not status.volume:
        raise VolumeNotReady(waiting_for_claim(name))
    attachment = attachment_at(names.attachment_key(node, status.volume))
    if (
        attachment is None
        or attachment.node != node
        or attachment.volume != status.volume
        or attachment.claim != claim
    ):
        # Not made here yet, or still another claim's (a Released volume keeps its
        # old claim's name until the node part clears it): never used for this one.
        raise VolumeNotReady(waiting_for_volume(status.volume))
    if not attachment.ready or not (attachment.docker_volume or attachment.host_path):
        raise VolumeNotReady(waiting_for_volume(attachment.volume, attachment.message))
    return attachment


def _no_subpath(field: str, sub_path: str, what: str) -> VolumeRefused:
    return VolumeRefused(
        f"`{field}` {sub_path!r}: {what} has no host directory (a Docker volume), and "
        "Docker 20.10 cannot mount a subpath of a volume; mount the whole volume, or use "
        "a claim of a node-local volume"
    )


def empty_dir_options(
    source: EmptyDirSource, field: str = "emptyDir.sizeLimit"
) -> tuple[tuple[str, str], ...]:
    """The local driver's options of an emptyDir: a tmpfs for medium Memory (a sizeLimit
    above 0 its size); none (a folder in the engine's data root) otherwise."""
    if source.medium != "Memory":
        return ()
    options = [("type", "tmpfs"), ("device", "tmpfs")]
    if source.size_limit is not None:
        try:
            size = memory_bytes(source.size_limit)
        except ValueError as error:
            raise VolumeRefused(f"`{field}`: {error}") from None
        if size > 0:
            options.append(("o", f"size={size}"))
    return tuple(options)


def empty_dir_labels(placement: Placement, cluster_id: str) -> tuple[tuple[str, str], ...]:
    return (
        (names.LABEL_MANAGED, "true"),
        (names.LABEL_CLUSTER, cluster_id),
        (names.LABEL_NODE, placement.node),
        (names.LABEL_REPLICA, placement.replica),
    )


def plan_mounts(
    placement: Placement,
    cluster_id: str,
    claim_status_of: ClaimStatusOf,
    attachment_at: AttachmentAt,
) -> MountPlan:
    """The mounts of placement's container. Every claim of the template must be Bound
    and have a ready attachment on this node first (serving_attachment; VolumeNotReady
    names the first that has not); a mount this node cannot give raises VolumeRefused
    naming the field."""
    template = placement.template
    volumes = {volume.name: volume for volume in template.volumes}
    position = {volume.name: index for index, volume in enumerate(template.volumes)}
    served: dict[str, VolumeAttachment] = {}
    claims: list[ClaimUse] = []
    for volume in template.volumes:
        if volume.persistent_volume_claim is None:
            continue
        claim = names.object_key(placement.namespace, volume.persistent_volume_claim.claim_name)
        attachment = serving_attachment(
            placement.node, claim, claim_status_of(claim), attachment_at
        )
        served[volume.name] = attachment
        if all(use.claim != claim for use in claims):
            claims.append(ClaimUse(claim, attachment.volume, attachment.docker_volume))
    mounts: list[Mount] = []
    sub_paths: list[SubPathBind] = []
    for index, mount in enumerate(template.volume_mounts):
        volume = volumes[mount.name]  # the template checked that it is one
        target = mount.mount_path.rstrip("/") or "/"
        field = f"volumeMounts[{index}].subPath"
        if volume.persistent_volume_claim is not None:
            attachment = served[volume.name]
            read_only = (
                mount.read_only or volume.persistent_volume_claim.read_only or attachment.read_only
            )
            if mount.sub_path:
                if not attachment.host_path:
                    what = (
                        f"volume {attachment.volume} "
                        f"(claim {volume.persistent_volume_claim.claim_name})"
                    )
                    raise _no_subpath(field, mount.sub_path, what)
                sub_path = mount.sub_path.rstrip("/")
                sub_paths.append(SubPathBind(len(mounts), attachment.host_path, sub_path, field))
                source = posixpath.join(attachment.host_path, sub_path)  # resolved later
                mounts.append(Mount("bind", source, target, read_only))
            elif attachment.docker_volume:
                mounts.append(Mount("volume", attachment.docker_volume, target, read_only))
            else:
                mounts.append(Mount("bind", attachment.host_path, target, read_only))
            continue
        assert volume.empty_dir is not None
        if mount.sub_path:
            raise _no_subpath(field, mount.sub_path, f"emptyDir {volume.name}")
        mounts.append(
            Mount(
                "volume",
                names.empty_dir_volume_name(placement.replica, volume.name, cluster_id),
                target,
                mount.read_only,
                driver="local",
                driver_options=empty_dir_options(
                    volume.empty_dir, f"volumes[{position[volume.name]}].emptyDir.sizeLimit"
                ),
                labels=empty_dir_labels(placement, cluster_id),
            )
        )
    return MountPlan(tuple(mounts), tuple(sub_paths), tuple(claims))


def uses_volume_labels(volumes: Iterable[str]) -> dict[str, str]:
    """The labels of a container that uses these PersistentVolumes (by a Docker volume
    mount or a bind inside one): `docker ps --filter label=...` finds it, which Docker's
    volume filter misses for binds. None for a container without any."""
    return {names.uses_volume_label(volume): "1" for volume in volumes}


def docker_mounts(mounts: Iterable[Mount]) -> list[dict[str, object]]:
    """HostConfig.Mounts of the Docker API's create body. A volume with a driver (an
    emptyDir) carries VolumeOptions: the engine makes it, labelled, if it is missing."""
    found: list[dict[str, object]] = []
    for mount in mounts:
        body: dict[str, object] = {
            "Type": mount.kind,
            "Source": mount.source,
            "Target": mount.target,
            "ReadOnly": mount.read_only,
        }
        if mount.driver:
            body["VolumeOptions"] = {
                "Labels": dict(mount.labels),
                "DriverConfig": {"Name": mount.driver, "Options": dict(mount.driver_options)},
            }
        found.append(body)
    return found


def empty_dirs_of(replica: str, volumes: Iterable[str]) -> tuple[str, ...]:
    """The emptyDir volumes of `replica` among the Docker volumes given (its containers')."""
    prefix = f"{EMPTY_DIR_PREFIX}{replica}_"
    return tuple(sorted({volume for volume in volumes if volume.startswith(prefix)}))


def empty_dir_replica(volume: str, cluster_id: str) -> str | None:
    """The replica of an emptyDir volume of `cluster_id` (names.empty_dir_volume_name
    backwards), or None: not one (replica and volume names are DNS labels, never '_')."""
    suffix = f"_{cluster_id}"
    if not cluster_id or not volume.startswith(EMPTY_DIR_PREFIX) or not volume.endswith(suffix):
        return None
    parts = volume[len(EMPTY_DIR_PREFIX) : -len(suffix)].split("_")
    return parts[0] if len(parts) == 2 and all(parts) else None
