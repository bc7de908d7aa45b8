"""The agent's cut-off clock survives the agent's own restarts (docs/time-budget.md).

An agent counts its time cut off from the last write NATS acknowledged. A process
that restarts during a partition (a crash, systemd's Restart=always) must not start
that count afresh, or restarts could keep its replicas running past F forever. So
every acknowledged write is noted in the state dir as a point on the machine's
monotonic clock, with the boot it belongs to; a new process of the same boot counts
from there. It always gets STARTUP_GRACE_SECONDS (a few heartbeats) to reach NATS,
so an agent restarted after a long stop (its store healthy) fences as usual instead
of stopping everything in its first second. The stop comes at
max(last ack + F, restart + grace): an agent that restarts within F - grace of its
last acknowledged write (the usual case: systemd restarts in seconds) keeps F.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)

FILE_NAME = "last-ack.json"
STARTUP_GRACE_SECONDS = 3.0
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class _LastAck(msgspec.Struct, frozen=True, rename="camel"):
    boot_id: str
    monotonic: float


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def cut_off_since(
    last_ack: float | None,
    process_started: float,
    stop_after: float,
    grace: float = STARTUP_GRACE_SECONDS,
) -> float:
    """Where the cut-off count starts for a process that started at `process_started`
    (monotonic): the last acknowledged write of an earlier process of this boot, but
    late enough that this one still gets `grace` before F."""
    if last_ack is None:
        return process_started
    return max(last_ack, process_started + grace - stop_after)


class LastAckFile:
    """`<state dir>/last-ack.json`; nothing at all when the state dir is None."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = None if state_dir is None else state_dir / FILE_NAME
        self._boot = boot_id()

    def load(self) -> float | None:
        if self.path is None or not self._boot:
            return None
        try:
            noted = msgspec.json.decode(self.path.read_bytes(), type=_LastAck)
        except (OSError, msgspec.DecodeError):
            return None
        return noted.monotonic if noted.boot_id == self._boot else None

    def save(self, monotonic_at: float) -> None:
        """Note an acknowledged write; a failure is logged, never raised."""
        if self.path is None or not self._boot:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".last-ack-")
            with os.fdopen(handle, "wb") as out:
                out.write(msgspec.json.encode(_LastAck(self._boot, monotonic_at)))
            os.replace(temporary, self.path)
        except OSError as error:
            log.warning("noting the last acknowledged write in %s failed: %s", self.path, error)
