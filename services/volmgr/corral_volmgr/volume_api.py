"""volmgr's answers about PersistentVolumes (corral.api.persistentvolume.*, and the
durable corral.spec.persistentvolume.*), by the rules of corral_volmgr.spec_api.

Refused: a hostPath or local path that is a system location, or outside the
operator's allow-list (`--host-path-allow`); a change of a bound volume's spec (only
its labels may change); a change of the source (dockerVolume, hostPath, local, node) of a
volume that was ever made (an attachment on a node, pinned to a node, ever bound), as
Kubernetes makes a PV's source immutable; an apply of a volume being deleted
(Conflict). A delete of a volume bound to a claim makes it Terminating: it goes once
the claim is gone. Any other delete makes it Deleting (keepData: its reclaim policy is
Retain): the record stays until no node has an attachment for it (docs/volumes.md, "Protection and
reclaim"). `release` (an operator's word that a node is gone, refused unless the
scheduler released the node: `corral node release N`) forgets the volume's attachment
on that node.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import anyio
import msgspec

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.events import REASON_CONFLICT, REASON_NOT_FOUND, Reply
from corral.contract.specs import DeleteRequest
from corral.contract.views import ClaimsPlacement
from corral.contract.volume_specs import (
    PersistentVolume,
    PersistentVolumeClaim,
    VolumeReleaseRequest,
    refused_host_path,
)
from corral.contract.volume_state import (
    VOLUME_BOUND,
    VOLUME_DELETING,
    VOLUME_PENDING,
    VOLUME_TERMINATING,
    VolumeAttachment,
    VolumeStatus,
)
from corral.natsio.bus import DurableSpecHandler, SpecHandler
from corral.natsio.kv import Bucket, Conflict, Entry, Mirror
from corral.natsio.sharded import ShardedMirror
from corral_volmgr.provisioning import initial_status
from corral_volmgr.spec_api import (
    Refusal,
    SpecAPI,
    SpecPosition,
    changed_fields,
    no_stream,
    write_status,
)

KIND = "PersistentVolume"
# the spec fields that say where a volume's data is: never changed once it was made
SOURCE_FIELDS: Final = ("spec.dockerVolume", "spec.hostPath", "spec.local", "spec.node")
# The scheduler's record of `corral node release N` in corral_leases: "released.<node>"
# (services/scheduler: node_api.py), kept until the node has no record and no placements.
NODE_RELEASE_PREFIX: Final = "released."


def kept_where(
    volume: PersistentVolume | None, status: VolumeStatus, attachments: Iterable[VolumeAttachment]
) -> str:
    """Where a volume's data is, in words ("node n1 at /path", one per node); "" when it
    was never made on a node."""
    spec_path = ""
    if volume is not None and volume.spec.host_path is not None:
        spec_path = volume.spec.host_path.path
    elif volume is not None and volume.spec.local is not None:
        spec_path = volume.spec.local.path
    places = []
    for attachment in sorted(attachments, key=lambda a: a.node):
        source = "" if volume is None else volume.spec.source
        if not attachment.docker_volume and not attachment.host_path:
            # not ready (refused, or failed): it names no Docker volume, but data may be
            # on the node all the same (a volume made before, or the operator's path)
            places.append(f"node {attachment.node}" + (f" at {spec_path}" if spec_path else ""))
        elif source == "dockerVolume" or not attachment.host_path:
            places.append(f"node {attachment.node} in Docker volume {attachment.docker_volume}")
        elif source == "provisioned" and attachment.size_enforced:
            places.append(f"node {attachment.node} at {attachment.host_path}.img")
        else:
            places.append(f"node {attachment.node} at {attachment.host_path}")
    if places:
        return ", ".join(places)
    node = status.node or (volume.spec.node if volume is not None else "")
    if node:
        return f"node {node}" + (f" at {spec_path}" if spec_path else "")
    return ""


def deleting(
    volume: PersistentVolume | None,
    status: VolumeStatus,
    attachments: Iterable[VolumeAttachment],
    *,
    keep_data: bool,
) -> VolumeStatus:
    """`status` made Deleting, with what happens to its data as its message: every node
    part takes it down (deleting its data unless keepData), then the records go."""
    found = list(attachments)
    source = "" if volume is None else volume.spec.source
    where = kept_where(volume, status, found)
    if not where and (keep_data or source in ("hostPath", "local")):
        fate = "it was never made on a node, so no data is kept"
    elif source in ("hostPath", "local"):
        fate = f"its directory is kept on {where} (a host path is the operator's)"
    elif keep_data:
        fate = f"its data is kept on {where}"
    else:
        fate = "deleted with its data"
    return msgspec.structs.replace(
        status, phase=VOLUME_DELETING, keep_data=keep_data, message=f"Deleting: {fate}"
    )


def check_host_path(volume: PersistentVolume, allowed: tuple[str, ...]) -> None:
    """A Refusal naming the field when the volume's hostPath/local path may not be used."""
    spec = volume.spec
    for field, source in (("spec.hostPath.path", spec.host_path), ("spec.local.path", spec.local)):
        if source is None:
            continue
        why = refused_host_path(source.path, allowed=allowed)
        if why:
            raise Refusal(field, f"`{field}`: {why}")


