"""Pids from the outside: is a process still the one we started, and stopping it.

A pid is identified with its start time (from /proc), so a pid the kernel
reused for another program is never mistaken for ours, and never signalled.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process' start time in clock ticks since boot, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its parent's wait is missing
        return None
    return int(fields[19])  # field 22 of the whole line


def resident_memory_bytes(pid: int) -> int | None:
    """VmRSS of a live process, or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    started: int  # start time in clock ticks, as start_time() reads it

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        return start_time(self.pid) == self.started

    def signal(self, signum: int) -> bool:
        """Send signum if this is still our process; False when it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True


def wait_gone(refs: list[ProcessRef], timeout: float) -> list[ProcessRef]:
    """Poll until every process is gone or the timeout passes; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = [ref for ref in refs if ref.alive()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [ref for ref in alive if ref.alive()]
    return alive


def stop_processes(refs: list[ProcessRef], timeout: float) -> list[ProcessRef]:
    """SIGTERM, then SIGKILL whatever still runs after timeout. Returns those that were killed."""
    for ref in refs:
        ref.signal(signal.SIGTERM)
    stubborn = wait_gone(refs, timeout)
    for ref in stubborn:
        ref.signal(signal.SIGKILL)
    wait_gone(stubborn, 5)
    return stubborn
