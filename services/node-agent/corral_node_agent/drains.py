"""This node's drain records (docs/rollouts.md, "Graceful stops").

netmgr writes `ReplicaDrain` at `corral_replica_drains[<node>.<namespace>.<replica>]`
once a replica going away has left every Service's endpoints on every node; the agent
signals that replica's container only after it, or after its drain timeout. One watch
per agent, filtered on this node's keys, started when its first graceful stop begins
(an agent that never stops a replica never watches), kept afterwards and made again
when it breaks. A fenced agent waits for no drain: `cut_short` ends every wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from corral.contract import names
from corral.natsio.kv import Bucket

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


class DrainBook:
    def __init__(self, node: str, bucket: Bucket | None) -> None:
        self.node = node
        self.bucket = bucket
        # The agent's task group's start_soon (set by the agent when it runs).
        self.spawn: Spawn | None = None
        self.drained: set[str] = set()  # placement keys with a drain record now
        self.watches = 0  # watches started (tests count them)
        self._watching = False
        self._changed = anyio.Event()
        self._cut_short = False

    def cut_short(self) -> None:
        """The agent fenced itself: every wait ends now, and none begins."""
        self._cut_short = True
        self._wake()

    def resume(self) -> None:
        """The agent acts on its placements again: stops wait for their drain."""
        self._cut_short = False

    async def wait(self, key: str, seconds: float) -> bool:
        """Wait up to `seconds` for the drain record at `key`; True once it is there.
        Without a drains bucket there is nothing to wait for (True at once); cut short
        (fenced): False at once."""
        if self.bucket is None:
            return True
        self._start_watch()
        with anyio.move_on_after(max(0.0, seconds)):
            while not self._cut_short and key not in self.drained:
                changed = self._changed
                await changed.wait()
        return key in self.drained and not self._cut_short

    def _start_watch(self) -> None:
        if self._watching or self.spawn is None:
            return
        self._watching = True
        self.spawn(self._watch_forever)

    async def _watch_forever(self) -> None:
        assert self.bucket is not None
        while True:
            try:
                self.watches += 1
                async for entry in self.bucket.watch(names.placement_prefix(self.node)):
                    if entry is None:
                        continue
                    if entry.value is None:
                        self.drained.discard(entry.key)
                    else:
                        self.drained.add(entry.key)
                        self._wake()
            except Exception as error:  # NATS trouble: the stops wait out their timeout
                log.info("the drains watch of %s broke: %s", self.node, error)
            await anyio.sleep(_RETRY_SECONDS)

    def _wake(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
