"""Which lost nodes' replicas are replaced now (docs/time-budget.md, "Many nodes lost
at once").

A node judged lost (silent past R, or its engine down past E) waits here until it is
admitted; only an admitted node's loss counts in decisions (Snapshot.evictable). As
Kubernetes' node lifecycle controller does:

- replacements are rate-limited by a token bucket: up to `burst_for(nodes)` nodes at
  once (a tenth of the nodes, at least BURST_MIN), refilled at that many per
  REFILL_SECONDS. One node lost is replaced at once, as the time budget says;
- while at least DISRUPTION_MIN_NODES nodes and DISRUPTION_SHARE of all are lost at
  once, none is admitted: so many nodes going silent together is more likely trouble
  between them and the control plane (a NATS server their agents used went down, the
  control plane's host is overloaded) than that many machines failing, and replacing
  them all would start a second copy of most of the cluster. They are replaced when
  the share falls again (nodes come back), or one by one as an operator releases them
  (`corral node release NODE`: a release is never held here).

Nothing here delays a decision that removes or keeps a replica, and none starts a
second copy: a node held here keeps its replicas placed where they are.
"""

from __future__ import annotations

import math
from typing import Final

BURST_SHARE: Final = 0.1
BURST_MIN: Final = 3
REFILL_SECONDS: Final = 60.0
DISRUPTION_SHARE: Final = 0.55
DISRUPTION_MIN_NODES: Final = 3


def burst_for(nodes: int) -> int:
    """How many lost nodes may be admitted at once in a cluster of `nodes`."""
    return max(BURST_MIN, math.ceil(BURST_SHARE * nodes))


def disrupted(lost: int, nodes: int) -> bool:
    """Whether `lost` of `nodes` lost at once is a disruption (nothing is admitted)."""
    return lost >= DISRUPTION_MIN_NODES and lost >= DISRUPTION_SHARE * nodes


class EvictionGate:
    """The lost nodes, those admitted (their replicas may be replaced) and those
    waiting, in the order they were lost."""

    def __init__(self) -> None:
        self.lost: set[str] = set()
        self.admitted: set[str] = set()
        self._waiting: dict[str, None] = {}  # insertion order: first lost, first admitted
        self._tokens: float | None = None  # None: full (no pass yet)
        self._refilled_at = 0.0
        self.paused = False  # a disruption at the last admit()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def judged(self, node: str, lost: bool) -> None:
        """`node` was judged lost (silent or its engine down), or not."""
        if not lost:
            self.forget(node)
        elif node not in self.lost:
            self.lost.add(node)
            if node not in self.admitted:
                self._waiting[node] = None

    def forget(self, node: str) -> None:
        """`node` is back, or gone from the books: neither lost nor admitted."""
        self.lost.discard(node)
        self.admitted.discard(node)
        self._waiting.pop(node, None)

    def admit(self, now: float, nodes: int) -> list[str]:
        """Admit the waiting nodes the bucket allows now, in a cluster of `nodes` (none
        during a disruption); returns those admitted by this call."""
        burst = burst_for(nodes)
        if self._tokens is None:
            self._tokens = float(burst)
        else:
            refill = max(0.0, now - self._refilled_at) * burst / REFILL_SECONDS
            self._tokens = min(float(burst), self._tokens + refill)
        self._refilled_at = now
        self.paused = disrupted(len(self.lost), nodes)
        if self.paused:
            return []
        admitted = []
        while self._waiting and self._tokens >= 1:
            node = next(iter(self._waiting))
            del self._waiting[node]
            self._tokens -= 1
            self.admitted.add(node)
            admitted.append(node)
        return admitted


__all__ = ["EvictionGate", "burst_for", "disrupted"]
