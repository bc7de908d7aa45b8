"""NatsHeartbeats' wait, settled by an ack or its timer, against a fake connection so
that the order of events within one loop turn is the test's: an ack and a cancellation,
or the timer and an ack, landing together leave nothing behind and raise nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from corral.contract.codec import encode
from corral.contract.events import Heartbeat, HeartbeatAck
from corral_node_agent import heartbeat_link
from corral_node_agent.heartbeat_link import NatsHeartbeats


@dataclass
class FakeMsg:
    subject: str
    data: bytes


@dataclass
class FakeNats:
    published: list[tuple[str, str]] = field(default_factory=list)
    callback: Callable[[FakeMsg], Awaitable[None]] | None = None

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Callable[[FakeMsg], Awaitable[None]]) -> None:
        self.callback = cb

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        self.published.append((subject, reply))

    async def ack(self, seq: int, judge: str = "judge-a") -> None:
        assert self.callback is not None
        ack = HeartbeatAck(judge=judge, judges=1)
        await self.callback(FakeMsg(f"_INBOX.test.{seq}", encode(ack)))


def beat(seq: int) -> Heartbeat:
    return Heartbeat(node="n1", agent_id="a1", seq=seq)


async def sent(nc: FakeNats, count: int) -> None:
    """Until the beat task has published its `count`th beat (a few loop turns)."""
    for _ in range(100):
        if len(nc.published) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} beats not published: {nc.published}")


async def test_an_ack_and_a_cancellation_in_one_turn_leave_nothing_and_the_next_beat_works() -> (
    None
):
    nc = FakeNats()
    link = NatsHeartbeats(nc)  # type: ignore[arg-type]
    task = asyncio.ensure_future(link.beat(beat(1), wait=60.0))
    await sent(nc, 1)
    await nc.ack(1)  # settles the beat's future ...
    task.cancel()  # ... and the beat is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert link._waiting == {}
    await nc.ack(1)  # its ack again, late: ignored
    second = asyncio.ensure_future(link.beat(beat(2), wait=60.0))
    await sent(nc, 2)
    await nc.ack(2)
    assert [ack.judge for ack in await second] == ["judge-a"]
    assert link._waiting == {}


async def test_the_timer_and_an_ack_in_one_turn_raise_nothing() -> None:
    nc = FakeNats()
    link = NatsHeartbeats(nc)  # type: ignore[arg-type]
    task = asyncio.ensure_future(link.beat(beat(1), wait=60.0))
    await sent(nc, 1)
    _, done = link._waiting[1]
    heartbeat_link._settle(done)  # as the timer does when the wait is over ...
    await nc.ack(1)  # ... and an ack in the same turn: no InvalidStateError
    assert [ack.judge for ack in await task] == ["judge-a"]
    assert link._waiting == {}


async def test_a_beat_whose_wait_is_over_returns_what_came() -> None:
    nc = FakeNats()
    link = NatsHeartbeats(nc)  # type: ignore[arg-type]
    assert await link.beat(beat(1), wait=0.0) == []
    assert link._waiting == {}


async def test_acks_after_the_wait_are_handed_to_late_once_enough_and_only_once() -> None:
    nc = FakeNats()
    link = NatsHeartbeats(nc)  # type: ignore[arg-type]
    came: list[list[str]] = []
    assert (
        await link.beat(beat(1), wait=0.0, late=lambda acks: came.append([a.judge for a in acks]))
        == []
    )
    await nc.ack(1)  # after the wait: still heard
    assert came == [["judge-a"]]
    await nc.ack(1)  # again: the beat is answered, nothing more
    assert came == [["judge-a"]] and link._late == {}


async def test_late_acks_wait_for_every_judge_and_are_forgotten_after_the_window() -> None:
    nc = FakeNats()
    link = NatsHeartbeats(nc, late_window=0.05)  # type: ignore[arg-type]
    came: list[list[HeartbeatAck]] = []
    assert await link.beat(beat(1), wait=0.0, late=came.append) == []
    assert nc.callback is not None
    two = HeartbeatAck(judge="judge-a", judges=2)
    await nc.callback(FakeMsg("_INBOX.test.1", encode(two)))
    assert came == []  # one of two judges: not enough
    await asyncio.sleep(0.1)  # the window is over
    assert link._late == {}
    await nc.callback(FakeMsg("_INBOX.test.1", encode(HeartbeatAck(judge="judge-b", judges=2))))
    assert came == []


async def test_a_beat_answered_in_time_or_without_late_leaves_nothing_listening() -> None:
    nc = FakeNats()
    link = NatsHeartbeats(nc)  # type: ignore[arg-type]
    assert await link.beat(beat(1), wait=0.0) == []  # no `late`
    task = asyncio.ensure_future(link.beat(beat(2), wait=60.0, late=lambda _acks: None))
    await sent(nc, 2)
    await nc.ack(2)
    assert [ack.judge for ack in await task] == ["judge-a"]
    assert link._late == {} and link._waiting == {}
