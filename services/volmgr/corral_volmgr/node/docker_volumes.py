"""The node's Docker volumes (docs/volumes.md), on the node's engine through aiodocker:

    corral_pv_<volume>_<clusterId>   a provisioned, hostPath or local volume: driver
                                     `local`, type=none,o=bind,device=<its directory>;
                                     a dockerVolume: its driver and options
                                     labels io.corral.managed, .cluster, .volume, .node

Only Docker volumes carrying this cluster's and this node's labels are ever removed.
No container (running or stopped) may use a volume that is taken down: neither one
Docker's volume filter finds nor one carrying the label io.corral.uses-volume.<volume>
(the agent's, also on a container that binds only a subPath of it), and Docker refuses to
remove a volume a container mounts (VolumeInUse) ("Never two writers"). A dockerVolume's
Docker volume is its data (driver `local` without options keeps the files in the engine's
data root): it is only removed when its volume is Deleting without keepData, and never
remade: one that holds data and differs from its volume's spec (driver, options, labels),
or was made for another volume of the same name (label io.corral.volume-uid), is left as
it is and its attachment says why (`refusal`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiodocker

from corral.contract import names

log = logging.getLogger(__name__)


class VolumeInUse(Exception):
    """A Docker volume to remove is still used by a container: removed later."""


class VolumeNotOurs(Exception):
    """A Docker volume of corral's name exists without this node's labels."""


class VolumeHoldsData(Exception):
    """A Docker volume to remake holds data (or another volume's): never removed."""


@dataclass(frozen=True, slots=True)
class WantedVolume:
    """What one Docker volume must be."""

    name: str
    driver: str
    options: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Driver": self.driver,
            "DriverOpts": dict(self.options),
            "Labels": dict(self.labels),
        }


def labels(cluster_id: str, volume: str, node: str, uid: str = "") -> dict[str, str]:
    found = {
        names.LABEL_MANAGED: "true",
        names.LABEL_CLUSTER: cluster_id,
        names.LABEL_VOLUME: volume,
        names.LABEL_NODE: node,
    }
    if uid:
        found[names.LABEL_VOLUME_UID] = uid
    return found


def bind_volume(volume: str, directory: str, cluster_id: str, node: str) -> WantedVolume:
    """The Docker volume of a directory of the node (a provisioned or hostPath volume)."""
    return WantedVolume(
        name=names.docker_volume_name(volume, cluster_id),
        driver="local",
        options={"type": "none", "o": "bind", "device": directory},
        labels=labels(cluster_id, volume, node),
    )


def driver_volume(
    volume: str, driver: str, options: dict[str, str], cluster_id: str, node: str, uid: str = ""
) -> WantedVolume:
    """The Docker volume of a dockerVolume source: its driver and options, labelled with
    the uid of the PersistentVolume it is made for."""
    return WantedVolume(
        name=names.docker_volume_name(volume, cluster_id),
        driver=driver,
        options=dict(options),
        labels=labels(cluster_id, volume, node, uid),
    )


def holds_data(shown: dict[str, Any]) -> bool:
    """Whether an inspected Docker volume is data rather than a bind of a node directory
    (corral's bind volumes of provisioned and hostPath/local volumes hold nothing)."""
    options = shown.get("Options") or {}
    bind = options.get("type") == "none" and "bind" in options.get("o", "").split(",")
    return not (shown.get("Driver") == "local" and bind)


def matches(shown: dict[str, Any], want: WantedVolume) -> bool:
    """Whether an inspected Docker volume is what `want` says (driver, options, labels;
    one made before volumes carried their uid label is taken as its volume's)."""
    shown_labels = shown.get("Labels") or {}
    return (
        shown.get("Driver") == want.driver
        and (shown.get("Options") or {}) == want.options
        and all(
            shown_labels.get(k) == v
            for k, v in want.labels.items()
            if k != names.LABEL_VOLUME_UID or k in shown_labels
        )
    )


def other_uid(shown: dict[str, Any], uid: str) -> str:
    """The uid of the other PersistentVolume an inspected Docker volume was made for
    ("" : made for `uid`, or not known)."""
    found = str((shown.get("Labels") or {}).get(names.LABEL_VOLUME_UID) or "")
    return found if found and uid and found != uid else ""


