"""Keep Python's cyclic garbage collector from stalling the event loop.

A long-lived service process holds a large heap: the scheduler every placement,
replica status and node of the cluster; a hollow cluster thousands of agents and their
replicas. CPython's automatic full collection scans all of it at once: 170-480 ms held
in one piece in the scheduler at 1,000 nodes and 20,000 replicas, the largest single
wait of a request (bench/README.md, "Deciding off the event loop"); 0.4-0.9 s in a
hollow cluster of 1,000 nodes at start, and up to 0.8 s in one of 2,500 nodes holding
50,000 replicas, more than the half heartbeat an agent waits for its acks. Two cheap
measures:

- stored records (the contract's msgspec Structs) are not tracked by the collector at all
  (`gc=False`: frozen, made of strings, numbers and containers of them, they cannot be
  part of a reference cycle);
- once a second (`GcPolicy.tick`: the scheduler's housekeeping, or `keep_collecting`),
  the young generations are collected (cheap: only what was made since) and what
  survived is frozen (`gc.freeze()`): long-lived objects are then never scanned by the
  automatic collections, which stay short. Reference counting still frees frozen
  objects as usual; only cyclic garbage among them would wait, so every
  FULL_SECONDS everything is unfrozen and collected once.

A process whose heap is mostly made at start and never turns into cyclic garbage (a
hollow cluster) may skip the full collection (`full_seconds=math.inf`): unfreezing
brings everything frozen back to be scanned at once, about a second for 2,500 agents.

`log_long_pauses` notes any collection that holds the process LONG_PAUSE_SECONDS or
more, and `report_long_pauses` (called by every tick) logs them as warnings: the one
pause left shows in the log, where a stall that isolated nodes is looked for. The
callback only notes: a collection can run at any allocation, where writing a log
record could re-enter a stream's write.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import anyio

log = logging.getLogger(__name__)

# How often a full collection runs (the one pause left, rare).
FULL_SECONDS: Final = 600.0
# A collection that holds the process this long is logged.
LONG_PAUSE_SECONDS: Final = 0.2
# Long pauses noted and not yet logged, at most (the oldest dropped first).
PAUSES_KEPT: Final = 100


class GcPolicy:
    def __init__(self, *, full_seconds: float = FULL_SECONDS) -> None:
        self.full_seconds = full_seconds
        self._last_full: float | None = None
        self.full_collections = 0

    def tick(self, now: float) -> None:
        """Called once a second (the housekeeping) with the monotonic clock."""
        report_long_pauses()
        if self._last_full is None:
            self._last_full = now
        if now - self._last_full >= self.full_seconds:  # never when full_seconds is inf
            self._last_full = now
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
        else:
            gc.collect(1)
        gc.freeze()


def collect_now(policy: GcPolicy | None, now: float) -> None:
    """A housekeeping's once a second: the policy's tick, or (None: Python's own
    collections, for comparisons) only the long pauses reported."""
    if policy is None:
        report_long_pauses()
    else:
        policy.tick(now)


async def keep_collecting(policy: GcPolicy | None, *, every: float = 1.0) -> None:
    """`collect_now` every `every` seconds until cancelled (a process with no
    housekeeping of its own to call it from)."""
    while True:
        collect_now(policy, time.monotonic())
        await anyio.sleep(every)


class PauseLog:
    """A gc callback: notes each collection of `threshold` seconds or more; `report`
    logs them. CPython runs one collection at a time (one started while another runs,
    on any thread, is skipped without callbacks), so a start and its stop pair up."""

    def __init__(
        self,
        threshold: float = LONG_PAUSE_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.threshold = threshold
        self.clock = clock
        self.longest = 0.0
        # (generation, seconds held, objects collected, when it ended: the wall clock)
        self.pauses: deque[tuple[Any, float, Any, float]] = deque(maxlen=PAUSES_KEPT)
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.clock()
            return
        if self._started is None:
            return
        took = self.clock() - self._started
        self._started = None
        self.longest = max(self.longest, took)
        if took >= self.threshold:
            pause = (info.get("generation"), took, info.get("collected"), time.time())
            self.pauses.append(pause)

    def report(self) -> None:
        """Log the long pauses noted since the last report."""
        while self.pauses:
            generation, took, collected, ended = self.pauses.popleft()
            log.warning(
                "a garbage collection of generation %s held this process %.2f s "
                "(%s objects collected), ending at %s",
                generation,
                took,
                collected,
                time.strftime("%H:%M:%S", time.localtime(ended)) + f".{int(ended % 1 * 1000):03d}",
            )


def log_long_pauses(threshold: float = LONG_PAUSE_SECONDS) -> PauseLog:
    """Register (once per process) a PauseLog; returns it."""
    registered = _registered()
    if registered is not None:
        return registered
    pauses = PauseLog(threshold)
    gc.callbacks.append(pauses)
    return pauses


def report_long_pauses() -> None:
    """Log the long pauses the process's PauseLog noted (none registered: nothing)."""
    registered = _registered()
    if registered is not None:
        registered.report()


def _registered() -> PauseLog | None:
    for callback in gc.callbacks:
        if isinstance(callback, PauseLog):
            return callback
    return None


__all__ = [
    "FULL_SECONDS",
    "LONG_PAUSE_SECONDS",
    "GcPolicy",
    "PauseLog",
    "collect_now",
    "keep_collecting",
    "log_long_pauses",
    "report_long_pauses",
]
