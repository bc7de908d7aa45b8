"""Carries out the diff's actions against the runtime, and records what came of them.

Every outcome lands in the replica's track (phase, message, back-off); nothing
raises out of `execute`, so a failing engine never stops the agent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import anyio

from corral.contract import names
from corral.contract.network_specs import CLUSTER_DOMAIN
from corral.contract.specs import replica_networks
from corral.contract.state import Placement, ReplicaState
from corral_node_agent import metrics
from corral_node_agent.backoff import (
    ReplicaTrack,
    after_failure,
    after_removal_failure,
    after_restart,
    after_start,
)
from corral_node_agent.diff import Action, CreateContainer, RemoveContainers, StartContainer
from corral_node_agent.mounts import uses_volume_labels
from corral_node_agent.runtime import (
    ContainerSpec,
    ImagePullFailed,
    Mount,
    NameConflict,
    NetworkMissing,
    Runtime,
    RuntimeFailure,
    StartNetworkGone,
    VolumeNotReady,
    VolumeRefused,
)
from corral_node_agent.volumes import PreparedMounts, VolumeBook, prepare_mounts

log = logging.getLogger(__name__)


class EventSink(Protocol):
    async def emit(
        self,
        object_kind: str,
        object_name: str,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        namespace: str | None = None,
    ) -> None: ...


def container_name(
    cluster_id: str, node: str, replica: str, namespace: str = names.DEFAULT_NAMESPACE
) -> str:
    """corral_<node>_<replica>_<cluster> for the default namespace (the names of before
    namespaces, so that those containers are still found), corral_<node>_<namespace>.
    <replica>_<cluster> for another: node, namespace and replica names are DNS labels,
    which never hold '_' or '.', so two (cluster, node, namespace, replica) never get
    the same name."""
    if namespace == names.DEFAULT_NAMESPACE:
        return f"corral_{node}_{replica}_{cluster_id}"
    return f"corral_{node}_{namespace}.{replica}_{cluster_id}"


def dns_search(namespace: str) -> tuple[str, ...]:
    """A replica's resolver search path, as a Pod's: its namespace's Services first."""
    return (f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN)


def container_spec(
    placement: Placement,
    cluster_id: str,
    *,
    networks: bool = False,
    mounts: tuple[Mount, ...] = (),
    uses_volumes: tuple[str, ...] = (),
) -> ContainerSpec:
    """`networks`: the replica joins its template's corral networks (specs.replica_networks)
    and resolves through netmgr's DNS; else it goes on the engine's default bridge.
    `mounts`: its volumes' (corral_node_agent.volumes.prepare_mounts); `uses_volumes`:
    the PersistentVolumes they use, one label each (names.uses_volume_label), so that
    `docker ps --filter label=` finds a bind of a subPath too. Labels are not part of
    the template hash; a replica without volumes gets none."""
    template = placement.template
    return ContainerSpec(
        name=container_name(cluster_id, placement.node, placement.replica, placement.namespace),
        image=template.image,
        command=template.command,
        args=template.args,
        env=dict(template.env),
        labels={
            names.LABEL_MANAGED: "true",
            names.LABEL_CLUSTER: cluster_id,
            names.LABEL_NODE: placement.node,
            names.LABEL_DEPLOYMENT: placement.deployment,
            names.LABEL_NAMESPACE: placement.namespace,
            names.LABEL_REPLICA: placement.replica,
            names.LABEL_TEMPLATE_HASH: placement.template_hash,
            **uses_volume_labels(uses_volumes),
        },
        cpu_millis=template.resources.limits.cpu_millis,
        memory_bytes=template.resources.limits.memory_bytes,
        networks=tuple(replica_networks(template)) if networks else (),
        dns_search=dns_search(placement.namespace) if networks else (),
        mounts=mounts,
        # docs/rollouts.md, "Graceful stops": what `docker stop` sends, and when SIGKILL.
        stop_signal=template.stop_signal,
        stop_timeout=template.termination_grace_period_seconds,
    )


WAITING_FOR_NETWORK = "waiting for network"  # how a replica's message begins meanwhile


async def _networks_off() -> bool:
    return False


@dataclass
class _Pull:
    done: anyio.Event
    error: str | None = None


class ImagePuller:
    """Pulls images, one pull per image at a time: concurrent askers share its outcome.

    Pulls have their own limiter: a long pull never holds a slot that removals
    and restarts of other replicas wait for.
    """

    def __init__(self, runtime: Runtime, max_parallel: int = 4) -> None:
        self.runtime = runtime
        self.limiter = anyio.CapacityLimiter(max_parallel)
        self.removal_limiter = anyio.CapacityLimiter(max_parallel)
        # Asked right before every create and start: the agent's mode may have changed
        # since the pass that decided it (isolated, stopping, held ...).
        self.may_start: Callable[[], bool] = lambda: True
        self._pulls: dict[str, _Pull] = {}

    async def pull(self, image: str) -> None:
        pending = self._pulls.get(image)
        if pending is not None:
            await pending.done.wait()
            if pending.error is not None:
                raise ImagePullFailed(pending.error)
            return
        pending = self._pulls[image] = _Pull(anyio.Event())
        try:
            async with self.limiter:
                await self.runtime.pull_image(image)
        except BaseException as error:
            pending.error = str(error) or type(error).__name__
            metrics.IMAGE_PULLS.labels(result="failure").inc()
            raise
        else:
            metrics.IMAGE_PULLS.labels(result="success").inc()
        finally:
            pending.done.set()
            del self._pulls[image]


