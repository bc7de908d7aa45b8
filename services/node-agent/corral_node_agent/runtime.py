"""The container runtime interface the agent talks through, and its vocabulary.

Two implementations: `DockerRuntime` (a real engine, through aiodocker) and
`HollowRuntime` (simulated containers in memory). Nothing above this interface
knows which one it talks to (docs/architecture.md, the rules).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from corral.contract.names import DEFAULT_NAMESPACE

# Docker's own grace for a container made without a StopTimeout (before graceful stops).
ENGINE_DEFAULT_GRACE_SECONDS = 10


class RuntimeFailure(Exception):
    """The engine refused or failed an operation; the message says why."""


class EngineUnavailable(RuntimeFailure):
    """The engine cannot be reached at all."""


class ImageMissing(RuntimeFailure):
    """The image is not in the engine's store (pull it first)."""


class ImagePullFailed(RuntimeFailure):
    """The image could not be pulled."""


class NetworkMissing(RuntimeFailure):
    """A corral network's Docker network is not on this engine (yet): netmgr makes it."""

    def __init__(self, network: str, detail: str = "") -> None:
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"network {network} is not on this engine{suffix}")
        self.network = network


class VolumeNotReady(RuntimeFailure):
    """A volume the replica mounts is not usable on this node yet (no attachment, not
    ready, or held by another container): the replica waits, ContainerCreating, never
    Failed. The message is what its status says (corral_node_agent.mounts)."""


class VolumeRefused(RuntimeFailure):
    """The template asks for a mount this node cannot give (the message names the
    field): the replica is Failed, retried on its back-off."""


class ContainerGone(RuntimeFailure):
    """The container does not exist (any more)."""


class StartNetworkGone(RuntimeFailure):
    """The container cannot start: a network it was created on was removed from the
    engine since (Docker lets a network go while only stopped containers are on it).
    Only a new container can run."""


class NameConflict(RuntimeFailure):
    """A container of that name exists already (the engine's 409 on create)."""


class ContainerState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    DEAD = "dead"
    OTHER = "other"  # paused, restarting, removing: the agent leaves it alone


@dataclass(frozen=True, slots=True)
class EngineInfo:
    cpu_millis: int
    memory_bytes: int
    engine_id: str = ""  # the engine's own id: one engine serves one node


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount of a replica's container (corral_node_agent.mounts makes them).

    kind "volume": the Docker volume `source`; with `driver` set, the engine makes it
    with these options and labels when it is missing (an emptyDir). kind "bind": the
    host directory `source`."""

    kind: str  # "volume" | "bind"
    source: str
    target: str
    read_only: bool = False
    driver: str = ""  # "": the volume must exist (a PersistentVolume's, made by volmgr)
    driver_options: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """What to create: everything the engine needs for one replica's container."""

    name: str
    image: str
    command: list[str] | None = None  # the entrypoint
    args: list[str] | None = None  # the cmd
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cpu_millis: int = 0  # limit; 0: none
    memory_bytes: int = 0  # limit; 0: none
    # The corral networks to join, in order: the first carries the default route and
    # the resolver (its gateway, where netmgr's DNS answers). Empty: the engine's own
    # default bridge, as before networks existed (docs/networking.md).
    networks: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()  # the resolver's search path (with networks only)
    mounts: tuple[Mount, ...] = ()  # none: no Mounts in the create body, as before volumes
    # How the container is stopped (docs/rollouts.md, "Graceful stops"): the signal
    # ("": the image's STOPSIGNAL, else SIGTERM) and the seconds before SIGKILL
    # (Docker's StopSignal and StopTimeout; None: the engine's default).
    stop_signal: str = ""
    stop_timeout: int | None = None


@dataclass(frozen=True, slots=True)
class ObservedContainer:
    """One container of this node as the engine reports it."""

    id: str
    name: str
    replica: str
    deployment: str
    template_hash: str
    state: ContainerState
    exit_code: int | None = None
    started_at: float | None = None  # wall clock, seconds
    finished_at: float | None = None
    error: str = ""
    node: str = ""  # its io.corral.node label
    managed: bool = True  # it carries io.corral.managed=true
    cluster: str = ""  # its io.corral.cluster label: the cluster that made it
    namespace: str = DEFAULT_NAMESPACE  # its io.corral.namespace label (absent: default)
    # Its address on each corral network it is on (network -> IPv4), once it has one.
    ips: Mapping[str, str] = field(default_factory=dict)
    image_ports: tuple[str, ...] = ()  # what its image exposes, as "8080/tcp"
    volumes: tuple[str, ...] = ()  # the Docker volumes it mounts (by name)
    bridge_ip: str = ""  # its address on the engine's default bridge, if on it
    stop_timeout: int | None = None  # its configured grace (StopTimeout); None: none set


@dataclass(frozen=True, slots=True)
class VolumeUser:
    """A container (of any state) that mounts a given Docker volume."""

    id: str
    name: str
    cluster: str = ""  # its io.corral.cluster label
    replica: str = ""  # its io.corral.replica label


