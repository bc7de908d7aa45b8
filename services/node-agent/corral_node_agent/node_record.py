"""Registers this node and keeps its Node record fresh (the heartbeat).

Every agent has an `agent_id`, written in the record: random per process, or
given (`--agent-id`) by a supervisor that keeps it across restarts, so a restarted
agent recognises its own record. Whether another agent is alive is judged by
watching its record change on this agent's own clock, never by comparing the
other host's `heartbeat_at` with ours.

The heartbeat only writes: it never waits on the container engine (engine health
is reported beside it, by the agent). `last_acked` (monotonic) is the moment of
the last write NATS acknowledged: the agent's cut-off clock (docs/time-budget.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import msgspec
from anyio.abc import TaskStatus

from corral.contract import time_budget
from corral.contract.codec import decode
from corral.contract.state import Node
from corral.natsio.kv import Bucket, Conflict, Entry, write_record

log = logging.getLogger(__name__)


class NodeNameTaken(Exception):
    """Another live agent runs a node of this name."""

    def __init__(self, message: str, *, same_engine: bool) -> None:
        super().__init__(message)
        self.same_engine = same_engine


@dataclass(frozen=True, slots=True)
class Takeover:
    """Another agent wrote this node's record: who, and is it on this node's engine?"""

    agent_id: str
    same_engine: bool


@dataclass(frozen=True, slots=True)
class _Contest:
    agent_id: str
    revision: int  # of the record that named it
    since: float  # monotonic


def stored_node(entry: Entry | None) -> Node | None:
    if entry is None or entry.value is None:
        return None
    try:
        return decode(entry.value, Node)
    except msgspec.DecodeError:
        return None


async def record_changes_within(bucket: Bucket, key: str, revision: int, window: float) -> bool:
    """Does the record at `key` get rewritten (by its live writer) within `window` seconds?"""
    step = max(0.05, window / 20)
    with anyio.move_on_after(window):
        while True:
            await anyio.sleep(step)
            entry = await bucket.get(key)
            if entry is None or entry.revision != revision:
                return entry is not None and entry.value is not None
    return False


def same_engine(ours: str, theirs: str) -> bool:
    """Unknown engine ids count as the same engine: then nothing is removed."""
    return not ours or not theirs or ours == theirs


class NodeRecord:
    """The Node record this agent owns, written compare-and-set on every heartbeat."""

    def __init__(
        self,
        bucket: Bucket,
        node: Node,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        alive_window: float = time_budget.NODE_STALE_SECONDS,
        takeover_window: float = time_budget.NODE_LOST_AFTER_STOP_SECONDS,
    ) -> None:
        self.bucket = bucket
        self.node = node
        self.clock = clock
        self.monotonic = monotonic
        self.alive_window = alive_window
        self.takeover_window = takeover_window
        self._contest: _Contest | None = None  # another agent's id seen in the record
        self.revision: int | None = None
        self.loaded = False
        self.last_acked: float | None = None  # monotonic() of the last write NATS acknowledged
        self.displaced_by: Takeover | None = None
        self.on_displaced: Callable[[Takeover], None] = lambda _takeover: None

    def update(self, **changes: object) -> None:
        """Change what the next heartbeat reports (fields of Node)."""
        if changes:
            self.node = msgspec.structs.replace(self.node, **changes)

    def _is_mine(self, stored: Node) -> bool:
        """My own record: my agent id, and (when both are known) my engine: the same
        --agent-id given to agents on two hosts does not make them one agent."""
        if not stored.agent_id or stored.agent_id != self.node.agent_id:
            return False
        return not (stored.engine_id and self.node.engine_id) or (
            stored.engine_id == self.node.engine_id
        )

    def _liveness_window(self, stored: Node) -> float:
        """How long another agent's record must stay unchanged before this one takes
        the node over: on this very engine the containers are the same ones, so a few
        heartbeats; from another (or an unknown) engine, R', past the other agent's
        own stop (docs/time-budget.md)."""
        ours, theirs = self.node.engine_id, stored.engine_id
        return self.alive_window if ours and theirs and ours == theirs else self.takeover_window

    async def claim(self) -> None:
        """Read the stored record; raise NodeNameTaken when another live agent owns it."""
        entry = await self.bucket.get(self.node.name)
        stored = stored_node(entry)
        if stored is not None and self._is_mine(stored):
            log.info("node %s: the stored record is this agent's own (a restart)", self.node.name)
        elif stored is not None and stored.agent_id and entry is not None:
            window = self._liveness_window(stored)
            if await record_changes_within(self.bucket, self.node.name, entry.revision, window):
                raise NodeNameTaken(
                    f"node {self.node.name!r} is already run by another node agent "
                    f"(agent {stored.agent_id}, whose record changed within "
                    f"{window:g}s); stop it, or give this agent another name "
                    "with --node-name",
                    same_engine=same_engine(self.node.engine_id, stored.engine_id),
                )
            log.info(
                "taking node %s over from agent %s (its record did not change for %gs)",
                self.node.name,
                stored.agent_id,
                window,
            )
            entry = await self.bucket.get(self.node.name)
        self.revision = None if entry is None or entry.value is None else entry.revision
        self.loaded = True

    async def write(self) -> None:
        if self.displaced_by is not None:
            return  # another agent owns the record now: never overwrite it
        if not self.loaded:
            await self.claim()
        record = msgspec.structs.replace(self.node, heartbeat_at=self.clock())
        for _ in range(3):
            try:
                self.revision = await write_record(
                    self.bucket, self.node.name, record, self.revision
                )
                self.last_acked = self.monotonic()
                self._contest = None
                return
            except Conflict:
                entry = await self.bucket.get(self.node.name)  # re-read, then retry
                stored = stored_node(entry)
                if stored is not None and stored.agent_id and not self._is_mine(stored):
                    assert entry is not None
                    if not self._contested(stored, entry.revision):
                        return  # not proven alive yet: write nothing, look again next beat
                self.revision = None if entry is None or entry.value is None else entry.revision
        log.warning("node record %s kept conflicting; next heartbeat retries", self.node.name)

    def _contested(self, stored: Node, revision: int) -> bool:
        """Another agent's id in this node's record. Displaced only once its record is
        seen changing (that agent is alive); a record that stays as it is for the
        liveness window (a store restored from a backup, a dead agent) is taken back.
        Returns True when the record may be overwritten now."""
        now = self.monotonic()
        contest = self._contest
        if contest is None or contest.agent_id != stored.agent_id:
            self._contest = _Contest(stored.agent_id, revision, now)
            return False
        if revision != contest.revision:
            self.displaced_by = Takeover(
                stored.agent_id, same_engine(self.node.engine_id, stored.engine_id)
            )
            self.on_displaced(self.displaced_by)
            return False
        if now - contest.since <= self._liveness_window(stored):
            return False
        log.warning(
            "node %s: the record names agent %s, which has not written it for %gs: taking it back",
            self.node.name,
            stored.agent_id,
            now - contest.since,
        )
        self._contest = None
        return True

    async def release(self) -> None:
        """On a clean stop: clear agent_id, so a successor of this name starts at once."""
        if self.displaced_by is not None or self.revision is None:
            return
        record = msgspec.structs.replace(
            self.node, agent_id="", ready=False, message="node agent stopped"
        )
        try:
            self.revision = await write_record(self.bucket, self.node.name, record, self.revision)
        except Exception as error:  # Conflict or NATS gone: a successor waits out the window
            log.info("releasing node record %s failed: %s", self.node.name, error)

    async def heartbeat(
        self, interval: float, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write the record now, then every `interval` seconds, until cancelled. Each
        write is bounded by the interval, so a hung connection never delays the next."""
        started = False
        while True:
            try:
                with anyio.fail_after(max(interval * 2, 1.0)):
                    await self.write()
            except Exception as error:
                log.debug("heartbeat of %s failed: %s", self.node.name, error)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(interval)
