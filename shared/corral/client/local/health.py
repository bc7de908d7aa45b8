"""Waiting for a service's /healthz to answer 200."""

from __future__ import annotations

import aiohttp
import anyio


async def healthz_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def wait_healthy(url: str) -> None:
    """Poll url until it answers 200 (the caller bounds it with anyio.fail_after)."""
    async with aiohttp.ClientSession() as session:
        while not await healthz_ok(session, url):  # noqa: ASYNC110 (polling another process)
            await anyio.sleep(0.2)
