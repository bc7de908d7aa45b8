"""volmgr's cluster part on in-memory buckets: its mirrors, APIs and controllers, and
records to write as the scheduler and the node parts would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import anyio.lowlevel

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import ClaimSource, ContainerTemplate, Volume
from corral.contract.state import Placement
from corral.contract.volume_state import ClaimStatus, NodeVolumes, VolumeAttachment, VolumeStatus
from corral.natsio.controller import Controller
from corral.natsio.kv import MemoryBucket
from corral_volmgr.cluster_loop import ClusterLoop
from corral_volmgr.main import APIs, build_apis
from tests.unit.cluster_part_helpers import ClusterPart, memory_buckets
from tests.unit.cluster_part_helpers import ok as ok  # re-exported for the tests
from tests.unit.cluster_part_helpers import put as put

MI = 2**20


@dataclass
class Volmgr(ClusterPart):
    loop: ClusterLoop
    apis: APIs
    drain_rounds: ClassVar[int] = 100

    def controllers(self) -> Sequence[Controller]:
        return (self.loop.volume_controller, self.loop.claim_controller)

    async def claim(self, name: str) -> ClaimStatus | None:
        result: ClaimStatus | None = await self.record(
            names.CLAIM_STATUS_BUCKET, f"default.{name}", ClaimStatus
        )
        return result

    async def volume(self, name: str) -> VolumeStatus | None:
        result: VolumeStatus | None = await self.record(
            names.VOLUME_STATUS_BUCKET, name, VolumeStatus
        )
        return result


class Told:
    """Events the cluster part tells (an EventPublisher's emit), kept in a list."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str, bool]] = []

    async def emit(
        self,
        kind: str,
        name: str,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        namespace: str | None = None,
    ) -> None:
        self.events.append((kind, name, reason, message, warning))

    def reasons(self, kind: str, name: str) -> list[str]:
        return [e[2] for e in self.events if (e[0], e[1]) == (kind, name)]


@asynccontextmanager
async def volmgr(
    buckets: dict[str, MemoryBucket] | None = None,
    *,
    host_path_allow: tuple[str, ...] = (),
    told: Told | None = None,
) -> AsyncIterator[Volmgr]:
    """The cluster part on memory buckets, its mirrors current and the `local` class
    made; call drain() to run the controllers. `told`: collects its events."""
    buckets = buckets or memory_buckets()
    loop = ClusterLoop(dict(buckets), events=told)  # type: ignore[arg-type]
    apis = build_apis(loop, buckets[names.LEASES_BUCKET], host_path_allow=host_path_allow)
    async with anyio.create_task_group() as tg:
        await tg.start(loop.start_mirrors)
        await apis.classes.ensure_default()
        try:
            yield Volmgr(buckets, loop, apis)
        finally:
            tg.cancel_scope.cancel()


def pv(name: str, size: str = "100Mi", **spec: Any) -> bytes:
    metadata: dict[str, Any] = {"name": name}
    if "labels" in spec:
        metadata["labels"] = spec.pop("labels")
    return encode(
        {
            "kind": "PersistentVolume",
            "metadata": metadata,
            "spec": {"capacity": {"storage": size}, **spec},
        }
    )


def pvc(name: str, size: str = "50Mi", **spec: Any) -> bytes:
    return encode(
        {
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {"resources": {"requests": {"storage": size}}, **spec},
        }
    )


def storage_class(name: str, provisioner: str = "corral.io/local-volume", **fields: Any) -> bytes:
    metadata: dict[str, Any] = {"name": name}
    if "annotations" in fields:
        metadata["annotations"] = fields.pop("annotations")
    return encode(
        {"kind": "StorageClass", "metadata": metadata, "provisioner": provisioner, **fields}
    )


def delete(name: str) -> bytes:
    return encode({"name": name})


def node_volumes(node: str, capacity: int, *, ready: bool = True) -> NodeVolumes:
    return NodeVolumes(node=node, ready=ready, loop_devices=True, capacity_bytes=capacity)


def attachment(node: str, volume: str, *, enforced: bool = True) -> VolumeAttachment:
    return VolumeAttachment(
        volume=volume,
        node=node,
        ready=True,
        docker_volume=f"corral_pv_{volume}_test",
        size_enforced=enforced,
    )


def placement(replica: str, node: str, *claims: str, created_at: float = 1.0) -> Placement:
    template = ContainerTemplate(
        image="nginx",
        volumes=[
            Volume(name=f"v{i}", persistent_volume_claim=ClaimSource(claim_name=claim))
            for i, claim in enumerate(claims)
        ],
    )
    return Placement(
        replica=replica,
        deployment="app",
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
        created_at=created_at,
    )


async def release_node(v: Volmgr, node: str) -> None:
    """What `corral node release NODE` leaves: the scheduler's release record (its
    "released.<node>" in corral_leases) and the node's record deleted."""
    await v.buckets[names.LEASES_BUCKET].put(
        f"released.{node}", encode({"node": node, "nodeRevision": 0, "releasedAt": 1.0})
    )
    nodes = v.buckets[names.NODES_BUCKET]
    if await nodes.get(node) is not None:
        await nodes.delete(node)