@dataclass(frozen=True, slots=True)
class LogFrame:
    """Output of a container as the engine gives it: one write, or part of one."""

    stream: str  # "stdout" | "stderr"
    data: bytes


# Called with the replica name (or "" when unknown) whenever a container of the
# node changes behind the agent's back (died, removed, started), and with
# NETWORK_APPEARED when a corral network appeared on the engine (netmgr made it).
ChangeCallback = Callable[[str], None]
NETWORK_APPEARED = "*network"  # never a replica's name (a DNS label)


class Runtime(Protocol):
    name: str  # "docker" or "hollow": reported in the Node record

    async def ping(self) -> None:
        """Returns when the engine answers; raises EngineUnavailable otherwise."""
        ...

    async def info(self) -> EngineInfo: ...

    async def list_containers(self) -> list[ObservedContainer]:
        """Every container on the engine labelled io.corral.managed=true, of any
        cluster and node, running or not (corral_node_agent.ownership sorts them)."""
        ...

    async def has_image(self, image: str) -> bool: ...

    async def pull_image(self, image: str) -> None:
        """Raises ImagePullFailed with the engine's message."""
        ...

    async def create_container(self, spec: ContainerSpec) -> str:
        """Returns the new container's id; raises ImageMissing, NameConflict or RuntimeFailure."""
        ...

    async def find_container(self, name: str) -> ObservedContainer | None:
        """The container of that name or id, corral's or not; None when there is none."""
        ...

    async def start_container(self, container_id: str) -> None: ...

    async def kill_container(self, container_id: str) -> None:
        """Kill it (it exits; the agent restarts it on its back-off): a failed
        liveness probe. A container already gone or stopped is not an error."""
        ...

    # Probes (corral_node_agent.probes): each returns "" when the check passed, else
    # why not, within about `seconds` seconds; `kind` is "liveness", "readiness" or
    # "startup" (a hollow engine answers by it). RuntimeFailure when the agent or
    # engine could not run the check: the result is unknown, never a failure.

    async def exec_probe(
        self, container_id: str, command: list[str], seconds: float, kind: str
    ) -> str: ...

    async def network_probe(
        self,
        container: ObservedContainer,
        address: str,
        port: int,
        path: str | None,
        seconds: float,
        kind: str,
    ) -> str:
        """GET http://address:port/path (200-399 passes), or with `path` None open a TCP
        connection to address:port."""
        ...

    async def stop_container(self, container_id: str, grace: float) -> None:
        """Stop it as `docker stop -t grace` does: its stop signal, then SIGKILL once
        `grace` seconds have passed; returns once it has exited (bounded by about grace
        + time_budget.STOP_SECONDS). A container already gone or stopped is not an error."""
        ...

    async def remove_container(self, container_id: str) -> None:
        """Kill and remove, within time_budget.STOP_SECONDS; a container already gone
        is not an error."""
        ...

    # Volumes (docs/volumes.md, "Replicas with volumes"): called only for replicas
    # whose template has volumes, and for the emptyDir sweep.

    async def volume_exists(self, name: str) -> bool: ...

    async def volume_users(self, name: str) -> list[VolumeUser]:
        """Every container on the engine, running or not, that mounts volume `name`."""
        ...

    async def labelled_users(self, label: str) -> list[VolumeUser]:
        """Every container on the engine, running or not, carrying label `label`
        (names.uses_volume_label: the users of a PersistentVolume, binds included)."""
        ...

    async def remove_volume(self, name: str) -> None:
        """A volume already gone is not an error; one in use raises RuntimeFailure."""
        ...

    async def unused_volumes(self, labels: Mapping[str, str]) -> list[str]:
        """The names of the volumes carrying every label given that no container uses."""
        ...

    async def sub_path_source(self, host_path: str, sub_path: str) -> str:
        """The real path of <host_path>/<sub_path>, what a subPath bind gives Docker:
        walked one component at a time without following any symlink, missing
        directories made (0o755), and inside host_path's real path (never on the event
        loop). Raises VolumeRefused (a component is a symlink or not a directory: the
        message says which) or RuntimeFailure (the host failed)."""
        ...

    async def watch(
        self,
        node: str,
        on_change: ChangeCallback,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call on_change for every change to this node's containers until cancelled.

        Reports started once subscribed; raises EngineUnavailable when the stream breaks.
        """
        ...

    def container_logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        since: float | None,
        timestamps: bool,
    ) -> AsyncIterator[LogFrame]:
        """The container's output, oldest first (`docker logs`): the last `tail` lines
        (None: all) written at or after `since` (epoch seconds; None: all), each line
        led by its RFC 3339 time with `timestamps`; with `follow`, new output as it
        comes until the container stops or the caller stops iterating. Read only as
        fast as the caller iterates. Raises ContainerGone or RuntimeFailure."""
        ...

    async def close(self) -> None: ...
