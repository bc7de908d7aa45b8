"""volmgr's answers about PersistentVolumeClaims (corral.api.persistentvolumeclaim.*,
and the durable corral.spec.persistentvolumeclaim.*), by the rules of
corral_volmgr.spec_api.

Refused: a change of a bound claim's size, access modes or class (naming the field);
a re-apply of a Terminating claim (Conflict). A delete of a claim a placement uses
makes it Terminating (the reply names the replicas): the claim controller deletes it
once no placement uses it (docs/volumes.md, "Protection and reclaim").
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import msgspec

from corral.contract.events import REASON_CONFLICT
from corral.contract.names import split_object_key
from corral.contract.volume_specs import PersistentVolumeClaim
from corral.contract.volume_state import CLAIM_BOUND, CLAIM_TERMINATING, ClaimStatus
from corral.natsio.kv import Bucket, Mirror
from corral_volmgr.spec_api import Refusal, SpecAPI, SpecPosition, no_stream, write_status

KIND = "PersistentVolumeClaim"

# A claim's key -> the replicas whose placements use it.
Users = Callable[[str], list[str]]


def no_users(key: str) -> list[str]:
    return []


class PersistentVolumeClaimAPI(SpecAPI[PersistentVolumeClaim]):
    kind = KIND
    type = PersistentVolumeClaim

    def __init__(
        self,
        claims: Mirror[PersistentVolumeClaim],
        *,
        claim_status: Mirror[ClaimStatus],
        users: Users = no_users,
        lock: anyio.Lock,
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
    ) -> None:
        super().__init__(
            claims,
            lock=lock,
            views=[claim_status],
            progress=progress,
            spec_position=spec_position,
        )
        self.claim_status = claim_status
        self.users = users

    def decide(
        self, wanted: PersistentVolumeClaim, current: PersistentVolumeClaim | None
    ) -> PersistentVolumeClaim:
        name = wanted.metadata.name
        status = self.claim_status.get(wanted.key)
        if current is None or status is None:
            return wanted
        if status.phase == CLAIM_TERMINATING:
            raise Refusal(
                "metadata.name",
                f"persistentvolumeclaim {name!r} is being deleted (Terminating until no "
                "replica uses it); apply it again once it is gone",
                REASON_CONFLICT,
            )
        if status.phase != CLAIM_BOUND and not status.volume:
            return wanted  # (a claim whose volume is being provisioned is its volume's too)
        before, after = current.spec, wanted.spec
        for field, old, new in (
            ("spec.resources.requests.storage", before.size_bytes, after.size_bytes),
            ("spec.accessModes", sorted(before.access_modes), sorted(after.access_modes)),
            ("spec.storageClassName", before.storage_class_name, after.storage_class_name),
        ):
            if old != new:
                raise Refusal(
                    field,
                    f"`{field}` of persistentvolumeclaim {name!r} cannot change once it is "
                    f"bound (to volume {status.volume}, {status.phase}); delete the claim and "
                    "make it again",
                )
        return wanted

    async def protect(self, key: str, revision: int) -> str:
        replicas = self.users(key)
        if not replicas:
            return ""
        namespace, name = split_object_key(key)
        status = self.claim_status.get(key) or ClaimStatus(name=name, namespace=namespace)
        if status.phase != CLAIM_TERMINATING:
            await write_status(
                self.claim_status,
                key,
                msgspec.structs.replace(
                    status,
                    phase=CLAIM_TERMINATING,
                    reason="",
                    message=f"deleted while replica(s) {', '.join(replicas)} use it",
                ),
            )
        return (
            f"persistentvolumeclaim {name!r} is in use by replica(s) {', '.join(replicas)}: "
            "Terminating, deleted once no replica uses it"
        )


__all__ = ["KIND", "PersistentVolumeClaimAPI", "Users", "no_users"]
