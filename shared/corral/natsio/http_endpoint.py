"""Each service's HTTP endpoint: Prometheus metrics on /metrics, health on /healthz.

Two read-only paths need no web framework: this is a small HTTP/1.1 server on an
anyio TCP listener (one request per connection, `Connection: close`), inside the
service's task group, so it starts and stops with the service. It keeps a service
process free of aiohttp's server (and of aiohttp altogether where nothing else
needs it; see corral.natsio.lean). A connection that misbehaves (too slow, too
large, not HTTP) is closed; it never reaches the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# A health check returns (healthy, detail).
HealthCheck = Callable[[], tuple[bool, str]]

MAX_REQUEST_HEAD_BYTES = 8 * 1024
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 64  # open at once; more are closed at once
ACCEPT_RETRY_SECONDS = 0.1
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def _read_head(stream: SocketStream) -> bytes:
    """The request line and headers, up to the blank line that ends them."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > MAX_REQUEST_HEAD_BYTES:
            raise _BadRequest(431)
        head += await stream.receive(4096)
    return head


def respond(
    head: bytes, health: HealthCheck, registry: CollectorRegistry
) -> tuple[int, str, bytes, bool]:
    """(status, content type, body, send the body) for one request head."""
    request_line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(400)
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return 405, _TEXT, b"method not allowed\n", method != "HEAD"
    path = target.split("?", 1)[0]
    with_body = method == "GET"
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry), with_body
    if path == "/healthz":
        healthy, detail = health()
        return (200 if healthy else 503), _TEXT, f"{detail}\n".encode(), with_body
    return 404, _TEXT, b"not found\n", with_body


def _response(status: int, content_type: str, body: bytes, with_body: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (body if with_body else b"")


async def _serve_one(
    stream: SocketStream, health: HealthCheck, registry: CollectorRegistry
) -> None:
    try:
        async with stream:
            with anyio.fail_after(REQUEST_TIMEOUT_SECONDS):
                try:
                    answer = respond(await _read_head(stream), health, registry)
                except _BadRequest as bad:
                    answer = (bad.status, _TEXT, b"bad request\n", True)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return  # gone before a whole request arrived
                except Exception:
                    log.exception("HTTP endpoint: answering failed")
                    answer = (500, _TEXT, b"internal error\n", True)
                await stream.send(_response(*answer))
    except Exception:  # a broken, slow or odd client never reaches the service
        log.debug("HTTP connection dropped", exc_info=True)


async def serve_http(
    host: str,
    port: int,
    health: HealthCheck,
    *,
    registry: CollectorRegistry = REGISTRY,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port as started (useful with port 0)."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener, anyio.create_task_group() as tg:
        task_status.started(int(listener.extra(SocketAttribute.local_port)))
        open_connections = 0

        async def handle(stream: SocketStream) -> None:
            nonlocal open_connections
            try:
                await _serve_one(stream, health, registry)
            finally:
                open_connections -= 1

        async def accept_forever(one: SocketListener) -> None:
            nonlocal open_connections
            while True:
                # An accept that fails (out of file descriptors, a reset in the queue)
                # never ends the service: wait a moment and accept again.
                try:
                    stream = await one.accept()
                except OSError as error:
                    log.warning("HTTP endpoint: accept failed (%s); retrying", error)
                    await anyio.sleep(ACCEPT_RETRY_SECONDS)
                    continue
                if open_connections >= MAX_CONNECTIONS:
                    await stream.aclose()  # a flood of idle clients never holds the rest up
                    continue
                open_connections += 1
                tg.start_soon(handle, stream)

        for one in listener.listeners:
            assert isinstance(one, SocketListener)  # what create_tcp_listener makes
            tg.start_soon(accept_forever, one)
