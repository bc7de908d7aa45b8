"""The agent's proof of life on core NATS (docs/time-budget.md, "Liveness").

Every heartbeat the agent requests on corral.heartbeat.<node>; every scheduler (a
judge) hears it and answers with a HeartbeatAck. The agent counts itself heard, and
its cut-off clock runs on, only when as many judges answered as the judges say are
alive; otherwise it writes its Node record, which every judge sees through its own
watch of the nodes bucket (the proof of life as before). Nothing here is stored.

`HeartbeatLink` is what NodeRecord needs: send one heartbeat and collect the acks,
and listen to a node's heartbeats for a while (is another agent of this name alive?).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import Heartbeat, HeartbeatAck
from corral.contract.time_budget import LATE_ACKS_SECONDS
from corral.natsio.bus import unsubscribe_quietly

log = logging.getLogger(__name__)

# Called with a beat's acks once enough of them came after its wait was over.
LateAcks = Callable[[list[HeartbeatAck]], None]


class HeartbeatLink(Protocol):
    async def beat(
        self, heartbeat: Heartbeat, wait: float, late: LateAcks | None = None
    ) -> list[HeartbeatAck]:
        """Send `heartbeat`; the acks of distinct judges that came within `wait` (it
        returns early once as many judges answered as the acks say exist). When they
        were not enough by then, `late` is called with them once they are, within
        LATE_ACKS_SECONDS after the wait (never otherwise)."""
        ...

    async def other_agent(
        self, node: str, agent_id: str, engine_id: str, window: float
    ) -> Heartbeat | None:
        """A heartbeat of `node` from another agent within `window`: another agent id,
        or the same id from another known engine (is_other_agent)."""
        ...


def is_other_agent(agent_id: str, engine_id: str, mine: str, my_engine: str) -> bool:
    """Another agent than (mine, my_engine): another agent id, or the same id on another
    engine when both engines are known (the same --agent-id given to agents on two
    hosts does not make them one agent; docs/safety.md)."""
    if not agent_id:
        return False
    if agent_id != mine:
        return True
    return bool(engine_id and my_engine and engine_id != my_engine)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def enough(acks: list[HeartbeatAck]) -> bool:
    """Heard by every judge alive (as the judges count them), and by at least one."""
    return bool(acks) and len({ack.judge for ack in acks}) >= max(ack.judges for ack in acks)


class NatsHeartbeats:
    """HeartbeatLink over a nats-py connection: one reply subscription for all beats
    (the reply subject carries the beat's sequence number).

    A beat waits on a plain asyncio future that its last ack or a timer settles: no
    cancel scope, event or exception per beat. nats-py runs on asyncio only, and a
    hollow cluster runs a beat per node every second in one loop, where anyio's
    per-call backend lookups and a timed-out scope's cancellation were a large share
    of an idle agent's work (bench/README.md)."""

    def __init__(self, nc: NATS, late_window: float = LATE_ACKS_SECONDS) -> None:
        self.nc = nc
        self.late_window = late_window
        self._inbox = ""
        self._waiting: dict[int, tuple[list[HeartbeatAck], asyncio.Future[None]]] = {}
        # Beats whose wait is over without enough acks, still listened to (`late`).
        self._late: dict[int, tuple[list[HeartbeatAck], LateAcks]] = {}

    async def _reply_to(self, seq: int) -> str:
        if not self._inbox:
            self._inbox = self.nc.new_inbox()
            await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
        return f"{self._inbox}.{seq}"

    async def _on_ack(self, msg: Msg) -> None:
        try:
            seq = int(msg.subject.rsplit(".", 1)[-1])
            ack = msgspec.json.decode(msg.data, type=HeartbeatAck)
        except (ValueError, msgspec.DecodeError):
            log.debug("an unreadable heartbeat ack on %s", msg.subject)
            return
        waiting = self._waiting.get(seq)
        if waiting is None:
            self._on_late_ack(seq, ack)
            return
        acks, done = waiting
        if all(known.judge != ack.judge for known in acks):
            acks.append(ack)
        if enough(acks):
            _settle(done)

    def _on_late_ack(self, seq: int, ack: HeartbeatAck) -> None:
        late = self._late.get(seq)
        if late is None:
            return  # that beat is over (or was answered in time)
        acks, call = late
        if all(known.judge != ack.judge for known in acks):
            acks.append(ack)
        if enough(acks):
            del self._late[seq]
            try:
                call(list(acks))
            except Exception:  # a service never dies of a message
                log.exception("handling the late acks of heartbeat %d failed", seq)

    async def beat(
        self, heartbeat: Heartbeat, wait: float, late: LateAcks | None = None
    ) -> list[HeartbeatAck]:
        seq = heartbeat.seq
        reply = await self._reply_to(seq)
        acks: list[HeartbeatAck] = []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting[seq] = (acks, done)
        timer: asyncio.TimerHandle | None = None
        try:
            await self.nc.publish(
                names.heartbeat_subject(heartbeat.node), encode(heartbeat), reply=reply
            )
            timer = loop.call_later(wait, _settle, done)
            await done  # cancelled from outside (the beat's bound, a stop): forgotten below
        finally:
            if timer is not None:
                timer.cancel()
            del self._waiting[seq]
        if late is not None and not enough(acks) and self.late_window > 0:
            # Sent (a failed publish raised above), not answered in time: acks delayed on
            # the way (a busy judge, a busy loop here) still prove the beat heard;
            # listen for them a while longer (the caller has moved on).
            self._late[seq] = (acks, late)
            loop.call_later(self.late_window, self._late.pop, seq, None)
        return list(acks)

    async def other_agent(
        self, node: str, agent_id: str, engine_id: str, window: float
    ) -> Heartbeat | None:
        subscription = await self.nc.subscribe(
            names.heartbeat_subject(node), pending_msgs_limit=1000
        )
        try:
            with anyio.move_on_after(window):
                async for msg in subscription.messages:
                    try:
                        heard = msgspec.json.decode(msg.data, type=Heartbeat)
                    except msgspec.DecodeError:
                        continue
                    if is_other_agent(heard.agent_id, heard.engine_id, agent_id, engine_id):
                        return heard
            return None
        finally:
            await unsubscribe_quietly(subscription)
