"""Each service's HTTP endpoint: Prometheus metrics on /metrics, health on /healthz.

Served with aiohttp (already here as aiodocker's transport) inside the service's
task group, so it starts and stops with the service.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from aiohttp import web
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

# A health check returns (healthy, detail).
HealthCheck = Callable[[], tuple[bool, str]]


async def serve_http(
    host: str,
    port: int,
    health: HealthCheck,
    *,
    registry: CollectorRegistry = REGISTRY,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port as started (useful with port 0)."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        healthy, detail = health()
        return web.Response(status=200 if healthy else 503, text=f"{detail}\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        addresses = runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
