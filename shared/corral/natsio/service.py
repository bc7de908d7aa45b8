"""What every corral service process shares: flags, logging, the NATS connection,
buckets and streams, the HTTP endpoint, and a clean stop on SIGINT/SIGTERM.

A service is an async function `run(ctx, args, task_status)` that starts its
subsystems in ctx.task_group and reports started when it is serving.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from corral.contract.state import Cluster
from corral.natsio.bus import (
    JS_API_TIMEOUT_SECONDS,
    EventPublisher,
    StoreSettings,
    close_quietly,
    connect,
    ensure_streams,
    open_buckets,
    open_cluster,
)
from corral.natsio.cluster import (
    StateStoreLost,
    StoreInconsistent,
    UnreadableIdentity,
)
from corral.natsio.config import resolve_nats_url
from corral.natsio.http_endpoint import serve_http
from corral.natsio.kv import NatsBucket

log = logging.getLogger(__name__)

SETUP_TIMEOUT_SECONDS = 15.0
# How often a running service hands the C heap's free pages back (release_free_memory).
MEMORY_RELEASE_INTERVAL_SECONDS = 300.0


@dataclass
class ServiceContext:
    name: str
    nc: NATS
    js: JetStreamContext
    buckets: dict[str, NatsBucket]
    events: EventPublisher
    task_group: TaskGroup
    cluster: Cluster
    http_port: int | None = None
    # Named checks that /healthz reports; all must be True for a 200.
    health: dict[str, bool] = field(default_factory=dict)

    def healthy(self) -> tuple[bool, str]:
        checks = dict(self.health, nats=self.nc.is_connected)
        detail = " ".join(
            f"{name}={'ok' if ok else 'failing'}" for name, ok in sorted(checks.items())
        )
        return all(checks.values()), detail


ServiceRun = Callable[..., Coroutine[Any, Any, None]]
"""async def run(ctx: ServiceContext, args: argparse.Namespace, *, task_status: TaskStatus[None])"""

BucketsUsed = Callable[[argparse.Namespace, int], Collection[str]]
"""The buckets a service reads, given its flags and the cluster's number of placement
shards: on a store that has every bucket already, it opens only those (ServiceContext.
buckets holds them); otherwise it prepares every bucket, as a service without one does."""


def base_parser(service: str, default_port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"corral-{service}")
    parser.add_argument(
        "--nats",
        action="append",
        metavar="URL",
        help="NATS URL; several comma-separated or the flag repeated for a cluster "
        "(default: $CORRAL_NATS_URL, config, local)",
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=default_port,
        help=f"HTTP port for /metrics and /healthz (default {default_port}; 0 picks a free one)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


async def run_service(
    service: str,
    run: ServiceRun,
    args: argparse.Namespace,
    *,
    uses: BucketsUsed | None = None,
    task_status: TaskStatus[ServiceContext] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Connect, prepare streams and buckets (those it `uses`, on a store that has them
    all), serve HTTP, then run the service until cancelled."""
    nc = await connect(resolve_nats_url(args.nats), name=f"corral-{service}")
    try:
        # Making streams and buckets on a cluster can take a Raft election: a longer
        # bound there; at run time a call stuck on a dead server fails within
        # JS_API_TIMEOUT_SECONDS and is retried through another.
        setup_js = nc.jetstream(timeout=SETUP_TIMEOUT_SECONDS)
        settings = StoreSettings.from_env()
        # Buckets first: a store that lost a bucket of its cluster is refused before
        # anything is made (corral.natsio.bus.open_buckets).
        made: list[str] = []
        used = None if uses is None else partial(uses, args)
        opened = await open_buckets(setup_js, settings, made=made, uses=used)
        await ensure_streams(setup_js, settings)
        js = nc.jetstream(timeout=JS_API_TIMEOUT_SECONDS)
        buckets, cluster = await open_cluster(js, settings, made=made, opened=opened, uses=used)
        async with anyio.create_task_group() as tg:
            ctx = ServiceContext(
                name=service,
                nc=nc,
                js=js,
                buckets=buckets,
                events=EventPublisher(nc, source=service),
                task_group=tg,
                cluster=cluster,
            )
            if args.metrics_port is not None and args.metrics_port >= 0:
                ctx.http_port = await tg.start(
                    serve_http, args.metrics_host, args.metrics_port, ctx.healthy
                )
            await tg.start(run, ctx, args)
            log.info("%s ready (metrics on %s)", service, ctx.http_port)
            task_status.started(ctx)
            tg.start_soon(release_memory_now_and_then, MEMORY_RELEASE_INTERVAL_SECONDS)
    finally:
        await close_quietly(nc)  # every subsystem is cancelled by now: nothing to drain


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim).

    glibc keeps the memory a process frees for its next allocations, and returns to
    the system only what is free at the top of its heap. Start-up frees much in the
    middle (the source of every module compiled, the set-up's replies), under objects
    that live on, so a started service holds half a megabyte or more it no longer uses
    until malloc_trim gives those pages back (docs/architecture.md, "Idle memory").
    Returns False where there is no malloc_trim (a C library other than glibc).
    """
    import ctypes  # here: only a process that releases memory loads it

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


async def release_memory_now_and_then(interval: float) -> None:
    """Once the service has started: release the free heap start-up left, then again
    every `interval` seconds (what bursts of work leave)."""
    while True:
        release_free_memory()
        await anyio.sleep(interval)


async def _until_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for received in signals:
            log.info("received %s, stopping", signal.Signals(received).name)
            scope.cancel()
            return


# Runs beside a service from the process's first moment, before NATS is reached:
# async def alongside(args, started: anyio.Event) where `started` is set once the
# service reports started (the node agent's offline stop, docs/safety.md).
Alongside = Callable[[argparse.Namespace, anyio.Event], Coroutine[Any, Any, object]]


class RefusedToStart(Exception):
    """A service that must not run as things are: it says why in one line, exits 1."""


def service_main(
    service: str,
    parser: argparse.ArgumentParser,
    run: ServiceRun,
    *,
    alongside: Alongside | None = None,
    uses: BucketsUsed | None = None,
) -> None:
    """The console entry point of a service: parse flags, run until SIGINT/SIGTERM."""
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )

    async def serve(started: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(run_service, service, run, args, uses=uses))
            started.set()

    async def main() -> None:
        started = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_until_signal, tg.cancel_scope)
            if alongside is not None:
                tg.start_soon(alongside, args, started)
            await serve(started)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    except* (StateStoreLost, StoreInconsistent, UnreadableIdentity, RefusedToStart) as refused:
        # Not a crash: the store (or the host) cannot be trusted; say why in one line.
        for error in _leaves(refused):
            log.critical("%s refuses to start: %s", service, error)
        raise SystemExit(1) from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in a (nested) exception group."""
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


async def run_idle(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A service that has joined the cluster (NATS, streams, buckets, /metrics,
    /healthz) and serves no subject yet: what netmgr and volmgr are until their
    features land. It fakes nothing: a request to them gets "no responders"."""
    task_status.started()
