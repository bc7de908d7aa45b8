"""The template's probes, run by the node agent (docs/rollouts.md, "Probes").

`ReplicaProbes` is the pure state machine of one running container's probes: when
each is due (its initial delay from the container's start, then every period), the
thresholds, and startup gating the other two; it is fed results and a clock, never
sleeps. `ProbeRunner` runs it: one task per probe, each check bounded by its
timeout, cancelled with the runner when the container goes or is replaced.
`Prober` keeps one runner per running replica that has probes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from corral.contract.specs import ContainerTemplate, Probe
from corral.contract.state import Placement
from corral_node_agent.runtime import ContainerState, ObservedContainer, Runtime, RuntimeFailure

log = logging.getLogger(__name__)

STARTUP = "startup"
LIVENESS = "liveness"
READINESS = "readiness"
OK = "ok"
UNKNOWN = "unknown: "  # an agent or engine error: neither a success nor a failure
_MAX_WHY = 200


def template_probes(template: ContainerTemplate) -> dict[str, Probe]:
    found = {
        STARTUP: template.startup_probe,
        LIVENESS: template.liveness_probe,
        READINESS: template.readiness_probe,
    }
    return {kind: probe for kind, probe in found.items() if probe is not None}


def probe_port(probe: Probe, template: ContainerTemplate) -> int | None:
    """The port number a probe's handler names (a name resolves through `ports`)."""
    port = probe.port
    if port is None or isinstance(port, int):
        return port
    for declared in template.ports:
        if declared.name == port:
            return declared.container_port
    return None  # refused while decoding: never here


@dataclass
class _Track:
    probe: Probe
    next_at: float
    successes: int = 0
    failures: int = 0
    passed: bool = False
    last: str = ""  # "" before the first result; then "ok" or why it failed


@dataclass
class ReplicaProbes:
    """The probes of one container, started at `started` (a clock reading)."""

    probes: Mapping[str, Probe]
    started: float
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, probe in self.probes.items():
            self._tracks[kind] = _Track(probe, self.started + probe.initial_delay_seconds)

    @property
    def started_up(self) -> bool:
        """No startup probe, or it has passed."""
        track = self._tracks.get(STARTUP)
        return track is None or track.passed

    def active(self, kind: str) -> bool:
        """Whether the probe runs now: startup until it passes, the others after it."""
        if kind not in self._tracks:
            return False
        if kind == STARTUP:
            return not self._tracks[kind].passed
        return self.started_up

    def wait(self, kind: str, now: float) -> float | None:
        """Seconds until the probe is due (0: now); None while it is held back."""
        if not self.active(kind):
            return None
        return max(0.0, self._tracks[kind].next_at - now)

    def observe(self, kind: str, why: str, now: float) -> str | None:
        """Record one result ("" or OK: success, else why it failed). Returns the
        reason the container must be restarted (liveness or startup at its failure
        threshold), else None."""
        track = self._tracks[kind]
        probe = track.probe
        track.next_at = now + probe.period_seconds
        if why.startswith(UNKNOWN):  # the agent could not tell: thresholds unchanged
            track.last = why
            return None
        if why in ("", OK):
            track.last = OK
            track.failures = 0
            track.successes += 1
            if track.successes >= probe.success_threshold:
                if kind == STARTUP and not track.passed:
                    for other, later in self._tracks.items():
                        if other != STARTUP:  # the others' delays count from the start
                            later.next_at = max(later.next_at, now)
                track.passed = True
            return None
        track.last = why
        track.successes = 0
        track.failures += 1
        if track.failures >= probe.failure_threshold:
            if kind == READINESS:
                track.passed = False
                return None
            track.failures = 0
            return f"{kind} probe failed: {why}"
        return None

    @property
    def ready(self) -> bool | None:
        """The readiness verdict (None: no readiness probe)."""
        track = self._tracks.get(READINESS)
        if track is None:
            return None
        return self.started_up and track.passed

    @property
    def decided(self) -> bool:
        """Whether readiness has had a verdict (a success or failure, not unknown)."""
        track = self._tracks.get(READINESS)
        return track is None or track.passed or track.successes > 0 or track.failures > 0

    def remember(self) -> tuple[bool, bool, dict[str, str]]:
        startup = self._tracks.get(STARTUP)
        readiness = self._tracks.get(READINESS)
        return (
            startup is None or startup.passed,
            readiness is not None and readiness.passed,
            self.results,
        )

    def recall(self, memory: tuple[bool, bool, dict[str, str]]) -> None:
        """Start from a previous runner's verdicts on the same container."""
        started_up, ready, results = memory
        startup = self._tracks.get(STARTUP)
        if startup is not None and started_up:
            startup.passed = True
        readiness = self._tracks.get(READINESS)
        if readiness is not None:
            readiness.passed = ready
        for kind, why in results.items():
            if kind in self._tracks:
                self._tracks[kind].last = why

    @property
    def results(self) -> dict[str, str]:
        """Each probe's last result, of those that ran."""
        return {kind: track.last for kind, track in self._tracks.items() if track.last}


