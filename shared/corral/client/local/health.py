"""Waiting for a service's /healthz to answer 200.

A plain HTTP/1.1 GET on a TCP connection: the supervisor needs nothing more, so it
loads no HTTP client library (its process stays small, like the services').
"""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio

CHECK_TIMEOUT_SECONDS = 2.0


async def healthz_status(url: str) -> int | None:
    """The HTTP status `url` answers with, or None when it does not answer in time."""
    address = urlsplit(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    target = (address.path or "/") + (f"?{address.query}" if address.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    try:
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(request.encode("latin-1"))
                head = b""
                while b"\r\n" not in head:
                    head += await stream.receive()
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
        return None
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


async def healthz_ok(url: str) -> bool:
    return await healthz_status(url) == 200


async def wait_healthy(url: str) -> None:
    """Poll url until it answers 200 (the caller bounds it with anyio.fail_after)."""
    while not await healthz_ok(url):  # noqa: ASYNC110 (polling another process)
        await anyio.sleep(0.2)
