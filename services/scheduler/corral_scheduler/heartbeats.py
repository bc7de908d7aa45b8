"""The scheduler as a judge of node heartbeats on core NATS (docs/time-budget.md).

Every agent requests on corral.heartbeat.<node> every heartbeat; every scheduler
subscribes to all of them (no queue group: each judge hears every node), notes when
it heard each node on its own clock, and answers with a HeartbeatAck: the node's
record as it sees it, how many judges it knows alive, so an agent counts itself
heard only when all of them answered (otherwise it writes its record, which every
judge sees through its nodes watch), and the newest revision of the node's placements
it has seen or written, which the agent's placements watch must bring it soon.

A judge that misses heartbeats must not take the silence for dead nodes. Its view of
this feed is stale while:
- its own echo (a heartbeat it publishes every ECHO_SECONDS through its server, heard
  through the same subscription) is late;
- the sequence numbers of many nodes jumped within a short while (messages were
  dropped, e.g. a slow consumer), or nats-py reported this subscription a slow
  consumer: then for GAP_STALE_SECONDS.
The control loop judges no node lost while any of its feeds is stale.

Acks go out in batches (ACK_BATCH_SECONDS): nats-py writes to the socket whatever was
published before its flusher runs, so one batch is one write, where an ack sent as it
is made is one write each (at 1,001 nodes a third of this judge's time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import Heartbeat, HeartbeatAck
from corral.contract.state import Node
from corral.contract.time_budget import ECHO_LATE_SECONDS, HEARTBEAT_SECONDS, NODE_LOST_SECONDS
from corral.natsio import bus

log = logging.getLogger(__name__)

ECHO_SECONDS: Final = 1.0
# The echo not heard for ECHO_LATE_SECONDS (time_budget) makes the feed stale: at most
# that long after the feed stalled. A node heard until the stall beat at most a heartbeat
# before it, so its silence passes R no sooner than R - HEARTBEAT after the stall: later
# (the assert).
# Sequence gaps of this share of the nodes heard (and at least GAP_MIN_NODES) within
# GAP_WINDOW_SECONDS make the feed stale for GAP_STALE_SECONDS.
GAP_WINDOW_SECONDS: Final = 2.0
GAP_MIN_NODES: Final = 3
GAP_SHARE: Final = 0.01
GAP_STALE_SECONDS: Final = 3.0
# The subscription buffers this much before nats-py drops (a slow consumer): 5,000
# nodes beating every second fill it in minutes, not seconds.
PENDING_MSGS: Final = 1_000_000
PENDING_BYTES: Final = 512 * 1024 * 1024
# Acks made within this long are sent together. An ack is at most this much later: an
# agent counts itself heard from when it sent the beat, and waits half a heartbeat for
# its acks (time_budget.ACK_WAIT_SECONDS).
ACK_BATCH_SECONDS: Final = 0.01
# An agent heard within this long is live (a successor that took a node over).
AGENT_LIVE_SECONDS: Final = 3.0
# What is forgotten of nodes not heard for this long.
FORGET_SECONDS: Final = 120.0

assert max(ECHO_SECONDS, HEARTBEAT_SECONDS) + ECHO_LATE_SECONDS < NODE_LOST_SECONDS, (
    "a stalled heartbeat feed would lose nodes"
)


@dataclass(slots=True)
class _Heard:
    agent_id: str
    seq: int
    at: float


class HeartbeatJudge:
    def __init__(
        self,
        owner: str,
        *,
        on_heard: Callable[[str, float], None],
        record_of: Callable[[str], tuple[Node | None, int | None]],
        judges: Callable[[], int],
        may_ack: Callable[[], bool],
        placements_revision_of: Callable[[str], int] = lambda _node: -1,
        monotonic: Callable[[], float] = time.monotonic,
        ack_batch_seconds: float = ACK_BATCH_SECONDS,
    ) -> None:
        self.owner = owner
        self.ack_batch_seconds = ack_batch_seconds
        self.placements_revision_of = placements_revision_of
        self.on_heard = on_heard
        self.record_of = record_of
        self.judges = judges
        self.may_ack = may_ack
        self.monotonic = monotonic
        self.heard: dict[str, _Heard] = {}
        # (node, agent, engine) -> when: the same agent id on two engines is two agents
        self.agents_heard: dict[tuple[str, str, str], float] = {}
        self.agent_ids_heard: dict[tuple[str, str], float] = {}  # (node, agent) -> when
        self.echo_at: float | None = None
        self.started_at = monotonic()
        self._gaps: dict[str, float] = {}  # node -> when its seq last jumped
        self.stale_until = float("-inf")
        self.stale_reason = ""
        self.received = 0
        self.gaps_seen = 0
        self._subscription: Subscription | None = None
        self._outbox: list[tuple[str, bytes]] = []  # (reply subject, ack) not sent yet
        self._acks_waiting = anyio.Event()

    # Judging (pure, on the judge's clock).

    def receive(self, heartbeat: Heartbeat, now: float) -> HeartbeatAck | None:
        """Note a node's heartbeat; the ack to send, or None (not allowed to vouch now)."""
        if heartbeat.node == names.HEARTBEAT_ECHO:
            if heartbeat.agent_id == self.owner:
                self.echo_at = now
            return None
        self.received += 1
        node = heartbeat.node
        before = self.heard.get(node)
        if before is not None and before.agent_id == heartbeat.agent_id:
            if heartbeat.seq > before.seq + 1:
                self._gap(node, now)
        self.heard[node] = _Heard(heartbeat.agent_id, heartbeat.seq, now)
        self.agents_heard[(node, heartbeat.agent_id, heartbeat.engine_id)] = now
        self.agent_ids_heard[(node, heartbeat.agent_id)] = now
        self.on_heard(node, now)
        if not self.may_ack():
            return None
        record, revision = self.record_of(node)
        agent = record.agent_id if record is not None else ""
        engine = record.engine_id if record is not None else ""
        live_at = self._agent_heard(node, agent, engine) if agent else None
        return HeartbeatAck(
            judge=self.owner,
            record_agent_id=agent,
            record_revision=revision or 0,
            record_engine_id=record.engine_id if record is not None else "",
            record_agent_live=live_at is not None and now - live_at <= AGENT_LIVE_SECONDS,
            judges=self.judges(),
            placements_revision=self.placements_revision_of(node),
        )

    def _agent_heard(self, node: str, agent: str, engine: str) -> float | None:
        """When the agent named in a record was last heard: that agent on that engine
        (any engine when the record names none)."""
        if engine:
            return self.agents_heard.get((node, agent, engine))
        return self.agent_ids_heard.get((node, agent))

    def _gap(self, node: str, now: float) -> None:
        self.gaps_seen += 1
        self._gaps[node] = now
        for gone in [n for n, at in self._gaps.items() if now - at > GAP_WINDOW_SECONDS]:
            del self._gaps[gone]
        if len(self._gaps) >= max(GAP_MIN_NODES, GAP_SHARE * len(self.heard)):
            self._stale(now, f"heartbeats of {len(self._gaps)} nodes were missed")

    def slow_consumer(self, now: float) -> None:
        self._stale(now, "the heartbeat subscription dropped messages (slow consumer)")

    def _stale(self, now: float, reason: str) -> None:
        if now >= self.stale_until:
            log.warning("heartbeat feed stale: %s; no node is judged lost meanwhile", reason)
        self.stale_until = now + GAP_STALE_SECONDS
        self.stale_reason = reason

    def late(self, now: float) -> str | None:
        """Why this judge's view of the heartbeats is stale now, or None: fresh."""
        if now < self.stale_until:
            return self.stale_reason
        if self.echo_at is None or now - self.echo_at > ECHO_LATE_SECONDS:
            return "the heartbeat echo is late"
        return None

    def forget(self, now: float) -> None:
        for node in [n for n, h in self.heard.items() if now - h.at > FORGET_SECONDS]:
            del self.heard[node]
        for key in [k for k, at in self.agents_heard.items() if now - at > FORGET_SECONDS]:
            del self.agents_heard[key]
        for pair in [k for k, at in self.agent_ids_heard.items() if now - at > FORGET_SECONDS]:
            del self.agent_ids_heard[pair]

    # On NATS.

    async def run(
        self, nc: NATS, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        subscription = await nc.subscribe(
            names.heartbeat_subject("*"),
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )
        self._subscription = subscription
        await bus.flush_subscriptions(nc)  # started: hearing the heartbeats sent from now on
        bus.SLOW_CONSUMER_HOOKS.append(self._on_slow_consumer)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._send_acks, nc)
                task_status.started()
                async for msg in subscription.messages:
                    try:
                        heartbeat = msgspec.json.decode(msg.data, type=Heartbeat)
                    except msgspec.DecodeError:
                        log.debug("an unreadable heartbeat on %s", msg.subject)
                        continue
                    ack = self.receive(heartbeat, self.monotonic())
                    if ack is not None and msg.reply:
                        self._outbox.append((msg.reply, encode(ack)))
                        self._acks_waiting.set()
                tg.cancel_scope.cancel()  # the subscription ended (its connection closed)
        finally:
            bus.SLOW_CONSUMER_HOOKS.remove(self._on_slow_consumer)
            await bus.unsubscribe_quietly(subscription)

    async def _send_acks(self, nc: NATS) -> None:
        """Send the acks made meanwhile, ack_batch_seconds after the first of them, with
        no await between two publishes (nats-py's flusher writes them at once)."""
        while True:
            await self._acks_waiting.wait()
            await anyio.sleep(self.ack_batch_seconds)
            self._acks_waiting = anyio.Event()
            batch, self._outbox = self._outbox, []
            for reply, ack in batch:
                try:
                    await nc.publish(reply, ack)
                except Exception:
                    log.debug("ack to %s failed", reply, exc_info=True)

    def _on_slow_consumer(self, subscription: Any) -> None:
        if subscription is self._subscription:
            self.slow_consumer(self.monotonic())

    async def keep_echoing(self, nc: NATS) -> None:
        """Publish this judge's echo every ECHO_SECONDS (it comes back through `run`)."""
        seq = 0
        while True:
            seq += 1
            echo = Heartbeat(node=names.HEARTBEAT_ECHO, agent_id=self.owner, seq=seq)
            try:
                await nc.publish(names.heartbeat_subject(names.HEARTBEAT_ECHO), encode(echo))
            except Exception as error:  # late echoes make the view stale: that is the point
                log.debug("heartbeat echo failed: %s", error)
            self.forget(self.monotonic())
            await anyio.sleep(ECHO_SECONDS)
