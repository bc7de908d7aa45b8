"""A gate for the reconcile passes of agents that share one process's cores.

A hollow cluster runs thousands of agents on one event loop. When placements arrive
for all of them at once, every agent starts a pass, and the loop runs them all before
it comes back to anything else: each node's heartbeat, its acks and its guard wait
behind the whole burst. At 2,001 nodes that made the loop up to 5 s late, and its
agents counted themselves cut off 11,185 times while placing (bench/README.md, "The
simulator's passes in turn"). Through the gate, at most `parallel` passes run at
once, in the order they asked (FIFO); the rest wait their turn, as the work of a slow
engine would, while the small, timely work (beats, acks, guards) runs between them.
A pass that removes every replica (Stopping, Retired) does not go through the gate at
all (NodeAgent._pass_turn): the time budget counts on those removals.

An agent on a machine of its own has no gate (`NodeAgent(pass_gate=None)`).
"""

from __future__ import annotations

import time

import anyio
from prometheus_client import Histogram

PASS_WAIT_SECONDS = Histogram(
    "corral_hollow_pass_wait_seconds",
    "How long a hollow node's reconcile pass waited for its turn at the process's gate",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class PassGate:
    """At most `parallel` passes at once among the agents given this gate."""

    def __init__(self, parallel: int) -> None:
        if parallel < 1:
            raise ValueError(f"a pass gate lets at least 1 pass through, not {parallel}")
        self.parallel = parallel
        self._limiter = anyio.CapacityLimiter(parallel)
        self.waiting = 0  # passes waiting for their turn now
        self.passes = 0  # passes let through
        self.waited_seconds = 0.0  # their waits, in all

    @property
    def borrowed(self) -> int:
        """Passes holding a place now."""
        return int(self._limiter.borrowed_tokens)

    async def __aenter__(self) -> None:
        began = time.monotonic()
        # A free place is taken at once: anyio's acquire yields to the loop even then,
        # and that turn would count the loop's lateness as a wait for a turn.
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            self.waiting += 1
            try:
                await self._limiter.acquire()
            finally:
                self.waiting -= 1
        waited = time.monotonic() - began
        self.passes += 1
        self.waited_seconds += waited
        PASS_WAIT_SECONDS.observe(waited)

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()
