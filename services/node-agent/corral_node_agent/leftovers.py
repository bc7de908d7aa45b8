"""Leftovers of another node on this engine (docs/safety.md).

Containers of this cluster on this engine under another node's name belong to a
node that ran on this engine before: renamed, released, or gone. They are removed
when that node's record has not changed (or has been absent: released, or a read
that found nothing) for R' on this agent's clock: by then its own agent, had it
been alive but cut off, would have stopped them itself at F, and the scheduler has
replaced them. One read that finds no record is never enough.
A node whose record names another engine (two nodes sharing one engine, as in
tests) is left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from corral.natsio.kv import Bucket
from corral_node_agent.node_record import stored_node
from corral_node_agent.runtime import ObservedContainer, Runtime, RuntimeFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Seen:
    revision: int  # of that node's record (0: none)
    since: float  # monotonic: when this agent first saw that revision
    looked_at: float


def group_by_node(containers: list[ObservedContainer]) -> dict[str, list[ObservedContainer]]:
    groups: dict[str, list[ObservedContainer]] = {}
    for container in containers:
        groups.setdefault(container.node, []).append(container)
    return groups


class LeftoverSweeper:
    def __init__(
        self,
        nodes: Bucket,
        runtime: Runtime,
        *,
        silent_for: float,
        look_every: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nodes = nodes
        self.runtime = runtime
        self.silent_for = silent_for
        self.look_every = look_every
        self.monotonic = monotonic
        self._seen: dict[str, _Seen] = {}

    async def sweep(self, others: list[ObservedContainer], engine_id: str) -> None:
        if not engine_id:
            return  # this engine's id is unknown: nothing can be judged
        now = self.monotonic()
        groups = group_by_node(others)
        for gone in set(self._seen) - set(groups):
            del self._seen[gone]
        for other, group in groups.items():
            seen = self._seen.get(other)
            if seen is not None and now - seen.looked_at < self.look_every:
                continue
            try:
                entry = await self.nodes.get(other)
            except Exception as error:  # NATS trouble: look again later
                log.debug("reading node %s failed: %s", other, error)
                continue
            stored = stored_node(entry)
            if stored is not None and stored.engine_id != engine_id:
                continue
            revision = 0 if entry is None or entry.value is None else entry.revision
            since = seen.since if seen is not None and seen.revision == revision else now
            self._seen[other] = _Seen(revision, since, now)
            if now - since <= self.silent_for:
                continue
            why = f"has had no live record for {self.silent_for:g}s"
            log.warning("removing %d containers of node %s, which %s", len(group), other, why)
            for container in group:
                try:
                    await self.runtime.remove_container(container.id)
                except RuntimeFailure as error:
                    log.warning("removing %s failed: %s", container.id[:12], error)
