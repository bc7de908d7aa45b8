"""What the agent knows of this node's volumes, and the engine checks before a create
(docs/volumes.md, "Replicas with volumes").

`VolumeBook` follows `corral_volume_attachments` for this node only (one watch filtered
on `names.placement_prefix(node)`), started the first time a replica with volumes is
created: an agent whose replicas have none never watches it. Every change of an
attachment calls `on_change` (the agent retries the replicas waiting on volumes at once,
as a network's appearance does). `prepare_mounts` reads each claim's `ClaimStatus`,
turns a placement into its mounts (corral_node_agent.mounts), checks on the engine what
only the engine knows, and resolves each subPath on the host (the runtime's
`sub_path_source`: no symlink followed; the real path is what Docker binds).
"""

from __future__ import annotations

import dataclasses
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
    MountPlan,
    plan_mounts,
    volume_in_use,
    waiting_for_volume,
)
from corral_node_agent.runtime import (
    Mount,
    Runtime,
    RuntimeFailure,
    VolumeNotReady,
    VolumeRefused,
    VolumeUser,
)

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
        # Namespaces whose claims' statuses are followed (a change retries the waiting
        # replicas: a claim Bound after its attachment was written starts them at once).
        self.claim_namespaces: set[str] = set()

    def _changed(self, _key: str) -> None:
        self.on_change()

    def attachment_at(self, key: str) -> VolumeAttachment | None:
        """This node's attachment record at `key` (names.attachment_key), or None."""
        return self.mirror.get(key) if self.mirror is not None else None

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
            self.on_change()

    def follow_claims(self, namespace: str) -> None:
        """Follow the claims' statuses of `namespace` (`<namespace>.>` only, from the
        first replica with a claim there): each change calls `on_change`. A trigger only:
        a claim's status is read afresh at each try (claim_status)."""
        if self.claim_statuses is None or self.spawn is None:
            return
        if namespace in self.claim_namespaces:
            return
        self.claim_namespaces.add(namespace)
        mirror: Mirror[ClaimStatus] = Mirror(
            self.claim_statuses,
            ClaimStatus,
            prefix=names.object_key(namespace, ">"),
            on_change=self._changed,
        )
        self.spawn(mirror.run)

    async def claim_status(self, claim: str) -> ClaimStatus | None:
        """The claim's status as volmgr last wrote it (read afresh); None: none (yet)."""
        if self.claim_statuses is None:
            return None
        try:
            entry = await self.claim_statuses.get(claim)
        except Exception as error:  # retried on the replica's back-off, never guessed
            raise RuntimeFailure(
                f"reading {names.CLAIM_STATUS_BUCKET}/{claim}: {error or type(error).__name__}"
            ) from None
        if entry is None or entry.value is None:
            return None
        return decode(entry.value, ClaimStatus)


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedMounts:
    mounts: tuple[Mount, ...] = ()
    volumes: tuple[str, ...] = ()  # the PersistentVolumes used: one label each


async def _other_users(
    runtime: Runtime, docker_volume: str, volume: str, container: str, cluster_id: str
) -> list[VolumeUser]:
    """The containers of this cluster but `container` that use the PersistentVolume:
    by Docker's volume filter, and by corral's label (binds of a subPath inside it,
    which the volume filter never sees)."""
    found = await runtime.labelled_users(names.uses_volume_label(volume))
    if docker_volume:
        found += await runtime.volume_users(docker_volume)
    seen: set[str] = set()
    users: list[VolumeUser] = []
    for user in found:
        if user.name != container and user.cluster == cluster_id and user.id not in seen:
            seen.add(user.id)
            users.append(user)
    return users


async def prepare_mounts(
    placement: Placement,
    cluster_id: str,
    container: str,
    book: VolumeBook,
    runtime: Runtime,
) -> PreparedMounts:
    """The mounts of placement's container (named `container`), once every claim is
    usable here: Bound, served by this node's attachment of its volume, its Docker
    volume on the engine, and a ReadWriteOncePod claim's volume used by no other
    container of this cluster; each subPath resolved to its real path. Raises
    VolumeNotReady (wait) or VolumeRefused (a field this node cannot serve; the replica
    fails and is tried again on its back-off)."""
    statuses: dict[str, ClaimStatus | None] = {}
    claims = [v.persistent_volume_claim for v in placement.template.volumes]
    if any(source is not None for source in claims):
        await book.current()
        book.follow_claims(placement.namespace)
        for source in claims:
            if source is not None:
                key = names.object_key(placement.namespace, source.claim_name)
                if key not in statuses:
                    statuses[key] = await book.claim_status(key)
    else:
        book.used = True
    plan = plan_mounts(placement, cluster_id, statuses.get, book.attachment_at)
    for use in plan.claims:
        if use.docker_volume and not await runtime.volume_exists(use.docker_volume):
            # Never let the engine make an empty volume of that name in its place.
            raise VolumeNotReady(
                waiting_for_volume(
                    use.volume, f"Docker volume {use.docker_volume} is not on this engine"
                )
            )
        status = statuses.get(use.claim)
        if status is not None and READ_WRITE_ONCE_POD in status.access_modes:
            users = await _other_users(
                runtime, use.docker_volume, use.volume, container, cluster_id
            )
            if users:
                raise VolumeNotReady(volume_in_use(use.volume, users[0].name))
    return PreparedMounts(await _resolve_sub_paths(plan, runtime), plan.volumes)


async def _resolve_sub_paths(plan: MountPlan, runtime: Runtime) -> tuple[Mount, ...]:
    """The plan's mounts with each subPath bind's source replaced by its real path."""
    mounts = list(plan.mounts)
    for bind in plan.sub_paths:
        try:
            real = await runtime.sub_path_source(bind.host_path, bind.sub_path)
        except VolumeRefused as error:
            raise VolumeRefused(f"`{bind.field}` {bind.sub_path!r}: {error}") from None
        mounts[bind.index] = dataclasses.replace(mounts[bind.index], source=real)
    return tuple(mounts)
