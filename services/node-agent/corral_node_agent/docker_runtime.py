"""The runtime on a real Docker engine, through aiodocker (a thin adapter)."""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import aiodocker
import aiohttp
import anyio
from aiodocker.events import DockerEvents
from aiodocker.networks import DockerNetwork
from aiodocker.volumes import DockerVolume
from anyio.abc import TaskStatus

from corral.contract import names, time_budget
from corral_node_agent.mounts import docker_mounts
from corral_node_agent.probes import http_check, tcp_check
from corral_node_agent.runtime import (
    NETWORK_APPEARED,
    ChangeCallback,
    ContainerGone,
    ContainerSpec,
    ContainerState,
    EngineInfo,
    EngineUnavailable,
    ImageMissing,
    ImagePullFailed,
    LogFrame,
    NameConflict,
    NetworkMissing,
    ObservedContainer,
    RuntimeFailure,
    StartNetworkGone,
    VolumeRefused,
    VolumeUser,
)

log = logging.getLogger(__name__)

_UNREACHABLE = 900  # aiodocker's status for "cannot connect"
_WATCHED_EVENTS = ["die", "destroy", "start", "stop", "oom"]
_INSPECT_LIMIT = 16
CALL_SECONDS = 30.0  # the longest any engine call may take, pulls aside
PULL_SECONDS = 300.0


def parse_docker_time(text: str | None) -> float | None:
    """'2024-05-01T10:00:00.123456789Z' -> epoch seconds; Docker's zero time -> None."""
    if not text or text.startswith("0001-01-01"):
        return None
    body = text.rstrip("Z")
    offset = "+00:00"
    if "+" in body[10:] or body[10:].count("-"):
        cut = max(body.rfind("+"), body.rfind("-"))
        body, offset = body[:cut], body[cut:]
    whole, _, fraction = body.partition(".")
    fraction = (fraction + "000000")[:6]
    try:
        return datetime.fromisoformat(f"{whole}.{fraction}{offset}").timestamp()
    except ValueError:
        return None


def docker_networks(spec: ContainerSpec) -> list[str]:
    """The Docker networks of spec's corral networks on its cluster's engines, in order."""
    cluster_id = spec.labels.get(names.LABEL_CLUSTER, "")
    return [names.docker_network_name(network, cluster_id) for network in spec.networks]


def corral_network_of(docker_network: str, cluster_id: str) -> str | None:
    """names.docker_network_name backwards: the corral network of `cluster_id` that
    `docker_network` stands for, or None (another cluster's, or not corral's). Corral
    network names are DNS labels, which never hold '_'."""
    prefix, suffix = "corral_", f"_{cluster_id}"
    if not cluster_id or not docker_network.startswith(prefix):
        return None
    if not docker_network.endswith(suffix):
        return None
    network = docker_network[len(prefix) : -len(suffix)]
    return network if network and "_" not in network else None


def network_gateway(data: dict[str, Any]) -> str:
    """The gateway of a Docker network (its inspect data): its IPAM config's, else the
    first address of its subnet (what Docker gives a network made without one)."""
    for config in (data.get("IPAM") or {}).get("Config") or []:
        gateway = str(config.get("Gateway") or "")
        if gateway:
            return gateway.split("/")[0]
        subnet = str(config.get("Subnet") or "")
        if subnet:
            try:
                network = ipaddress.ip_network(subnet, strict=False)
            except ValueError:
                continue
            if network.version == 4:
                return str(network.network_address + 1)
    return ""


# A name with fewer dots is looked up through the search path first (Kubernetes' ndots
# for a Pod; docs/networking.md, "DNS").
SEARCH_NDOTS = 5


# A CPU limit's period and least quota, in microseconds (the kubelet's: 100 ms, 1 ms).
CFS_PERIOD_MICROSECONDS: Final = 100_000
CFS_LEAST_QUOTA_MICROSECONDS: Final = 1_000


