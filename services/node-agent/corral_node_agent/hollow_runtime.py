"""Simulated containers in memory: they are created, start and "run" instantly.

For scale tests (thousands of fake nodes in one process, like Kubernetes'
kubemark: corral_node_agent.hollow_cluster) and as the fake engine of unit tests.
Faults are injected with `crash`, `remove_behind_back`, `unpullable_images`,
`exit_on_start`, `failing_images`, `unremovable`, `missing_networks`, `missing_volumes`
and `available`. Volumes: a hollow engine has every PersistentVolume's Docker volume
(unless in `missing_volumes`); the emptyDirs its containers mount are kept in `volumes`
(made with the container, as Docker makes them); bind directories are only recorded.
A running hollow replica reports an address on each of its networks (`HollowAddresses`).
Engine latency is simulated with `pull_seconds`, `start_seconds` (a started container runs only
after it: the start call takes that long, as a slow engine's would) and
`remove_seconds`; a stopped container's shutdown with `stop_seconds` (killed at its
grace when longer). `stops` records each stop: the replica, its configured stop signal
and the grace the agent gave.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import posixpath
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskStatus

from corral.contract import names
from corral.contract.network_specs import DEFAULT_NETWORK_POOL
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
    VolumeUser,
)

_ids = itertools.count(1)
HOLLOW_DEFAULT_CPU_MILLIS = 4000
HOLLOW_DEFAULT_MEMORY_BYTES = 8 * 2**30


@dataclass
class HollowContainer:
    id: str
    spec: ContainerSpec
    state: ContainerState = ContainerState.CREATED
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    ips: dict[str, str] = field(default_factory=dict)  # network -> address (its lifetime)
    # Its output: (wall clock, "stdout"|"stderr", bytes) per write (HollowRuntime.write_log).
    log: list[tuple[float, str, bytes]] = field(default_factory=list)
    log_written: anyio.Event | None = None  # set (and dropped) at each write, for followers

    def key(self, network: str) -> tuple[str, str, str]:
        labels = self.spec.labels
        return (
            labels.get(names.LABEL_CLUSTER, ""),
            network,
            labels.get(names.LABEL_REPLICA, self.spec.name),
        )


HOLLOW_POOL = ipaddress.IPv4Network(DEFAULT_NETWORK_POOL)  # 10.128.0.0/9


def hollow_ip(network: str, replica: str, cluster_id: str = "", attempt: int = 0) -> str:
    """A plausible address of a hollow replica on a corral network: deterministic per
    (cluster, network, replica, attempt), inside netmgr's default pool, never the first
    (gateway) or last address of a /24."""
    digest = hashlib.sha256(f"{cluster_id}/{network}/{replica}/{attempt}".encode()).digest()
    span = HOLLOW_POOL.num_addresses // 256  # the /24s of the pool
    block = int.from_bytes(digest[:4], "big") % span
    host = 2 + digest[4] % 253  # 2 .. 254
    return str(HOLLOW_POOL.network_address + block * 256 + host)


@dataclass
class _Held:
    address: str
    holders: int = 1  # live containers of the replica holding it


class HollowAddresses:
    """The hollow replicas' addresses, one book per process (a hollow cluster runs every
    node in one): a replica keeps its address on a network while it lives, and no two
    live replicas of a network share one, so netmgr's endpoints can be exercised at scale
    without Docker. Each is `hollow_ip` of the first attempt not taken."""

    def __init__(self) -> None:
        # (cluster, network, replica) -> its address: an old and a new container of one
        # replica share it until the last of them goes.
        self._owned: dict[tuple[str, str, str], _Held] = {}
        self._taken: set[tuple[str, str, str]] = set()  # (cluster, network, address)

    def take(self, cluster_id: str, network: str, replica: str) -> str:
        key = (cluster_id, network, replica)
        found = self._owned.get(key)
        if found is not None:
            found.holders += 1
            return found.address
        attempt = 0
        while (cluster_id, network, hollow_ip(network, replica, cluster_id, attempt)) in (
            self._taken
        ):
            attempt += 1
        address = hollow_ip(network, replica, cluster_id, attempt)
        self._owned[key] = _Held(address)
        self._taken.add((cluster_id, network, address))
        return address

    def release(self, cluster_id: str, network: str, replica: str) -> None:
        key = (cluster_id, network, replica)
        found = self._owned.get(key)
        if found is None:
            return
        found.holders -= 1
        if found.holders <= 0:
            del self._owned[key]
            self._taken.discard((cluster_id, network, found.address))

    def __len__(self) -> int:
        return len(self._owned)


ADDRESSES = HollowAddresses()  # the process's book


def _observed(container: HollowContainer, exposed: dict[str, list[str]]) -> ObservedContainer:
    labels = container.spec.labels
    running = container.state == ContainerState.RUNNING
    return ObservedContainer(
        id=container.id,
        name=container.spec.name,
        replica=labels.get(names.LABEL_REPLICA, ""),
        deployment=labels.get(names.LABEL_DEPLOYMENT, ""),
        namespace=labels.get(names.LABEL_NAMESPACE, names.DEFAULT_NAMESPACE),
        template_hash=labels.get(names.LABEL_TEMPLATE_HASH, ""),
        state=container.state,
        exit_code=container.exit_code,
        started_at=container.started_at,
        finished_at=container.finished_at,
        node=labels.get(names.LABEL_NODE, ""),
        managed=labels.get(names.LABEL_MANAGED) == "true",
        cluster=labels.get(names.LABEL_CLUSTER, ""),
        ips=container.ips if running else {},
        image_ports=tuple(sorted(exposed.get(container.spec.image, []))),
        volumes=_volumes_of(container),
        stop_timeout=container.spec.stop_timeout,
    )


def _volumes_of(container: HollowContainer) -> tuple[str, ...]:
    return tuple(m.source for m in container.spec.mounts if m.kind == "volume")


@dataclass
class HollowRuntime:
    cpu_millis: int = HOLLOW_DEFAULT_CPU_MILLIS
    memory_bytes: int = HOLLOW_DEFAULT_MEMORY_BYTES
    images: set[str] = field(default_factory=set)  # present in the store
    unpullable_images: set[str] = field(default_factory=set)  # pulls fail
    failing_images: dict[str, str] = field(default_factory=dict)  # create fails: message
    exit_on_start: dict[str, int] = field(default_factory=dict)  # exit at once with code
    # Corral networks not (yet) on this engine: a create joining one fails as Docker's would.
    missing_networks: set[str] = field(default_factory=set)
    # Docker volumes not on this engine (a claim's volume volmgr has not made here).
    missing_volumes: set[str] = field(default_factory=set)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)  # made: name -> labels
    directories: list[str] = field(default_factory=list)  # bind directories asked for
    exposed_ports: dict[str, list[str]] = field(default_factory=dict)  # image -> "80/tcp" ...
    addresses: HollowAddresses = field(default_factory=lambda: ADDRESSES)
    pull_seconds: float = 0.0
    start_seconds: float = 0.0  # a start returns (the container running) after this
    remove_seconds: float = 0.0  # a removal returns (the container gone) after this
    unremovable: set[str] = field(default_factory=set)  # container ids whose removal fails
    # How long a container takes to exit after its stop signal (SIGKILL at the grace).
    stop_seconds: float = 0.0
    # (replica, stop signal as configured, grace given) of every stop, in order.
    stops: list[tuple[str, str, float]] = field(default_factory=list)
    # Probes pass (at no cost) unless a test says why (replica, kind) fails here.
    probe_failures: dict[tuple[str, str], str] = field(default_factory=dict)
    probes_run: int = 0
    kills: int = 0
    available: bool = True
    name: str = "hollow"
    engine_id: str = field(default_factory=lambda: f"hollow-{secrets.token_hex(6)}")
    containers: dict[str, HollowContainer] = field(default_factory=dict)
    # What the agent asked for, for tests to count.
    pulls: list[str] = field(default_factory=list)
    creates: int = 0
    lists: int = 0
    starts: int = 0
    removes: int = 0
    operations: list[str] = field(default_factory=list)  # "create <replica>", "remove <replica>"
    # Keep `pulls` and `operations` (tests count them); a long scale run turns it off.
    record_operations: bool = True
    _watchers: list[tuple[str, ChangeCallback]] = field(default_factory=list)
    _outage: anyio.Event | None = None

    def set_available(self, available: bool) -> None:
        """Simulate the engine going away (watches break) or coming back."""
        self.available = available
        if not available and self._outage is not None:
            self._outage.set()
            self._outage = None

    def _check(self) -> None:
        if not self.available:
            raise EngineUnavailable("hollow engine is unavailable")

    def _notify(self, container: HollowContainer) -> None:
        node = container.spec.labels.get(names.LABEL_NODE, "")
        replica = container.spec.labels.get(names.LABEL_REPLICA, "")
        for watched_node, callback in list(self._watchers):
            if watched_node == node:
                callback(replica)

    async def ping(self) -> None:
        self._check()

    async def info(self) -> EngineInfo:
        self._check()
        return EngineInfo(
            cpu_millis=self.cpu_millis, memory_bytes=self.memory_bytes, engine_id=self.engine_id
        )

    async def list_containers(self) -> list[ObservedContainer]:
        self._check()
        self.lists += 1
        return [
            _observed(container, self.exposed_ports)
            for container in self.containers.values()
            if container.spec.labels.get(names.LABEL_MANAGED) == "true"
        ]

    async def find_container(self, name: str) -> ObservedContainer | None:
        self._check()
        for container in self.containers.values():
            if name in (container.spec.name, container.id):
                return _observed(container, self.exposed_ports)
        return None

    async def has_image(self, image: str) -> bool:
        self._check()
        return image in self.images

    async def pull_image(self, image: str) -> None:
        self._check()
        if self.record_operations:
            self.pulls.append(image)
        if self.pull_seconds:
            await anyio.sleep(self.pull_seconds)
        if image in self.unpullable_images:
            raise ImagePullFailed(f"pull access denied for {image}, repository does not exist")
        self.images.add(image)

    async def create_container(self, spec: ContainerSpec) -> str:
        self._check()
        if spec.image not in self.images:
            raise ImageMissing(f"No such image: {spec.image}")
        if spec.image in self.failing_images:
            raise RuntimeFailure(self.failing_images[spec.image])
        for network in spec.networks:
            if network in self.missing_networks:
                raise NetworkMissing(network)
        if any(c.spec.name == spec.name for c in self.containers.values()):
            raise NameConflict(f'Conflict. The container name "/{spec.name}" is already in use')
        for mount in spec.mounts:
            if mount.kind != "volume":
                continue
            if not mount.driver and mount.source in self.missing_volumes:
                raise RuntimeFailure(f"volume {mount.source} is not on this engine")
            if mount.driver and mount.source not in self.volumes:
                self.volumes[mount.source] = dict(mount.labels)  # an emptyDir: made with it
        container = HollowContainer(id=f"hollow{next(_ids):012d}", spec=replace(spec))
        container.ips = {n: self.addresses.take(*container.key(n)) for n in spec.networks}
        self.containers[container.id] = container
        self.creates += 1
        if self.record_operations:
            self.operations.append(f"create {spec.labels.get(names.LABEL_REPLICA, spec.name)}")
        return container.id

    async def start_container(self, container_id: str) -> None:
        self._check()
        container = self.containers.get(container_id)
        if container is None:
            raise ContainerGone(f"No such container: {container_id}")
        if self.start_seconds:
            await anyio.sleep(self.start_seconds)
            self._check()
            if self.containers.get(container_id) is not container:
                raise ContainerGone(f"No such container: {container_id}")
        self.starts += 1
        now = time.time()
        container.state = ContainerState.RUNNING
        container.started_at = now
        container.exit_code = None
        code = self.exit_on_start.get(container.spec.image)
        if code is not None:
            container.state = ContainerState.EXITED
            container.exit_code = code
            container.finished_at = now
            self._notify(container)

    async def stop_container(self, container_id: str, grace: float) -> None:
        """The stop signal (recorded), then exit after `stop_seconds`, or SIGKILL at
        `grace` (exit code 137) when that is sooner."""
        self._check()
        container = self.containers.get(container_id)
        if container is None or container.state != ContainerState.RUNNING:
            return
        replica = container.spec.labels.get(names.LABEL_REPLICA, container.spec.name)
        self.stops.append((replica, container.spec.stop_signal, grace))
        if self.record_operations:
            self.operations.append(f"stop {replica}")
        code = 0
        if self.stop_seconds:
            await anyio.sleep(min(self.stop_seconds, grace))
            code = 0 if self.stop_seconds <= grace else 137
        if self.containers.get(container_id) is container and container.state == (
            ContainerState.RUNNING
        ):
            self.crash(container_id, code)

    async def remove_container(self, container_id: str) -> None:
        self._check()
        if container_id in self.unremovable:
            raise RuntimeFailure(f"could not kill container {container_id}: permission denied")
        if self.remove_seconds and container_id in self.containers:
            await anyio.sleep(self.remove_seconds)  # it runs until then, as a stopping one does
            self._check()
        removed = self.containers.pop(container_id, None)
        if removed is not None:
            self._release(removed)
        if removed is not None:
            self.removes += 1
            if self.record_operations:
                replica = removed.spec.labels.get(names.LABEL_REPLICA, removed.spec.name)
                self.operations.append(f"remove {replica}")

    async def volume_exists(self, name: str) -> bool:
        self._check()
        return name not in self.missing_volumes

    async def volume_users(self, name: str) -> list[VolumeUser]:
        self._check()
        return [
            VolumeUser(
                id=c.id,
                name=c.spec.name,
                cluster=c.spec.labels.get(names.LABEL_CLUSTER, ""),
                replica=c.spec.labels.get(names.LABEL_REPLICA, ""),
            )
            for c in self.containers.values()
            if name in _volumes_of(c)
        ]

    async def remove_volume(self, name: str) -> None:
        self._check()
        if any(name in _volumes_of(c) for c in self.containers.values()):
            raise RuntimeFailure(f"remove {name}: volume is in use")
        self.volumes.pop(name, None)

    async def unused_volumes(self, labels: Mapping[str, str]) -> list[str]:
        self._check()
        used = {v for c in self.containers.values() for v in _volumes_of(c)}
        return sorted(
            name
            for name, have in self.volumes.items()
            if name not in used and all(have.get(k) == v for k, v in labels.items())
        )

    async def labelled_users(self, label: str) -> list[VolumeUser]:
        self._check()
        return [
            VolumeUser(
                id=c.id,
                name=c.spec.name,
                cluster=c.spec.labels.get(names.LABEL_CLUSTER, ""),
                replica=c.spec.labels.get(names.LABEL_REPLICA, ""),
            )
            for c in self.containers.values()
            if label in c.spec.labels
        ]

    async def sub_path_source(self, host_path: str, sub_path: str) -> str:
        self._check()
        path = posixpath.join(host_path, sub_path)  # the host is not touched: recorded
        if path not in self.directories:
            self.directories.append(path)
        return path

    async def watch(
        self,
        node: str,
        on_change: ChangeCallback,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._check()
        watcher = (node, on_change)
        self._watchers.append(watcher)
        try:
            if self._outage is None:
                self._outage = anyio.Event()
            outage = self._outage
            task_status.started()
            await outage.wait()
            raise EngineUnavailable("hollow engine went away")
        finally:
            self._watchers.remove(watcher)

    async def close(self) -> None:
        return None

    async def kill_container(self, container_id: str) -> None:
        self._check()
        self.kills += 1
        container = self.containers.get(container_id)
        if container is not None and container.state == ContainerState.RUNNING:
            self.crash(container_id, 137)

    def _probe(self, replica: str, kind: str) -> str:
        self._check()
        self.probes_run += 1
        return self.probe_failures.get((replica, kind), "")

    async def exec_probe(
        self, container_id: str, command: list[str], seconds: float, kind: str
    ) -> str:
        container = self.containers.get(container_id)
        if container is None:
            raise ContainerGone(f"exec: no container {container_id}")
        return self._probe(container.spec.labels.get(names.LABEL_REPLICA, ""), kind)

    async def network_probe(
        self,
        container: ObservedContainer,
        address: str,
        port: int,
        path: str | None,
        seconds: float,
        kind: str,
    ) -> str:
        return self._probe(container.replica, kind)

    # Logs: what a hollow container writes is what a test makes it write.

    def write_log(self, container_id: str, text: str, stream: str = "stdout") -> None:
        """The container writes `text` (lines end with a newline) on `stream`."""
        container = self.containers[container_id]
        container.log.append((time.time(), stream, text.encode()))
        if container.log_written is not None:
            container.log_written.set()
            container.log_written = None

    async def container_logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        since: float | None,
        timestamps: bool,
    ) -> AsyncIterator[LogFrame]:
        """One frame per write; a follow ends when the container stops or goes."""
        self._check()
        container = self.containers.get(container_id)
        if container is None:
            raise ContainerGone(f"No such container: {container_id}")
        written = [w for w in container.log if since is None or w[0] >= since]
        if tail is not None:
            written = _last_lines(written, tail)
        for frame in written:
            yield _frame(frame, timestamps)
        seen = len(container.log)
        while follow:
            while seen < len(container.log):
                yield _frame(container.log[seen], timestamps)
                seen += 1
            if container.state != ContainerState.RUNNING or (
                self.containers.get(container_id) is not container
            ):
                return
            if container.log_written is None:
                container.log_written = anyio.Event()
            event = container.log_written
            with anyio.move_on_after(0.5):  # also notices a stop, which sets no event
                await event.wait()

    # Faults, as a test or a scale run injects them.

    def crash(self, container_id: str, exit_code: int = 1) -> None:
        container = self.containers[container_id]
        container.state = ContainerState.EXITED
        container.exit_code = exit_code
        container.finished_at = time.time()
        self._notify(container)

    def _release(self, container: HollowContainer) -> None:
        for network in container.ips:
            self.addresses.release(*container.key(network))

    def add_network(self, network: str) -> None:
        """netmgr made a missing network: the engine tells its watchers (as Docker's
        network events do)."""
        self.missing_networks.discard(network)
        for _, callback in list(self._watchers):
            callback(NETWORK_APPEARED)

    def remove_behind_back(self, container_id: str) -> None:
        container = self.containers.pop(container_id)
        self._release(container)
        self._notify(container)

    def running(self, node: str | None = None) -> list[HollowContainer]:
        return [
            c
            for c in self.containers.values()
            if c.state == ContainerState.RUNNING
            and (node is None or c.spec.labels.get(names.LABEL_NODE) == node)
        ]


_Written = tuple[float, str, bytes]  # (wall clock, stream, data)


def _last_lines(written: list[_Written], lines: int) -> list[_Written]:
    """The writes holding the last `lines` lines (a write of several lines counts each)."""
    kept: list[_Written] = []
    count = 0
    for when, stream, data in reversed(written):
        if count >= lines:
            break
        parts = data.splitlines(keepends=True)
        room = lines - count
        if len(parts) > room:
            data = b"".join(parts[-room:])
        kept.append((when, stream, data))
        count += min(len(parts), room)
    kept.reverse()
    return kept


def _frame(written: _Written, timestamps: bool) -> LogFrame:
    when, stream, data = written
    if timestamps:
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z ").encode()
        data = b"".join(stamp + line for line in data.splitlines(keepends=True))
    return LogFrame(stream, data)
