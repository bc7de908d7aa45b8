"""Keep Python's cyclic garbage collector from stalling the event loop.

The scheduler holds every placement, replica status and node of the cluster (tens of
thousands of long-lived objects). CPython's automatic full collection scans all of them
at once: 170-480 ms held in one piece at 1,000 nodes and 20,000 replicas, the largest
single wait of a request (bench/README.md, "Deciding off the event loop"). Two cheap
measures:

- stored records (the contract's msgspec Structs) are not tracked by the collector at all
  (`gc=False`: frozen, made of strings, numbers and containers of them, they cannot be
  part of a reference cycle);
- once a second (the control loop's housekeeping), the young generations are
  collected (cheap: only what was made since) and what survived is frozen
  (`gc.freeze()`): long-lived objects are then never scanned by the automatic
  collections, which stay short. Reference counting still frees frozen
  objects as usual; only cyclic garbage among them would wait, so every
  FULL_SECONDS everything is unfrozen and collected once.
"""

from __future__ import annotations

import gc
from typing import Final

# How often a full collection runs (the one pause left, rare).
FULL_SECONDS: Final = 600.0


class GcPolicy:
    def __init__(self, *, full_seconds: float = FULL_SECONDS) -> None:
        self.full_seconds = full_seconds
        self._last_full: float | None = None
        self.full_collections = 0

    def tick(self, now: float) -> None:
        """Called once a second (the housekeeping) with the monotonic clock."""
        if self._last_full is None:
            self._last_full = now
        if now - self._last_full >= self.full_seconds:
            self._last_full = now
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
        else:
            gc.collect(1)
        gc.freeze()


__all__ = ["FULL_SECONDS", "GcPolicy"]