def container_config(spec: ContainerSpec, gateway: str = "") -> dict[str, Any]:
    """The Docker API body that creates spec's container. No restart policy: the agent restarts.

    With networks, the container is made on the first one's Docker network (the others
    are connected before it starts) and resolves through `gateway`, that network's
    gateway on this engine, where netmgr's DNS answers (docs/networking.md)."""
    host_config: dict[str, Any] = {"RestartPolicy": {"Name": "no"}}
    if spec.cpu_millis:
        # A CFS quota per period, as the kubelet sets a CPU limit: the engine refuses
        # NanoCpus above the host's CPUs ("Range of CPUs is from 0.01 to 2.00"), which a
        # limit may well be (a limit is a cap, not a reservation); the kernel takes any
        # quota from 1 ms.
        host_config["CpuPeriod"] = CFS_PERIOD_MICROSECONDS
        host_config["CpuQuota"] = max(
            CFS_LEAST_QUOTA_MICROSECONDS, spec.cpu_millis * CFS_PERIOD_MICROSECONDS // 1000
        )
    if spec.memory_bytes:
        host_config["Memory"] = spec.memory_bytes
    if spec.mounts:  # none: the body is as it was before volumes
        host_config["Mounts"] = docker_mounts(spec.mounts)
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": dict(spec.labels),
        "HostConfig": host_config,
    }
    if spec.networks:
        first = docker_networks(spec)[0]
        host_config["NetworkMode"] = first
        if gateway:
            host_config["Dns"] = [gateway]
        if spec.dns_search:
            host_config["DnsSearch"] = list(spec.dns_search)
            # The search path first, as in a Pod: Docker's resolver would otherwise ask
            # for `web.` as it is (its ndots:0), which the node DNS answers with the
            # default namespace's Service, whatever the replica's namespace.
            host_config["DnsOptions"] = [f"ndots:{SEARCH_NDOTS}"]
        config["NetworkingConfig"] = {"EndpointsConfig": {first: {}}}
    if spec.stop_signal:  # docs/rollouts.md, "Graceful stops"
        config["StopSignal"] = spec.stop_signal
    if spec.stop_timeout is not None:
        config["StopTimeout"] = spec.stop_timeout
    if spec.command is not None:
        config["Entrypoint"] = spec.command
    if spec.args is not None:
        config["Cmd"] = spec.args
    return config


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def resolve_sub_path(host_path: str, sub_path: str) -> str:
    """The real path of <host_path>/<sub_path> for a subPath bind (docs/volumes.md,
    "Replicas with volumes"). Walked one component at a time from host_path's real path,
    each opened relative to its parent without following symlinks (O_NOFOLLOW), a
    missing one made (0o755): a replica that put a symlink in its volume (`ln -s /etc
    x`) never gets a bind of what it points at. Refused (VolumeRefused, what is wrong)
    when a component is a symlink or not a directory, or the result's real path is not
    inside host_path's; RuntimeFailure when the host fails. Blocking: run in a thread."""
    root = os.path.realpath(host_path)
    parts = [part for part in sub_path.split("/") if part not in ("", ".")]
    if sub_path.startswith("/") or ".." in parts:
        raise VolumeRefused("must be a relative path without '..'")
    try:
        fd = os.open(root, _DIRECTORY_FLAGS)
    except OSError as error:
        raise RuntimeFailure(f"cannot open the volume's directory {root}: {error}") from None
    try:
        walked = root
        for part in parts:
            walked = os.path.join(walked, part)
            try:
                os.mkdir(part, 0o755, dir_fd=fd)  # never follows a symlink named part
            except FileExistsError:
                pass
            except OSError as error:
                raise RuntimeFailure(f"cannot make the directory {walked}: {error}") from None
            try:
                mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    raise VolumeRefused(
                        f"{walked} is a symbolic link; a subPath never follows one "
                        "(it could lead out of the volume)"
                    )
                if not stat.S_ISDIR(mode):
                    raise VolumeRefused(f"{walked} is not a directory")
                child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped since the stat
                    raise VolumeRefused(f"{walked} is not a directory (it changed)") from None
                raise RuntimeFailure(f"cannot open {walked}: {error}") from None
            os.close(fd)
            fd = child
        real = os.path.realpath(walked)
        try:  # what was opened, as the kernel names it: the same, or something moved
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = real
    finally:
        os.close(fd)
    if real != opened or os.path.commonpath([root, real]) != root:
        raise VolumeRefused(f"{walked} resolves to {real}, outside the volume's {root}")
    return real


