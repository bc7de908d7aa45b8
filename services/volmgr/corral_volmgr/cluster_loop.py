"""volmgr's cluster part as controllers (corral.natsio.controller; docs/volumes.md):

- the claim controller (key: a claim's `<namespace>.<name>`) binds a pending claim to
  the smallest fitting volume (corral_volmgr.binding), compare-and-set on the
  volume's VolumeStatus at the revision read first, then the claim's ClaimStatus, so
  that two claims never bind one volume; or provisions one (corral_volmgr.provisioning:
  Immediate on a node it picks, WaitForFirstConsumer on the node of the first placement
  that uses the claim); or says why it waits (ClaimStatus.reason/message). A
  Terminating claim is deleted once no placement uses it. A volume's change, a class's,
  a node part's room and a placement naming a claim enqueue the claims concerned.
- the volume controller (key: a volume's name) keeps each volume's VolumeStatus: made
  Available (a provisioned one Pending until its node part's VolumeAttachment is
  ready, then Bound with sizeEnforced), pinned to the node of the first placement that
  uses an unpinned node-local volume (one with no source only when that node has its
  room), `attachNode` for a single-node dockerVolume that is not node-local (moved only
  once the old node has no attachment left), and the reclaim once its claim is gone:
  Retain -> Released, Delete -> Deleting. A Terminating volume becomes Deleting once its
  claim is gone (keepData: Retain). A Deleting volume's record and status are deleted
  once no node has an attachment for it (each node part takes it down first).

The mirrors are also what the APIs decide on (corral_volmgr.spec_api); `lock` is the
one their decisions hold, and the controllers' decisions too. Every key is enqueued
again every RESYNC_SECONDS.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskStatus

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.names import object_key, split_object_key
from corral.contract.sharing import intern_replica_names
from corral.contract.specs import claim_names
from corral.contract.views import ClaimsPlacement
from corral.contract.volume_specs import (
    PROVISIONER_LOCAL,
    PersistentVolume,
    PersistentVolumeClaim,
    StorageClass,
)
from corral.contract.volume_state import (
    CLAIM_BOUND,
    CLAIM_LOST,
    CLAIM_PENDING,
    CLAIM_TERMINATING,
    VOLUME_AVAILABLE,
    VOLUME_BOUND,
    VOLUME_DELETING,
    VOLUME_PENDING,
    VOLUME_RELEASED,
    VOLUME_TERMINATING,
    ClaimStatus,
    NodeVolumes,
    VolumeAttachment,
    VolumeStatus,
)
from corral.natsio.bus import EventPublisher
from corral.natsio.cluster_service import MirroredLoop, MirrorSet, without_stamp, write_into
from corral.natsio.controller import ChangeFeed, Controller, Index, Result
from corral.natsio.kv import Create, Delete, Entry, Mirror, Update, Write
from corral.natsio.sharded import ShardedMirror, shard_buckets
from corral_volmgr import metrics
from corral_volmgr.binding import (
    NODE_FULL,
    PROVISIONING,
    WAIT_FOR_FIRST_CONSUMER,
    Bind,
    Candidate,
    Pending,
    Provision,
    claim_ref_key,
    decide,
)
from corral_volmgr.claim_api import KIND as CLAIM_KIND
from corral_volmgr.provisioning import (
    initial_status,
    pick_node,
    provisioned_size,
    provisioned_volume,
    room_problem,
    used_room,
)
from corral_volmgr.volume_api import KIND as VOLUME_KIND
from corral_volmgr.volume_api import deleting

log = logging.getLogger(__name__)

RESYNC_SECONDS: Final = 30.0
# A key whose writes conflicted (the state moved meanwhile) is reconciled again this soon.
CONFLICT_RETRY_SECONDS: Final = 0.05
# How often the gauges are set.
TICK_SECONDS: Final = 5.0
# ClaimStatus.reason of a claim whose provisioned volume cannot be read or written.
PROVISIONING_FAILED: Final = "ProvisioningFailed"
# The start of the message of a bound volume with no source whose first placement's
# node lacks its room (the claim says it with reason NodeFull).
NODE_FULL_PREFIX: Final = f"{NODE_FULL}: "
# How long to wait before trying again to make the class `local` at start.
ENSURE_RETRY_SECONDS: Final = 1.0


@dataclass
class Mirrors(MirrorSet):
    """Every bucket the cluster part reads, kept current by watches."""

    volumes: Mirror[PersistentVolume]
    volume_status: Mirror[VolumeStatus]
    claims: Mirror[PersistentVolumeClaim]
    claim_status: Mirror[ClaimStatus]
    storage_classes: Mirror[StorageClass]
    node_volumes: Mirror[NodeVolumes]
    attachments: Mirror[VolumeAttachment]
    placements: ShardedMirror[ClaimsPlacement]  # a view: what it reads (corral.contract.views)

    @classmethod
    def of(cls, buckets: dict[str, Any], placement_shards: int = 1) -> Mirrors:
        return cls(
            volumes=Mirror(buckets[names.VOLUMES_BUCKET], PersistentVolume),
            volume_status=Mirror(buckets[names.VOLUME_STATUS_BUCKET], VolumeStatus),
            claims=Mirror(buckets[names.CLAIMS_BUCKET], PersistentVolumeClaim),
            claim_status=Mirror(buckets[names.CLAIM_STATUS_BUCKET], ClaimStatus),
            storage_classes=Mirror(buckets[names.STORAGE_CLASSES_BUCKET], StorageClass),
            node_volumes=Mirror(buckets[names.NODE_VOLUMES_BUCKET], NodeVolumes),
            attachments=Mirror(buckets[names.VOLUME_ATTACHMENTS_BUCKET], VolumeAttachment),
            placements=ShardedMirror(
                shard_buckets(buckets, placement_shards),
                ClaimsPlacement,
                share=intern_replica_names,  # one copy of each name (corral.contract.sharing)
            ),
        )


def placement_claims(key: str, placement: ClaimsPlacement) -> list[str]:
    """The keys of the claims a placement's template names."""
    return [object_key(placement.namespace, name) for name in claim_names(placement.template)]


