"""Requests answered on a thread of their own (corral.natsio.request_thread): answered
while the service's event loop cannot run at all, through a real nats-server."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import anyio
import anyio.lowlevel
import nats
import pytest
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Heartbeat, HeartbeatAck, Reply
from corral.natsio.bus import serve_spec_requests
from corral.natsio.request_thread import REQUEST_SWITCH_SECONDS, serve_in_thread
from tests.integration.scheduler_harness import deployment_json, running_scheduler
from tests.waiting import eventually

BLOCK_LIMIT_SECONDS = 20.0  # the longest the loop is held: only when the answer never comes


def request_from_another_thread(url: str, subject: str, payload: bytes) -> bytes:
    """A client of its own, on a thread of its own: it needs nothing of the test's loop."""

    async def ask() -> bytes:
        nc = await nats.connect(url)
        try:
            return (await nc.request(subject, payload, timeout=BLOCK_LIMIT_SECONDS)).data
        finally:
            await nc.close()

    return anyio.run(ask)


async def answered_while_blocked(url: str, subject: str, payload: bytes) -> tuple[bool, bytes]:
    """Sends a request from another thread while this event loop is held (a callback
    that blocks it until the answer came, or BLOCK_LIMIT_SECONDS): (whether the answer
    came while the loop was held, the answer)."""
    answered = threading.Event()
    answer: dict[str, bytes] = {}
    held: dict[str, bool] = {}

    def client() -> None:
        try:
            answer["data"] = request_from_another_thread(url, subject, payload)
        finally:
            answered.set()

    def hold_the_loop() -> None:
        held["answered"] = answered.wait(BLOCK_LIMIT_SECONDS)

    asyncio.get_running_loop().call_soon(hold_the_loop)
    thread = threading.Thread(target=client)
    thread.start()
    await anyio.lowlevel.checkpoint()  # the held loop runs on from here only once it is released
    await anyio.to_thread.run_sync(thread.join)
    return held["answered"], answer.get("data", b"")


async def test_a_request_is_answered_while_the_services_event_loop_cannot_run(
    nats_url: str,
) -> None:
    async def echo(nc: NATS, js: JetStreamContext, *, task_status: TaskStatus[None]) -> None:
        async def respond(msg: Msg) -> None:
            await msg.respond(b"echo " + msg.data)

        await nc.subscribe("test.echo", cb=respond)
        await nc.flush()
        task_status.started()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        await tg.start(serve_in_thread, nats_url, "test-requests", echo)
        during, data = await answered_while_blocked(nats_url, "test.echo", b"hi")
        assert data == b"echo hi"
        assert during, "the answer waited for the service's event loop"
        tg.cancel_scope.cancel()


async def test_the_thread_stops_with_its_task_and_the_switch_interval_is_restored(
    nats_url: str,
) -> None:
    before = sys.getswitchinterval()
    seen: dict[str, Any] = {}

    async def serve(nc: NATS, js: JetStreamContext, *, task_status: TaskStatus[None]) -> None:
        seen["thread"] = threading.current_thread()
        seen["switch"] = sys.getswitchinterval()
        task_status.started()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        await tg.start(serve_in_thread, nats_url, "test-requests", serve)
        assert seen["thread"] is not threading.current_thread()
        assert seen["switch"] == min(before, REQUEST_SWITCH_SECONDS)
        tg.cancel_scope.cancel()
    assert not seen["thread"].is_alive()
    assert sys.getswitchinterval() == before


