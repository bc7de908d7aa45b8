"""The node part's controller (docs/volumes.md): watches feed mirrors, changes enqueue
a volume's name, each volume reconciled level-triggered and idempotently
(corral_volmgr.node.decide says what to do), plus one key for the node's record.

    <volume>   its image/directory, mount, Docker volume and VolumeAttachment here
    @record    NodeVolumes[node]: ready, loop devices, capacity, volumes folder

Watched: corral_volumes, corral_volume_status, corral_claim_status, this node's
placements (placement_prefix) and this node's attachments. At start, before any
attachment is reported, every image of this cluster whose volume still lives here is
mounted again (a restart, a reboot). Every key is reconciled again every
`resync_seconds`. A volume is only ever deleted when its VolumeStatus says Deleting: one
whose record is missing (a bucket rolled back or emptied) is left as it is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskStatus
from prometheus_client import Gauge, Histogram

from corral.contract import names
from corral.contract.backoff import Backoff
from corral.contract.codec import encode
from corral.contract.specs import claim_names
from corral.contract.views import ClaimsPlacement
from corral.contract.volume_specs import PersistentVolume
from corral.contract.volume_state import (
    VOLUME_DELETING,
    ClaimStatus,
    NodeVolumes,
    VolumeAttachment,
    VolumeStatus,
)
from corral.natsio.controller import ChangeFeed, Controller, Index, Result
from corral.natsio.kv import Bucket, Entry, Mirror, write_record
from corral.natsio.sharded import node_placements_bucket
from corral_volmgr.node import capacity, decide, host, host_paths
from corral_volmgr.node.docker_volumes import (
    DockerVolumes,
    VolumeHoldsData,
    VolumeInUse,
    bind_volume,
    driver_volume,
    holds_data,
    other_uid,
    refusal,
)
from corral_volmgr.node.host_paths import HostPathRules
from corral_volmgr.node.loop_volumes import Layout, LoopVolumes, SizesDiffer, probe_loop_devices

log = logging.getLogger(__name__)

RECORD: Final = "@record"  # not a volume name (a DNS label)
RETRY_SECONDS: Final = 5.0  # a host path that may appear, a refusal that may be lifted

VOLUMES_MOUNTED = Gauge(
    "corral_volmgr_node_volumes_mounted",
    "Provisioned volumes of this cluster mounted on the node (ext4 images on loop devices)",
    ["node"],
)
PROVISION_SECONDS = Histogram(
    "corral_volmgr_node_provision_seconds",
    "Time to make a provisioned volume (image, filesystem, mount, Docker volume)",
    ["node"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    node: str
    cluster_id: str
    volumes_dir: Path = Path("/var/lib/corral/volumes")
    capacity_bytes: int | None = None  # None: measured
    host_path_allow: tuple[str, ...] = ()
    resync_seconds: float = 30.0
    placement_shards: int = 1  # the cluster's (Cluster.placement_shards)


def same(a: Any, b: Any) -> bool:
    """Two records equal but for when they were written."""
    return bool(
        msgspec.structs.replace(a, updated_at=0.0) == msgspec.structs.replace(b, updated_at=0.0)
    )


@dataclass
class Report:
    """What --remove-all did."""

    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class NodePart:
    def __init__(
        self,
        buckets: Mapping[str, Bucket],
        settings: NodeSettings,
        docker: DockerVolumes,
        *,
        loops: LoopVolumes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # resolved once: mounts are found by their real path in the mount table
        settings = replace(settings, volumes_dir=Path(os.path.realpath(settings.volumes_dir)))
        self.settings = settings
        self.docker = docker
        self.clock = clock
        node = settings.node
        self.loops = loops or LoopVolumes(
            Layout(settings.volumes_dir, settings.cluster_id), loop_devices=False
        )
        self.loop_problem = "not probed yet"
        self.engine_root = ""
        self.started = False
        self.problems: dict[str, str] = {}  # node-wide: what is wrong now
        self.local: set[str] = set()  # volumes with something of them on this node
        self.kept_noted: set[str] = set()  # volumes with no record whose data was logged
        self.attachments_bucket = buckets[names.VOLUME_ATTACHMENTS_BUCKET]
        self.node_bucket = buckets[names.NODE_VOLUMES_BUCKET]
        self.volumes = Mirror(buckets[names.VOLUMES_BUCKET], PersistentVolume)
        self.statuses = Mirror(buckets[names.VOLUME_STATUS_BUCKET], VolumeStatus)
        self.claims = Mirror(buckets[names.CLAIM_STATUS_BUCKET], ClaimStatus)
        self.placements = Mirror(
            node_placements_bucket(buckets, settings.placement_shards, node),
            ClaimsPlacement,  # a view: what it reads (corral.contract.views)
            prefix=names.placement_prefix(node),
        )
        self.attachments = Mirror(
            self.attachments_bucket, VolumeAttachment, prefix=names.placement_prefix(node)
        )
        self.records = Mirror(self.node_bucket, NodeVolumes, prefix=node)
        self.mirrors: list[Mirror[Any]] = [
            self.volumes,
            self.statuses,
            self.claims,
            self.placements,
            self.attachments,
            self.records,
        ]
        claim_changes = ChangeFeed(self.claims)
        placement_changes = ChangeFeed(self.placements)
        # volume -> the claims bound to it; claim -> the placements here that use it
        self.claims_by_volume = Index(
            claim_changes, by=lambda key, c: (c.volume,) if c.volume else ()
        )
        self.placements_by_claim = Index(
            placement_changes,
            by=lambda key, p: [names.object_key(p.namespace, c) for c in claim_names(p.template)],
        )
        self.controller = Controller(
            f"volmgr-node-{node}",
            self.reconcile,
            resync_seconds=settings.resync_seconds,
            resync_keys=self.all_keys,
        )
        self.controller.watch(ChangeFeed(self.volumes))
        self.controller.watch(ChangeFeed(self.statuses))
        self.controller.watch(
            claim_changes, lambda k, o, n: {c.volume for c in (o, n) if c is not None and c.volume}
        )
        self.controller.watch(placement_changes, self._volumes_of_placement)
        prefix = f"{node}."
        self.controller.watch(
            ChangeFeed(self.attachments), lambda k, o, n: (k.removeprefix(prefix),)
        )
        self.backoffs: dict[str, Backoff] = {}
        self._mounted = VOLUMES_MOUNTED.labels(node)
        self._provision_seconds = PROVISION_SECONDS.labels(node)

    # --- what to reconcile ---------------------------------------------------------------

    def _volumes_of_placement(
        self, key: str, old: ClaimsPlacement | None, new: ClaimsPlacement | None
    ) -> set[str]:
        found = set()
        for placement in (old, new):
            if placement is None:
                continue
            for claim in claim_names(placement.template):
                status = self.claims.get(names.object_key(placement.namespace, claim))
                if status is not None and status.volume:
                    found.add(status.volume)
        return found

    def all_keys(self) -> list[str]:
        prefix = f"{self.settings.node}."
        keys = set(self.volumes.items) | set(self.statuses.items) | self.local
        keys |= {key.removeprefix(prefix) for key in self.attachments.items}
        return [*sorted(keys), RECORD]

    def claims_used_here(self, volume: str) -> list[str]:
        return sorted(
            claim
            for claim in self.claims_by_volume.get(volume)
            if self.placements_by_claim.count(claim) > 0
        )

    def counts_room(self, volume: str) -> bool:
        """Whether a volume's image here is counted against the node's room by the cluster
        part: it has a readable record and its status is not Deleting."""
        status = self.statuses.get(volume)
        return (
            self.volumes.get(volume) is not None
            and status is not None
            and status.phase != VOLUME_DELETING
        )

    def decision(self, volume: str) -> decide.Decision:
        unreadable = volume in self.volumes.unreadable or volume in self.statuses.unreadable
        return decide.decide(
            self.settings.node,
            self.volumes.get(volume),
            self.statuses.get(volume),
            unreadable=unreadable,
            claims_used_here=self.claims_used_here(volume),
        )

    # --- running -------------------------------------------------------------------------

    async def start(self) -> None:
        """What happens once before the controller: the engine's data root, the loop
        device probe, the volumes folder, and the mounts restored."""
        try:
            self.engine_root = await self.docker.engine_root()
        except Exception as error:  # the engine is not up yet: read again later
            log.warning("cannot read the engine's data root (docker info): %s", error)
        root = self.settings.volumes_dir
        try:
            await anyio.to_thread.run_sync(lambda: root.mkdir(parents=True, exist_ok=True))
        except OSError as error:
            self.problems["volumes-dir"] = f"cannot make {root}: {error.strerror or error}"
        self.loop_problem = await probe_loop_devices(root) if not self.problems else "no folder"
        self.loops.loop_devices = not self.loop_problem
        if self.loop_problem:
            log.warning(
                "loop devices unavailable: %s; provisioned volumes are directories, their "
                "size is not enforced",
                self.loop_problem,
            )
        await self.restore()
        self.started = True

    async def restore(self) -> list[str]:
        """Mount again every image of this cluster whose volume still lives on this
        node (after a restart or a reboot); the volumes mounted."""
        restored = []
        for sidecar in await anyio.to_thread.run_sync(self.loops.ours):
            volume = sidecar.volume
            self.local.add(volume)
            pv = self.volumes.get(volume)
            if pv is None or not sidecar.size_enforced:
                continue
            if self.decision(volume).action != decide.PROVISION:
                continue
            if await self.loops.mounted(volume):
                continue
            try:
                await self.loops.ensure(volume, pv.spec.size_bytes)
            except Exception as error:
                log.warning("could not mount volume %s again: %s", volume, error)
                continue
            restored.append(volume)
        if restored:
            log.info("mounted again: %s", ", ".join(restored))
        return restored

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for mirror in self.mirrors:
                await tg.start(mirror.run)
            await self.start()
            await self._learn_docker_volumes()
            self.controller.enqueue_all(self.all_keys())
            await tg.start(self.controller.run)
            task_status.started()

    async def _learn_docker_volumes(self) -> None:
        try:
            found = await self.docker.list_ours()
        except Exception as error:
            log.warning("cannot list the engine's volumes: %s", error)
            return
        for shown in found.values():
            volume = (shown.get("Labels") or {}).get(names.LABEL_VOLUME)
            if volume:
                self.local.add(str(volume))

    # --- reconciling ---------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        if key == RECORD:
            await self.reconcile_record()
            return None
        result = await self.reconcile_volume(key)
        if result is None:
            self.backoffs.pop(key, None)
        return result

    def _retry(self, volume: str) -> Result:
        delays = self.backoffs.setdefault(volume, Backoff(first=0.5, most=10.0))
        return Result(requeue_after=delays.next())

    async def reconcile_volume(self, volume: str) -> Result | None:
        decision = self.decision(volume)
        action = decision.action
        if action == decide.LEAVE:
            if decision.reason == decide.NO_RECORD:
                await self._note_kept(volume)
            return None
        self.kept_noted.discard(volume)
        if action in (decide.RELEASE, decide.DELETE):
            return await self.take_down(volume, decision)
        self.local.add(volume)
        pv = self.volumes.get(volume)
        assert pv is not None  # decide: a volume to make has a record
        if action == decide.PROVISION:
            return await self.provision(volume, pv, decision)
        if action == decide.HOST_PATH:
            return await self.host_path(volume, pv, decision)
        return await self.docker_volume(volume, pv, decision)

    async def provision(
        self, volume: str, pv: PersistentVolume, decision: decide.Decision
    ) -> Result | None:
        started = time.monotonic()
        try:
            prepared = await self.loops.ensure(volume, pv.spec.size_bytes)
            want = bind_volume(
                volume, prepared.host_path, self.settings.cluster_id, self.settings.node
            )
            await self.docker.ensure(want)
        except SizesDiffer as error:  # not retried quickly: the operator's to settle
            await self.write_attachment(
                volume, claim=decision.claim, message=f"sizes differ: {error}"
            )
            return Result(requeue_after=RETRY_SECONDS)
        except Exception as error:
            await self.write_attachment(
                volume, claim=decision.claim, message=f"{type(error).__name__}: {error}"
            )
            raise
        if prepared.made:
            self._provision_seconds.observe(time.monotonic() - started)
            self.controller.enqueue(RECORD)  # capacity, volumes mounted
        message = "" if prepared.size_enforced else "size not enforced: loop devices unavailable"
        await self.write_attachment(
            volume,
            claim=decision.claim,
            ready=True,
            docker_volume=want.name,
            host_path=prepared.host_path,
            size_enforced=prepared.size_enforced,
            read_only=decide.read_only(pv),
            message=message,
        )
        return None

    async def _note_kept(self, volume: str) -> None:
        """Say once that a volume with something here has no record: nothing of it is
        deleted (only the Deleting phase deletes) nor mounted again at start."""
        if volume not in self.local or volume in self.kept_noted:
            return
        self.kept_noted.add(volume)
        sidecar = await anyio.to_thread.run_sync(self.loops.read_sidecar, volume)
        layout = self.loops.layout
        if sidecar is not None:
            where = layout.image(volume) if sidecar.size_enforced else layout.mountpoint(volume)
            place = str(where)
        else:
            place = f"Docker volume {names.docker_volume_name(volume, self.settings.cluster_id)}"
        log.warning("volume %s has no record: its data is kept at %s", volume, place)

    def host_path_rules(self) -> HostPathRules:
        forbidden = [str(self.settings.volumes_dir)]
        if self.engine_root:
            forbidden.append(self.engine_root)
        return HostPathRules(tuple(forbidden), self.settings.host_path_allow)

    async def host_path(
        self, volume: str, pv: PersistentVolume, decision: decide.Decision
    ) -> Result | None:
        path, kind = host_paths.host_path_of(pv)
        # Docker binds the real path, checked, never the path whose links may change
        problem, real = await anyio.to_thread.run_sync(
            host_paths.prepare, path, kind, self.host_path_rules()
        )
        name = names.docker_volume_name(volume, self.settings.cluster_id)
        if problem:
            await self.write_attachment(volume, claim=decision.claim, message=problem)
            try:
                await self.docker.remove(name)  # one made before a refusal
            except VolumeInUse:
                pass
            return Result(requeue_after=RETRY_SECONDS)
        want = bind_volume(volume, real, self.settings.cluster_id, self.settings.node)
        await self.docker.ensure(want)
        await self.write_attachment(
            volume,
            claim=decision.claim,
            ready=True,
            docker_volume=name,
            host_path=real,
            size_enforced=False,
            read_only=decide.read_only(pv),
        )
        return None

    async def docker_volume(
        self, volume: str, pv: PersistentVolume, decision: decide.Decision
    ) -> Result | None:
        source = pv.spec.docker_volume
        assert source is not None
        want = driver_volume(
            volume,
            source.driver,
            source.options,
            self.settings.cluster_id,
            self.settings.node,
            pv.metadata.uid,
        )
        # a Docker volume holding data is never removed to be made again (its options
        # changed, or it is another volume's of that name): only Deleting removes it
        why = refusal(await self.docker.show(want.name), want)
        if why:
            await self.write_attachment(volume, claim=decision.claim, message=why)
            return Result(requeue_after=RETRY_SECONDS)
        try:
            await self.docker.ensure(want)
        except VolumeHoldsData as error:
            await self.write_attachment(volume, claim=decision.claim, message=str(error))
            return Result(requeue_after=RETRY_SECONDS)
        except Exception as error:
            await self.write_attachment(
                volume, claim=decision.claim, message=f"{type(error).__name__}: {error}"
            )
            raise
        await self.write_attachment(
            volume,
            claim=decision.claim,
            ready=True,
            docker_volume=want.name,
            read_only=decide.read_only(pv),
        )
        return None

    async def take_down(self, volume: str, decision: decide.Decision) -> Result | None:
        """Once no container uses the volume (Docker's volume filter and the agent's
        uses-volume label, which also marks a container binding only a subPath; retried
        with back-off): a bind Docker volume goes (a dockerVolume's, which is its data,
        only when Deleting without keepData), the image is unmounted, a Deleting
        volume's files go unless keepData, THEN the attachment record."""
        key = names.attachment_key(self.settings.node, volume)
        attachment = self.attachments.get(key)
        name = names.docker_volume_name(volume, self.settings.cluster_id)
        delete_data = decision.action == decide.DELETE and not decision.keep_data
        if attachment is None and volume not in self.local:
            # a node that handed a dockerVolume over keeps its Docker volume (its data):
            # Deleting without keepData removes it on every node that has one
            if not delete_data or await self.docker.show(name) is None:
                return None  # nothing of it was ever made here
        if attachment is not None and attachment.ready:
            # no new container mounts it from now on
            await self.write_attachment(
                volume,
                claim=attachment.claim,
                docker_volume=attachment.docker_volume,
                host_path=attachment.host_path,
                size_enforced=attachment.size_enforced,
                message=f"being removed from this node: {decision.reason}",
            )
        users = await self.docker.users(name, volume)
        if users:
            log.info("volume %s: used by container(s) %s; trying again", volume, users)
            return self._retry(volume)
        shown = await self.docker.show(name)
        pv = self.volumes.get(volume)
        if shown is not None and pv is not None and other_uid(shown, pv.metadata.uid):
            shown = None  # another volume's of that name (kept data): never this one's to remove
        if shown is not None and (delete_data or not holds_data(shown)):
            try:
                await self.docker.remove(name)
            except VolumeInUse as error:
                log.info("volume %s: %s; trying again", volume, error)
                return self._retry(volume)
        if delete_data:
            if await self.loops.delete(volume):
                self.controller.enqueue(RECORD)
        elif await self.loops.mounted(volume):
            await self.loops.unmount(volume)
            self.controller.enqueue(RECORD)
        await self.delete_attachment(volume)
        left = await anyio.to_thread.run_sync(self.loops.read_sidecar, volume)
        if left is None and await self.docker.show(name) is None:
            self.local.discard(volume)  # nothing of it is left here
        return None

    # --- records -------------------------------------------------------------------------

    async def write_attachment(
        self,
        volume: str,
        *,
        claim: str = "",
        ready: bool = False,
        docker_volume: str = "",
        host_path: str = "",
        size_enforced: bool | None = None,
        read_only: bool = False,
        message: str = "",
    ) -> None:
        node = self.settings.node
        key = names.attachment_key(node, volume)
        record = VolumeAttachment(
            volume=volume,
            node=node,
            claim=claim,
            ready=ready,
            docker_volume=docker_volume,
            host_path=host_path,
            size_enforced=size_enforced,
            read_only=read_only,
            message=message,
        )
        old = self.attachments.get(key)
        if old is not None and same(old, record):
            return
        record = msgspec.structs.replace(record, updated_at=self.clock())
        revision = await write_record(
            self.attachments_bucket, key, record, self.attachments.revision(key)
        )
        self.attachments.apply(Entry(key, encode(record), revision))
        if ready != (old is not None and old.ready):
            log.info("attachment %s: %s", key, "ready" if ready else message or "not ready")

    async def delete_attachment(self, volume: str) -> None:
        key = names.attachment_key(self.settings.node, volume)
        revision = self.attachments.revision(key)
        if revision is None:
            return
        deleted = await self.attachments_bucket.delete(key, revision=revision)
        self.attachments.apply(Entry(key, None, deleted))
        log.info("attachment %s deleted", key)

    async def reconcile_record(self) -> None:
        settings = self.settings
        node = settings.node
        if not self.engine_root:
            try:
                self.engine_root = await self.docker.engine_root()
            except Exception:
                pass
        mounted = host.under(await host.mounts(), str(self.loops.layout.cluster_dir))
        self._mounted.set(len(mounted))
        for sidecar in await anyio.to_thread.run_sync(self.loops.ours):
            if sidecar.volume not in self.local:
                self.local.add(sidecar.volume)
                self.controller.enqueue(sidecar.volume)
        problems = [text for _, text in sorted(self.problems.items()) if text]
        room = settings.capacity_bytes
        if room is None and not problems:
            try:
                free = await anyio.to_thread.run_sync(capacity.free_bytes, settings.volumes_dir)
                held = await anyio.to_thread.run_sync(self.loops.held_bytes, self.counts_room)
                room = capacity.measured(free, held)
            except OSError as error:
                problems.append(f"cannot measure {settings.volumes_dir}: {error}")
        notes = list(problems)
        if self.loop_problem:
            notes.append(
                f"loop devices unavailable: {self.loop_problem}; provisioned volumes are "
                "directories, their size is not enforced"
            )
        record = NodeVolumes(
            node=node,
            ready=self.started and not problems,
            loop_devices=not self.loop_problem,
            capacity_bytes=room or 0,
            volumes_dir=str(settings.volumes_dir),
            message="; ".join(notes) if self.started else "starting",
        )
        await self.write_record(record)

    async def write_record(self, record: NodeVolumes) -> None:
        node = self.settings.node
        old = self.records.get(node)
        if old is not None and same(old, record):
            return
        record = msgspec.structs.replace(record, updated_at=self.clock())
        revision = await write_record(self.node_bucket, node, record, self.records.revision(node))
        self.records.apply(Entry(node, encode(record), revision))

    # --- removing everything (`corral down`) ----------------------------------------------

    async def remove_all(self, *, delete_data: bool) -> Report:
        """This cluster's Docker volumes on this node that no container uses (a
        dockerVolume's, which holds data, only with `delete_data`), every mount and loop
        device under its volumes folder (with `delete_data`: the folder too);
        then the attachments whose Docker volume is gone, and the node's record says it
        is not ready."""
        report = Report()
        for name, shown in sorted((await self.docker.list_ours()).items()):
            if holds_data(shown) and not delete_data:
                report.done.append(f"kept Docker volume {name}: it holds its volume's data")
                continue
            try:
                if await self.docker.remove(name):
                    report.done.append(f"removed Docker volume {name}")
            except VolumeInUse:
                report.done.append(f"kept Docker volume {name}: a container uses it")
            except Exception as error:
                report.errors.append(f"Docker volume {name}: {error}")
        done, errors = await self.loops.remove_all(delete_data=delete_data)
        report.done += done
        report.errors += errors
        async with anyio.create_task_group() as tg:
            await tg.start(self.attachments.run)
            await tg.start(self.records.run)
            tg.cancel_scope.cancel()
        left = await self.docker.list_ours()
        for key, attachment in list(self.attachments.items.items()):
            if attachment[0].docker_volume in left:
                continue
            try:
                await self.delete_attachment(attachment[0].volume)
            except Exception as error:
                report.errors.append(f"attachment {key}: {error}")
        try:
            await self.write_record(
                NodeVolumes(
                    node=self.settings.node,
                    volumes_dir=str(self.settings.volumes_dir),
                    message="stopped (--remove-all)",
                )
            )
        except Exception as error:
            report.errors.append(f"NodeVolumes {self.settings.node}: {error}")
        return report
