"""Registers this node and keeps its Node record fresh (the heartbeat)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec
from anyio.abc import TaskStatus

from corral.kv import Bucket, Conflict, write_record
from corral.state import Node, NodeCapacity

log = logging.getLogger(__name__)


class NodeRecord:
    """The Node record this agent owns, written compare-and-set on every heartbeat."""

    def __init__(
        self,
        bucket: Bucket,
        node: Node,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self.node = node
        self.clock = clock
        self.revision: int | None = None
        self.loaded = False

    def update(
        self,
        *,
        ready: bool | None = None,
        message: str | None = None,
        capacity: NodeCapacity | None = None,
    ) -> None:
        """Change what the next heartbeat reports."""
        changes: dict[str, object] = {}
        if ready is not None:
            changes["ready"] = ready
        if message is not None:
            changes["message"] = message
        if capacity is not None:
            changes["capacity"] = capacity
        if changes:
            self.node = _replace(self.node, **changes)

    async def write(self) -> None:
        if not self.loaded:
            entry = await self.bucket.get(self.node.name)
            self.revision = None if entry is None or entry.value is None else entry.revision
            self.loaded = True
        record = _replace(self.node, heartbeat_at=self.clock())
        for _ in range(3):
            try:
                self.revision = await write_record(
                    self.bucket, self.node.name, record, self.revision
                )
                return
            except Conflict:
                entry = await self.bucket.get(self.node.name)  # re-read, then retry
                self.revision = None if entry is None or entry.value is None else entry.revision
        log.warning("node record %s kept conflicting; next heartbeat retries", self.node.name)

    async def heartbeat(
        self,
        interval: float,
        before_write: Callable[[], Awaitable[None]] | None = None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write the record now, then every `interval` seconds, until cancelled."""
        started = False
        while True:
            try:
                if before_write is not None:
                    await before_write()
                await self.write()
            except Exception:
                log.warning("heartbeat of %s failed", self.node.name, exc_info=True)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(interval)


def _replace(node: Node, **changes: object) -> Node:
    return msgspec.structs.replace(node, **changes)
