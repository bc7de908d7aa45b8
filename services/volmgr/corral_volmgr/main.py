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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import anyio
from anyio.abc import TaskGroup, TaskStatus

from corral.contract import names
from corral.natsio import cluster_service
from corral.natsio.bus import spec_stream_position
from corral.natsio.cluster_service import SpecKind, serve_spec_kinds
from corral.natsio.kv import Bucket
from corral.natsio.service import ServiceContext, service_main
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


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The flags; with `--node` in `argv` (default: this process's), the node part's too."""
    return cluster_service.build_parser("volmgr", DEFAULT_PORT, argv, _add_flags)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    """volmgr's own flags (cluster_service adds `--node` and `--docker-host`)."""
    parser.add_argument(
        "--host-path-allow",
        action="append",
        default=[],
        metavar="PATH",
        help="accept hostPath/local volumes only inside this folder (repeatable; default: "
        "any path that is not a system location)",
    )


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    cluster_part = partial(run_cluster_part, ctx, host_path_allow=tuple(args.host_path_allow or ()))
    await cluster_service.run(ctx, args, "volmgr", cluster_part, task_status=task_status)


async def run_cluster_part(
    ctx: ServiceContext,
    *,
    lease_seconds: float | None = None,
    host_path_allow: tuple[str, ...] = (),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Hold the lease and run the cluster part under it; stand by while another holds it.
    Started once active, or at once as a standby."""
    serve_here = partial(serve, ctx, host_path_allow=host_path_allow)
    await cluster_service.hold_lease(
        ctx,
        "volmgr",
        serve_here,
        metrics.ACTIVE,
        lease_seconds=lease_seconds,
        task_status=task_status,
    )


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
    loop = ClusterLoop(
        dict(ctx.buckets), events=ctx.events, placement_shards=ctx.cluster.placement_shards
    )
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
    kinds = [
        SpecKind(
            VOLUME_KIND,
            VOLUME_DURABLE,
            names.VOLUMES_BUCKET,
            apis.volumes.handlers(),
            requests=apis.volumes.request_handlers(),
        ),
        SpecKind(CLAIM_KIND, CLAIM_DURABLE, names.CLAIMS_BUCKET, apis.claims.handlers()),
        SpecKind(CLASS_KIND, CLASS_DURABLE, names.STORAGE_CLASSES_BUCKET, apis.classes.handlers()),
    ]
    await serve_spec_kinds(ctx, tg, kinds, queue="volmgr")
    await tg.start(loop.run_controllers, apis.classes.ensure_default)
    return loop


def main() -> None:
    service_main("volmgr", build_parser(), run)


if __name__ == "__main__":
    main()