# The checks.


async def tcp_check(address: str, port: int, seconds: float) -> str:
    """ "" when a TCP connection to address:port opens within `seconds`, else why not."""
    try:
        with anyio.fail_after(seconds):
            stream = await anyio.connect_tcp(address, port)
            await stream.aclose()
    except TimeoutError:
        return f"tcp {address}:{port}: no connection within {seconds:g}s"
    except OSError as error:
        return f"tcp {address}:{port}: {error.strerror or error}"
    return ""


async def http_check(address: str, port: int, path: str, seconds: float) -> str:
    """ "" when GET http://address:port/path answers 200-399 within `seconds`."""
    url = f"http://{address}:{port}{path}"
    try:
        with anyio.fail_after(seconds):
            stream = await anyio.connect_tcp(address, port)
            async with stream:
                request = (
                    f"GET {path} HTTP/1.0\r\nHost: {address}:{port}\r\n"
                    "User-Agent: corral-probe\r\nConnection: close\r\n\r\n"
                )
                await stream.send(request.encode())
                head = b""
                while b"\r\n" not in head and len(head) < 4096:
                    try:
                        head += await stream.receive()
                    except anyio.EndOfStream:
                        break
    except TimeoutError:
        return f"GET {url}: no answer within {seconds:g}s"
    except (OSError, anyio.BrokenResourceError) as error:
        return f"GET {url}: {getattr(error, 'strerror', None) or error or type(error).__name__}"
    line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return f"GET {url}: not an HTTP answer ({line[:60]!r})"
    status = int(parts[1])
    if 200 <= status < 400:
        return ""
    return f"GET {url}: status {status}"


def probe_address(container: ObservedContainer, template: ContainerTemplate) -> str:
    """The replica's address: on its first corral network, else on the default bridge."""
    for network in template.networks:
        if network in container.ips:
            return container.ips[network]
    for address in container.ips.values():
        return address
    return container.bridge_ip


# Running them.


