"""How late an event loop runs what is due: a task sleeps a short while, again and
again, and records how much later than asked it woke (`corral_event_loop_late_seconds`).

A loop that is late by more than a heartbeat's share sends heartbeats late and reads
acknowledgements late, whatever the rest of the cluster does: the hollow cluster
exports it so that a benchmark can tell a simulator that fell behind from a control
plane that did (bench/README.md, "When the simulator falls behind").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import anyio
from prometheus_client import Histogram

SAMPLE_EVERY_SECONDS: Final = 0.1

LOOP_LATE = Histogram(
    "corral_event_loop_late_seconds",
    "How much later than due the event loop woke a task sleeping "
    f"{SAMPLE_EVERY_SECONDS:g} s (sampled continuously)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)


async def measure_loop_lateness(
    *,
    every: float = SAMPLE_EVERY_SECONDS,
    observe: Callable[[float], None] = LOOP_LATE.observe,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Until cancelled: sleep `every`, observe how late the wake-up was."""
    while True:
        due = clock() + every
        await anyio.sleep(every)
        observe(max(0.0, clock() - due))


__all__ = ["LOOP_LATE", "SAMPLE_EVERY_SECONDS", "measure_loop_lateness"]
