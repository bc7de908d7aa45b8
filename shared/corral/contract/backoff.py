"""The one back-off rule of every retry loop in corral: doubling delays, capped.

    delays = Backoff(first=0.5, most=5.0)
    while True:
        try: ...; delays.reset(); ...
        except ...: await anyio.sleep(delays.next())

A pure value with no clock and no I/O (the loops sleep), so every loop waits the
same way and a test can read the sequence: 0.5, 1, 2, 4, 5, 5, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    first: float = 0.5
    most: float = 5.0
    factor: float = 2.0
    current: float = field(default=0.0, init=False)  # the next delay; 0: not started

    def next(self) -> float:
        """The delay to wait now; each call doubles the following one, up to `most`."""
        delay = self.current or self.first
        self.current = min(delay * self.factor, self.most)
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
