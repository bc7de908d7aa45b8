"""A subscription is the server's once flush_subscriptions returns: the PING whose PONG
it waits for went out after the subscription's SUB, through a real nats-server.
(nats-py's own flush writes its PING ahead of commands still pending, such as a SUB
just made: its PONG alone proves nothing of that SUB.)"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import anyio

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.events import Reply
from corral.natsio.bus import connect, flush_subscriptions, serve_spec_requests


class Written:
    """What a connection writes to its socket, in order (its commands' first words)."""

    def __init__(self, transport: object) -> None:
        self.commands: list[str] = []
        write, writelines = transport.write, transport.writelines  # type: ignore[attr-defined]

        def one(data: bytes) -> None:
            self.commands += _verbs(data)
            write(data)

        def many(chunks: Iterable[bytes]) -> None:
            chunks = list(chunks)
            for data in chunks:
                self.commands += _verbs(data)
            writelines(chunks)

        transport.write, transport.writelines = one, many  # type: ignore[attr-defined]


def _verbs(data: bytes) -> list[str]:
    return [line.split(b" ")[0].decode() for line in bytes(data).split(b"\r\n") if line]


async def test_the_ping_waited_for_follows_the_subscription(nats_url: str) -> None:
    nc = await connect(nats_url, name="test")
    try:
        written = Written(nc._transport)
        await nc.subscribe("corral.test.flush.>")
        await flush_subscriptions(nc)
        sub = written.commands.index("SUB")
        assert "PING" in written.commands[sub:], written.commands
    finally:
        await nc.close()


async def test_a_request_right_after_a_service_starts_finds_it(nats_url: str) -> None:
    """20 starts, each asked at once from another connection. The race is rare here (a
    single flush passed it in runs on this machine): the order test above is the one
    that fails on a single flush; this one is the service's promise, end to end."""

    async def apply(raw: bytes) -> Reply:
        return Reply(ok=True, kind="FlushTest", name=raw.decode())

    client = await connect(nats_url, name="test-client")
    try:
        for round_ in range(20):
            server = await connect(nats_url, name="test-server")
            try:
                async with anyio.create_task_group() as tg:
                    serve = partial(
                        serve_spec_requests, server, "FlushTest", {"apply": apply}, queue="q"
                    )
                    await tg.start(serve)
                    subject = names.api_subject("FlushTest", "apply")
                    msg = await client.request(subject, str(round_).encode(), timeout=10)
                    assert decode(msg.data, Reply).name == str(round_)
                    tg.cancel_scope.cancel()
            finally:
                await server.close()
    finally:
        await client.close()
