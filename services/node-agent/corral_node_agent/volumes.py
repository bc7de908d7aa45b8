"""What the agent knows of this node's volumes, and the engine checks before a create
(docs/volumes.md, "Replicas with volumes").

`VolumeBook` follows `corral_volume_attachments` for this node only (one watch filtered
on `names.placement_prefix(node)`), started the first time a replica with volumes is
created: an agent whose replicas have none never watches it. Every change of an
attachment calls `on_change` (the agent retries the replicas waiting on volumes at once,
as a network's appearance does). `prepare_mounts` turns a placement into its mounts
(corral_node_agent.mounts) and checks on the engine what only the engine knows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.state import Placement
from corral.contract.volume_state import ClaimStatus, VolumeAttachment
from corral.natsio.kv import Bucket, Mirror
from corral_node_agent.mounts import (
    READ_WRITE_ONCE_POD,
    plan_mounts,
    volume_in_use,
    waiting_for_volume,
)
from corral_node_agent.runtime import Mount, Runtime, RuntimeFailure, VolumeNotReady

log = logging.getLogger(__name__)

FIRST_READ_SECONDS = 5.0
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


class VolumeBook:
    def __init__(
        self,
        node: str,
        attachments: Bucket | None = None,
        claim_statuses: Bucket | None = None,
        *,
        on_change: Callable[[], None] = lambda: None,
        first_read_seconds: float = FIRST_READ_SECONDS,
    ) -> None:
        self.node = node
        self.claim_statuses = claim_statuses
        self.on_change = on_change
        self.first_read_seconds = first_read_seconds
        self.attachments = attachments
        self.mirror: Mirror[VolumeAttachment] | None = None  # made with the watch
        # Where the watch runs (the agent's task group); set by the agent when it runs.
        self.spawn: Spawn | None = None
        self.watching = False  # the watch was started (some replica has volumes)
        self.used = False  # some replica with volumes was created by this agent
        self._read = anyio.Event()
        self._by_claim: dict[str, VolumeAttachment] | None = None

    def _changed(self, _key: str) -> None:
        self._by_claim = None
        self.on_change()

    def attachment_of(self, claim: str) -> VolumeAttachment | None:
        """This node's attachment serving claim <namespace>.<name>: a ready one first,
        then the newest."""
        if self._by_claim is None:
            index: dict[str, VolumeAttachment] = {}
            values = self.mirror.values() if self.mirror is not None else []
            for attachment in values:
                if attachment.node != self.node or not attachment.claim:
                    continue
                known = index.get(attachment.claim)
                if known is None or (attachment.ready, attachment.updated_at) > (
                    known.ready,
                    known.updated_at,
                ):
                    index[attachment.claim] = attachment
            self._by_claim = index
        return self._by_claim.get(claim)

    async def current(self) -> None:
        """Start the watch on first use and wait (bounded) for its first read."""
        self.used = True
        if self.attachments is None:
            return  # no store to read: no attachment is ever found
        if not self.watching:
            if self.spawn is None:
                raise RuntimeFailure("the volume attachments watch has nowhere to run")
            self.watching = True
            self.mirror = Mirror(
                self.attachments,
                VolumeAttachment,
                prefix=names.placement_prefix(self.node),
                on_change=self._changed,
            )
            self.spawn(self._follow)
        if self._read.is_set():
            return
        with anyio.move_on_after(self.first_read_seconds):
            await self._read.wait()
        if not self._read.is_set():
            raise VolumeNotReady(
                f"{waiting_for_volume('attachments')} (reading {names.VOLUME_ATTACHMENTS_BUCKET})"
            )

    async def _follow(self) -> None:
        assert self.mirror is not None
        async with anyio.create_task_group() as tg:
            await tg.start(self.mirror.run)
            self._read.set()
            self._by_claim = None
            self.on_change()

    async def access_modes(self, claim: str) -> list[str]:
        """The access modes of the volume bound to claim (its ClaimStatus); [] unknown."""
        if self.claim_statuses is None:
            return []
        try:
            entry = await self.claim_statuses.get(claim)
        except Exception as error:  # retried on the replica's back-off, never guessed
            raise RuntimeFailure(
                f"reading {names.CLAIM_STATUS_BUCKET}/{claim}: {error or type(error).__name__}"
            ) from None
        if entry is None or entry.value is None:
            return []
        return list(decode(entry.value, ClaimStatus).access_modes)


async def prepare_mounts(
    placement: Placement,
    cluster_id: str,
    container: str,
    book: VolumeBook,
    runtime: Runtime,
) -> tuple[Mount, ...]:
    """The mounts of placement's container (named `container`), once every claim is
    usable here: its Docker volume is on the engine, and a ReadWriteOncePod claim's is
    mounted by no other container of this cluster. Raises VolumeNotReady (wait) or
    VolumeRefused (a field this node cannot serve)."""
    if any(volume.persistent_volume_claim is not None for volume in placement.template.volumes):
        await book.current()
    else:
        book.used = True
    plan = plan_mounts(placement, cluster_id, book.attachment_of)
    for use in plan.claims:
        if not use.docker_volume:
            continue
        if not await runtime.volume_exists(use.docker_volume):
            # Never let the engine make an empty volume of that name in its place.
            raise VolumeNotReady(
                waiting_for_volume(
                    use.volume, f"Docker volume {use.docker_volume} is not on this engine"
                )
            )
        if READ_WRITE_ONCE_POD in await book.access_modes(use.claim):
            for user in await runtime.volume_users(use.docker_volume):
                if user.name != container and user.cluster == cluster_id:
                    raise VolumeNotReady(volume_in_use(use.volume, user.name))
    if plan.directories:
        await runtime.make_directories(plan.directories)
    return plan.mounts