def holds_claim(status: VolumeStatus | None) -> bool:
    """The volume is bound (or being provisioned) for a claim."""
    return (
        status is not None
        and bool(status.claim)
        and status.phase
        in (
            VOLUME_BOUND,
            VOLUME_PENDING,
            VOLUME_TERMINATING,
        )
    )


class PersistentVolumeAPI(SpecAPI[PersistentVolume]):
    kind = KIND
    type = PersistentVolume

    def __init__(
        self,
        volumes: Mirror[PersistentVolume],
        *,
        volume_status: Mirror[VolumeStatus],
        claims: Mirror[PersistentVolumeClaim],
        attachments: Mirror[VolumeAttachment],
        lock: anyio.Lock,
        host_path_allow: tuple[str, ...] = (),
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
        leases: Bucket | None = None,
        nodes: Bucket | None = None,
        placements: ShardedMirror[ClaimsPlacement] | None = None,
    ) -> None:
        """`leases`, `nodes`, `placements` (corral_leases, corral_nodes and the
        placements' mirror): what `release` checks (the node released by the scheduler);
        without `leases` and `nodes`, every release is refused."""
        super().__init__(
            volumes,
            lock=lock,
            views=[volume_status, claims],
            progress=progress,
            spec_position=spec_position,
        )
        self.volume_status = volume_status
        self.claims = claims
        self.attachments = attachments
        self.host_path_allow = host_path_allow
        self.leases = leases
        self.nodes = nodes
        self.placements = placements

    def request_handlers(self) -> dict[str, SpecHandler]:
        """What corral.api.persistentvolume.* answers: apply, delete and release."""
        handlers: dict[str, SpecHandler] = dict(self.handlers())
        handlers["release"] = self.release
        return handlers

    def durable_handlers(self) -> dict[str, DurableSpecHandler]:
        return self.handlers()

    def decide(
        self, wanted: PersistentVolume, current: PersistentVolume | None
    ) -> PersistentVolume:
        check_host_path(wanted, self.host_path_allow)
        status = self.volume_status.get(wanted.metadata.name)
        if current is not None and status is not None and status.phase == VOLUME_DELETING:
            raise Refusal(
                "metadata.name",
                f"persistentvolume {wanted.metadata.name!r} is being deleted "
                f"({status.message}); apply it again once it is gone",
                REASON_CONFLICT,
            )
        if current is not None and holds_claim(status) and wanted.spec != current.spec:
            assert status is not None
            fields = changed_fields(current.spec, wanted.spec, "spec.")
            raise Refusal(
                fields[0],
                f"`{fields[0]}` of persistentvolume {wanted.metadata.name!r} cannot change "
                f"while it is bound to claim {status.claim} (only its labels may)",
            )
        if current is not None:
            made = self.made(current, status)
            moved = [
                f for f in changed_fields(current.spec, wanted.spec, "spec.") if f in SOURCE_FIELDS
            ]
            if made and moved:
                raise Refusal(
                    moved[0],
                    f"`{moved[0]}` of persistentvolume {wanted.metadata.name!r} cannot change: "
                    f"the volume was made ({made}) and its data is there; delete the volume "
                    "and make it again to use another source",
                )
        return wanted

    def made(self, current: PersistentVolume, status: VolumeStatus | None) -> str:
        """Why a volume's source is settled ("" : nothing of it was made yet)."""
        attached = sorted(a.node for a in self.attached(current.metadata.name))
        if attached:
            return f"attached on node {', '.join(attached)}"
        if status is None:
            return ""
        if status.claim:
            return f"bound to claim {status.claim}"
        if status.attach_node:
            return f"attached to node {status.attach_node}"
        if status.node and status.node != current.spec.node:
            return f"living on node {status.node}"
        return ""

    def delete_key(self, request: DeleteRequest) -> str:
        return request.name  # volumes are cluster-wide: the namespace is ignored

    def attached(self, name: str) -> list[VolumeAttachment]:
        """The attachments of volume `name` on every node."""
        return [a for a in self.attachments.values() if a.volume == name]

    async def protect(self, key: str, revision: int) -> str:
        """Never deleted here: Terminating while bound, else Deleting (the volume
        controller deletes the record once no node has an attachment for it)."""
        status = self.volume_status.get(key)
        if status is not None and status.phase == VOLUME_DELETING:
            return status.message
        claim = None if status is None else self.claims.get(status.claim)
        if (
            status is None
            or not holds_claim(status)
            or claim is None
            or (status.claim_uid and claim.metadata.uid != status.claim_uid)
        ):
            # Unbound, or its claim is gone: Deleting, keeping the data of a Retain volume.
            volume = self.mirror.get(key)
            if volume is None:
                # Unreadable (corrupt, or from a newer corral): deleted now; the node parts
                # leave a volume with no record alone, its data kept.
                return ""
            keep = volume.spec.persistent_volume_reclaim_policy == "Retain"
            if status is None:
                status = initial_status(volume)
            wanted = deleting(volume, status, self.attached(key), keep_data=keep)
            await write_status(self.volume_status, key, wanted)
            return wanted.message
        if status.phase != VOLUME_TERMINATING:
            await write_status(
                self.volume_status,
                key,
                msgspec.structs.replace(status, phase=VOLUME_TERMINATING),
            )
        return (
            f"persistentvolume {key!r} is bound to claim {status.claim}: Terminating, "
            "deleted once the claim is deleted"
        )

    async def node_not_released(self, node: str) -> str:
        """Why node `node` may not be taken for gone ("" : the scheduler released it:
        its release record is there, or its record is gone and nothing is placed on it,
        which is where a release ends)."""
        how = f"run `corral node release {node}` first"
        if self.leases is None or self.nodes is None:
            return f"volmgr cannot tell whether node {node!r} was released; {how}"
        released = await self.leases.get(f"{NODE_RELEASE_PREFIX}{node}")
        if released is not None and released.value is not None:
            return ""
        record = await self.nodes.get(node)
        if record is not None and record.value is not None:
            return (
                f"node {node!r} has not been released (its agent's record is there): a node "
                f"that may still run containers could write the volume too; {how}"
            )
        prefix = f"{node}."
        if self.placements is not None and any(
            key.startswith(prefix) for key in (*self.placements.items, *self.placements.unreadable)
        ):
            return f"node {node!r} still has replicas placed on it; {how}"
        return ""

    async def release(self, raw: bytes, sequence: int = 0) -> Reply:
        """Forget the volume's attachment on a node an operator says is gone, once the
        scheduler released that node."""
        try:
            request = decode_payload(raw, VolumeReleaseRequest)
        except InvalidPayload as error:
            return self.invalid_payload(error)
        key = names.attachment_key(request.node, request.name)
        why = await self.node_not_released(request.node)
        if why:
            return self.reply(
                ok=False, name=request.name, reason=REASON_CONFLICT, field="node", error=why
            )
        async with self.lock:
            for _ in range(3):
                entry = await self.attachments.bucket.get(key)
                if entry is None or entry.value is None:
                    return self.reply(
                        ok=False,
                        name=request.name,
                        reason=REASON_NOT_FOUND,
                        field="node",
                        error=f"persistentvolume {request.name!r} has no attachment on node "
                        f"{request.node!r} (nothing to release)",
                    )
                try:
                    marker = await self.attachments.bucket.delete(key, revision=entry.revision)
                except Conflict:
                    continue
                self.attachments.apply(Entry(key, None, marker))
                return self.reply(
                    ok=True,
                    name=request.name,
                    revision=entry.revision,
                    message=f"forgot the attachment of persistentvolume {request.name!r} on "
                    f"node {request.node!r}: another node may mount it now",
                )
            return self.busy(request.name)


__all__ = [
    "KIND",
    "NODE_RELEASE_PREFIX",
    "PersistentVolumeAPI",
    "check_host_path",
    "deleting",
    "holds_claim",
    "kept_where",
]
