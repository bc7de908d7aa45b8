"""The services' HTTP endpoint (/metrics, /healthz): a small server of our own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from corral.natsio import http_endpoint
from corral.natsio.http_endpoint import serve_http


class Health:
    def __init__(self) -> None:
        self.healthy = True

    def __call__(self) -> tuple[bool, str]:
        return self.healthy, f"nats={'ok' if self.healthy else 'failing'}"


@asynccontextmanager
async def endpoint(health: Health, registry: CollectorRegistry) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(partial(serve_http, "127.0.0.1", 0, health, registry=registry))
        yield port
        tg.cancel_scope.cancel()


async def exchange(port: int, request: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        answer = b""
        try:
            while True:
                answer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return answer


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".encode()


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_metrics_and_health_are_served() -> None:
    registry = CollectorRegistry()
    Counter("corral_test_things", "things", registry=registry).inc(3)
    health = Health()
    async with endpoint(health, registry) as port:
        status, headers, body = split(await exchange(port, get("/metrics")))
        assert status == 200
        assert headers["content-type"] == CONTENT_TYPE_LATEST
        assert int(headers["content-length"]) == len(body)
        assert b"corral_test_things_total 3.0" in body

        status, _, body = split(await exchange(port, get("/healthz?verbose=1")))
        assert (status, body) == (200, b"nats=ok\n")
        health.healthy = False
        status, _, body = split(await exchange(port, get("/healthz")))
        assert (status, body) == (503, b"nats=failing\n")


async def test_other_paths_methods_and_garbage_get_an_error_and_the_server_stays_up() -> None:
    async with endpoint(Health(), CollectorRegistry()) as port:
        assert split(await exchange(port, get("/nope")))[0] == 404
        assert split(await exchange(port, get("/metrics", "POST")))[0] == 405
        assert split(await exchange(port, b"\x00\x01 not http\r\n\r\n"))[0] == 400
        assert split(await exchange(port, b"GET /" + b"x" * 20000))[0] == 431
        status, headers, body = split(await exchange(port, get("/healthz", "HEAD")))
        assert (status, body) == (200, b"") and headers["content-length"] == "8"
        # A client that connects and goes away without a request.
        async with await anyio.connect_tcp("127.0.0.1", port):
            pass
        assert split(await exchange(port, get("/healthz")))[0] == 200


async def test_a_slow_client_does_not_hold_up_others_and_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_endpoint, "REQUEST_TIMEOUT_SECONDS", 0.3)
    async with endpoint(Health(), CollectorRegistry()) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as slow:
            await slow.send(b"GET /healthz HTTP/1.1\r\n")  # and never the end of the head
            assert split(await exchange(port, get("/healthz")))[0] == 200
            with anyio.fail_after(3):
                try:
                    assert await slow.receive() == b""
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass  # dropped


async def test_a_flood_of_idle_connections_never_stops_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_endpoint, "MAX_CONNECTIONS", 4)
    registry = CollectorRegistry()
    async with endpoint(Health(), registry) as port:
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(12)]
        try:
            # Past the cap, new connections are closed at once; once the idle ones
            # go, the endpoint answers again.
            for stream in idle:
                await stream.aclose()
            status, _, _ = split(await exchange(port, get("/healthz")))
            assert status == 200
        finally:
            for stream in idle:
                await stream.aclose()


async def test_an_accept_that_fails_is_retried_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    from anyio._backends import _asyncio as backend  # the listener class anyio serves with

    failures = [OSError(24, "Too many open files") for _ in range(3)]
    real_accept = backend.TCPSocketListener.accept

    async def flaky_accept(self: backend.TCPSocketListener) -> anyio.abc.SocketStream:
        if failures:
            raise failures.pop()
        return await real_accept(self)

    monkeypatch.setattr(backend.TCPSocketListener, "accept", flaky_accept)
    async with endpoint(Health(), CollectorRegistry()) as port:
        status, _, _ = split(await exchange(port, get("/healthz")))
    assert status == 200 and not failures