def _state(status: str) -> ContainerState:
    try:
        return ContainerState(status)
    except ValueError:
        return ContainerState.OTHER


def observed_from_inspect(data: dict[str, Any]) -> ObservedContainer:
    labels: dict[str, str] = (data.get("Config") or {}).get("Labels") or {}
    state: dict[str, Any] = data.get("State") or {}
    status = _state(str(state.get("Status", "")))
    stop_timeout = (data.get("Config") or {}).get("StopTimeout")
    return ObservedContainer(
        id=str(data["Id"]),
        name=str(data.get("Name", "")).lstrip("/"),
        replica=labels.get(names.LABEL_REPLICA, ""),
        deployment=labels.get(names.LABEL_DEPLOYMENT, ""),
        namespace=labels.get(names.LABEL_NAMESPACE, names.DEFAULT_NAMESPACE),
        template_hash=labels.get(names.LABEL_TEMPLATE_HASH, ""),
        state=status,
        exit_code=int(state["ExitCode"])
        if status in (ContainerState.EXITED, ContainerState.DEAD)
        else None,
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=parse_docker_time(state.get("FinishedAt")),
        error=str(state.get("Error") or ""),
        node=labels.get(names.LABEL_NODE, ""),
        managed=labels.get(names.LABEL_MANAGED) == "true",
        cluster=labels.get(names.LABEL_CLUSTER, ""),
        ips=_ips(data, labels.get(names.LABEL_CLUSTER, "")),
        bridge_ip=_bridge_ip(data),
        stop_timeout=int(stop_timeout) if stop_timeout is not None else None,
        image_ports=tuple(sorted((data.get("Config") or {}).get("ExposedPorts") or {})),
        volumes=tuple(
            str(mount["Name"])
            for mount in data.get("Mounts") or []
            if mount.get("Type") == "volume" and mount.get("Name")
        ),
    )


def _ips(data: dict[str, Any], cluster_id: str) -> dict[str, str]:
    """network -> IPv4 of the container on each of its cluster's corral networks (from
    NetworkSettings.Networks, keyed by Docker network name); none before it runs."""
    found: dict[str, str] = {}
    attached = (data.get("NetworkSettings") or {}).get("Networks") or {}
    for docker_network, settings in attached.items():
        network = corral_network_of(str(docker_network), cluster_id)
        address = str((settings or {}).get("IPAddress") or "")
        if network is not None and address:
            found[network] = address
    return found


def _bridge_ip(data: dict[str, Any]) -> str:
    """Its address on Docker's default bridge (a replica without corral networks)."""
    settings = data.get("NetworkSettings") or {}
    bridge = (settings.get("Networks") or {}).get("bridge") or {}
    return str(bridge.get("IPAddress") or settings.get("IPAddress") or "")


# Docker's answer to starting a container created on a network removed since.
_NETWORK_NOT_FOUND = re.compile(r"\bnetwork \S+ not found", re.IGNORECASE)


def _failure(error: aiodocker.DockerError, doing: str) -> RuntimeFailure:
    if error.status == _UNREACHABLE:
        return EngineUnavailable(f"{doing}: {error.message}")
    if error.status == 404:
        return ContainerGone(f"{doing}: {error.message}")
    return RuntimeFailure(f"{doing}: {error.message}")