class Executor:
    def __init__(
        self,
        runtime: Runtime,
        events: EventSink,
        tracks: dict[str, ReplicaTrack],
        *,
        on_progress: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        max_parallel: int = 8,
        max_pulls: int = 4,
        cluster_id: str = "",
        volumes: VolumeBook | None = None,
    ) -> None:
        self.runtime = runtime
        # The cluster whose id new containers carry (the agent changes it when an
        # operator adopts or resets: corral_node_agent.local_record).
        self.cluster_id = cluster_id
        self.events = events
        self.tracks = tracks  # shared with the agent, changed in place
        self.on_progress = on_progress
        self.clock = clock
        self.limiter = anyio.CapacityLimiter(max_parallel)
        self.removal_limiter = anyio.CapacityLimiter(max_parallel)
        # Asked right before every create and start: the agent's mode may have changed
        # since the pass that decided it (isolated, stopping, held ...).
        self.may_start: Callable[[], bool] = lambda: True
        # Asked before every create: whether replicas join corral networks (the agent's
        # --networks; corral_node_agent.agent). Off unless told: the engine's bridge.
        self.uses_networks: Callable[[], Awaitable[bool]] = _networks_off
        self.puller = ImagePuller(runtime, max_pulls)
        # This node's volume attachments (the agent's); a replica with volumes waits
        # for them. Without a store, claims are never served.
        self.volumes = volumes if volumes is not None else VolumeBook("")
        # An emptyDir volume could not be removed with its container: the agent sweeps.
        self.volume_leftovers = False

    def _track(self, replica: str) -> ReplicaTrack:
        return self.tracks.get(replica, ReplicaTrack())

    def _set(self, replica: str, track: ReplicaTrack) -> None:
        self.tracks[replica] = track

    async def execute(self, action: Action) -> bool:
        """Do one action; True when it succeeded. Failures are recorded on the replica,
        never raised."""
        try:
            match action:
                case CreateContainer():
                    if not await self._image_ready(action):  # pulls wait outside self.limiter
                        return False
                    async with self.limiter:
                        return await self._create(action)
                case StartContainer():
                    async with self.limiter:
                        return await self._start(
                            action.placement, action.container_id, action.restart
                        )
                case RemoveContainers():
                    async with self.removal_limiter:  # never waits behind creates
                        await self._remove(action)
                    track = self._track(action.replica)
                    self._set(
                        action.replica, replace(track, removal_failures=0, removal_not_before=0.0)
                    )
                    return True
        except RuntimeFailure as error:  # the engine failed: retry later
            log.warning("%s of %s failed: %s", type(action).__name__, action.replica, error)
            if isinstance(action, RemoveContainers):
                message = f"removing {action.replica}: {error}"
                self._set(
                    action.replica,
                    after_removal_failure(self._track(action.replica), message, self.clock()),
                )
                return False
            await self._failed(action.replica, None, ReplicaState.FAILED, str(error))
        except Exception as error:  # a bug or a surprise: retry later
            log.exception("action %s failed", type(action).__name__)
            await self._failed(action.replica, None, ReplicaState.FAILED, str(error))
        return False

    async def _failed(
        self,
        replica: str,
        placement: Placement | None,
        phase: ReplicaState,
        message: str,
        reason: str = "Failed",
    ) -> None:
        before = self._track(replica)
        self._set(replica, after_failure(before, phase, message, self.clock()))
        if placement is not None and (before.phase, before.message) != (phase, message):
            await self._about(
                placement,
                reason,
                f"{placement.replica} on {placement.node}: {message}",
                warning=True,
            )

    async def _about(
        self, placement: Placement, reason: str, message: str, *, warning: bool = False
    ) -> None:
        """An event about the placement's Deployment."""
        await self.events.emit(
            "deployment",
            placement.deployment,
            reason,
            message,
            warning=warning,
            namespace=placement.namespace,
        )

    async def _image_ready(self, action: CreateContainer) -> bool:
        """Pull the image when it is missing; False (recorded on the replica) when that fails."""
        placement = action.placement
        replica = action.replica
        image = placement.template.image
        if not await self.runtime.has_image(image):
            self._set(
                replica,
                replace(
                    self._track(replica), phase=ReplicaState.PULLING, message=f"pulling {image}"
                ),
            )
            self.on_progress()
            await self._about(
                placement,
                "Pulling",
                f"pulling image {image}",
            )
            try:
                await self.puller.pull(image)
            except ImagePullFailed as error:
                await self._failed(
                    replica,
                    placement,
                    ReplicaState.IMAGE_PULL_BACKOFF,
                    f"pulling {image} failed: {error}",
                )
                return False
            await self._about(
                placement,
                "Pulled",
                f"pulled image {image}",
            )
        return True

    async def _create(self, action: CreateContainer) -> bool:
        placement = action.placement
        replica = action.replica
        if not self.may_start():
            return False  # no longer allowed: the next pass decides again
        self._set(replica, replace(self._track(replica), phase=ReplicaState.CREATING, message=""))
        try:
            container_id = await self._create_container(placement)
        except VolumeNotReady as error:
            # volmgr has not made it usable here (or another container holds it): wait.
            await self._failed(
                replica, placement, ReplicaState.CREATING, str(error), reason="VolumeNotReady"
            )
            return False
        except VolumeRefused as error:
            await self._failed(
                replica, placement, ReplicaState.FAILED, str(error), reason="FailedMount"
            )
            return False
        except NetworkMissing as error:
            # netmgr has not made it here yet (or is not running): wait, never Failed.
            await self._failed(
                replica,
                placement,
                ReplicaState.CREATING,
                f"{WAITING_FOR_NETWORK} {error.network} on this node",
                reason="NetworkNotReady",
            )
            return False
        except RuntimeFailure as error:
            await self._failed(replica, placement, ReplicaState.FAILED, f"create: {error}")
            return False
        self._set(replica, replace(self._track(replica), container_id=container_id))
        return await self._start(placement, container_id, restart=action.restart)

    async def _create_container(self, placement: Placement) -> str:
        """Create. A name conflict never removes the holder: when it is this node's own
        container the next pass adopts it; anything else is left alone and reported."""
        name = container_name(
            self.cluster_id, placement.node, placement.replica, placement.namespace
        )
        prepared = PreparedMounts()
        if placement.template.volumes:  # never an engine call for a replica without any
            prepared = await prepare_mounts(
                placement, self.cluster_id, name, self.volumes, self.runtime
            )
        spec = container_spec(
            placement,
            self.cluster_id,
            networks=await self.uses_networks(),
            mounts=prepared.mounts,
            uses_volumes=prepared.volumes,
        )
        try:
            return await self.runtime.create_container(spec)
        except NameConflict:
            holder = await self.runtime.find_container(spec.name)
            if holder is None or (
                holder.managed
                and holder.cluster == self.cluster_id
                and holder.node == placement.node
            ):
                raise  # ours: the next pass lists and adopts it
            owner = (
                f"cluster {holder.cluster or 'unknown'}, node {holder.node or 'unknown'}"
                if holder.managed
                else "not corral's"
            )
            raise RuntimeFailure(
                f"the name {spec.name} is held by container {holder.id[:12]} ({owner}); "
                "corral never removes a container that is not its own"
            ) from None

    async def _start(self, placement: Placement, container_id: str, restart: bool) -> bool:
        replica = placement.replica
        if not self.may_start():
            return False  # no longer allowed: the next pass decides again
        try:
            await self.runtime.start_container(container_id)
        except StartNetworkGone as error:
            # Made on a network removed since (by hand while it was stopped): it can
            # never start again. Removed, so the next pass makes a new one on the
            # networks as they are now (waiting for netmgr to make them again).
            if not self.may_start():
                return False  # no longer Active: removes nothing; the next pass decides
            try:
                await self.runtime.remove_container(container_id)
            except RuntimeFailure as removal:
                log.warning("removing %s of %s failed: %s", container_id, replica, removal)
            await self._failed(
                replica,
                placement,
                ReplicaState.CREATING,
                f"its container's network is gone ({error}): making a new one",
                reason="NetworkNotReady",
            )
            return False
        except RuntimeFailure as error:
            await self._failed(replica, placement, ReplicaState.FAILED, f"start: {error}")
            return False
        track = self._track(replica)
        if restart:  # counted when a start happens, never for a failed attempt
            track = after_restart(track, self.clock())
        self._set(replica, after_start(track, container_id))
        track = self._track(replica)
        metrics.CONTAINER_STARTS.inc()
        if restart:
            metrics.CONTAINER_RESTARTS.inc()
            await self._about(
                placement,
                "BackOff",
                f"restarted {replica} on {placement.node} "
                + (
                    f"after exit code {track.exit_code} "
                    if track.exit_code is not None
                    else "after its container went "  # removed or killed behind corral's back
                )
                + f"(restart {track.restarts})",
                warning=True,
            )
        else:
            await self._about(
                placement,
                "Started",
                f"started {replica} on {placement.node} ({container_id[:12]})",
            )
        return True

    async def _remove(self, action: RemoveContainers) -> None:
        if action.deployment:
            await self.events.emit(
                "deployment",
                action.deployment,
                "Killing",
                f"removing {action.replica}: {action.reason}",
            )
        for container_id in action.container_ids:
            await self.runtime.remove_container(container_id)
        for volume in action.volumes:  # its emptyDirs go with the replica's containers
            try:
                await self.runtime.remove_volume(volume)
            except RuntimeFailure as error:
                log.warning("removing volume %s of %s failed: %s", volume, action.replica, error)
                self.volume_leftovers = True  # the agent's sweep tries again
