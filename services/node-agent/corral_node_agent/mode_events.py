"""How many of a node's mode changes become Events: all of a few, then one in a while.

A node agent reports as an Event every mode change an operator should see (Isolated,
Stopping, Held, back from them: agent._enter). A node that flaps (a judge or the
node itself overloaded, a link that comes and goes) would report every flap, and a
cluster of them at once writes thousands of Events a second into the stream that
keeps them, which is more work for the very servers that are behind: the overload
feeds itself. As Kubernetes' event spam filter does (a token bucket per source and
object: a burst, then one event per interval), each agent reports a burst of
`burst` mode changes, then one per `every` seconds; the first reported after some
were held back says how many (`held`). Only the modes a node flaps between (Isolated,
Syncing, Active) are held back: Stopping, Held, handed over and retired ask for action
and are always reported. The log keeps every change, and the Node record always says
the node's mode as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

BURST: Final = 6
EVERY_SECONDS: Final = 30.0


@dataclass
class ModeEventBudget:
    burst: int = BURST
    every: float = EVERY_SECONDS
    tokens: float = field(init=False)
    at: float | None = field(default=None, init=False)  # monotonic of the last refill
    held: int = field(default=0, init=False)  # changes not reported since the last one

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.every > 0:
            raise ValueError("a mode event budget needs a burst >= 1 and every > 0")
        self.tokens = float(self.burst)

    def take(self, now: float, *, spend_only: bool = False) -> int | None:
        """May a mode change at `now` (monotonic) be reported? None: not now (it is
        counted); otherwise how many were held back before it (0 mostly). With
        `spend_only` (a change that must be reported: Stopping, Held) always yes,
        spending a token when there is one."""
        if self.at is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.every)
        self.at = now
        if self.tokens < 1.0 and not spend_only:
            self.held += 1
            return None
        self.tokens = max(0.0, self.tokens - 1.0)
        held, self.held = self.held, 0
        return held