async def test_a_thread_that_fails_makes_its_task_raise_the_error(nats_url: str) -> None:
    async def broken(nc: NATS, js: JetStreamContext, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        await anyio.lowlevel.checkpoint()
        raise LookupError("the request thread broke")

    with pytest.raises(BaseExceptionGroup) as raised:
        await serve_in_thread(nats_url, "test-requests", broken)
    assert raised.value.subgroup(LookupError) is not None, raised.value


async def test_the_scheduler_answers_an_apply_while_its_event_loop_cannot_run(
    nats_url: str,
) -> None:
    async with running_scheduler(nats_url) as ctx:
        during, data = await answered_while_blocked(
            nats_url, names.api_subject("deployment", "apply"), deployment_json("web", 2)
        )
        reply = decode(data, Reply)
        assert reply.ok, reply.error
        assert during, "the apply waited for the scheduler's event loop"

        async def stored() -> bool:
            return (
                await ctx.buckets[names.DEPLOYMENTS_BUCKET].get(names.object_key("default", "web"))
                is not None
            )

        await eventually(stored, bool)


async def test_a_request_sent_the_moment_the_api_started_finds_it(nats_url: str) -> None:
    # Started means the server has the subscription, not that it is queued to be sent:
    # a client on another connection asks at once, again and again.
    async def answer(nc: NATS, js: JetStreamContext, *, task_status: TaskStatus[None]) -> None:
        async def applied(raw: bytes, sequence: int = 0) -> Reply:
            return Reply(ok=True, kind="Deployment", name="web")

        await serve_spec_requests(
            nc, "Deployment", {"apply": applied}, queue="test", task_status=task_status
        )

    client = await nats.connect(nats_url)
    try:
        for _ in range(20):
            async with anyio.create_task_group() as tg:
                await tg.start(serve_in_thread, nats_url, "test-requests", answer)
                msg = await client.request(
                    names.api_subject("deployment", "apply"), b"{}", timeout=5
                )
                assert decode(msg.data, Reply).ok
                tg.cancel_scope.cancel()
    finally:
        await client.close()


async def test_the_scheduler_acknowledges_a_heartbeat_while_its_event_loop_cannot_run(
    nats_url: str,
) -> None:
    # Agents count themselves cut off when heartbeats go unacknowledged for 3 s: a loop
    # busy placing (or held, here) must not make every node isolate itself.
    async with running_scheduler(nats_url) as ctx:
        subject = names.heartbeat_subject("node-1")

        async def acked(seq: int) -> HeartbeatAck | None:
            beat = encode(Heartbeat(node="node-1", agent_id="agent-1", seq=seq))
            try:
                msg = await ctx.nc.request(subject, beat, timeout=1)
            except NatsTimeoutError:
                return None  # the view is not fresh yet: no judge vouches
            return decode(msg.data, HeartbeatAck)

        seqs = iter(range(1, 1000))
        await eventually(lambda: acked(next(seqs)), lambda ack: ack is not None)
        during, data = await answered_while_blocked(
            nats_url, subject, encode(Heartbeat(node="node-1", agent_id="agent-1", seq=999))
        )
        assert decode(data, HeartbeatAck).judges >= 1
        assert during, "the heartbeat waited for the scheduler's event loop"


async def test_two_threads_stopped_out_of_order_put_the_switch_interval_back(
    nats_url: str,
) -> None:
    before = sys.getswitchinterval()

    async def idle(nc: NATS, js: JetStreamContext, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep_forever()

    scopes = {"first": anyio.CancelScope(), "second": anyio.CancelScope()}
    ended = {"first": anyio.Event(), "second": anyio.Event()}

    async def run(name: str, *, task_status: TaskStatus[None]) -> None:
        with scopes[name]:
            await serve_in_thread(nats_url, f"test-{name}", idle, task_status=task_status)
        ended[name].set()

    async with anyio.create_task_group() as tg:
        await tg.start(run, "first")
        await tg.start(run, "second")
        scopes["first"].cancel()  # the first stops while the second runs
        await ended["first"].wait()
        assert sys.getswitchinterval() == min(before, REQUEST_SWITCH_SECONDS)
        scopes["second"].cancel()
        await ended["second"].wait()
    assert sys.getswitchinterval() == before


async def test_a_thread_whose_work_ends_on_its_own_makes_its_task_raise(nats_url: str) -> None:
    async def returns(nc: NATS, js: JetStreamContext, *, task_status: TaskStatus[None]) -> None:
        task_status.started()

    with pytest.raises(RuntimeError, match="stopped by itself"):
        await serve_in_thread(nats_url, "test-requests", returns)
