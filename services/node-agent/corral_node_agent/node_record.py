"""Registers this node, proves it alive (the heartbeat) and writes its Node record
when the record's content changes.

Every agent has an `agent_id`, written in the record: random per process, or
given (`--agent-id`) by a supervisor that keeps it across restarts, so a restarted
agent recognises its own record. Whether another agent is alive is judged by
hearing its heartbeats, or watching its record change, on this agent's own clock,
never by comparing the other host's `heartbeat_at` with ours.

Each heartbeat is a request on core NATS (corral_node_agent.heartbeat_link) that
every scheduler acknowledges. When every judge alive answered, the agent is proven
heard and writes nothing unless the record changed; otherwise (no scheduler, one
that does not hear it, no link) it writes the record, which the judges see through
their watch of the nodes bucket, as before. `last_acked` (monotonic) is the moment
of the last proof: the sending of a beat every judge acknowledged, or a record
write NATS acknowledged. It is the agent's cut-off clock (docs/time-budget.md).
The heartbeat never waits on the container engine (engine health is reported
beside it, by the agent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import anyio
import msgspec
from anyio.abc import TaskStatus

from corral.contract import time_budget
from corral.contract.codec import decode
from corral.contract.events import Heartbeat, HeartbeatAck
from corral.contract.state import Node
from corral.natsio.kv import Bucket, Conflict, Entry, write_record
from corral.natsio.service import RefusedToStart
from corral_node_agent import metrics
from corral_node_agent.heartbeat_link import HeartbeatLink, enough, is_other_agent

log = logging.getLogger(__name__)


class NodeNameTaken(RefusedToStart):
    """Another live agent runs a node of this name: the process says so in one line and
    exits 1 (corral.natsio.service.service_main), no traceback."""

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
        link: HeartbeatLink | None = None,
    ) -> None:
        self.bucket = bucket
        self.link = link
        self.seq = 0  # heartbeats sent by this process
        self.written: Node | None = None  # the content last written (heartbeat_at aside)
        self.writes = 0  # record writes acknowledged (tests, benchmarks)
        self.late_proofs = 0  # beats proven by acks that came after the wait (_proven_late)
        self._take_back = False  # the judges' acks say: write the record back now
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
        # Every beat's acks, enough or not, and when the beat was sent (monotonic): the
        # agent reads what they say of its placements (corral_node_agent.watch_proof).
        self.on_acks: Callable[[list[HeartbeatAck], float], None] = lambda _acks, _sent: None

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

    def _liveness_window(self, engine_id: str) -> float:
        """How long another agent must stay silent (its record unchanged, its heartbeat
        unheard) before this one takes the node over: on this very engine the
        containers are the same ones, so a few heartbeats; from another (or an
        unknown) engine, R', past the other agent's own stop (docs/time-budget.md)."""
        ours = self.node.engine_id
        return (
            self.alive_window if ours and engine_id and ours == engine_id else self.takeover_window
        )

    async def claim(self) -> None:
        """Read the stored record; raise NodeNameTaken when another live agent owns it."""
        entry = await self.bucket.get(self.node.name)
        stored = stored_node(entry)
        if stored is not None and self._is_mine(stored):
            log.info("node %s: the stored record is this agent's own (a restart)", self.node.name)
        elif stored is not None and stored.agent_id and entry is not None:
            window = self._liveness_window(stored.engine_id)
            alive = await self._another_alive(entry.revision, window)
            if alive is not None:
                engine_id, how = alive
                raise NodeNameTaken(
                    f"node {self.node.name!r} is already run by another node agent "
                    f"(agent {stored.agent_id}, whose {how} within "
                    f"{window:g}s); stop it, or give this agent another name "
                    "with --node-name",
                    same_engine=same_engine(self.node.engine_id, engine_id or stored.engine_id),
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

    async def _another_alive(self, revision: int, window: float) -> tuple[str, str] | None:
        """Within `window`: another agent's heartbeat heard on this node's subject, or
        the record rewritten. Returns (its engine id when known, how it showed)."""
        found: tuple[str, str] | None = None
        async with anyio.create_task_group() as tg:

            async def by_record() -> None:
                nonlocal found
                if await record_changes_within(self.bucket, self.node.name, revision, window):
                    found = found or ("", "record changed")
                    tg.cancel_scope.cancel()

            async def by_heartbeat() -> None:
                nonlocal found
                assert self.link is not None
                try:
                    heard = await self.link.other_agent(
                        self.node.name, self.node.agent_id, self.node.engine_id, window
                    )
                except Exception as error:
                    # An idle agent proven by its acks never rewrites its record, so
                    # the record alone cannot tell it is dead: a listen that failed
                    # counts as "alive" (the claim is refused, and retried).
                    log.info("listening to the heartbeats of %s failed: %s", self.node.name, error)
                    found = found or ("", f"heartbeats could not be listened to ({error})")
                    tg.cancel_scope.cancel()
                    return
                if heard is not None:
                    found = found or (heard.engine_id, "heartbeat was heard")
                    tg.cancel_scope.cancel()

            tg.start_soon(by_record)
            if self.link is not None:
                tg.start_soon(by_heartbeat)
        return found

    async def beat(self, wait: float) -> None:
        """One heartbeat: prove this agent alive to every judge (acks within `wait`)
        and, beside it, write the record when its content changed (a hung write never
        holds the heartbeat back); when not every judge answered, write the record
        (the judges then see the write through their nodes watch)."""
        if self.displaced_by is not None:
            return  # another agent owns the node now: neither beat nor write
        if not self.loaded:
            await self.claim()
        if self.link is None:
            await self.write()
            return
        link = self.link
        wrote = False

        async def write_change() -> None:
            nonlocal wrote
            try:
                await self.write()
                wrote = True
            except Exception as error:  # the fallback below, or the next beat, retries
                log.debug("writing the record of %s failed: %s", self.node.name, error)

        if self.node != self.written:
            async with anyio.create_task_group() as tg:
                tg.start_soon(write_change)
                proven = await self._send(link, wait)
        else:  # the usual beat: no task group to make (a hollow cluster beats per node)
            proven = await self._send(link, wait)
        if proven or self.displaced_by is not None:
            return
        if self._take_back or not wrote:
            self._take_back = False
            await self.write()

    async def _send(self, link: HeartbeatLink, wait: float) -> bool:
        """One heartbeat and its acks: is this agent proven heard (last_acked set)?"""
        self.seq += 1
        sent = self.monotonic()
        try:
            acks = await link.beat(self._heartbeat(), wait, partial(self._proven_late, sent))
        except Exception as error:  # NATS trouble: the record write decides
            log.debug("heartbeat of %s not sent: %s", self.node.name, error)
            acks = []
        self.on_acks(acks, sent)
        proven = self._judged(acks)
        if proven and (self.last_acked is None or sent > self.last_acked):
            # Proof counts from the sending: every judge heard it after that.
            self.last_acked = sent
        return proven

    def _proven_late(self, sent: float, acks: list[HeartbeatAck]) -> None:
        """Enough acks of the beat sent at `sent` came after the wait: every judge heard
        it after `sent`, which is all the cut-off clock needs (its other news, a
        contest or a revision told, waits for a beat answered in time). So a judge or
        a loop slowed down for a moment costs a record write, not the agent's proof."""
        if self.displaced_by is not None or not enough(acks) or self._naming_others(acks):
            return
        if self.last_acked is None or sent > self.last_acked:
            self.last_acked = sent
            self.late_proofs += 1
            metrics.HEARTBEATS_PROVEN_LATE.inc()

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(
            node=self.node.name,
            agent_id=self.node.agent_id,
            engine_id=self.node.engine_id,
            seq=self.seq,
            ready=self.node.ready,
            mode=self.node.mode,
        )

    def _naming_others(self, acks: list[HeartbeatAck]) -> list[HeartbeatAck]:
        """The acks whose judge sees another agent in this node's record."""
        me, my_engine = self.node.agent_id, self.node.engine_id
        return [
            a for a in acks if is_other_agent(a.record_agent_id, a.record_engine_id, me, my_engine)
        ]

    def _judged(self, acks: list[HeartbeatAck]) -> bool:
        """What the judges' acks say: True when every judge heard this agent and the
        record is its own as they see it. An ack naming another agent in the record
        is a contest (displaced when the judge also hears that agent, or sees its
        record change; taken back after the liveness window)."""
        if not enough(acks):
            return False
        others = self._naming_others(acks)
        if not others:
            self._contest = None
            return True
        ack = max(others, key=lambda a: a.record_revision)
        if ack.record_agent_live:
            self._displace(ack.record_agent_id, ack.record_engine_id)
            return False
        if self._contested(ack.record_agent_id, ack.record_engine_id, ack.record_revision):
            self.revision = ack.record_revision  # taken back by the write that follows
            self._take_back = True
        return False

    async def write(self) -> None:
        if self.displaced_by is not None:
            return  # another agent owns the record now: never overwrite it
        if not self.loaded:
            await self.claim()
        content = self.node
        record = msgspec.structs.replace(content, heartbeat_at=self.clock())
        for _ in range(3):
            try:
                self.revision = await write_record(
                    self.bucket, self.node.name, record, self.revision
                )
                self.last_acked = self.monotonic()
                self.written = content
                self.writes += 1
                self._contest = None
                return
            except Conflict:
                entry = await self.bucket.get(self.node.name)  # re-read, then retry
                stored = stored_node(entry)
                if stored is not None and stored.agent_id and not self._is_mine(stored):
                    assert entry is not None
                    if not self._contested(stored.agent_id, stored.engine_id, entry.revision):
                        return  # not proven alive yet: write nothing, look again next beat
                self.revision = None if entry is None or entry.value is None else entry.revision
        log.warning("node record %s kept conflicting; next heartbeat retries", self.node.name)

    def _displace(self, agent_id: str, engine_id: str) -> None:
        self.displaced_by = Takeover(agent_id, same_engine(self.node.engine_id, engine_id))
        self.on_displaced(self.displaced_by)

    def _contested(self, agent_id: str, engine_id: str, revision: int) -> bool:
        """Another agent's id in this node's record. Displaced only once its record is
        seen changing (that agent is alive); a record that stays as it is for the
        liveness window (a store restored from a backup, a dead agent) is taken back.
        Returns True when the record may be overwritten now."""
        now = self.monotonic()
        contest = self._contest
        if contest is None or contest.agent_id != agent_id:
            self._contest = _Contest(agent_id, revision, now)
            return False
        if revision != contest.revision:
            self._displace(agent_id, engine_id)
            return False
        if now - contest.since <= self._liveness_window(engine_id):
            return False
        log.warning(
            "node %s: the record names agent %s, which has not written it for %gs: taking it back",
            self.node.name,
            agent_id,
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
        """Beat now, then every `interval` seconds, until cancelled. Each beat (its
        acks, then a write when due) is bounded, so a hung connection never delays the
        next."""
        started = False
        while True:
            try:
                # asyncio's own timeout and sleep, not anyio's: nats-py runs on asyncio
                # only, and a hollow cluster beats once a second per node in one loop,
                # where anyio's cancel scope and backend lookups were about a seventh of an
                # idle node's busy time (bench/README.md, "What a node costs when nothing
                # changes"). The bound cancels once, as asyncio's do.
                async with asyncio.timeout(max(interval * 2, 1.0)):
                    await self.beat(wait=min(time_budget.ACK_WAIT_SECONDS, interval / 2))
            except Exception as error:
                log.debug("heartbeat of %s failed: %s", self.node.name, error)
            if not started:
                started = True
                task_status.started()
            await asyncio.sleep(interval)
