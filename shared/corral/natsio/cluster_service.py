"""What a service with a cluster part and a node part shares (netmgr, volmgr;
docs/networking.md, docs/volumes.md): the `--node` flags and the node part imported
only then, the cluster part held under a lease (one active, the others standing by,
serving only /metrics and /healthz), and the spec kinds it answers (durable consumers
of CORRAL_SPECS, then request answering).

Each service keeps only what is its own: its APIs, its controllers' loop, its flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import math
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus
from prometheus_client import Gauge, Histogram

from corral.contract import names
from corral.natsio.bus import (
    DurableSpecHandler,
    SpecHandler,
    consume_spec_stream,
    serve_spec_requests,
)
from corral.natsio.kv import Create, Entry, Mirror, Write, write_many
from corral.natsio.lease import Lease
from corral.natsio.service import RefusedToStart, ServiceContext, base_parser
from corral.natsio.sharded import ShardedMirror

log = logging.getLogger(__name__)


class Settable(Protocol):
    def set(self, value: float) -> None: ...


# --- the node part, imported only with --node --------------------------------------


def node_part(service: str, module: str) -> Any:
    """The node part's module, or a clear refusal when it cannot be imported."""
    try:
        node = importlib.import_module(module)
    except ImportError as error:
        raise RefusedToStart(
            f"--node needs {service}'s node part ({module}), which cannot be imported: {error}"
        ) from None
    return node


def add_node_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node",
        metavar="NAME",
        default="",
        help="run the node part for this node (beside its agent) instead of the cluster part",
    )


def add_docker_host_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--docker-host",
        help="with --node: the engine's address (default: $DOCKER_HOST, the local socket)",
    )


def add_node_part_flags(
    parser: argparse.ArgumentParser, argv: Sequence[str], service: str, module: str
) -> None:
    """With `--node` in `argv`: the node part's own flags (its `add_arguments`)."""
    known, _ = parser.parse_known_args(list(argv))
    if known.node:
        try:
            node = node_part(service, module)
        except RefusedToStart as error:
            parser.error(str(error))
        node.add_arguments(parser)


def build_parser(
    service: str,
    default_port: int,
    argv: Sequence[str] | None,
    own_flags: Callable[[argparse.ArgumentParser], object],
) -> argparse.ArgumentParser:
    """A service's flags: every service's (base_parser), `--node`, its own (`own_flags`),
    `--docker-host`; with `--node` in `argv` (default: this process's), the node part's
    (corral_<service>.node) too."""
    parser = base_parser(service, default_port)
    add_node_flag(parser)
    own_flags(parser)
    add_docker_host_flag(parser)
    argv = sys.argv[1:] if argv is None else argv
    add_node_part_flags(parser, argv, service, f"corral_{service}.node")
    return parser


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    service: str,
    cluster_part: Callable[..., Awaitable[None]],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """With `--node`: the node part (corral_<service>.node, imported only then); else
    `cluster_part(task_status=...)`."""
    if getattr(args, "node", ""):
        node = node_part(service, f"corral_{service}.node")
        await node.run(ctx, args, task_status=task_status)
        return
    await cluster_part(task_status=task_status)


# --- the node part's common flags and its Docker engine -----------------------------

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def node_name(args: argparse.Namespace) -> str:
    """`--node`, checked: RefusedToStart unless it is a node name (a DNS label)."""
    node = str(getattr(args, "node", "") or "")
    if not DNS_LABEL.fullmatch(node):
        raise RefusedToStart(f"--node {node!r} is not a node name (a DNS label)")
    return node


def node_resync_seconds(args: argparse.Namespace) -> float:
    """`--node-resync-seconds` (default 30), checked: a finite number of seconds > 0."""
    resync = float(getattr(args, "node_resync_seconds", 30.0))
    if not (resync > 0 and math.isfinite(resync)):
        raise RefusedToStart(f"--node-resync-seconds {resync:g} must be a number of seconds > 0")
    return resync