@contextmanager
def _engine_call(doing: str, seconds: float) -> Iterator[None]:
    """Bound one engine call in time and turn whatever it raises into a RuntimeFailure.

    DockerErrors that the caller wants to tell apart (404, 409) are caught inside
    the block; what escapes it becomes EngineUnavailable or RuntimeFailure, so no
    aiohttp, OS or timeout error ever reaches the agent's task groups.
    """
    try:
        with anyio.fail_after(seconds):
            yield
    except aiodocker.DockerError as error:
        raise _failure(error, doing) from None
    except TimeoutError:  # asyncio.TimeoutError is the same class since 3.11
        raise EngineUnavailable(f"{doing}: no answer within {seconds:g}s") from None
    except (aiohttp.ClientError, OSError) as error:
        raise EngineUnavailable(f"{doing}: {error or type(error).__name__}") from None


_STREAMS = {0: "stdout", 1: "stdout", 2: "stderr"}  # Docker's stream types (0: stdin)
_FRAME_HEADER = 8


class FrameDecoder:
    """Docker's multiplexed log stream, decoded as it comes: each frame an 8-byte header
    (the stream type, three zero bytes, the length, big-endian) and its bytes. A
    container with a TTY has no frames: its raw output is stdout."""

    def __init__(self, tty: bool = False) -> None:
        self.tty = tty
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[LogFrame]:
        """The frames complete so far; consecutive ones of one stream come as one (a
        line per frame would cost a frame per line downstream)."""
        if self.tty:
            return [LogFrame("stdout", data)] if data else []
        self._buffer += data
        buffer, at = self._buffer, 0
        runs: list[tuple[str, list[bytes]]] = []
        while len(buffer) - at >= _FRAME_HEADER:
            stream = _STREAMS.get(buffer[at], "stdout")
            length = int.from_bytes(buffer[at + 4 : at + _FRAME_HEADER], "big")
            end = at + _FRAME_HEADER + length
            if len(buffer) < end:
                break
            if length:
                payload = bytes(buffer[at + _FRAME_HEADER : end])
                if runs and runs[-1][0] == stream:
                    runs[-1][1].append(payload)
                else:
                    runs.append((stream, [payload]))
            at = end
        del buffer[:at]
        return [LogFrame(stream, b"".join(parts)) for stream, parts in runs]

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet."""
        return len(self._buffer)


def log_params(
    *, follow: bool, tail: int | None, since: float | None, timestamps: bool
) -> dict[str, str]:
    """The query of GET /containers/{id}/logs."""
    params = {
        "stdout": "1",
        "stderr": "1",
        "follow": "1" if follow else "0",
        "timestamps": "1" if timestamps else "0",
        "tail": "all" if tail is None else str(tail),
    }
    if since is not None:
        params["since"] = f"{since:.9f}"
    return params


@dataclass(frozen=True, slots=True)
class _Inspected:
    listed_state: str  # the State the list call gave when this was inspected
    observed: ObservedContainer


class DockerRuntime:
    name = "docker"

    def __init__(
        self,
        docker_host: str | None = None,
        *,
        call_seconds: float = CALL_SECONDS,
        pull_seconds: float = PULL_SECONDS,
    ) -> None:
        self._docker_host = docker_host
        self._client: aiodocker.Docker | None = None
        self.call_seconds = call_seconds
        self.pull_seconds = pull_seconds
        # Inspections by container id, reused while the list reports the same state
        # and no engine event named the container since (see list_containers).
        self._inspected: dict[str, _Inspected] = {}
        self._changed: set[str] = set()
        self.inspections = 0  # inspect calls made, for measurements and tests

    @property
    def _docker(self) -> aiodocker.Docker:
        if self._client is None:  # created lazily: aiodocker needs a running loop
            self._client = aiodocker.Docker(url=self._docker_host)
        return self._client

    def _call(self, doing: str) -> AbstractContextManager[None]:
        return _engine_call(doing, self.call_seconds)

    async def ping(self) -> None:
        try:
            with self._call("ping"):
                await self._docker.version()
        except ValueError as error:  # aiodocker: a malformed docker host
            raise EngineUnavailable(f"ping: {error}") from None

    async def info(self) -> EngineInfo:
        with self._call("info"):
            info = await self._docker.system.info()
        return EngineInfo(
            cpu_millis=int(info.get("NCPU", 0)) * 1000,
            memory_bytes=int(info.get("MemTotal", 0)),
            engine_id=str(info.get("ID") or ""),
        )

    async def list_containers(self) -> list[ObservedContainer]:
        """The list call gives each container's state; only containers that are new,
        whose state changed, or that an engine event named are inspected again."""
        filters = {"label": [f"{names.LABEL_MANAGED}=true"]}
        with _engine_call("list containers", min(self.call_seconds, time_budget.STOP_SECONDS)):
            listed = await self._docker.containers.list(all="1", filters=json.dumps(filters))
        changed, self._changed = self._changed, set()
        found: list[ObservedContainer] = []
        fresh: dict[str, _Inspected] = {}
        limiter = anyio.CapacityLimiter(_INSPECT_LIMIT)

        async def inspect(container_id: str, listed_state: str) -> None:
            async with limiter:
                self.inspections += 1
                with self._call("inspect"):
                    try:
                        data = await self._docker.containers.container(container_id).show()
                    except aiodocker.DockerError as error:
                        if error.status == 404:
                            return  # removed since the listing
                        raise
            observed = observed_from_inspect(data)
            fresh[container_id] = _Inspected(listed_state, observed)
            found.append(observed)

        try:
            async with anyio.create_task_group() as tg:
                for item in listed:
                    container_id = str(item.id)
                    listed_state = str(item["State"]) if "State" in item else ""
                    known = self._inspected.get(container_id)
                    if (
                        known is not None
                        and known.listed_state == listed_state
                        and container_id not in changed
                    ):
                        fresh[container_id] = known
                        found.append(known.observed)
                    else:
                        tg.start_soon(inspect, container_id, listed_state)
        except BaseException:
            self._changed |= changed  # look again next time
            raise
        self._inspected = fresh
        return found

    def forget(self, container_id: str) -> None:
        """Inspect this container afresh next time (the agent just acted on it)."""
        self._changed.add(container_id)

    async def has_image(self, image: str) -> bool:
        with self._call("inspect image"):
            try:
                await self._docker.images.inspect(image)
            except aiodocker.DockerError as error:
                if error.status == 404:
                    return False
                raise
        return True

    async def pull_image(self, image: str) -> None:
        try:
            with _engine_call(f"pull {image}", self.pull_seconds):
                await self._docker.images.pull(image)
        except RuntimeFailure as error:
            if isinstance(error, EngineUnavailable):
                raise
            raise ImagePullFailed(str(error)) from None
        if not await self.has_image(image):
            raise ImagePullFailed(f"pull of {image} finished but the image is not there")

    def _network(self, docker_network: str) -> DockerNetwork:
        """A handle on a Docker network by name (no engine call)."""
        return DockerNetwork(self._docker, docker_network)  # type: ignore[no-untyped-call] # aiodocker leaves it untyped

    async def _network_gateway(self, network: str, docker_network: str) -> str:
        """Inspect one Docker network; its gateway. NetworkMissing when it is not here."""
        with self._call(f"inspect network {docker_network}"):
            try:
                shown = await self._network(docker_network).show()
            except aiodocker.DockerError as error:
                if error.status == 404:
                    raise NetworkMissing(network) from None
                raise
        return network_gateway(shown)

    async def create_container(self, spec: ContainerSpec) -> str:
        """With networks: each must be on this engine (else NetworkMissing, before
        anything is made); made on the first, connected to the others before its start."""
        joined = list(zip(spec.networks, docker_networks(spec), strict=True))
        gateways = [await self._network_gateway(*pair) for pair in joined]
        gateway = gateways[0] if gateways else ""
        with self._call("create"):
            try:
                container = await self._docker.containers.create(
                    container_config(spec, gateway), name=spec.name
                )
            except aiodocker.DockerError as error:
                if error.status == 404 and "image" in error.message.lower():
                    raise ImageMissing(error.message) from None
                if error.status == 404 and "network" in error.message.lower():
                    raise NetworkMissing(spec.networks[0], error.message) from None
                if error.status == 409:
                    raise NameConflict(f"create: {error.message}") from None
                raise
        container_id = str(container.id)
        try:
            for network, docker_network in joined[1:]:
                await self._connect(container_id, network, docker_network)
        except BaseException:
            # Never leave a container on some of its networks: the next pass would adopt
            # and start it so. Removed, it is made again whole.
            with anyio.CancelScope(shield=True):
                try:
                    await self.remove_container(container_id)
                except RuntimeFailure:
                    log.warning("could not remove %s after a failed connect", container_id[:12])
            raise
        return container_id

    async def _connect(self, container_id: str, network: str, docker_network: str) -> None:
        with self._call(f"connect to {docker_network}"):
            try:
                await self._network(docker_network).connect({"Container": container_id})
            except aiodocker.DockerError as error:
                if error.status == 404 and "network" in error.message.lower():
                    raise NetworkMissing(network, error.message) from None
                raise

    async def find_container(self, name: str) -> ObservedContainer | None:
        with self._call("inspect"):
            try:
                data = await self._docker.containers.container(name).show()
            except aiodocker.DockerError as error:
                if error.status == 404:
                    return None
                raise
        return observed_from_inspect(data)

    async def start_container(self, container_id: str) -> None:
        self.forget(container_id)
        with self._call("start"):
            try:
                await self._docker.containers.container(container_id).start()
            except aiodocker.DockerError as error:
                if error.status == 404 and _NETWORK_NOT_FOUND.search(error.message):
                    raise StartNetworkGone(f"start: {error.message}") from None
                raise

    async def kill_container(self, container_id: str) -> None:
        self.forget(container_id)
        with self._call("kill"):
            try:
                await self._docker.containers.container(container_id).kill()
            except aiodocker.DockerError as error:
                if error.status in (404, 409):  # gone, or not running
                    return
                raise

    async def stop_container(self, container_id: str, grace: float) -> None:
        """`docker stop -t grace`: the container's StopSignal, SIGKILL after grace."""
        self.forget(container_id)
        seconds = math.ceil(grace)
        with _engine_call("stop", seconds + time_budget.STOP_SECONDS):
            try:
                await self._docker.containers.container(container_id).stop(
                    t=seconds, timeout=seconds + time_budget.STOP_SECONDS
                )
            except aiodocker.DockerError as error:
                if error.status in (304, 404):  # already stopped, or gone
                    return
                raise

    async def exec_probe(
        self, container_id: str, command: list[str], seconds: float, kind: str
    ) -> str:
        """Run `command` through the engine's exec API: exit code 0 passes."""
        shown = " ".join(command)[:80]
        output = b""
        started = False
        try:
            with anyio.fail_after(seconds):
                container = self._docker.containers.container(container_id)
                execution = await container.exec(command, stdout=True, stderr=True)
                async with execution.start(detach=False) as stream:
                    started = True
                    while (message := await stream.read_out()) is not None:
                        if len(output) < 1024:
                            output += message.data
                inspected = await execution.inspect()
        except TimeoutError:
            if not started:  # the engine, not the command, was slow
                raise RuntimeFailure(f"exec {shown}: not started within {seconds:g}s") from None
            return f"exec {shown}: no exit within {seconds:g}s"
        # The exec could not be created, started or inspected: the engine's trouble,
        # not the probe's verdict (docs/rollouts.md: unknown).
        except aiodocker.DockerError as error:
            raise RuntimeFailure(f"exec {shown}: {error.message}") from error
        except (aiohttp.ClientError, OSError) as error:
            raise RuntimeFailure(f"exec {shown}: {error or type(error).__name__}") from error
        code = inspected.get("ExitCode")
        if code == 0:
            return ""
        said = output.decode(errors="replace").strip().splitlines()
        tail = f": {said[-1][:80]}" if said else ""
        return f"exec {shown}: exit code {code}{tail}"

    async def network_probe(
        self,
        container: ObservedContainer,
        address: str,
        port: int,
        path: str | None,
        seconds: float,
        kind: str,
    ) -> str:
        if not address:
            raise RuntimeFailure("the replica has no address yet")
        if path is None:
            return await tcp_check(address, port, seconds)
        return await http_check(address, port, path, seconds)

    async def remove_container(self, container_id: str) -> None:
        self.forget(container_id)
        with _engine_call("remove", min(self.call_seconds, time_budget.STOP_SECONDS)):
            try:
                await self._docker.containers.container(container_id).delete(force=True)
            except aiodocker.DockerError as error:
                if error.status == 404:
                    return
                if error.status == 409 and "in progress" in error.message:
                    return  # another removal is already under way
                raise

    async def volume_exists(self, name: str) -> bool:
        with self._call(f"inspect volume {name}"):
            try:
                await DockerVolume(self._docker, name).show()  # type: ignore[no-untyped-call] # untyped in aiodocker
            except aiodocker.DockerError as error:
                if error.status == 404:
                    return False
                raise
        return True

    async def volume_users(self, name: str) -> list[VolumeUser]:
        """`docker ps -a --filter volume=NAME`."""
        return await self._users({"volume": [name]}, f"list the users of volume {name}")

    async def labelled_users(self, label: str) -> list[VolumeUser]:
        """`docker ps -a --filter label=LABEL`."""
        return await self._users({"label": [label]}, f"list the containers labelled {label}")

    async def _users(self, filtered: dict[str, list[str]], doing: str) -> list[VolumeUser]:
        filters = json.dumps(filtered)
        with self._call(doing):
            listed = await self._docker.containers.list(all="1", filters=filters)
        users: list[VolumeUser] = []
        for item in listed:
            labels: dict[str, str] = (item["Labels"] if "Labels" in item else None) or {}
            found = item["Names"] if "Names" in item else []
            users.append(
                VolumeUser(
                    id=str(item.id),
                    name=str(found[0]).lstrip("/") if found else str(item.id)[:12],
                    cluster=labels.get(names.LABEL_CLUSTER, ""),
                    replica=labels.get(names.LABEL_REPLICA, ""),
                )
            )
        return users

    async def remove_volume(self, name: str) -> None:
        with self._call(f"remove volume {name}"):
            try:
                await DockerVolume(self._docker, name).delete()  # type: ignore[no-untyped-call] # untyped in aiodocker
            except aiodocker.DockerError as error:
                if error.status == 404:
                    return
                raise

    async def unused_volumes(self, labels: Mapping[str, str]) -> list[str]:
        filters = {
            "label": [f"{key}={value}" for key, value in labels.items()],
            "dangling": ["true"],
        }
        with self._call("list volumes"):
            listed = await self._docker.volumes.list(filters=filters)  # type: ignore[no-untyped-call] # untyped in aiodocker
        return sorted(str(v["Name"]) for v in (listed or {}).get("Volumes") or [])

    async def sub_path_source(self, host_path: str, sub_path: str) -> str:
        return await anyio.to_thread.run_sync(resolve_sub_path, host_path, sub_path)

    async def watch(
        self,
        node: str,
        on_change: ChangeCallback,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        events = self._docker.events
        subscriber = events.subscribe(create_task=False)  # type: ignore[no-untyped-call] # the stream runs in our group
        filters = {
            "type": ["container"],
            "label": [f"{names.LABEL_NODE}={node}"],
            "event": _WATCHED_EVENTS,
        }
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._stream_events, events, filters)
            tg.start_soon(self._watch_networks, on_change)
            task_status.started()
            while True:
                event = await subscriber.get()
                if event is None:
                    raise EngineUnavailable("the engine's event stream ended")
                actor = event.get("Actor") or {}
                attributes = actor.get("Attributes") or {}
                container_id = str(actor.get("ID") or event.get("id") or "")
                if container_id:
                    self._changed.add(container_id)
                on_change(str(attributes.get(names.LABEL_REPLICA, "")))

    async def _stream_events(
        self, events: DockerEvents, filters: dict[str, list[str]], since: str = ""
    ) -> None:
        try:
            if since:
                await events.run(filters=filters, since=since)
            else:
                await events.run(filters=filters)
        except Exception:  # the stream's own cleanup tells the subscriber it ended
            log.warning("docker event stream failed", exc_info=True)

    async def _watch_networks(self, on_change: ChangeCallback) -> None:
        """Tell of every corral network made on the engine: a replica waiting for it
        starts at once instead of at the end of its back-off. A stream of its own: a
        network's events carry no labels, so the containers' label filter drops them."""
        events = DockerEvents(self._docker)  # type: ignore[no-untyped-call] # untyped in aiodocker
        subscriber = events.subscribe(create_task=False)  # type: ignore[no-untyped-call] # as above
        async with anyio.create_task_group() as tg:
            # From a second before the watch began: a network made while the stream
            # connects is told all the same.
            since = str(int(time.time()) - 1)
            filters = {"type": ["network"], "event": ["create"]}
            tg.start_soon(self._stream_events, events, filters, since)
            while True:
                event = await subscriber.get()
                if event is None:
                    raise EngineUnavailable("the engine's network event stream ended")
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                if str(attributes.get("name", "")).startswith("corral_"):
                    on_change(NETWORK_APPEARED)

    async def container_logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        since: float | None,
        timestamps: bool,
    ) -> AsyncIterator[LogFrame]:
        """GET /containers/{id}/logs, its frames decoded here (aiodocker's own log()
        drops which stream a line came on). Read as the caller iterates: a slow caller
        leaves the rest in the socket, and the engine waits."""
        doing = f"logs of {container_id[:12]}"
        with self._call(doing):
            try:
                data = await self._docker.containers.container(container_id).show()
            except aiodocker.DockerError as error:
                if error.status == 404:
                    raise ContainerGone(f"{doing}: no such container") from None
                raise
        decoder = FrameDecoder(tty=bool((data.get("Config") or {}).get("Tty")))
        url = f"{self._docker.docker_host}/containers/{data['Id']}/logs"
        params = log_params(follow=follow, tail=tail, since=since, timestamps=timestamps)
        # No bound on the whole read (a follow lasts); connecting is bounded.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, connect=self.call_seconds)
        try:
            async with self._docker.session.get(url, params=params, timeout=timeout) as response:
                if response.status == 404:
                    raise ContainerGone(f"{doing}: no such container")
                if response.status >= 400:
                    text = (await response.text())[:200]
                    raise RuntimeFailure(f"{doing}: {response.status} {text}")
                async for data_chunk in response.content.iter_any():
                    for frame in decoder.feed(data_chunk):
                        yield frame
        except (aiohttp.ClientError, OSError) as error:
            raise EngineUnavailable(f"{doing}: {error or type(error).__name__}") from None

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with anyio.CancelScope(shield=True):
                try:
                    await client.close()
                except Exception:
                    log.debug("closing the docker client failed", exc_info=True)
