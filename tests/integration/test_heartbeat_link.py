"""NatsHeartbeats, the agent's side of a heartbeat, through a real nats-server: a beat
returns its acks once enough judges answered, or what came when its wait is over; a
beat cancelled from outside leaves nothing behind, and acks that come late change
nothing, unless the beat asked for them (`late`): then they reach it once enough."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import Heartbeat, HeartbeatAck
from corral.natsio.bus import connect, flush_subscriptions
from corral_node_agent.heartbeat_link import NatsHeartbeats


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(node="hb-link", agent_id="agent-1", engine_id="", seq=seq)


def ack_of(judge: str, judges: int) -> HeartbeatAck:
    return HeartbeatAck(judge=judge, judges=judges)


@asynccontextmanager
async def judges(
    nats_url: str, answer: Callable[[Heartbeat], list[tuple[float, HeartbeatAck]]]
) -> AsyncIterator[list[Heartbeat]]:
    """Judges on their own connection: each heartbeat heard is answered with the acks
    `answer` gives, each after its delay. Yields the heartbeats heard."""
    nc = await connect(nats_url, name="test-judges")
    heard: list[Heartbeat] = []

    async def on_beat(msg: Msg) -> None:
        beat = msgspec.json.decode(msg.data, type=Heartbeat)
        heard.append(beat)
        for delay, ack in answer(beat):
            asyncio.get_running_loop().call_later(
                delay, lambda a=ack: asyncio.ensure_future(nc.publish(msg.reply, encode(a)))
            )

    try:
        await nc.subscribe(names.heartbeat_subject("hb-link"), cb=on_beat)
        await flush_subscriptions(nc)
        yield heard
    finally:
        await nc.close()


@asynccontextmanager
async def agent_link(nats_url: str) -> AsyncIterator[tuple[NATS, NatsHeartbeats]]:
    nc = await connect(nats_url, name="test-agent")
    try:
        yield nc, NatsHeartbeats(nc)
    finally:
        await nc.close()


async def test_a_beat_returns_once_every_judge_answered(nats_url: str) -> None:
    both = [(0.0, ack_of("judge-a", 2)), (0.05, ack_of("judge-b", 2))]
    async with judges(nats_url, lambda beat: both) as heard, agent_link(nats_url) as (_, link):
        started = anyio.current_time()
        acks = await link.beat(heartbeat(1), wait=20.0)
        assert anyio.current_time() - started < 10.0  # not the wait: the second ack
        assert sorted(ack.judge for ack in acks) == ["judge-a", "judge-b"]
        assert [beat.seq for beat in heard] == [1]
        assert link._waiting == {}


async def test_a_beat_not_answered_by_every_judge_returns_what_came_when_its_wait_is_over(
    nats_url: str,
) -> None:
    one_of_two = [(0.0, ack_of("judge-a", 2))]
    async with judges(nats_url, lambda beat: one_of_two), agent_link(nats_url) as (_, link):
        started = anyio.current_time()
        acks = await link.beat(heartbeat(1), wait=0.5)
        assert anyio.current_time() - started >= 0.5
        assert [ack.judge for ack in acks] == ["judge-a"]
        assert link._waiting == {}


async def test_a_beat_cancelled_from_outside_leaves_nothing_and_late_acks_change_nothing(
    nats_url: str,
) -> None:
    # Each beat is answered late (after 0.3 s), by both judges.
    late = [(0.3, ack_of("judge-a", 2)), (0.3, ack_of("judge-b", 2))]
    async with judges(nats_url, lambda beat: late) as heard, agent_link(nats_url) as (_, link):
        with anyio.move_on_after(0.1) as scope:  # the beat's bound, shorter than its wait
            await link.beat(heartbeat(1), wait=5.0)
        assert scope.cancelled_caught
        assert link._waiting == {}
        # The first beat's acks land now, for a beat that is over: ignored.
        acks = await link.beat(heartbeat(2), wait=0.2)
        assert acks == []  # its own acks come after its wait; beat 1's were not taken
        assert link._waiting == {}
        # The next beat with time enough gets its own acks, as if nothing happened.
        acks = await link.beat(heartbeat(3), wait=5.0)
        assert sorted(ack.judge for ack in acks) == ["judge-a", "judge-b"]
        assert [beat.seq for beat in heard] == [1, 2, 3]


async def test_acks_after_the_wait_reach_late_and_only_for_a_beat_that_asked(
    nats_url: str,
) -> None:
    late = [(0.3, ack_of("judge-a", 2)), (0.4, ack_of("judge-b", 2))]
    async with judges(nats_url, lambda beat: late), agent_link(nats_url) as (_, link):
        came: list[list[str]] = []
        arrived = anyio.Event()

        def late_acks(got: list[HeartbeatAck]) -> None:
            came.append(sorted(a.judge for a in got))
            arrived.set()

        acks = await link.beat(heartbeat(1), wait=0.1, late=late_acks)
        assert acks == []  # none within the wait
        with anyio.fail_after(10):
            await arrived.wait()
        assert came == [["judge-a", "judge-b"]]  # both judges, once
        assert link._late == {}
        # A beat that did not ask (the cancelled case above) listens for nothing.
        assert await link.beat(heartbeat(2), wait=0.1) == []
        assert link._late == {}