async def open_docker(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> Any:
    """An aiodocker.Docker for `--docker-host` (imported here: aiodocker, and aiohttp
    under it, only in a node part). An address it cannot use refuses `--remove-all`;
    otherwise, as the agent does, the process stays up, unhealthy, saying why (a restart
    with the flag fixed is the way out), rather than exit and be restarted for ever."""
    import aiodocker

    docker_host = getattr(args, "docker_host", None)
    try:
        return aiodocker.Docker(url=docker_host)
    except ValueError as error:  # an address aiodocker cannot use ("bogus://...")
        if getattr(args, "remove_all", False):
            raise RefusedToStart(f"--docker-host {docker_host!r}: {error}") from None
        ctx.health["docker"] = False
        log.error("--docker-host %r: %s; nothing can be done on this node", docker_host, error)
        task_status.started()
        while True:
            await anyio.sleep_forever()


# --- the cluster part, under a lease -----------------------------------------------


async def hold_lease(
    ctx: ServiceContext,
    service: str,
    serve: Callable[[TaskGroup], Awaitable[object]],
    active: Settable,
    *,
    lease_seconds: float | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Hold the lease (key lease.<service>) and run `serve` under it; stand by while
    another holds it. Started once active, or at once as a standby. `active` is 1
    while this process runs the cluster part."""
    holder = f"{service}-{uuid.uuid4().hex[:12]}"
    lease = Lease(ctx.buckets[names.LEASES_BUCKET], holder, service=service)
    if lease_seconds is not None:
        lease.lease_seconds = lease_seconds
    ctx.health["cluster_part"] = True
    started = False
    try:
        while True:
            if not await _try(lease):
                if not started:
                    log.info("another %s holds the lease; standing by", service)
                    task_status.started()
                    started = True
                await anyio.sleep(lease.renew_seconds)
                continue
            log.info("holding the lease %s: running the cluster part", lease.key)
            active.set(1)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lease.keep, tg.cancel_scope)
                    await serve(tg)
                    if not started:
                        task_status.started()
                        started = True
            finally:
                active.set(0)
            log.warning("lost the lease %s; standing by", lease.key)
    finally:
        await lease.release()


async def _try(lease: Lease) -> bool:
    try:
        return await lease.try_acquire()
    except Exception as error:  # NATS away: try again
        log.warning("could not read the lease %s: %s", lease.key, error)
        return False


# --- the cluster part's own metrics ------------------------------------------------

RECONCILE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def active_gauge(service: str) -> Gauge:
    """corral_<service>_active: what hold_lease sets (`active`)."""
    return Gauge(
        f"corral_{service}_active",
        f"1 while this {service} holds the lease and runs the cluster part",
    )


def reconcile_histogram(service: str) -> Histogram:
    """corral_<service>_reconcile_seconds, by controller."""
    return Histogram(
        f"corral_{service}_reconcile_seconds",
        "Time one reconcile of one key took",
        ["controller"],
        buckets=RECONCILE_BUCKETS,
    )


# --- the spec kinds the cluster part answers ---------------------------------------


@dataclasses.dataclass(frozen=True)
class SpecKind:
    """One kind: its durable consumer of CORRAL_SPECS (`durable`, its objects'
    `bucket`, `handlers`) and its requests' handlers (`requests`: default the same)."""

    kind: str
    durable: str
    bucket: str
    handlers: Mapping[str, DurableSpecHandler]
    requests: Mapping[str, SpecHandler] | None = None


async def serve_spec_kinds(
    ctx: ServiceContext, tg: TaskGroup, kinds: Sequence[SpecKind], *, queue: str
) -> None:
    """Start, in `tg`, every kind's durable consumer, then answering its requests (in
    the queue group `queue`)."""
    leases = ctx.buckets[names.LEASES_BUCKET]
    # The durable consumers first: an object written by request before one exists
    # would make a first start look like a consumer lost with its progress record.
    for spec in kinds:
        await tg.start(
            partial(
                consume_spec_stream,
                ctx.js,
                spec.kind,
                spec.handlers,
                ctx.events,
                durable=spec.durable,
                progress=leases,
                objects_bucket=spec.bucket,
            )
        )
    for spec in kinds:
        handlers = spec.handlers if spec.requests is None else spec.requests
        await tg.start(partial(serve_spec_requests, ctx.nc, spec.kind, handlers, queue=queue))


# --- the controllers' loop: mirrors of every bucket the cluster part reads ------------


class MirrorSet:
    """Base of a service's dataclass of Mirrors, one per bucket its cluster part reads."""

    def all(self) -> list[Mirror[Any] | ShardedMirror[Any]]:
        return [getattr(self, field.name) for field in dataclasses.fields(cast(Any, self))]


M = TypeVar("M", bound=MirrorSet)


class MirroredLoop(Generic[M]):
    """Base of a service's cluster loop: `mirrors` (its MirrorSet), watched until
    cancelled."""

    mirrors: M

    async def start_mirrors(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run every watch (started once each has replayed) until cancelled."""
        async with anyio.create_task_group() as tg:
            for mirror in self.mirrors.all():
                await tg.start(mirror.run)
            task_status.started()


async def write_into(
    mirror: Mirror[Any] | ShardedMirror[Any],
    writes: Sequence[Write],
    *,
    replace_unreadable: bool = False,
) -> bool:
    """Send `writes` to the mirror's bucket, apply what committed to `mirror`; True when
    all did. A write that failed for another reason than a conflict is raised (the
    controller retries with back-off). `replace_unreadable`: a Create that conflicts
    with a record of ours that cannot be read (corrupt, or from a newer corral) replaces
    it whole (only this process writes these buckets)."""
    if not writes:
        return True
    outcomes = await write_many(mirror.bucket, writes)
    written = True
    for outcome in outcomes:
        write = outcome.write
        if (
            replace_unreadable
            and outcome.conflict
            and isinstance(write, Create)
            and write.key in mirror.unreadable
        ):
            revision = await mirror.bucket.put(write.key, write.value)
            mirror.apply(Entry(write.key, write.value, revision))
            continue
        entry = outcome.entry
        if entry is not None:
            mirror.apply(entry)
        elif outcome.error is not None and not outcome.conflict:
            raise outcome.error
        else:
            written = False
    return written


def without_stamp(record: Any) -> Any:
    """A status record without its time of writing (`updated_at`), to compare."""
    return msgspec.structs.replace(record, updated_at=0.0)
