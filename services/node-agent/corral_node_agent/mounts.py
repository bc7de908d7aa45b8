"""The pure translation of a replica's volumes into its container's mounts
(docs/volumes.md, "Replicas with volumes").

A claim is mounted through the `VolumeAttachment` of this node that serves it: its
Docker volume (made by volmgr's node part), or with a `subPath` a bind of
`<hostPath>/<subPath>`. An emptyDir is a Docker volume of the replica's own
(`names.empty_dir_volume_name`), made by the engine with the container, with corral's
labels; `medium: Memory` makes it a tmpfs. Nothing here touches the engine or NATS: what
is missing raises `VolumeNotReady` (the replica waits) or `VolumeRefused` (a mount this
node cannot give; the message names the field).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from corral.contract import names
from corral.contract.quantity import memory_bytes
from corral.contract.specs import EmptyDirSource, Volume
from corral.contract.state import Placement
from corral.contract.volume_state import VolumeAttachment
from corral_node_agent.runtime import Mount, VolumeNotReady, VolumeRefused

WAITING_FOR_VOLUME = "waiting for volume"  # how a waiting replica's message begins
WAITING_FOR_CLAIM = "waiting for claim"
_STILL_USED = " is still used by container "
EMPTY_DIR_PREFIX = "corral_empty_"  # names.empty_dir_volume_name
READ_WRITE_ONCE_POD = "ReadWriteOncePod"

# The attachment on this node serving a claim (key <namespace>.<claim>), or None.
AttachmentOf = Callable[[str], VolumeAttachment | None]


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
class MountPlan:
    mounts: tuple[Mount, ...] = ()
    directories: tuple[str, ...] = ()  # host directories the binds need (made if missing)
    claims: tuple[ClaimUse, ...] = ()


def _serving(volume: Volume, namespace: str, attachment_of: AttachmentOf) -> VolumeAttachment:
    """The ready attachment of a claim volume; VolumeNotReady while there is none."""
    assert volume.persistent_volume_claim is not None
    claim = volume.persistent_volume_claim.claim_name
    attachment = attachment_of(names.object_key(namespace, claim))
    if attachment is None:
        raise VolumeNotReady(waiting_for_claim(claim))
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


def plan_mounts(placement: Placement, cluster_id: str, attachment_of: AttachmentOf) -> MountPlan:
    """The mounts of placement's container. Every claim of the template must have a
    ready attachment on this node first (VolumeNotReady names the first that has not);
    a mount this node cannot give raises VolumeRefused naming the field."""
    template = placement.template
    volumes = {volume.name: volume for volume in template.volumes}
    position = {volume.name: index for index, volume in enumerate(template.volumes)}
    served: dict[str, VolumeAttachment] = {}
    claims: list[ClaimUse] = []
    for volume in template.volumes:
        if volume.persistent_volume_claim is None:
            continue
        attachment = _serving(volume, placement.namespace, attachment_of)
        served[volume.name] = attachment
        claim = names.object_key(placement.namespace, volume.persistent_volume_claim.claim_name)
        if all(use.claim != claim for use in claims):
            claims.append(ClaimUse(claim, attachment.volume, attachment.docker_volume))
    mounts: list[Mount] = []
    directories: list[str] = []
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
                source = posixpath.join(attachment.host_path, mount.sub_path.rstrip("/"))
                directories.append(source)
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
    return MountPlan(tuple(mounts), tuple(dict.fromkeys(directories)), tuple(claims))


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
