"""Is the placements watch current? What the judges' acks say (docs/safety.md,
"Placements must be current").

Every heartbeat ack names the newest revision of this node's placements the judge has
seen or written (HeartbeatAck.placements_revision). A current watch delivers it soon;
a revision told and not delivered for `stale_watch_after` means the watch stalled,
and the agent reads its placements afresh. The revisions told before a new watch
started are in that watch's replay (or were purged, being old), so they are not
owed by it. Nothing is written for this: the acks come anyway.

A watch kept through an isolation is proven current again (`proves`) by a revision
told in answer to a beat sent after the isolation began that the watch has
delivered: everything the judges had seen or written of this node by then came
through it (or by an echo: NodeAgent._confirm_kept_watch).

When no judge has told a revision for a while (no acks, or only from judges too old
to say), the agent proves its watch with an echo key instead (kv.keep_echoing): see
NodeAgent._watch_is_stale.
"""

from __future__ import annotations

from collections import deque
from typing import Final

# Revisions owed at once: more (a watch behind on many writes) fold into the newest,
# keeping the time it was first owed, so the limit still counts from the oldest.
MOST_OWED: Final = 64


class WatchProof:
    def __init__(self, told_at: float | None = None) -> None:
        self._owed: deque[tuple[int, float]] = deque()  # (revision, told at), ascending
        self._newest_told = 0
        self._baseline = 0  # told before the present watch started: in its replay
        self.told_at = told_at  # when a judge last told a revision (not below the newest)
        # When the last beat every judge answered with a revision was sent (never from
        # a reset): their answers are newer than that moment.
        self.acked_at: float | None = None

    def told(self, revision: int, now: float, sent: float | None = None) -> bool:
        """A judge's ack said the placements are at `revision` (-1: it did not say);
        `sent`: when the beat was sent, given only when every judge answered it naming
        a revision (only such a beat proves a kept watch: `proves`). True when the
        watch owes a revision now and owed none before (the guard should look at its
        new deadline)."""
        if revision < self._newest_told:
            # A judge behind the others, or a store that went back (restored under the
            # same identity): not telling, so the agent echoes until revisions pass it.
            return False
        self.told_at = now
        if sent is not None:
            self.acked_at = sent
        if revision <= max(self._newest_told, self._baseline):
            return False
        self._newest_told = revision
        first = not self._owed
        if len(self._owed) >= MOST_OWED:
            _, since = self._owed.pop()
            self._owed.append((revision, since))
        else:
            self._owed.append((revision, now))
        return first

    def mark(self) -> int:
        """Taken before a new watch starts: every revision told until now is in its
        replay."""
        return self._newest_told

    def restarted(self, mark: int) -> None:
        """The watch started after `mark` was taken delivered its replay."""
        self._baseline = max(self._baseline, mark)
        self._settle(self._baseline)

    def owed_since(self, delivered: int) -> float | None:
        """When the oldest revision told and not yet delivered (the watch has delivered
        up to `delivered`) was told; None: the watch owes nothing."""
        self._settle(delivered)
        return self._owed[0][1] if self._owed else None

    def proves(self, since: float, delivered: int) -> bool:
        """A judge told a revision in answer to a beat sent after `since` (strictly),
        and the watch, having delivered up to `delivered`, owes none: it missed nothing
        the judges had seen or written of this node after `since`."""
        return (
            self.acked_at is not None
            and self.acked_at > since
            and self.owed_since(delivered) is None
        )

    def telling(self, now: float, within: float) -> bool:
        """A judge told a revision within the last `within` seconds."""
        return self.told_at is not None and now - self.told_at <= within

    def _settle(self, revision: int) -> None:
        while self._owed and self._owed[0][0] <= revision:
            self._owed.popleft()
