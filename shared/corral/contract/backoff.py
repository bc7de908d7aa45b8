"""The one back-off rule of every retry loop in corral: doubling delays, capped.

    delays = Backoff(first=0.5, most=5.0)
    while True:
        try: ...; delays.reset(); ...
        except ...: await anyio.sleep(delays.next())

A pure value with no clock and no I/O (the loops sleep), so every loop waits the
same way and a test can read the sequence: 0.5, 1, 2, 4, 5, 5, ...

`spread` scatters each delay around that sequence (0.5: from half to one and a half
times it). Loops that fail together, as every node's watch does when their NATS server
comes back, then do not retry together and meet the server as one wave each time
(as client-go's reflector and AWS' "jitter" advice do).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

# The spread of retry loops that many processes run at once (every node's watches).
HERD_SPREAD: Final = 0.5


@dataclass
class Backoff:
    first: float = 0.5
    most: float = 5.0
    factor: float = 2.0
    spread: float = 0.0  # each delay drawn from [d * (1 - spread), d * (1 + spread)]
    draw: Callable[[], float] = field(default=random.random, repr=False)  # in [0, 1)
    current: float = field(default=0.0, init=False)  # the next delay; 0: not started

    def __post_init__(self) -> None:
        if not 0.0 <= self.spread < 1.0:
            raise ValueError(f"spread {self.spread}: give 0 (none) up to, not including, 1")

    def next(self) -> float:
        """The delay to wait now; each call doubles the following one, up to `most`,
        scattered by `spread`."""
        delay = self.current or self.first
        self.current = min(delay * self.factor, self.most)
        if self.spread:
            delay *= 1.0 - self.spread + 2.0 * self.spread * self.draw()
        return delay

    def reset(self) -> None:
        """Things went well: the next failure waits `first` again."""
        self.current = 0.0

    @staticmethod
    def after_failures(failures: int, *, first: float, most: float, factor: float = 2.0) -> float:
        """The delay after `failures` consecutive failures, none before the first:
        0, first, first*factor, ... capped at `most` (for state kept as a count)."""
        if failures <= 0:
            return 0.0
        # The exponent is capped: a count that grows for days never overflows.
        return float(min(most, first * factor ** min(failures - 1, 64)))
