"""corral-volmgr: owns PersistentVolumes, claims and StorageClasses (docs/volumes.md).

Without `--node` it runs the cluster part: one active at a time (corral.natsio.lease,
key lease.volmgr), it answers corral.api.persistentvolume.* (release too),
corral.api.persistentvolumeclaim.* and corral.api.storageclass.*, applies the durable
specs of the three kinds from the CORRAL_SPECS stream, makes the StorageClass `local`
when it is missing, and runs the claim and volume controllers
(corral_volmgr.cluster_loop). A standby waits for the lease, serving only /metrics and
/healthz.

With `--node NAME` it runs the node part instead (corral_volmgr.node), imported only
then.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from corral.contract import names
from corral.natsio.bus import consume_spec_stream, serve_spec_requests, spec_stream_position
from corral.natsio.kv import Bucket
from corral.natsio.lease import Lease
from corral.natsio.service import RefusedToStart, ServiceContext, base_parser, service_main
from corral.natsio.spec_api import SpecPosition, no_stream
from corral_volmgr import metrics
from corral_volmgr.claim_api import KIND as CLAIM_KIND
from corral_volmgr.claim_api import PersistentVolumeClaimAPI
from corral_volmgr.class_api import KIND as CLASS_KIND
from corral_volmgr.class_api import StorageClassAPI
from corral_volmgr.cluster_loop import ClusterLoop
from corral_volmgr.volume_api import KIND as VOLUME_KIND
from corral_volmgr.volume_api import PersistentVolumeAPI

DEFAULT_PORT = 9104
# volmgr's durable consumers of the specs of each kind.
VOLUME_DURABLE = "volmgr-persistentvolume"
CLAIM_DURABLE = "volmgr-persistentvolumeclaim"
CLASS_DURABLE = "volmgr-storageclass"
log = logging.getLogger(__name__)


def _node_part() -> Any:
    """The node part's module, or a clear refusal when it cannot be imported."""
    try:
        node = importlib.import_module("corral_volmgr.node")
    except ImportError as error:
        raise RefusedToStart(
            f"--node needs volmgr's node part (corral_volmgr.node), which cannot be "
            f"imported: {error}"
        ) from None
    return node


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The flags; with `--node` in `argv` (default: this process's), the node part's too."""
    parser = base_parser("volmgr", DEFAULT_PORT)
    parser.add_argument(
        "--node",
        metavar="NAME",
        default="",
        help="run the node part for this node (beside its agent) instead of the cluster part",
    )
    parser.add_argument(
        "--host-path-allow",
        action="append",
        default=[],
        metavar="PATH",
        help="accept hostPath/local volumes only inside this folder (repeatable; default: "
        "any path that is not a system location)",
    )
    parser.add_argument(
        "--docker-host",
        help="with --node: the engine's address (default: $DOCKER_HOST, the local socket)",
    )
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if known.node:
        try:
            node = _node_part()
        except RefusedToStart as error:
            parser.error(str(error))
        node.add_arguments(parser)
    return parser


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    if getattr(args, "node", ""):
        node = _node_part()
        await node.run(ctx, args, task_status=task_status)
        return
    await run_cluster_part(
        ctx, host_path_allow=tuple(args.host_path_allow or ()), task_status=task_status
    )


async def run_cluster_part(
    ctx: ServiceContext,
    *,
    lease_seconds: float | None = None,
    host_path_allow: tuple[str, ...] = (),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Hold the lease and run the cluster part under it; stand by while another holds it.
    Started once active, or at once as a standby."""
    holder = f"volmgr-{uuid.uuid4().hex[:12]}"
    lease = Lease(ctx.buckets[names.LEASES_BUCKET], holder, service="volmgr")
    if lease_seconds is not None:
        lease.lease_seconds = lease_seconds
    ctx.health["cluster_part"] = True
    started = False
    try:
        while True:
            if not await _try(lease):
                if not started:
                    log.info("another volmgr holds the lease; standing by")
                    task_status.started()
                    started = True
                await anyio.sleep(lease.renew_seconds)
                continue
            log.info("holding the lease %s: running the cluster part", lease.key)
            metrics.ACTIVE.set(1)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lease.keep, tg.cancel_scope)
                    await serve(ctx, tg, host_path_allow=host_path_allow)
                    if not started:
                        task_status.started()
                        started = True
            finally:
                metrics.ACTIVE.set(0)
            log.warning("lost the lease %s; standing by", lease.key)
    finally:
        await lease.release()