class ProbeRunner:
    """The probes of one running container: one task per probe."""

    def __init__(
        self,
        runtime: Runtime,
        placement: Placement,
        container: ObservedContainer,
        *,
        on_change: Callable[[], None],
        on_restart: Callable[[str], Awaitable[bool]],
        monotonic: Callable[[], float] = time.monotonic,
        memory: dict[tuple[str, float | None], tuple[bool, bool, dict[str, str]]] | None = None,
        pending: bool = False,
    ) -> None:
        self.runtime = runtime
        self.placement = placement
        self.container = container
        self.on_change = on_change
        self.on_restart = on_restart
        self.monotonic = monotonic
        self.machine = ReplicaProbes(template_probes(placement.template), monotonic())
        self.memory = {} if memory is None else memory
        remembered = self.memory.get(self.container_key)
        if remembered is not None:
            self.machine.recall(remembered)
        # Already running when the agent began, no verdict remembered: `ready` is not
        # written until the first verdict (the stored value is kept meanwhile).
        self.pending = pending and remembered is None
        self.scope = anyio.CancelScope()
        self._started_up = anyio.Event()
        if self.machine.started_up:
            self._started_up.set()
        self._restarting = False
        self._resumed = anyio.Event()
        self._resumed.set()

    @property
    def container_key(self) -> tuple[str, float | None]:
        return (self.container.id, self.container.started_at)

    def restarting(self) -> bool:
        return self._restarting

    @property
    def key(self) -> tuple[str, float | None, str]:
        return (self.container.id, self.container.started_at, self.placement.template_hash)

    async def run(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                for kind in self.machine.probes:
                    tg.start_soon(self._run_one, kind)

    async def _run_one(self, kind: str) -> None:
        while True:
            await self._resumed.wait()
            wait = self.machine.wait(kind, self.monotonic())
            if wait is None:
                if kind == STARTUP:
                    return  # passed: done for this container
                await self._started_up.wait()
                continue
            if wait > 0:
                await anyio.sleep(wait)
                continue
            why = await self.check(kind)
            if self.restarting():  # another probe of it is restarting the container
                continue
            before = (self.machine.ready, self.machine.results, self.pending)
            restart = self.machine.observe(kind, why, self.monotonic())
            if self.pending and self.machine.decided:
                self.pending = False
            if self.machine.decided:  # an unknown first result is no verdict to keep
                self.memory[self.container_key] = self.machine.remember()
            if kind == STARTUP and self.machine.started_up:
                self._started_up.set()
            if restart is not None:
                self._restarting = True
                self._resumed = anyio.Event()
                try:
                    killed = await self.on_restart(restart)
                finally:
                    # Not killed (refused, or the kill failed): probe on; the failure
                    # count starts over, so the kill is retried at the next threshold.
                    self._restarting = False
                    self._resumed.set()
                if killed:
                    self._restarting = True
                    self.scope.cancel()
                    return
                self.on_change()
                continue
            if (self.machine.ready, self.machine.results, self.pending) != before:
                self.on_change()

    async def check(self, kind: str) -> str:
        """One check: "" when it passed, else why not (never raises)."""
        probe = self.machine.probes[kind]
        template = self.placement.template
        timeout = float(probe.timeout_seconds)
        try:
            if probe.exec is not None:
                why = await self.runtime.exec_probe(
                    self.container.id, list(probe.exec.command), timeout, kind
                )
            else:
                port = probe_port(probe, template) or 0
                why = await self.runtime.network_probe(
                    self.container,
                    probe_address(self.container, template),
                    port,
                    probe.http_get.path if probe.http_get is not None else None,
                    timeout,
                    kind,
                )
        except RuntimeFailure as error:  # the engine's or agent's trouble, not the probe's
            why = UNKNOWN + (str(error) or type(error).__name__)
        except Exception as error:  # a surprise: unknown too, the agent goes on
            log.warning("%s probe of %s failed oddly", kind, self.placement.replica, exc_info=True)
            why = UNKNOWN + (str(error) or type(error).__name__)
        return why[:_MAX_WHY]


@dataclass(frozen=True, slots=True)
class ProbeView:
    """What a replica's status says of its probes."""

    container_id: str
    ready: bool | None
    results: dict[str, str]
    pending: bool = False  # no readiness verdict yet: keep the stored `ready`


class Prober:
    """One runner per running replica whose template has probes (the agent's)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        on_change: Callable[[], None],
        on_restart: Callable[[Placement, ObservedContainer, str], Awaitable[bool]],
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.on_change = on_change
        self.on_restart = on_restart
        self.monotonic = monotonic
        self.runners: dict[str, ProbeRunner] = {}
        self.last_failure: dict[str, str] = {}  # replica -> its last probe failure
        # Each container's last verdicts, kept across runner restarts (stop(), mode or
        # engine changes) within this process: keyed by container id and start.
        self.memory: dict[tuple[str, float | None], tuple[bool, bool, dict[str, str]]] = {}
        self.born = wall()  # containers started before this ran since the agent began

    def sync(
        self,
        placements: Mapping[str, Placement],
        kept: Mapping[str, ObservedContainer | None],
        spawn: TaskGroup,
    ) -> None:
        """Start the runners of running containers that have none, cancel the others."""
        wanted: dict[str, tuple[Placement, ObservedContainer]] = {}
        for replica, placement in placements.items():
            container = kept.get(replica)
            if (
                container is not None
                and container.state == ContainerState.RUNNING
                and template_probes(placement.template)
            ):
                wanted[replica] = (placement, container)
        for replica in list(self.runners):
            runner = self.runners[replica]
            want = wanted.get(replica)
            if want is None or runner.key != (
                want[1].id,
                want[1].started_at,
                want[0].template_hash,
            ):
                runner.scope.cancel()
                del self.runners[replica]
        for replica in list(self.last_failure):
            if replica not in placements:
                del self.last_failure[replica]
        seen = {(c.id, c.started_at) for c in kept.values() if c is not None}
        for key in list(self.memory):
            if key not in seen:
                del self.memory[key]
        for replica, (placement, container) in wanted.items():
            if replica not in self.runners:
                runner = ProbeRunner(
                    self.runtime,
                    placement,
                    container,
                    on_change=self._changed(replica),
                    on_restart=self._restart(placement, container),
                    monotonic=self.monotonic,
                    memory=self.memory,
                    pending=container.started_at is not None and container.started_at < self.born,
                )
                self.runners[replica] = runner
                spawn.start_soon(runner.run)

    def _changed(self, replica: str) -> Callable[[], None]:
        def changed() -> None:
            runner = self.runners.get(replica)
            if runner is not None:
                for kind, why in runner.machine.results.items():
                    if why != OK:
                        self.last_failure[replica] = f"{kind} probe failed: {why}"
            self.on_change()

        return changed

    def _restart(
        self, placement: Placement, container: ObservedContainer
    ) -> Callable[[str], Awaitable[bool]]:
        async def restart(why: str) -> bool:
            # Killed: its runner stays (stopped) until the container is seen gone or
            # restarted, so a pass that still lists it running starts no new one.
            # Not killed: the runner probes on.
            self.last_failure[placement.replica] = why
            killed = await self.on_restart(placement, container, why)
            self.on_change()
            return killed

        return restart

    def view(self, replica: str, container: ObservedContainer | None) -> ProbeView | None:
        runner = self.runners.get(replica)
        if runner is None or container is None or runner.container.id != container.id:
            return None
        return ProbeView(container.id, runner.machine.ready, runner.machine.results, runner.pending)

    def stop(self) -> None:
        for runner in self.runners.values():
            runner.scope.cancel()
        self.runners.clear()