class ProvisioningFailed(Exception):
    """A claim's provisioned volume cannot be made or read: the claim says so (Pending,
    ProvisioningFailed) and the key is retried on the controller's back-off."""


class ClusterLoop(MirroredLoop[Mirrors]):
    def __init__(
        self,
        buckets: dict[str, Any],
        *,
        resync_seconds: float = RESYNC_SECONDS,
        wall_clock: Any = time.time,
        placement_shards: int = 1,
        events: EventPublisher | None = None,
    ) -> None:
        """`events`: where what it does is told (corral events about each claim and
        volume, for `corral describe`); None: only logged."""
        self.buckets = buckets
        self.mirrors = m = Mirrors.of(buckets, placement_shards)
        self.wall_clock = wall_clock
        self.events = events
        self.lock = anyio.Lock()  # held by every API decision and every reconcile's writes
        self.claim_controller = Controller(
            "volmgr-claim",
            self.reconcile_claim,
            resync_seconds=resync_seconds,
            resync_keys=self._claim_keys,
        )
        self.volume_controller = Controller(
            "volmgr-volume",
            self.reconcile_volume,
            resync_seconds=resync_seconds,
            resync_keys=self._volume_keys,
        )
        claims = self.claim_controller
        volumes = self.volume_controller
        placement_changes = ChangeFeed(m.placements)
        # claim key -> the placements whose template names it
        self.placements_by_claim = Index(placement_changes, by=placement_claims)
        status_changes = ChangeFeed(m.volume_status)
        # claim key -> the volumes whose status names it (bound, being made, Terminating)
        self.volumes_by_claim = Index(
            status_changes, by=lambda key, s: (s.claim,) if s.claim else ()
        )
        volume_changes = ChangeFeed(m.volumes)
        # claim key -> the volumes reserved for it (spec.claimRef)
        self.reserved_volumes = Index(
            volume_changes,
            by=lambda key, v: (claim_ref_key(v.spec.claim_ref),) if v.spec.claim_ref else (),
        )
        claim_changes = ChangeFeed(m.claims)
        claims.watch(claim_changes)
        claims.watch(ChangeFeed(m.claim_status))
        claims.watch(status_changes, self._claims_of_volume_status)
        claims.watch(volume_changes, self._claims_of_volume)
        claims.watch(ChangeFeed(m.storage_classes), lambda key, old, new: self._unbound_claims())
        claims.watch(ChangeFeed(m.node_volumes), lambda key, old, new: self._unbound_claims())
        claims.watch(placement_changes, self._claims_of_placement)
        volumes.watch(volume_changes)
        volumes.watch(status_changes)
        volumes.watch(claim_changes, self._volumes_of_claim)
        volumes.watch(placement_changes, self._volumes_of_placement)
        attachment_changes = ChangeFeed(m.attachments)
        # volume -> the keys of its attachments (one per node that has it)
        self.attachments_by_volume = Index(attachment_changes, by=lambda key, a: (a.volume,))
        volumes.watch(
            attachment_changes,
            lambda key, old, new: {a.volume for a in (old, new) if a is not None},
        )
        # a claim Pending on its volume says why the node part could not make it
        claims.watch(
            attachment_changes,
            lambda key, old, new: {a.claim for a in (old, new) if a is not None and a.claim},
        )
        volumes.watch(ChangeFeed(m.node_volumes), lambda key, old, new: self._waiting_for_room())

    # --- what enqueues what ------------------------------------------------------------

    def _claim_keys(self) -> set[str]:
        m = self.mirrors
        return set(m.claims.items) | set(m.claim_status.items)

    def _volume_keys(self) -> set[str]:
        m = self.mirrors
        return set(m.volumes.items) | set(m.volume_status.items)

    def _waiting_for_room(self) -> list[str]:
        """The bound volumes with no source not pinned yet (their node may have room now)."""
        return [
            s.name
            for s in self.mirrors.volume_status.values()
            if s.counts_room and not s.node and s.message.startswith(NODE_FULL_PREFIX)
        ]

    def attached_nodes(self, volume: str) -> list[str]:
        """The nodes with an attachment for `volume` (an unreadable one counts)."""
        m = self.mirrors
        found = {key.partition(".")[0] for key in self.attachments_by_volume.get(volume)}
        found.update(
            key.partition(".")[0]
            for key in m.attachments.unreadable
            if key.partition(".")[2] == volume
        )
        return sorted(found)

    def _unbound_claims(self) -> list[str]:
        m = self.mirrors
        found = []
        for key in m.claims.items:
            status = m.claim_status.get(key)
            if status is None or status.phase == CLAIM_PENDING:
                found.append(key)
        return found

    def _claims_of_volume_status(
        self, key: str, old: VolumeStatus | None, new: VolumeStatus | None
    ) -> Iterable[str]:
        found = {s.claim for s in (old, new) if s is not None and s.claim}
        if new is not None and new.phase == VOLUME_AVAILABLE and (old is None or old != new):
            found.update(self._unbound_claims())
        return found

    def _claims_of_volume(
        self, key: str, old: PersistentVolume | None, new: PersistentVolume | None
    ) -> Iterable[str]:
        found = {
            claim_ref_key(v.spec.claim_ref)
            for v in (old, new)
            if v is not None and v.spec.claim_ref
        }
        found.update(self._unbound_claims())
        return found

    def _claims_of_placement(
        self, key: str, old: ClaimsPlacement | None, new: ClaimsPlacement | None
    ) -> Iterable[str]:
        found: set[str] = set()
        for placement in (old, new):
            if placement is not None:
                found.update(placement_claims(key, placement))
        return found

    def _volumes_of_claim(
        self, key: str, old: PersistentVolumeClaim | None, new: PersistentVolumeClaim | None
    ) -> Iterable[str]:
        return self.volumes_by_claim.get(key) | self.reserved_volumes.get(key)

    def _volumes_of_placement(
        self, key: str, old: ClaimsPlacement | None, new: ClaimsPlacement | None
    ) -> Iterable[str]:
        found: set[str] = set()
        for claim in self._claims_of_placement(key, old, new):
            found |= self.volumes_by_claim.get(claim)
        return found

    # --- running -------------------------------------------------------------------------

    async def run_controllers(
        self,
        ensure_default: Any,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Make the `local` class when missing (`ensure_default`, the StorageClass API's;
        at start only: an operator may delete it), run both controllers, and a tick (the
        gauges)."""
        made = await self._ensure_default(ensure_default)
        while not made:
            await anyio.sleep(ENSURE_RETRY_SECONDS)
            made = await self._ensure_default(ensure_default)
        async with anyio.create_task_group() as tg:
            await tg.start(self.claim_controller.run)
            await tg.start(self.volume_controller.run)
            self.volume_controller.enqueue_all(self._volume_keys())
            self.claim_controller.enqueue_all(self._claim_keys())
            task_status.started()
            while True:
                self.update_gauges()
                await anyio.sleep(TICK_SECONDS)

    async def _ensure_default(self, ensure_default: Any) -> bool:
        """True once the class `local` exists (made now or before)."""
        try:
            reply = await ensure_default()
        except Exception:
            log.exception("could not make the storage class `local`; trying again")
            return False
        if reply is not None and not reply.ok:
            log.warning("could not make the storage class `local`: %s", reply.error)
            return not reply.retryable
        if reply is not None and not reply.unchanged:
            log.info("made the storage class `local` (the default)")
        return True

    def update_gauges(self) -> None:
        m = self.mirrors
        for gauge, statuses, phases in (
            (
                metrics.CLAIMS,
                [s.phase for s in m.claim_status.values()],
                (CLAIM_PENDING, CLAIM_BOUND, CLAIM_LOST, CLAIM_TERMINATING),
            ),
            (
                metrics.VOLUMES,
                [s.phase for s in m.volume_status.values()],
                (
                    VOLUME_PENDING,
                    VOLUME_AVAILABLE,
                    VOLUME_BOUND,
                    VOLUME_RELEASED,
                    VOLUME_TERMINATING,
                    VOLUME_DELETING,
                ),
            ),
        ):
            for phase in {*phases, *statuses}:
                gauge.labels(phase).set(statuses.count(phase))

    async def _write(self, mirror: Mirror[Any], writes: Sequence[Write]) -> bool:
        """Send `writes`, apply what committed to `mirror`; True when all did."""
        return await write_into(mirror, writes)

    async def _put_status(self, mirror: Mirror[Any], key: str, wanted: Any) -> bool:
        """Write a status record when it differs from the stored one (compare-and-set)."""
        if key in mirror.unreadable:
            return await self._replace_unreadable(mirror, key, wanted)
        stored = mirror.items.get(key)
        if stored is not None and without_stamp(stored[0]) == without_stamp(wanted):
            return True
        stamped = msgspec.structs.replace(wanted, updated_at=self.wall_clock())
        write: Write = (
            Create(key, encode(stamped))
            if stored is None
            else Update(key, encode(stamped), stored[1])
        )
        return await self._write(mirror, [write])

    async def _replace_unreadable(self, mirror: Mirror[Any], key: str, wanted: Any) -> bool:
        # A status of ours that cannot be read (corrupt, or from a newer corral) is
        # replaced whole: only this process writes these buckets.
        stamped = encode(msgspec.structs.replace(wanted, updated_at=self.wall_clock()))
        revision = await mirror.bucket.put(key, stamped)
        mirror.apply(Entry(key, stamped, revision))
        return True

    async def _remove(self, mirror: Mirror[Any], key: str) -> bool:
        stored = mirror.items.get(key)
        if stored is None:
            return True
        return await self._write(mirror, [Delete(key, stored[1])])

    def users(self, claim: str) -> list[ClaimsPlacement]:
        """The placements that use claim `claim`, oldest first."""
        m = self.mirrors
        found = [m.placements.get(key) for key in self.placements_by_claim.get(claim)]
        placed = [p for p in found if p is not None]
        return sorted(placed, key=lambda p: (p.created_at, p.key))

    def user_names(self, claim: str) -> list[str]:
        return sorted(p.replica for p in self.users(claim))

    async def tell(
        self, kind: str, key: str, reason: str, message: str, *, warning: bool = False
    ) -> None:
        """An event about claim `key` (kind PersistentVolumeClaim) or volume `key`."""
        if self.events is None:
            return
        if kind == CLAIM_KIND:
            namespace, name = split_object_key(key)
            await self.events.emit(
                kind, name, reason, message, warning=warning, namespace=namespace
            )
        else:
            await self.events.emit(kind, key, reason, message, warning=warning)

    # --- the claim controller ------------------------------------------------------------

    async def reconcile_claim(self, key: str) -> Result | None:
        started = time.perf_counter()
        try:
            async with self.lock:
                return await self._reconcile_claim(key)
        finally:
            metrics.RECONCILE_SECONDS.labels("claim").observe(time.perf_counter() - started)

    def claim_volume(self, key: str, claim: PersistentVolumeClaim) -> VolumeStatus | None:
        """The status of the volume bound (or being made) for this claim, if any."""
        m = self.mirrors
        for name in sorted(self.volumes_by_claim.get(key)):
            status = m.volume_status.get(name)
            if status is None or status.claim != key or name not in m.volumes.items:
                continue
            if status.claim_uid and status.claim_uid != claim.metadata.uid:
                continue  # bound to an earlier claim of this name
            if status.phase in (VOLUME_BOUND, VOLUME_PENDING, VOLUME_TERMINATING):
                return status
        return None

    async def _reconcile_claim(self, key: str) -> Result | None:
        m = self.mirrors
        if key in m.claims.unreadable:
            return None  # never act on a guess
        claim = m.claims.get(key)
        status = m.claim_status.get(key)
        if claim is None:
            if not await self._remove(m.claim_status, key):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
            return None
        if status is not None and status.phase == CLAIM_TERMINATING:
            if self.users(key):
                return None  # a placement's change enqueues it again
            if not await self._remove(m.claims, key):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
            log.info("deleted claim %s: no replica uses it any more", key)
            await self.tell(CLAIM_KIND, key, "Deleted", "deleted: no replica uses it any more")
            return None
        namespace, name = split_object_key(key)
        base = ClaimStatus(
            name=name,
            namespace=namespace,
            access_modes=list(claim.spec.access_modes),
            request_bytes=claim.spec.size_bytes,
            storage_class=claim.spec.storage_class_name or "",
        )
        volume_status = self.claim_volume(key, claim)
        if volume_status is not None:
            return await self._claim_follows_volume(key, claim, base, volume_status)
        if (
            status is not None
            and status.phase in (CLAIM_BOUND, CLAIM_LOST)
            and status.updated_at >= claim.metadata.creation_timestamp
        ):
            # (a status written before this claim was made is an earlier claim's of its name)
            lost = msgspec.structs.replace(
                status,
                phase=CLAIM_LOST,
                reason="VolumeLost",
                message=f"its volume {status.volume} was deleted",
            )
            return await self._claim_written(key, lost)
        candidates = [
            Candidate(volume, m.volume_status.get(volume_name))
            for volume_name, (volume, _) in m.volumes.items.items()
        ]
        classes = {name: c for name, (c, _) in m.storage_classes.items.items()}
        decision = decide(claim, key, candidates, classes)
        if isinstance(decision, Bind):
            return await self._bind(key, claim, base, decision)
        if isinstance(decision, Provision):
            return await self._provision(key, claim, base, decision.storage_class)
        return await self._claim_pending(key, base, decision)

    async def _claim_written(self, key: str, wanted: ClaimStatus) -> Result | None:
        before = self.mirrors.claim_status.get(key)
        if not await self._put_status(self.mirrors.claim_status, key, wanted):
            return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        said = (wanted.phase, wanted.reason, wanted.volume, wanted.message)
        if before is None or (before.phase, before.reason, before.volume, before.message) != said:
            await self._tell_claim(key, wanted, before)
        return None

    async def _tell_claim(self, key: str, status: ClaimStatus, before: ClaimStatus | None) -> None:
        if status.phase == CLAIM_BOUND:
            if before is None or (before.phase, before.volume) != (CLAIM_BOUND, status.volume):
                await self.tell(CLAIM_KIND, key, "Bound", f"bound to volume {status.volume}")
                await self.tell(VOLUME_KIND, status.volume, "Bound", f"bound to claim {key}")
            if status.reason:
                await self.tell(CLAIM_KIND, key, status.reason, status.message, warning=True)
        elif status.phase == CLAIM_LOST:
            await self.tell(CLAIM_KIND, key, "ClaimLost", status.message, warning=True)
        elif status.phase == CLAIM_PENDING and status.reason:
            warning = status.reason not in (WAIT_FOR_FIRST_CONSUMER, PROVISIONING)
            await self.tell(CLAIM_KIND, key, status.reason, status.message, warning=warning)

    async def _claim_pending(self, key: str, base: ClaimStatus, why: Pending) -> Result | None:
        wanted = msgspec.structs.replace(
            base,
            phase=CLAIM_PENDING,
            storage_class=why.storage_class or base.storage_class,
            reason=why.reason,
            message=why.message,
            wait_for_first_consumer=why.reason == WAIT_FOR_FIRST_CONSUMER,
        )
        return await self._claim_written(key, wanted)

    async def _claim_follows_volume(
        self, key: str, claim: PersistentVolumeClaim, base: ClaimStatus, status: VolumeStatus
    ) -> Result | None:
        m = self.mirrors
        volume = m.volumes.get(status.name)
        assert volume is not None
        if status.phase == VOLUME_PENDING:
            reason = PROVISIONING
            message = f"volume {status.name} is being made on node {status.node or '?'}"
            attachment = (
                m.attachments.get(names.attachment_key(status.node, status.name))
                if status.node
                else None
            )
            if attachment is not None and not attachment.ready and attachment.message:
                # the node part tried and failed (it retries): say why, not "being made"
                reason = PROVISIONING_FAILED
                message = (
                    f"volume {status.name} could not be made on node {status.node} "
                    f"(retried): {attachment.message}"
                )
            wanted = msgspec.structs.replace(
                base,
                phase=CLAIM_PENDING,
                volume=status.name,
                node=status.node,
                storage_class=volume.spec.storage_class_name,
                reason=reason,
                message=message,
            )
            return await self._claim_written(key, wanted)
        previous = m.claim_status.get(key)
        reason = message = ""
        if status.message.startswith(NODE_FULL_PREFIX) and not status.node:
            # its first placement's node lacks the room of this volume with no source
            reason, message = NODE_FULL, status.message.removeprefix(NODE_FULL_PREFIX)
        wanted = msgspec.structs.replace(
            base,
            phase=CLAIM_BOUND,
            volume=status.name,
            capacity_bytes=volume.spec.size_bytes,
            access_modes=list(volume.spec.access_modes),
            storage_class=volume.spec.storage_class_name,
            node=status.node or volume.spec.node,
            reason=reason,
            message=message,
        )
        result = await self._claim_written(key, wanted)
        if result is None and (previous is None or previous.phase != CLAIM_BOUND):
            metrics.BINDS.inc()
            created = claim.metadata.creation_timestamp
            if created:
                metrics.BIND_SECONDS.observe(max(0.0, self.wall_clock() - created))
            log.info("claim %s bound to volume %s", key, status.name)
        return result

    async def _bind(
        self, key: str, claim: PersistentVolumeClaim, base: ClaimStatus, decision: Bind
    ) -> Result | None:
        """The volume's status first, compare-and-set at the revision read: a volume
        another claim took meanwhile fails here, and this claim looks again."""
        m = self.mirrors
        stored = m.volume_status.items.get(decision.volume)
        if stored is None:
            return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        status, revision = stored
        bound = msgspec.structs.replace(
            status,
            phase=VOLUME_BOUND,
            claim=key,
            claim_uid=claim.metadata.uid,
            message="",
            updated_at=self.wall_clock(),
        )
        if not await self._write(
            m.volume_status, [Update(decision.volume, encode(bound), revision)]
        ):
            return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        return await self._claim_follows_volume(key, claim, base, bound)

    async def _provision(
        self,
        key: str,
        claim: PersistentVolumeClaim,
        base: ClaimStatus,
        storage_class: StorageClass,
    ) -> Result | None:
        m = self.mirrors
        class_name = storage_class.metadata.name
        size = provisioned_size(claim, storage_class)
        node = ""
        if storage_class.provisioner == PROVISIONER_LOCAL:
            statuses = m.volume_status.values()
            used = used_room(statuses)
            nodes = {name: record for name, (record, _) in m.node_volumes.items.items()}
            if storage_class.volume_binding_mode == "WaitForFirstConsumer":
                consumers = self.users(key)
                if not consumers:
                    return await self._claim_pending(
                        key,
                        base,
                        Pending(
                            WAIT_FOR_FIRST_CONSUMER,
                            "waiting for a replica that uses it to be placed "
                            f"(storageclass {class_name!r} binds on first use)",
                            class_name,
                        ),
                    )
                node = consumers[0].node
                problem = room_problem(node, size, nodes, used)
            else:
                node, problem = pick_node(size, nodes, used)
            if problem:
                return await self._claim_pending(key, base, Pending(NODE_FULL, problem, class_name))
        volume = provisioned_volume(claim, storage_class, node)
        name = volume.metadata.name
        if name in m.volumes.unreadable:
            return await self._provisioning_failed(
                key,
                base,
                class_name,
                f"volume {name} (provisioned for this claim by storageclass {class_name!r}) "
                "is stored but cannot be read; delete it (corral delete pv "
                f"{name}) and fix the storageclass",
            )
        existing = m.volumes.get(name)
        stored_status = m.volume_status.get(name)
        if existing is not None and stored_status is not None:
            if stored_status.phase == VOLUME_DELETING:
                return await self._claim_pending(
                    key,
                    base,
                    Pending(
                        "VolumeDeleting",
                        f"volume {name} (this claim's provisioned name) is being deleted",
                        class_name,
                    ),
                )
        if existing is not None and claim_ref_key(existing.spec.claim_ref) != key:
            return await self._claim_pending(
                key,
                base,
                Pending(
                    "VolumeNameTaken",
                    f"volume {name} (this claim's provisioned name) exists and is not its own",
                    class_name,
                ),
            )
        if existing is None:
            made = msgspec.structs.replace(
                volume,
                metadata=msgspec.structs.replace(
                    volume.metadata,
                    uid=str(uuid.uuid4()),
                    creation_timestamp=self.wall_clock(),
                    generation=1,
                ),
            )
            raw = encode(made)
            try:
                decode_payload(raw, PersistentVolume)  # as every reader will
            except InvalidPayload as error:
                return await self._provisioning_failed(
                    key,
                    base,
                    class_name,
                    f"storageclass {class_name!r} makes a volume that is not valid: "
                    f"{error.message}",
                )
            if not await self._write(m.volumes, [Create(name, raw)]):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
            volume = made
            await self.tell(
                VOLUME_KIND,
                name,
                "Provisioned",
                f"for claim {key} by storageclass {class_name}"
                + (f" on node {node}" if node else ""),
            )
            log.info(
                "provisioned volume %s for claim %s (class %s%s)",
                name,
                key,
                class_name,
                f", node {node}" if node else "",
            )
        if name not in m.volume_status.items:
            first = msgspec.structs.replace(
                initial_status(volume, claim.metadata.uid), updated_at=self.wall_clock()
            )
            if not await self._write(m.volume_status, [Create(name, encode(first))]):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        # The claim follows the volume's status (Provisioning, or bound by claimRef).
        return Result(requeue_after=0)

    async def _provisioning_failed(
        self, key: str, base: ClaimStatus, class_name: str, message: str
    ) -> Result | None:
        """Say why on the claim (Pending, ProvisioningFailed) and fail the reconcile: the
        key comes back on the controller's back-off, not at once."""
        await self._claim_pending(key, base, Pending(PROVISIONING_FAILED, message, class_name))
        raise ProvisioningFailed(f"claim {key}: {message}")

    # --- the volume controller -----------------------------------------------------------

    async def reconcile_volume(self, name: str) -> Result | None:
        started = time.perf_counter()
        try:
            async with self.lock:
                return await self._reconcile_volume(name)
        finally:
            metrics.RECONCILE_SECONDS.labels("volume").observe(time.perf_counter() - started)

    def claim_gone(self, status: VolumeStatus) -> bool:
        """The claim the volume was bound to no longer exists (a claim made again under
        its name is another one)."""
        m = self.mirrors
        if not status.claim or status.claim in m.claims.unreadable:
            return False
        claim = m.claims.get(status.claim)
        if claim is None:
            return True
        return bool(status.claim_uid) and claim.metadata.uid != status.claim_uid

    def orphaned(self, volume: PersistentVolume, status: VolumeStatus) -> bool:
        """A volume volmgr provisioned for a claim that no longer exists."""
        if not status.provisioned_by or not volume.spec.claim_ref:
            return False
        key = claim_ref_key(volume.spec.claim_ref)
        return key not in self.mirrors.claims.items and key not in self.mirrors.claims.unreadable

    async def _reconcile_volume(self, name: str) -> Result | None:
        m = self.mirrors
        if name in m.volumes.unreadable or name in m.volume_status.unreadable:
            return None
        volume = m.volumes.get(name)
        stored = m.volume_status.items.get(name)
        if volume is None:
            if not await self._remove(m.volume_status, name):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
            return None
        if stored is None:
            uid = ""
            if volume.spec.claim_ref:
                claim = m.claims.get(claim_ref_key(volume.spec.claim_ref))
                uid = "" if claim is None else claim.metadata.uid
            return await self._volume_written(name, initial_status(volume, uid))
        status = stored[0]
        if status.phase == VOLUME_DELETING:
            return await self._finish_deleting(name, status)
        if status.phase == VOLUME_TERMINATING:
            if status.claim and not self.claim_gone(status):
                return None
            keep = volume.spec.persistent_volume_reclaim_policy == "Retain"
            return await self._start_deleting(
                name, volume, status, keep, "deleted while bound; its claim is gone"
            )
        if status.phase in (VOLUME_BOUND, VOLUME_PENDING) and self.claim_gone(status):
            return await self._reclaim(name, volume, status)
        if status.phase == VOLUME_AVAILABLE and self.orphaned(volume, status):
            # provisioned for a claim deleted before it was bound: reclaimed as if bound
            return await self._reclaim(
                name,
                volume,
                msgspec.structs.replace(status, claim=claim_ref_key(volume.spec.claim_ref)),
            )
        # What the spec says (a bound volume's spec no longer changes; an unbound one's
        # node and size may).
        wanted = msgspec.structs.replace(
            status,
            size_bytes=volume.spec.size_bytes,
            node=volume.spec.node or status.node,
            counts_room=volume.spec.source == "provisioned",
        )
        if status.phase == VOLUME_PENDING:
            attachment = m.attachments.get(names.attachment_key(status.node, name))
            if status.node and attachment is not None and attachment.ready:
                wanted = msgspec.structs.replace(
                    wanted,
                    phase=VOLUME_BOUND if status.claim else VOLUME_AVAILABLE,
                    size_enforced=attachment.size_enforced,
                    message="",
                )
        if wanted.phase == VOLUME_BOUND and wanted.claim:
            wanted = self._placed(volume, wanted)
        if wanted.node:
            attachment = m.attachments.get(names.attachment_key(wanted.node, name))
            if attachment is not None and attachment.ready:
                wanted = msgspec.structs.replace(wanted, size_enforced=attachment.size_enforced)
        if wanted == status:
            return None
        result = await self._volume_written(name, wanted)
        if result is None and status.phase == VOLUME_PENDING and wanted.phase != VOLUME_PENDING:
            enforced = "size enforced" if wanted.size_enforced else "size not enforced"
            await self.tell(VOLUME_KIND, name, "Made", f"made on node {wanted.node} ({enforced})")
        return result

    def _placed(self, volume: PersistentVolume, status: VolumeStatus) -> VolumeStatus:
        """A bound volume's node (an unpinned node-local one: its first placement's; one
        with no source only when that node has its room) and attach node (a single-node
        dockerVolume that is not node-local: moved only once the old node has no
        attachment left)."""
        users = self.users(status.claim)
        if not users:
            return status
        if volume.spec.node_local:
            if status.node:
                return status
            node = users[0].node
            if status.counts_room:
                m = self.mirrors
                offered = {n: record for n, (record, _) in m.node_volumes.items.items()}
                problem = room_problem(
                    node,
                    status.size_bytes,
                    offered,
                    used_room(m.volume_status.values()),
                    needs=f"volume {status.name}",
                )
                if problem:
                    return msgspec.structs.replace(status, message=NODE_FULL_PREFIX + problem)
            return msgspec.structs.replace(status, node=node, message="")
        if not volume.spec.single_node:
            return status
        nodes = [p.node for p in users]
        current = status.attach_node
        if not current:
            return msgspec.structs.replace(status, attach_node=nodes[0], message="")
        if current in nodes:
            return msgspec.structs.replace(status, message="")
        if names.attachment_key(current, status.name) in self.mirrors.attachments.items or (
            names.attachment_key(current, status.name) in self.mirrors.attachments.unreadable
        ):
            return msgspec.structs.replace(
                status, message=f"volume {status.name} is still attached to node {current}"
            )
        return msgspec.structs.replace(status, attach_node=nodes[0], message="")

    async def _volume_written(self, name: str, wanted: VolumeStatus) -> Result | None:
        if not await self._put_status(self.mirrors.volume_status, name, wanted):
            return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        return None

    async def _reclaim(
        self, name: str, volume: PersistentVolume, status: VolumeStatus
    ) -> Result | None:
        policy = volume.spec.persistent_volume_reclaim_policy
        if policy == "Delete":
            return await self._start_deleting(
                name, volume, status, False, f"its claim {status.claim} was deleted"
            )
        released = msgspec.structs.replace(
            status,
            phase=VOLUME_RELEASED,
            message=f"its claim {status.claim} was deleted; the data is kept (Retain)",
        )
        log.info("volume %s released: its claim %s was deleted", name, status.claim)
        await self.tell(VOLUME_KIND, name, "Released", released.message)
        return await self._volume_written(name, released)

    async def _start_deleting(
        self, name: str, volume: PersistentVolume, status: VolumeStatus, keep: bool, why: str
    ) -> Result | None:
        """Make the volume Deleting (every node part takes it down; its data stays with
        `keep`); its records go once no node has an attachment for it."""
        m = self.mirrors
        attachments = [
            a
            for a in (m.attachments.get(key) for key in self.attachments_by_volume.get(name))
            if a is not None
        ]
        wanted = deleting(volume, status, attachments, keep_data=keep)
        result = await self._volume_written(name, wanted)
        if result is None:
            log.info("volume %s is being deleted (%s): %s", name, why, wanted.message)
            await self.tell(VOLUME_KIND, name, "Deleting", f"{why}; {wanted.message}")
        return result

    async def _finish_deleting(self, name: str, status: VolumeStatus) -> Result | None:
        """Delete a Deleting volume's record and status once no node has an attachment
        for it (an attachment's change enqueues it again)."""
        m = self.mirrors
        nodes = self.attached_nodes(name)
        if nodes:
            return None
        if not await self._remove(m.volumes, name):
            return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        if not await self._remove(m.volume_status, name):
            return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        log.info("deleted volume %s: %s", name, status.message)
        await self.tell(
            VOLUME_KIND, name, "Deleted", f"deleted: no node has it any more; {status.message}"
        )
        return None
