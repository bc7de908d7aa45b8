"""The supervisor's account of itself on disk: `corral down`, `up -d` and tests read it.

corral.pid holds the supervisor's pid; corral.json holds the supervisor and each
child with its pid (and start time, so a reused pid is never taken for ours),
restarts, log and URLs, and whether every service has answered /healthz yet.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from corral.client.local.layout import Layout
from corral.client.local.processes import ProcessRef


class ChildRecord(msgspec.Struct, kw_only=True):
    name: str
    pid: int | None = None
    started: int | None = None  # start time in clock ticks (processes.start_time)
    restarts: int = 0
    log: str = ""
    metrics_url: str | None = None
    health_url: str | None = None

    def ref(self) -> ProcessRef | None:
        if self.pid is None or self.started is None:
            return None
        return ProcessRef(self.pid, self.started)


class SupervisorRecord(msgspec.Struct, kw_only=True):
    pid: int
    started: int
    data_dir: str
    nats_url: str
    ready: bool = False  # every service answered /healthz
    stopping: bool = False
    children: list[ChildRecord] = []

    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.started)


def _write_atomically(path: Path, data: bytes) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_bytes(data)
    scratch.replace(path)


def write_state(layout: Layout, record: SupervisorRecord) -> None:
    _write_atomically(layout.state_file, msgspec.json.format(msgspec.json.encode(record)))


def write_pid(layout: Layout, pid: int) -> None:
    _write_atomically(layout.pid_file, f"{pid}\n".encode())


def read_state(layout: Layout) -> SupervisorRecord | None:
    try:
        return msgspec.json.decode(layout.state_file.read_bytes(), type=SupervisorRecord)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def running_supervisor(layout: Layout) -> SupervisorRecord | None:
    """The record of the supervisor of this data dir, if it is still running."""
    record = read_state(layout)
    if record is None or not record.ref().alive():
        return None
    return record


def remove_files(layout: Layout) -> None:
    for path in (layout.pid_file, layout.state_file):
        path.unlink(missing_ok=True)
