"""This node's drain records (docs/rollouts.md, "Graceful stops").

netmgr writes `ReplicaDrain` at `corral_replica_drains[<node>.<namespace>.<replica>]`
once a replica going away has left every Service's endpoints on every node; the agent
signals that replica's container only after it, or after its drain timeout. One watch
per agent, filtered on this node's keys, started when a graceful stop begins (an agent
that never stops a replica never watches), made again when it breaks, and ended once
no stop has waited for IDLE_SECONDS (a rollout's stops come in bursts; between them a
watch per node would be a consumer per node on the server for good). A fenced agent
waits for no drain: `cut_short` ends every wait.

No netmgr, no drain: when netmgr's lease record (corral_leases, `lease.netmgr`) was
never written, no netmgr ever ran, nothing writes drain records and no Service sends
traffic through corral's rules, so a stop waits for nothing (a cluster run without
netmgr, the scheduler's own tests). A netmgr that stopped cleanly leaves the record with
no holder and one that died leaves it held: both count as running (it is restarting or
failing over, and the node parts' rules are still in force), so stops wait for their
drain, at most the drain timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from corral.contract import names
from corral.natsio.kv import Bucket
from corral.natsio.lease import lease_key

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0
# The watch ends once no stop has waited for this long.
IDLE_SECONDS = 60.0

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


class DrainBook:
    def __init__(
        self,
        node: str,
        bucket: Bucket | None,
        leases: Bucket | None = None,
        *,
        idle_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.idle_seconds = IDLE_SECONDS if idle_seconds is None else idle_seconds
        self.clock = clock
        self.bucket = bucket
        self.leases = leases  # None: always wait (no way to tell whether netmgr runs)
        # The agent's task group's start_soon (set by the agent when it runs).
        self.spawn: Spawn | None = None
        self.drained: set[str] = set()  # placement keys with a drain record now
        self.watches = 0  # watches started (tests count them)
        self._watching = False
        self._waiting = 0  # stops waiting for their drain now
        self._idle_since = clock()  # when the last of them ended
        self._generation = 0  # of the watch running now: an ended one changes nothing
        self._changed = anyio.Event()
        self._cut_short = False

    @property
    def watching(self) -> bool:
        """Whether the watch runs (or is being made again after it broke)."""
        return self._watching

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
        if self.bucket is None or not await self._netmgr_running():
            return True
        self._waiting += 1
        try:
            self._start_watch()
            with anyio.move_on_after(max(0.0, seconds)):
                while not self._cut_short and key not in self.drained:
                    changed = self._changed
                    await changed.wait()
            return key in self.drained and not self._cut_short
        finally:
            self._waiting -= 1
            self._idle_since = self.clock()

    async def _netmgr_running(self) -> bool:
        """Whether netmgr is part of the cluster (its lease record is there, held or handed
        back); True when it cannot be told."""
        if self.leases is None:
            return True
        try:
            entry = await self.leases.get(lease_key("netmgr"))
        except Exception as error:  # NATS trouble: wait, bounded by the drain timeout
            log.info("could not read netmgr's lease: %s", error)
            return True
        return entry is not None and entry.value is not None

    def _start_watch(self) -> None:
        if self._watching or self.spawn is None:
            return
        self._watching = True
        self._generation += 1
        self.drained.clear()  # the new watch's replay says which are there now
        self.spawn(self._watch_while_used)

    async def _watch_while_used(self) -> None:
        generation = self._generation
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_forever, generation)
            while self._waiting or self.clock() - self._idle_since < self.idle_seconds:
                # A stop waiting now sets _idle_since when it ends: a whole period after.
                left = self._idle_since + self.idle_seconds - self.clock()
                await anyio.sleep(self.idle_seconds if self._waiting else max(0.05, left))
            # Ended with no await since the check: a stop that begins now starts another.
            self._watching = False
            tg.cancel_scope.cancel()

    async def _watch_forever(self, generation: int) -> None:
        assert self.bucket is not None
        while True:
            try:
                self.watches += 1
                async for entry in self.bucket.watch(names.placement_prefix(self.node)):
                    if entry is None or generation != self._generation:
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
