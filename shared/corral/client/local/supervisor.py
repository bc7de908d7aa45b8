"""The `corral up` supervisor: nats-server first, then the services; each kept running.

Start: refuse ports that can never work; take the data dir's lock (one supervisor
per data dir); refuse when a port is taken; stop the leftovers of a supervisor
that died; start nats-server and wait until JetStream answers; start the services
and wait until each /healthz answers 200. Then supervise until SIGINT/SIGTERM, and
stop in order: services (SIGTERM, then SIGKILL after a timeout), then (when `corral
down --remove-replicas` asked) the node agent's `--remove-all` stops and removes this
node's replica containers, then netmgr's node part removes its packet-filter rules,
routes and unused Docker networks (`corral-netmgr --node NAME --remove-all`, which
reads the cluster's id from NATS) and volmgr's its unused Docker volumes, mounts and
loop devices (`corral-volmgr --node NAME --remove-all`, with `--delete-data` after
`corral down --delete-volumes`); what an asked-for clean-up did is written for `corral
down` to report (`report_file`); then nats-server, so the services drain cleanly.

A startup that cannot succeed fails with CannotStart after stopping in the same
order: a child that keeps exiting before it was ever healthy (its log's end is in
the message), or services without a healthy /healthz within HEALTH_TIMEOUT.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus

from corral.client.local.child import ChildState, log_tail, supervise_child
from corral.client.local.health import wait_healthy
from corral.client.local.layout import Layout
from corral.client.local.nats_server import wait_for_jetstream
from corral.client.local.plan import (
    NODE_PARTS,
    UpOptions,
    agent_cleanup,
    busy_ports,
    nats_child,
    node_part_cleanup,
    port_problem,
    runs_node_part,
    service_children,
)
from corral.client.local.processes import ProcessRef, start_time, stop_processes
from corral.client.local.state_file import (
    ChildRecord,
    SupervisorRecord,
    read_state,
    remove_files,
    running_supervisor,
    write_pid,
    write_state,
)

log = logging.getLogger(__name__)

NATS_TIMEOUT = 30.0
HEALTH_TIMEOUT = float(os.environ.get("CORRAL_UP_TIMEOUT", "90"))


class CannotStart(RuntimeError):
    """corral up cannot start here; the message says why and what to do."""


@dataclass(frozen=True)
class CleanupReport:
    """What a clean-up `corral down` asked for did (the node agent's removal of the
    replicas, `--remove-replicas`; volmgr's node part deleting the volumes' data,
    `--delete-volumes`): its exit code (None: it did not finish, or did not run), the
    lines it printed (what it removed), the end of its errors, and why it did not run or
    finish."""

    exit_code: int | None
    output: list[str]
    errors: list[str]
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.problem


def report_file(request: Path) -> Path:
    """Where the supervisor leaves the CleanupReport of the clean-up `request` asked for
    (`Layout.delete_volumes_file`, `Layout.remove_replicas_file`), beside it."""
    return request.with_name(f"{request.name}.result")


def write_report(request: Path, report: CleanupReport) -> None:
    report_file(request).write_text(json.dumps(asdict(report)) + "\n")


def read_report(request: Path) -> CleanupReport | None:
    """The report of the last clean-up `request` asked for, or None when there is none
    (the supervisor was killed before it wrote one) or it cannot be read."""
    try:
        raw = json.loads(report_file(request).read_text())
        return CleanupReport(
            exit_code=raw["exit_code"] if isinstance(raw["exit_code"], int) else None,
            output=[str(line) for line in raw["output"]],
            errors=[str(line) for line in raw["errors"]],
            problem=str(raw.get("problem", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_leftovers(layout: Layout) -> list[str]:
    """Stop the children of a supervisor of this data dir that died without stopping them."""
    record = read_state(layout)
    if record is None or record.ref().alive():
        return []
    refs = {child.name: child.ref() for child in record.children}
    alive = {name: ref for name, ref in refs.items() if ref is not None and ref.alive()}
    if alive:
        log.warning("stopping leftovers of an earlier run: %s", ", ".join(sorted(alive)))
        # Services first, nats-server last, so the services drain cleanly.
        services = [ref for name, ref in alive.items() if name != "nats"]
        if services:
            stop_processes(services, timeout=10)
        if "nats" in alive:
            stop_processes([alive["nats"]], timeout=10)
    remove_files(layout)
    return sorted(alive)


def _check_can_start(options: UpOptions) -> None:
    layout = options.layout
    running = running_supervisor(layout)
    if running is not None:
        raise CannotStart(
            f"corral is already running from {layout.data_dir} (pid {running.pid}); "
            "`corral down` stops it"
        )
    stop_leftovers(layout)
    busy = busy_ports(options)
    if busy:
        raise CannotStart(
            f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 already in use; "
            "choose others with --nats-port / --metrics-base-port"
        )


def create_layout(layout: Layout) -> str:
    """Create the data dir's folders and return the node agent's id (kept in the data dir)."""
    try:
        layout.create()
        return layout.agent_id()
    except OSError as error:
        raise CannotStart(
            f"cannot create data dir {layout.data_dir}: {error.strerror or error}"
        ) from None


def take_lock(layout: Layout) -> int:
    """flock() the data dir's lock file; held (the fd kept open) for the supervisor's life."""
    try:
        fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise CannotStart(f"cannot open {layout.lock_file}: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CannotStart(
            f"corral is already running from {layout.data_dir} "
            f"(another supervisor holds {layout.lock_file}); `corral down` stops it"
        ) from None
    return fd


def _record_failure(layout: Layout, message: str) -> None:
    try:
        layout.failure_file.write_text(f"{os.getpid()}\n{message}\n")
    except OSError:
        log.debug("could not write %s", layout.failure_file, exc_info=True)


def read_failure(layout: Layout, pid: int) -> str | None:
    """Why the supervisor `pid` failed to start, if it said so."""
    try:
        first, _, message = layout.failure_file.read_text(errors="replace").partition("\n")
    except OSError:
        return None
    return message.rstrip("\n") if first.strip() == str(pid) else None


def _with_tail(child: ChildState) -> str:
    tail = log_tail(child.spec.log)
    return f"--- end of {child.spec.log} ---\n{tail}" if tail else f"({child.spec.log} is empty)"


async def _wait_all_healthy(children: list[ChildState], within: float) -> list[ChildState]:
    """Wait for every /healthz concurrently; returns the children that did not answer in time."""
    late: list[ChildState] = []

    async def one(child: ChildState) -> None:
        assert child.spec.health_url is not None
        try:
            with anyio.fail_after(within):
                await wait_healthy(child.spec.health_url)
            child.healthy = True
        except TimeoutError:
            late.append(child)

    async with anyio.create_task_group() as group:
        for child in children:
            group.start_soon(one, child)
    return sorted(late, key=lambda child: child.spec.name)


async def run_supervisor(
    options: UpOptions,
    *,
    on_ready: Callable[[SupervisorRecord], None] | None = None,
) -> None:
    """Run until SIGINT or SIGTERM; raises CannotStart when it cannot begin or start up."""
    layout = options.layout
    problem = port_problem(options)
    if problem is not None:
        raise CannotStart(problem)
    agent_id = create_layout(layout)
    lock = take_lock(layout)
    try:
        layout.failure_file.unlink(missing_ok=True)
        try:
            await _run_locked(options, agent_id, on_ready)
        except CannotStart as error:
            _record_failure(layout, str(error))
            raise
    finally:
        os.close(lock)


async def _run_locked(
    options: UpOptions,
    agent_id: str,
    on_ready: Callable[[SupervisorRecord], None] | None,
) -> None:
    _check_can_start(options)
    await Supervisor(options, agent_id, on_ready).run()


CLEANUP_TIMEOUT = 30.0
# Stopping the replicas takes their grace periods (all at once), then their removal.
REPLICAS_CLEANUP_TIMEOUT = 90.0


async def _clean_up(part: str, command: list[str], within: float) -> CleanupReport:
    """Run one clean-up command to its end (shielded: the supervisor is stopping),
    within `within` seconds; what it did."""
    report = CleanupReport(None, [], [], "")
    with anyio.move_on_after(within, shield=True) as scope:
        done = await anyio.run_process(command, check=False)
        errors = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        report = CleanupReport(
            done.returncode,
            done.stdout.decode(errors="replace").strip().splitlines()[-50:],
            errors,
        )
        if done.returncode != 0:
            log.warning("%s --remove-all exited %s: %s", part, done.returncode, " / ".join(errors))
    if scope.cancelled_caught:
        log.warning("%s --remove-all did not finish within %.0f s", part, within)
        report = CleanupReport(None, [], [], f"it did not finish within {within:.0f} s")
    return report


class Supervisor:
    """`corral up`'s process tree, in named steps: nats-server first; once JetStream
    answers, the services; once every one is healthy, ready; on a signal (or a failed
    start), the services stop, then nats-server. Each child is restarted with
    back-off by supervise_child; the state file tells `corral down` and `status`."""

    def __init__(
        self,
        options: UpOptions,
        agent_id: str,
        on_ready: Callable[[SupervisorRecord], None] | None = None,
    ) -> None:
        self.options = options
        self.layout = options.layout
        self.on_ready = on_ready
        self.me = ProcessRef(os.getpid(), start_time(os.getpid()) or 0)
        self.nats = ChildState(nats_child(options))
        self.services = [ChildState(spec) for spec in service_children(options, agent_id=agent_id)]
        self.record = SupervisorRecord(
            pid=self.me.pid,
            started=self.me.started,
            data_dir=str(self.layout.data_dir),
            nats_url=options.nats_url,
        )
        self.stop = anyio.Event()
        self.startup = anyio.CancelScope()
        self.failures: list[str] = []

    def save(self) -> None:
        self.record.children = [
            ChildRecord(
                name=child.spec.name,
                pid=child.pid,
                started=None if child.pid is None else start_time(child.pid),
                restarts=child.restarts,
                log=str(child.spec.log),
                metrics_url=child.spec.metrics_url,
                health_url=child.spec.health_url,
            )
            for child in (self.nats, *self.services)
        ]
        write_state(self.layout, self.record)

    def fail(self, message: str) -> None:
        """Startup cannot succeed: stop everything (in order), then raise CannotStart."""
        if not self.failures:
            log.error("%s", message)
            self.failures.append(message)
        self.stop.set()
        self.startup.cancel()

    def gave_up(self, child: ChildState) -> None:
        self.fail(
            f"{child.spec.name} exited {child.restarts} times (last code {child.last_exit}) "
            f"before it was ever healthy; stopped corral\n{_with_tail(child)}"
        )

    async def stop_on_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                log.info("received %s: stopping", signal.Signals(received).name)
                self.stop.set()
                self.startup.cancel()

    async def supervise(
        self, child: ChildState, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await supervise_child(child, self.save, on_give_up=self.gave_up, task_status=task_status)

    async def nats_answers(self) -> bool:
        try:
            with anyio.fail_after(NATS_TIMEOUT):
                await wait_for_jetstream(self.options.nats_url)
        except TimeoutError:
            self.fail(
                f"nats-server did not answer on {self.options.nats_url} within "
                f"{NATS_TIMEOUT:.0f} s; stopped corral\n{_with_tail(self.nats)}"
            )
            return False
        self.nats.healthy = True
        log.info("nats-server answers on %s", self.options.nats_url)
        return True

    async def start_services(self, group: TaskGroup) -> None:
        for child in self.services:
            await group.start(self.supervise, child)
        late = await _wait_all_healthy(self.services, HEALTH_TIMEOUT)
        if late:
            self.fail(
                f"no healthy /healthz within {HEALTH_TIMEOUT:.0f} s from: "
                f"{', '.join(child.spec.name for child in late)}; stopped corral\n"
                + "\n".join(_with_tail(child) for child in late)
            )
            return
        self.record.ready = True
        self.save()
        log.info("all services healthy")
        if self.on_ready is not None:
            self.on_ready(self.record)

    async def clean_node(self) -> None:
        """The node parts stopped with the services; what they made on this host goes
        now, while nats-server still answers (names carry the cluster's id): first, when
        `corral down --remove-replicas` asked, this node's replica containers (the node
        agent's `--remove-all`); then netmgr's chains, routes and Docker networks no
        container uses; volmgr's unused Docker volumes, mounts and loop devices (the
        volumes' data stays, unless `corral down --delete-volumes` asked for it to go).
        What an asked-for clean-up did is written for `corral down` to report
        (report_file)."""
        replicas = self.layout.remove_replicas_file
        delete_data = self.layout.delete_volumes_file.exists()
        if replicas.exists():
            if runs_node_part(self.options):
                log.info("removing this node's replicas")
                report = await _clean_up(
                    "node-agent", agent_cleanup(self.options), REPLICAS_CLEANUP_TIMEOUT
                )
            else:
                report = CleanupReport(
                    0,
                    [
                        f"no container runs on an engine with runtime {self.options.runtime}: "
                        "the replicas ended with the node agent"
                    ],
                    [],
                )
            write_report(replicas, report)
            replicas.unlink(missing_ok=True)
        if not runs_node_part(self.options):
            if delete_data:
                write_report(
                    self.layout.delete_volumes_file,
                    CleanupReport(
                        0,
                        [
                            f"no node part runs with runtime {self.options.runtime}: no "
                            "volume was made on this node"
                        ],
                        [],
                    ),
                )
                self.layout.delete_volumes_file.unlink(missing_ok=True)
            return
        for part in NODE_PARTS:
            command = node_part_cleanup(self.options, part, delete_data=delete_data)
            deleting = delete_data and part == "volmgr-node"
            what = " and the volumes' data" if deleting else ""
            log.info("removing what %s made on this node%s", part, what)
            report = await _clean_up(part, command, CLEANUP_TIMEOUT)
            if deleting:
                write_report(self.layout.delete_volumes_file, report)
        self.layout.delete_volumes_file.unlink(missing_ok=True)

    async def run(self) -> None:
        # Only a `corral down --delete-volumes` (or `--remove-replicas`) of this run
        # deletes data (removes replicas), never one that found no supervisor to stop.
        self.layout.delete_volumes_file.unlink(missing_ok=True)
        self.layout.remove_replicas_file.unlink(missing_ok=True)
        write_pid(self.layout, self.me.pid)
        self.save()
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self.stop_on_signal)
                async with anyio.create_task_group() as nats_group:
                    await nats_group.start(self.supervise, self.nats)
                    async with anyio.create_task_group() as services_group:
                        with self.startup:
                            if await self.nats_answers():
                                await self.start_services(services_group)
                        await self.stop.wait()
                        self.record.stopping = True
                        self.save()
                        log.info("stopping services")
                        services_group.cancel_scope.cancel()
                    await self.clean_node()
                    log.info("stopping nats-server")
                    nats_group.cancel_scope.cancel()
                outer.cancel_scope.cancel()
        finally:
            remove_files(self.layout)
        if self.failures:
            log.info("corral stopped after a failed start")
            raise CannotStart(self.failures[0])
        log.info("corral stopped")
