"""Each service's HTTP endpoint: Prometheus metrics on /metrics, health on /healthz.

Two read-only paths need no web framework: this is a small HTTP/1.1 server on an
anyio TCP listener (one request per connection, `Connection: close`), inside the
service's task group, so it starts and stops with the service. It keeps a service
process free of aiohttp's server (and of aiohttp altogether where nothing else
needs it; see corral.natsio.lean). A connection that misbehaves (too slow, too
large, not HTTP) is closed; it never reaches the service.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus
from anyio.streams.stapled import MultiListener
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.registry import REGISTRY, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

# A health check returns (healthy, detail).
HealthCheck = Callable[[], tuple[bool, str]]

MAX_REQUEST_HEAD_BYTES = 8 * 1024
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 64  # open at once; more are closed at once
LISTEN_BACKLOG = 128
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
# prometheus_client's CONTENT_TYPE_LATEST: the text format that text_format() writes.
CONTENT_TYPE_LATEST = "text/plain; version=1.0.0; charset=utf-8"
# Counter-like samples the text format puts in a gauge family of their own.
_OPENMETRICS_SUFFIXES = ("_created", "_gsum", "_gcount")
# The text format's name for an OpenMetrics type (the rest keep theirs).
_TEXT_TYPES = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}


def _sample_line(sample: Sample) -> str:
    labels = ""
    if sample.labels:
        pairs = ",".join(
            f'{escape_label_name(name)}="{_escape_label_value(value)}"'
            for name, value in sorted(sample.labels.items())
        )
        labels = f"{{{pairs}}}"
    timestamp = ""
    if sample.timestamp is not None:
        timestamp = f" {int(float(sample.timestamp) * 1000):d}"  # milliseconds
    value = floatToGoString(sample.value)  # type: ignore[no-untyped-call]
    return f"{escape_metric_name(sample.name)}{labels} {value}{timestamp}\n"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _help(name: str, documentation: str) -> str:
    text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {escape_metric_name(name)} {text}\n"


def text_format(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format: byte for byte what prometheus_client's
    `generate_latest(registry)` writes (tests/unit/test_http_endpoint.py holds the two
    side by side), without importing its exposition module and the HTTP servers and
    clients that come with it (corral.natsio.lean)."""
    output: list[str] = []
    for metric in registry.collect():
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        name = name + "_info" if metric.type == "info" else name
        kind = _TEXT_TYPES.get(metric.type, metric.type)
        output.append(_help(name, metric.documentation))
        output.append(f"# TYPE {escape_metric_name(name)} {kind}\n")
        separate: dict[str, list[str]] = {}
        for sample in metric.samples:
            suffix = next(
                (end for end in _OPENMETRICS_SUFFIXES if sample.name == metric.name + end), None
            )
            if suffix is None:
                output.append(_sample_line(sample))
            else:
                separate.setdefault(suffix, []).append(_sample_line(sample))
        for suffix, lines in sorted(separate.items()):
            output.append(_help(metric.name + suffix, metric.documentation))
            output.append(f"# TYPE {escape_metric_name(metric.name + suffix)} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")


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
        return 200, CONTENT_TYPE_LATEST, text_format(registry), with_body
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


async def listen(host: str, port: int) -> MultiListener[SocketStream]:
    """The endpoint's TCP listener. An IP address (what `corral up` passes) is bound
    here; a host name goes through anyio, whose name lookup runs in a worker thread
    that then stays in the process for good."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        return MultiListener([await SocketListener.from_socket(sock)])
    except BaseException:
        sock.close()
        raise


async def serve_http(
    host: str,
    port: int,
    health: HealthCheck,
    *,
    registry: CollectorRegistry = REGISTRY,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port as started (useful with port 0)."""
    listener = await listen(host, port)
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
            assert isinstance(one, SocketListener)  # what listen() makes
            tg.start_soon(accept_forever, one)
