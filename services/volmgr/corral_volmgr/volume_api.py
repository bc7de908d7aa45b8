"""volmgr's answers about PersistentVolumes (corral.api.persistentvolume.*, and the
durable corral.spec.persistentvolume.*), by the rules of corral_volmgr.spec_api.

Refused: a hostPath or local path that is a system location, or outside the
operator's allow-list (`--host-path-allow`); a change of a bound volume's spec (only
its labels may change). A delete of a volume bound to a claim makes it Terminating:
it goes once the claim is gone. `release` (an operator's word that a node is gone)
forgets the volume's attachment on that node.
"""

from __future__ import annotations

import anyio
import msgspec

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.events import REASON_NOT_FOUND, Reply
from corral.contract.specs import DeleteRequest
from corral.contract.volume_specs import (
    PersistentVolume,
    PersistentVolumeClaim,
    VolumeReleaseRequest,
    refused_host_path,
)
from corral.contract.volume_state import (
    VOLUME_BOUND,
    VOLUME_PENDING,
    VOLUME_TERMINATING,
    VolumeAttachment,
    VolumeStatus,
)
from corral.natsio.bus import DurableSpecHandler, SpecHandler
from corral.natsio.kv import Bucket, Conflict, Entry, Mirror
from corral_volmgr.spec_api import (
    Refusal,
    SpecAPI,
    SpecPosition,
    changed_fields,
    no_stream,
    write_status,
)

KIND = "PersistentVolume"


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
    ) -> None:
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
        if current is not None and holds_claim(status) and wanted.spec != current.spec:
            assert status is not None
            fields = changed_fields(current.spec, wanted.spec, "spec.")
            raise Refusal(
                fields[0],
                f"`{fields[0]}` of persistentvolume {wanted.metadata.name!r} cannot change "
                f"while it is bound to claim {status.claim} (only its labels may)",
            )
        return wanted

    def delete_key(self, request: DeleteRequest) -> str:
        return request.name  # volumes are cluster-wide: the namespace is ignored

    async def protect(self, key: str, revision: int) -> str:
        status = self.volume_status.get(key)
        if status is None or not holds_claim(status):
            return ""
        claim = self.claims.get(status.claim)
        if claim is None or (status.claim_uid and claim.metadata.uid != status.claim_uid):
            return ""  # the claim is gone: the volume goes now
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

    async def release(self, raw: bytes, sequence: int = 0) -> Reply:
        """Forget the volume's attachment on a node an operator says is gone."""
        try:
            request = decode_payload(raw, VolumeReleaseRequest)
        except InvalidPayload as error:
            return self.invalid_payload(error)
        key = names.attachment_key(request.node, request.name)
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


__all__ = ["KIND", "PersistentVolumeAPI", "check_host_path", "holds_claim"]
