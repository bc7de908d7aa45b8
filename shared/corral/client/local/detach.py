"""`corral up -d`: run the supervisor detached and return once all is healthy;
`corral down`: stop the supervisor of a data dir (and its children).

The detached supervisor is `python -m corral.client.local up` started through a double
fork: it belongs to no terminal and to no caller, and nobody has to wait for it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from corral.client.local.layout import Layout
from corral.client.local.plan import UpOptions, port_problem
from corral.client.local.processes import ProcessRef, stop_processes
from corral.client.local.state_file import (
    SupervisorRecord,
    read_state,
    remove_files,
    running_supervisor,
)
from corral.client.local.supervisor import (
    HEALTH_TIMEOUT,
    CannotStart,
    create_layout,
    read_failure,
    stop_leftovers,
)

SUPERVISOR_STOP_TIMEOUT = 90.0  # services, then the node part's clean-up, then nats-server


class DetachFailed(RuntimeError):
    pass


def supervisor_command(options: UpOptions) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "corral.client.local",
        "up",
        "--data-dir",
        str(options.layout.data_dir),
        "--nats-port",
        str(options.nats_port),
        "--metrics-base-port",
        str(options.metrics_base_port),
        "--runtime",
        options.runtime,
        "--log-level",
        options.log_level,
    ]
    if options.node_name:
        command += ["--node-name", options.node_name]
    if options.docker_host:
        command += ["--docker-host", options.docker_host]
    return command


def _spawn_detached(command: list[str], log: Path) -> int:
    """Double fork: the grandchild runs `command` in its own session, reparented to init.

    Returns the grandchild's pid, passed back through a pipe by the middle process.
    """
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    read_end, write_end = os.pipe()
    try:
        middle = os.fork()
        if middle == 0:  # only system calls from here: this process may have had threads
            try:
                os.setsid()
                grandchild = os.fork()
                if grandchild == 0:
                    os.dup2(null_fd, 0)
                    os.dup2(log_fd, 1)
                    os.dup2(log_fd, 2)
                    os.execv(command[0], command)
                os.write(write_end, grandchild.to_bytes(8, "little"))
            finally:
                os._exit(0)
        os.close(write_end)
        os.waitpid(middle, 0)
        raw = os.read(read_end, 8)
        if len(raw) != 8:
            raise DetachFailed("could not start the detached supervisor")
        return int.from_bytes(raw, "little")
    finally:
        for fd in (log_fd, null_fd, read_end):
            os.close(fd)
        try:
            os.close(write_end)
        except OSError:
            pass


def _log_tail(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last lines of path, of what was written after offset `since`."""
    try:
        with path.open("rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _failed(layout: Layout, pid: int, since: int) -> DetachFailed:
    """Why the detached supervisor `pid` died: its own word (with the failing child's log
    tail) when it gave one, else the end of what it wrote to corral.log."""
    log = layout.supervisor_log
    reason = read_failure(layout, pid)
    if reason is not None:
        return DetachFailed(f"corral up failed: {reason}\n(supervisor log {log})")
    return DetachFailed(f"corral up failed (log {log}):\n{_log_tail(log, since=since)}")


def start_detached(options: UpOptions, timeout: float = HEALTH_TIMEOUT + 40) -> SupervisorRecord:
    """Start the supervisor detached and wait until it reports every service healthy."""
    layout = options.layout
    problem = port_problem(options)
    if problem is not None:
        raise DetachFailed(problem)
    try:
        create_layout(layout)
    except CannotStart as error:
        raise DetachFailed(str(error)) from None
    running = running_supervisor(layout)
    if running is not None:
        raise DetachFailed(
            f"corral is already running from {layout.data_dir} (pid {running.pid}); "
            "`corral down` stops it"
        )
    log = layout.supervisor_log
    since = _log_size(log)
    pid = _spawn_detached(supervisor_command(options), log)
    supervisor = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor = supervisor or ProcessRef.of(pid)
        record = read_state(layout)
        if record is not None and record.pid == pid and record.ready:
            return record
        if supervisor is None or not supervisor.alive():
            raise _failed(layout, pid, since)
        time.sleep(0.1)
    stop(layout)
    raise DetachFailed(
        f"corral did not become healthy within {timeout:.0f} s; stopped it (log {log}):\n"
        + _log_tail(log, since=since)
    )


@dataclass(frozen=True)
class StopReport:
    was_running: bool
    supervisor_pid: int | None
    killed: list[str]  # what had to be sent SIGKILL
    leftovers: list[str]  # children of a dead supervisor that were stopped


def _supervisor_from_pid_file(layout: Layout) -> ProcessRef | None:
    """The pid file alone (no state file): trust it only if that process is corral's."""
    try:
        pid = int(layout.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return ProcessRef.of(pid) if b"corral" in cmdline else None


def stop(layout: Layout, timeout: float = SUPERVISOR_STOP_TIMEOUT) -> StopReport:
    """Stop the supervisor of this data dir and wait until it and its children are gone."""
    record = read_state(layout)
    supervisor = record.ref() if record is not None else _supervisor_from_pid_file(layout)
    if supervisor is None or not supervisor.alive():
        leftovers = stop_leftovers(layout)
        remove_files(layout)
        return StopReport(False, None, [], leftovers)
    children = [ref for child in (record.children if record else []) if (ref := child.ref())]
    killed = []
    if stop_processes([supervisor], timeout):
        killed.append("supervisor")
    # The supervisor stops its children; if it was killed instead, stop them here.
    if stop_processes([ref for ref in children if ref.alive()], timeout=10):
        killed.append("children")
    remove_files(layout)
    return StopReport(True, supervisor.pid, killed, [])
