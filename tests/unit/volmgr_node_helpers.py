"""Records and fakes for volmgr's node part: volumes, statuses, claims and placements as
the cluster part and the scheduler write them, and an engine's Docker volumes in memory."""

from __future__ import annotations

import itertools
from typing import Any

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import ClaimSource, ContainerTemplate, ObjectMeta, Volume
from corral.contract.state import Placement
from corral.contract.volume_specs import (
    DockerVolumeSource,
    HostPathSource,
    PersistentVolume,
    PersistentVolumeSpec,
    StorageRequest,
)
from corral.contract.volume_state import ClaimStatus, VolumeStatus
from corral.natsio.kv import Entry, Mirror
from corral_volmgr.node.docker_volumes import (
    VolumeHoldsData,
    VolumeInUse,
    VolumeNotOurs,
    WantedVolume,
    matches,
    refusal,
)

CLUSTER = "c0ffee"
_revisions = itertools.count(1)


def pv(
    name: str,
    *,
    size: str = "20Mi",
    node: str = "",
    host_path: str = "",
    host_path_type: str = "",
    driver: str = "",
    options: dict[str, str] | None = None,
    modes: tuple[str, ...] = ("ReadWriteOnce",),
) -> PersistentVolume:
    return PersistentVolume(
        metadata=ObjectMeta(name=name),
        spec=PersistentVolumeSpec(
            capacity=StorageRequest(storage=size),
            access_modes=list(modes),  # type: ignore[arg-type]
            node=node,
            host_path=HostPathSource(path=host_path, type=host_path_type)  # type: ignore[arg-type]
            if host_path
            else None,
            docker_volume=DockerVolumeSource(driver=driver, options=options or {})
            if driver
            else None,
        ),
    )


def status(
    name: str,
    *,
    node: str = "",
    claim: str = "",
    attach_node: str = "",
    by: str = "local",
    phase: str = "",
    keep_data: bool = False,
) -> VolumeStatus:
    """A volume's status as the cluster part writes it (phase: Bound with a claim,
    else Available, unless given: "Deleting" with keep_data is its tombstone)."""
    return VolumeStatus(
        name=name,
        phase=phase or ("Bound" if claim else "Available"),
        keep_data=keep_data,
        claim=claim,
        node=node,
        provisioned_by=by,
        attach_node=attach_node,
    )


def claim(name: str, volume: str) -> ClaimStatus:
    return ClaimStatus(name=name, phase="Bound", volume=volume)


def placement(node: str, replica: str, *claims: str) -> Placement:
    template = ContainerTemplate(
        image="corral-test/busybox:1",
        volumes=[
            Volume(name=f"v{i}", persistent_volume_claim=ClaimSource(claim_name=c))
            for i, c in enumerate(claims)
        ],
    )
    return Placement(
        replica=replica,
        deployment="app",
        node=node,
        template=template,
        template_hash="h",
        generation=1,
    )


def put(mirror: Mirror[Any], key: str, value: Any) -> None:
    """A change as the mirror's watch would deliver it (None: deleted)."""
    raw = None if value is None else encode(value)
    mirror.apply(Entry(key, raw, next(_revisions)), from_watch=True)


class FakeDockerVolumes:
    """An engine's Docker volumes in memory, with DockerVolumes' methods."""

    def __init__(self, cluster_id: str = CLUSTER, node: str = "n1") -> None:
        self.cluster_id = cluster_id
        self.node = node
        self.volumes: dict[str, dict[str, Any]] = {}
        self.in_use: set[str] = set()  # Docker volumes a container mounts (volume filter)
        self.labelled: set[str] = set()  # volumes a container carries the uses-volume label of
        self.removed: list[str] = []
        self.root = "/var/lib/docker"

    def ours(self, shown: dict[str, Any]) -> bool:
        labels = shown.get("Labels") or {}
        return (
            labels.get(names.LABEL_CLUSTER) == self.cluster_id
            and labels.get(names.LABEL_NODE) == self.node
        )

    async def list_ours(self) -> dict[str, dict[str, Any]]:
        return {n: v for n, v in self.volumes.items() if self.ours(v)}

    async def show(self, name: str) -> dict[str, Any] | None:
        return self.volumes.get(name)

    async def users(self, name: str, volume: str) -> list[str]:
        found = [f"mounts-{name}"] if name in self.in_use and name in self.volumes else []
        return found + ([f"labelled-{volume}"] if volume in self.labelled else [])

    async def ensure(self, want: WantedVolume) -> bool:
        shown = self.volumes.get(want.name)
        if shown is not None:
            if matches(shown, want):
                return False
            if not self.ours(shown):
                raise VolumeNotOurs(want.name)
            why = refusal(shown, want)
            if why:
                raise VolumeHoldsData(why)
            await self.remove(want.name)
        self.volumes[want.name] = {
            "Name": want.name,
            "Driver": want.driver,
            "Options": dict(want.options),
            "Labels": dict(want.labels),
        }
        return True

    async def remove(self, name: str) -> bool:
        shown = self.volumes.get(name)
        if shown is None or not self.ours(shown):
            return False
        if name in self.in_use:
            raise VolumeInUse(f"Docker volume {name}: volume is in use")
        del self.volumes[name]
        self.removed.append(name)
        return True

    async def engine_root(self) -> str:
        return self.root
