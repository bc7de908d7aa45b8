"""Registers this node and keeps its Node record fresh (the heartbeat).

Every agent has an `agent_id`, written in the record: random per process, or
given (`--agent-id`) by a supervisor that keeps it across restarts, so a restarted
agent recognises its own record and fresh heartbeat. An agent refuses to start
when the record of its name carries another agent's id and a fresh heartbeat,
and stops writing (it is "displaced") when a conflicting write turns out to come
from another agent: two agents never run one node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec
from anyio.abc import TaskStatus

from corral.codec import decode
from corral.kv import Bucket, Conflict, Entry, write_record
from corral.state import Node, NodeCapacity

log = logging.getLogger(__name__)

FRESH_SECONDS = 10.0  # a heartbeat younger than this: its agent is alive


class NodeNameTaken(Exception):
    """Another live agent runs a node of this name."""


def _stored_node(entry: Entry | None) -> Node | None:
    if entry is None or entry.value is None:
        return None
    try:
        return decode(entry.value, Node)
    except msgspec.DecodeError:
        return None


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
        self.last_written: float | None = None  # clock() of the last write that succeeded
        self.displaced_by: str | None = None  # the agent_id that took the record over
        self.on_displaced: Callable[[str], None] = lambda _other: None

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

    async def claim(self) -> None:
        """Read the stored record; raise NodeNameTaken when another live agent owns it."""
        entry = await self.bucket.get(self.node.name)
        stored = _stored_node(entry)
        if stored is not None and stored.agent_id and stored.agent_id == self.node.agent_id:
            log.info("node %s: the stored record is this agent's own (a restart)", self.node.name)
        elif stored is not None and stored.agent_id:
            age = self.clock() - stored.heartbeat_at
            if age < FRESH_SECONDS:
                raise NodeNameTaken(
                    f"node {self.node.name!r} is already run by another node agent "
                    f"(agent {stored.agent_id}, heartbeat {max(age, 0.0):.1f}s ago); "
                    f"stop it, or give this agent another name with --node-name"
                )
            log.info(
                "taking node %s over from agent %s (silent for %.0fs)",
                self.node.name,
                stored.agent_id,
                age,
            )
        self.revision = None if entry is None or entry.value is None else entry.revision
        self.loaded = True

    async def write(self) -> None:
        if self.displaced_by is not None:
            return  # another agent owns the record now: never overwrite it
        if not self.loaded:
            await self.claim()
        record = _replace(self.node, heartbeat_at=self.clock())
        for _ in range(3):
            try:
                self.revision = await write_record(
                    self.bucket, self.node.name, record, self.revision
                )
                self.last_written = self.clock()
                return
            except Conflict:
                entry = await self.bucket.get(self.node.name)  # re-read, then retry
                stored = _stored_node(entry)
                if stored is not None and stored.agent_id not in ("", self.node.agent_id):
                    self.displaced_by = stored.agent_id
                    self.on_displaced(stored.agent_id)
                    return
                self.revision = None if entry is None or entry.value is None else entry.revision
        log.warning("node record %s kept conflicting; next heartbeat retries", self.node.name)

    async def release(self) -> None:
        """On a clean stop: clear agent_id, so a successor of this name starts at once."""
        if self.displaced_by is not None or self.revision is None:
            return
        record = _replace(self.node, agent_id="", ready=False, message="node agent stopped")
        try:
            self.revision = await write_record(self.bucket, self.node.name, record, self.revision)
        except Exception as error:  # Conflict or NATS gone: a successor waits out the 10 s
            log.info("releasing node record %s failed: %s", self.node.name, error)

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