def refusal(shown: dict[str, Any] | None, want: WantedVolume) -> str:
    """Why the existing Docker volume `shown` may not be removed and made again as `want`
    says ("" : it may, or it is what `want` says): it holds data, and it was made for
    another volume of that name, or with other options."""
    if shown is None or not holds_data(shown):
        return ""
    other = other_uid(shown, want.labels.get(names.LABEL_VOLUME_UID, ""))
    if other:
        return (
            f"the Docker volume {want.name} holds another volume's data (made for the "
            f"volume of uid {other}): delete that Docker volume by hand once its data is "
            "no longer needed"
        )
    if matches(shown, want):
        return ""
    return (
        f"the Docker volume {want.name} holds data and was made with other options "
        f"(driver {shown.get('Driver')}, options {shown.get('Options') or {}}): delete the "
        "volume (Deleting) or restore its options"
    )


class DockerVolumes:
    """The Docker side of one node part: its engine, its cluster and node."""

    def __init__(self, docker: aiodocker.Docker, cluster_id: str, node: str) -> None:
        self.docker = docker
        self.cluster_id = cluster_id
        self.node = node

    def ours(self, shown: dict[str, Any]) -> bool:
        found = shown.get("Labels") or {}
        return (
            found.get(names.LABEL_MANAGED) == "true"
            and found.get(names.LABEL_CLUSTER) == self.cluster_id
            and found.get(names.LABEL_NODE) == self.node
        )

    async def list_ours(self) -> dict[str, dict[str, Any]]:
        """name -> summary of this cluster's and node's Docker volumes on the engine."""
        found = await self.docker.volumes.list(  # type: ignore[no-untyped-call]
            filters={
                "label": [
                    f"{names.LABEL_MANAGED}=true",
                    f"{names.LABEL_CLUSTER}={self.cluster_id}",
                    f"{names.LABEL_NODE}={self.node}",
                ]
            }
        )
        return {str(v["Name"]): v for v in (found.get("Volumes") or []) if self.ours(v)}

    async def show(self, name: str) -> dict[str, Any] | None:
        """The inspected Docker volume, None when there is none of that name."""
        try:
            volume = await self.docker.volumes.get(name)  # type: ignore[no-untyped-call]
            shown: dict[str, Any] = await volume.show()
        except aiodocker.DockerError as error:
            if error.status == 404:
                return None
            raise
        return shown

    async def ensure(self, want: WantedVolume) -> bool:
        """Make the Docker volume `want` says; True when it was made (or remade).
        VolumeNotOurs when one of that name is another's; VolumeInUse when ours differs
        and a container still uses it; VolumeHoldsData when ours differs and holds data
        (never removed: `refusal`)."""
        shown = await self.show(want.name)
        if shown is not None:
            if matches(shown, want):
                return False
            if not self.ours(shown):
                raise VolumeNotOurs(
                    f"Docker volume {want.name} exists and is not this node's "
                    f"(labels {shown.get('Labels') or {}}); remove it by hand"
                )
            why = refusal(shown, want)
            if why:
                raise VolumeHoldsData(why)
            log.info("Docker volume %s differs from its volume: remaking it", want.name)
            await self.remove(want.name)
        try:
            await self.docker.volumes.create(want.config())  # type: ignore[no-untyped-call]
        except aiodocker.DockerError as error:
            raise RuntimeError(f"creating Docker volume {want.name}: {error.message}") from None
        log.info("Docker volume %s made (driver %s)", want.name, want.driver)
        return True

    async def remove(self, name: str) -> bool:
        """Remove one of this node's Docker volumes; True when removed, False when there
        was none (or it is another's: never touched). VolumeInUse while a container,
        running or stopped, uses it."""
        shown = await self.show(name)
        if shown is None or not self.ours(shown):
            return False
        try:
            volume = await self.docker.volumes.get(name)  # type: ignore[no-untyped-call]
            await volume.delete()
        except aiodocker.DockerError as error:
            if error.status == 404:
                return False
            if error.status == 409 or "in use" in error.message:
                raise VolumeInUse(f"Docker volume {name}: {error.message}") from None
            raise
        log.info("Docker volume %s removed", name)
        return True

    async def users(self, name: str, volume: str) -> list[str]:
        """The containers (running or stopped) that use Docker volume `name` of volume
        `volume`: Docker's volume filter, and the label the agent puts on every container
        that mounts a volume or binds a subPath of it (the filter misses binds)."""
        found: set[str] = set()
        for filters in ({"volume": [name]}, {"label": [names.uses_volume_label(volume)]}):
            listed = await self.docker.containers.list(all="1", filters=json.dumps(filters))
            found.update(str(container.id) for container in listed)
        return sorted(found)

    async def engine_root(self) -> str:
        """The engine's data root (`docker info` DockerRootDir): never a host path."""
        info = await self.docker.system.info()
        return str(info.get("DockerRootDir") or "")
