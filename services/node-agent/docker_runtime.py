"""The runtime on a real Docker engine, through aiodocker (a thin adapter)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import aiodocker
import anyio
from anyio.abc import TaskStatus

from corral import names
from corral_node_agent.runtime import (
    ChangeCallback,
    ContainerGone,
    ContainerSpec,
    ContainerState,
    EngineInfo,
    EngineUnavailable,
    ImageMissing,
    ImagePullFailed,
    ObservedContainer,
    RuntimeFailure,
)

log = logging.getLogger(__name__)

_UNREACHABLE = 900  # aiodocker's status for "cannot connect"
_WATCHED_EVENTS = ["die", "destroy", "start", "stop", "oom"]
_INSPECT_LIMIT = 16


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


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    """The Docker API body that creates spec's container. No restart policy: the agent restarts."""
    host_config: dict[str, Any] = {"RestartPolicy": {"Name": "no"}}
    if spec.cpu_millis:
        host_config["NanoCpus"] = spec.cpu_millis * 1_000_000
    if spec.memory_bytes:
        host_config["Memory"] = spec.memory_bytes
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": dict(spec.labels),
        "HostConfig": host_config,
    }
    if spec.command is not None:
        config["Entrypoint"] = spec.command
    if spec.args is not None:
        config["Cmd"] = spec.args
    return config


def _state(status: str) -> ContainerState:
    try:
        return ContainerState(status)
    except ValueError:
        return ContainerState.OTHER


def observed_from_inspect(data: dict[str, Any]) -> ObservedContainer:
    labels: dict[str, str] = (data.get("Config") or {}).get("Labels") or {}
    state: dict[str, Any] = data.get("State") or {}
    status = _state(str(state.get("Status", "")))
    return ObservedContainer(
        id=str(data["Id"]),
        name=str(data.get("Name", "")).lstrip("/"),
        replica=labels.get(names.LABEL_REPLICA, ""),
        deployment=labels.get(names.LABEL_DEPLOYMENT, ""),
        template_hash=labels.get(names.LABEL_TEMPLATE_HASH, ""),
        state=status,
        exit_code=int(state["ExitCode"])
        if status in (ContainerState.EXITED, ContainerState.DEAD)
        else None,
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=parse_docker_time(state.get("FinishedAt")),
        error=str(state.get("Error") or ""),
    )


def _failure(error: aiodocker.DockerError, doing: str) -> RuntimeFailure:
    if error.status == _UNREACHABLE:
        return EngineUnavailable(error.message)
    if error.status == 404:
        return ContainerGone(f"{doing}: {error.message}")
    return RuntimeFailure(f"{doing}: {error.message}")


class DockerRuntime:
    name = "docker"

    def __init__(self, docker_host: str | None = None) -> None:
        self._docker_host = docker_host
        self._client: aiodocker.Docker | None = None

    @property
    def _docker(self) -> aiodocker.Docker:
        if self._client is None:  # created lazily: aiodocker needs a running loop
            self._client = aiodocker.Docker(url=self._docker_host)
        return self._client

    async def ping(self) -> None:
        try:
            await self._docker.version()
        except aiodocker.DockerError as error:
            raise _failure(error, "ping") from None
        except OSError as error:
            raise EngineUnavailable(str(error)) from None

    async def info(self) -> EngineInfo:
        try:
            info = await self._docker.system.info()
        except aiodocker.DockerError as error:
            raise _failure(error, "info") from None
        return EngineInfo(
            cpu_millis=int(info.get("NCPU", 0)) * 1000,
            memory_bytes=int(info.get("MemTotal", 0)),
        )

    async def list_containers(self, node: str) -> list[ObservedContainer]:
        filters = {"label": [f"{names.LABEL_MANAGED}=true", f"{names.LABEL_NODE}={node}"]}
        try:
            listed = await self._docker.containers.list(all=True, filters=filters)
        except aiodocker.DockerError as error:
            raise _failure(error, "list containers") from None
        found: list[ObservedContainer] = []
        limiter = anyio.CapacityLimiter(_INSPECT_LIMIT)

        async def inspect(container_id: str) -> None:
            async with limiter:
                try:
                    data = await self._docker._query_json(f"containers/{container_id}/json")
                except aiodocker.DockerError as error:
                    if error.status == 404:
                        return  # removed since the listing
                    raise _failure(error, "inspect") from None
            found.append(observed_from_inspect(data))

        async with anyio.create_task_group() as tg:
            for container in listed:
                tg.start_soon(inspect, container.id)
        return found

    async def has_image(self, image: str) -> bool:
        try:
            await self._docker.images.inspect(image)
        except aiodocker.DockerError as error:
            if error.status == 404:
                return False
            raise _failure(error, "inspect image") from None
        return True

    async def pull_image(self, image: str) -> None:
        try:
            await self._docker.images.pull(image)
        except aiodocker.DockerError as error:
            if error.status == _UNREACHABLE:
                raise EngineUnavailable(error.message) from None
            raise ImagePullFailed(error.message) from None
        if not await self.has_image(image):
            raise ImagePullFailed(f"pull of {image} finished but the image is not there")

    async def create_container(self, spec: ContainerSpec) -> str:
        try:
            container = await self._docker.containers.create(container_config(spec), name=spec.name)
        except aiodocker.DockerError as error:
            if error.status == 404 and "image" in error.message.lower():
                raise ImageMissing(error.message) from None
            raise _failure(error, "create") from None
        return str(container.id)

    async def start_container(self, container_id: str) -> None:
        try:
            await self._docker.containers.container(container_id).start()
        except aiodocker.DockerError as error:
            raise _failure(error, "start") from None

    async def remove_container(self, container_id: str) -> None:
        try:
            await self._docker.containers.container(container_id).delete(force=True)
        except aiodocker.DockerError as error:
            if error.status == 404:
                return
            if error.status == 409 and "in progress" in error.message:
                return  # another removal is already under way
            raise _failure(error, "remove") from None

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
            tg.start_soon(self._stream_events, filters)
            task_status.started()
            while True:
                event = await subscriber.get()
                if event is None:
                    raise EngineUnavailable("the engine's event stream ended")
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                on_change(str(attributes.get(names.LABEL_REPLICA, "")))

    async def _stream_events(self, filters: dict[str, list[str]]) -> None:
        try:
            await self._docker.events.run(filters=filters)
        except aiodocker.DockerError as error:
            log.warning("docker event stream failed: %s", error)
        except Exception:  # the stream's own cleanup tells the subscriber it ended
            log.warning("docker event stream failed", exc_info=True)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with anyio.CancelScope(shield=True):
                await client.close()
