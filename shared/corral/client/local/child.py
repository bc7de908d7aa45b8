"""One supervised child process: started, restarted with back-off when it dies,
stopped with SIGTERM and then SIGKILL when its task is cancelled.

Children run in their own session, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops them in order (services first, nats-server last).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import Process, TaskStatus

from corral.client.local.plan import ChildSpec
from corral.contract.backoff import Backoff

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
STARTUP_EXITS = 3  # exits before the child was ever healthy: it cannot start, give up


@dataclass
class RestartBackoff:
    """Doubling delays between restarts (corral.contract.backoff), back to the first
    after a long enough run."""

    first: float = 0.5
    most: float = 30.0
    stable_after: float = 30.0  # a child that ran this long counts as healthy again
    delays: Backoff = field(init=False)

    def __post_init__(self) -> None:
        self.delays = Backoff(first=self.first, most=self.most)

    def after_exit(self, ran_for: float) -> float:
        if ran_for >= self.stable_after:
            self.delays.reset()
        return self.delays.next()


@dataclass
class ChildState:
    """What the supervisor tells about a child (see state_file.py)."""

    spec: ChildSpec
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    healthy: bool = False  # set by the supervisor once it answered (/healthz, JetStream)
    gave_up: bool = False  # it kept exiting before it was ever healthy; not restarted


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, or "" when there is none."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _note(spec: ChildSpec, line: str) -> None:
    """A line from the supervisor in the child's own log, so its story reads in one place."""
    try:
        with spec.log.open("a") as handle:
            handle.write(f"--- corral {time.strftime('%Y-%m-%d %H:%M:%S')}: {line} ---\n")
    except OSError:
        log.debug("could not write to %s", spec.log, exc_info=True)


async def _stop(process: Process, name: str, grace: float) -> None:
    if process.returncode is not None:
        return
    try:
        process.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return
    with anyio.move_on_after(grace):
        await process.wait()
        return
    log.warning("%s did not stop within %.0f s after SIGTERM; sending SIGKILL", name, grace)
    try:
        process.kill()
    except ProcessLookupError:
        return
    await process.wait()


async def supervise_child(
    state: ChildState,
    on_change: Callable[[], None],
    *,
    backoff: RestartBackoff | None = None,
    stop_timeout: float = STOP_TIMEOUT,
    startup_exits: int = STARTUP_EXITS,
    on_give_up: Callable[[ChildState], None] | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the child until cancelled; reports started once the first process is spawned.

    A child that exited `startup_exits` times and was never healthy is not restarted:
    on_give_up(state) is called and this returns (the supervisor then stops the rest).
    """
    spec = state.spec
    backoff = backoff or RestartBackoff()
    started = False
    while True:
        with spec.log.open("ab") as output:
            process = await anyio.open_process(
                spec.command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env={**os.environ, **spec.env},
                start_new_session=True,
            )
        began = time.monotonic()
        state.pid = process.pid
        log.info("started %s (pid %d)", spec.name, process.pid)
        on_change()
        if not started:
            started = True
            task_status.started()
        try:
            code = await process.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process, spec.name, stop_timeout)
                await process.aclose()
        delay = backoff.after_exit(time.monotonic() - began)
        state.pid = None
        state.last_exit = code
        state.restarts += 1
        on_change()
        if not state.healthy and state.restarts >= startup_exits:
            message = (
                f"{spec.name} exited with code {code}, {state.restarts} times without ever "
                "becoming healthy; giving up"
            )
            log.error("%s (log %s)", message, spec.log)
            _note(spec, message)
            state.gave_up = True
            if on_give_up is not None:
                on_give_up(state)
            return
        message = f"{spec.name} exited with code {code}; restarting in {delay:.1f} s"
        log.warning("%s (restart %d, log %s)", message, state.restarts, spec.log)
        _note(spec, message)
        await anyio.sleep(delay)