async def _try(lease: Lease) -> bool:
    try:
        return await lease.try_acquire()
    except Exception as error:  # NATS away: try again
        log.warning("could not read the lease %s: %s", lease.key, error)
        return False


@dataclass
class APIs:
    volumes: PersistentVolumeAPI
    claims: PersistentVolumeClaimAPI
    classes: StorageClassAPI


def build_apis(
    loop: ClusterLoop,
    progress: Bucket,
    *,
    host_path_allow: tuple[str, ...] = (),
    positions: dict[str, SpecPosition] | None = None,
) -> APIs:
    """The three APIs over the loop's mirrors, under its one lock."""
    m = loop.mirrors
    positions = positions or {}
    return APIs(
        volumes=PersistentVolumeAPI(
            m.volumes,
            volume_status=m.volume_status,
            claims=m.claims,
            attachments=m.attachments,
            lock=loop.lock,
            host_path_allow=host_path_allow,
            progress=progress,
            spec_position=positions.get(VOLUME_KIND, no_stream),
            leases=progress,
            nodes=loop.buckets.get(names.NODES_BUCKET),
            placements=m.placements,
        ),
        claims=PersistentVolumeClaimAPI(
            m.claims,
            claim_status=m.claim_status,
            users=loop.user_names,
            lock=loop.lock,
            progress=progress,
            spec_position=positions.get(CLAIM_KIND, no_stream),
        ),
        classes=StorageClassAPI(
            m.storage_classes,
            lock=loop.lock,
            progress=progress,
            spec_position=positions.get(CLASS_KIND, no_stream),
        ),
    )


async def serve(
    ctx: ServiceContext, tg: TaskGroup, *, host_path_allow: tuple[str, ...] = ()
) -> ClusterLoop:
    """Start the cluster part in `tg`: watches, durable consumers, request answering,
    then the `local` class and the controllers."""
    loop = ClusterLoop(dict(ctx.buckets), events=ctx.events)
    leases = ctx.buckets[names.LEASES_BUCKET]
    await tg.start(loop.start_mirrors)
    apis = build_apis(
        loop,
        leases,
        host_path_allow=host_path_allow,
        positions={
            kind: partial(spec_stream_position, ctx.js, kind)
            for kind in (VOLUME_KIND, CLAIM_KIND, CLASS_KIND)
        },
    )
    kinds: list[tuple[str, Any, str, str]] = [
        (VOLUME_KIND, apis.volumes, VOLUME_DURABLE, names.VOLUMES_BUCKET),
        (CLAIM_KIND, apis.claims, CLAIM_DURABLE, names.CLAIMS_BUCKET),
        (CLASS_KIND, apis.classes, CLASS_DURABLE, names.STORAGE_CLASSES_BUCKET),
    ]
    # The durable consumers first: an object written by request before one exists
    # would make a first start look like a consumer lost with its progress record.
    for kind, api, durable, bucket in kinds:
        await tg.start(
            partial(
                consume_spec_stream,
                ctx.js,
                kind,
                api.handlers(),
                ctx.events,
                durable=durable,
                progress=leases,
                objects_bucket=bucket,
            )
        )
    for kind, api, _, _ in kinds:
        handlers = api.request_handlers() if api is apis.volumes else api.handlers()
        await tg.start(partial(serve_spec_requests, ctx.nc, kind, handlers, queue="volmgr"))
    await tg.start(loop.run_controllers, apis.classes.ensure_default)
    return loop


def main() -> None:
    service_main("volmgr", build_parser(), run)


if __name__ == "__main__":
    main()
