"""volmgr's node part (`corral-volmgr --node NAME`): one beside every node agent, on the
same Docker engine, as root (docs/volumes.md).

It makes what the cluster part decided real on its node: provisioned volumes (sparse
ext4 images on loop devices, mounted; directories where loop devices are missing),
hostPath/local directories, Docker volumes, and a VolumeAttachment for each; it removes
them; it reports the room the node offers (NodeVolumes); it mounts its volumes again
after a restart or a reboot. main.py adds `--node` and `--docker-host` and calls `run`
when `--node` is set; `add_arguments` adds the node part's own flags.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from corral.contract.volume_specs import check_path
from corral.natsio import cluster_service
from corral.natsio.service import RefusedToStart, ServiceContext

if TYPE_CHECKING:
    from corral_volmgr.node.docker_volumes import DockerVolumes
    from corral_volmgr.node.part import NodeSettings

log = logging.getLogger(__name__)
DEFAULT_VOLUMES_DIR = "/var/lib/corral/volumes"


def _add(group: Any, *flags: str, **options: Any) -> None:
    """Add a flag unless the parser has it already (--host-path-allow is the cluster
    part's too: main.py may add it for both)."""
    try:
        group.add_argument(*flags, **options)
    except argparse.ArgumentError:
        pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The node part's own flags (main.py adds `--node` and `--docker-host`)."""
    group = parser.add_argument_group("node part (with --node)")
    _add(
        group,
        "--volumes-dir",
        default=DEFAULT_VOLUMES_DIR,
        help="where provisioned volumes' images and mounts live (default %(default)s)",
    )
    _add(
        group,
        "--capacity",
        default="",
        metavar="BYTES",
        help="the room offered to provisioned volumes, bytes or a quantity like 20Gi "
        "(default: measured, the volumes folder's free space plus its images)",
    )
    _add(
        group,
        "--host-path-allow",
        action="append",
        default=[],
        metavar="PATH",
        help="hostPath/local volumes only inside this folder (repeatable; default: any "
        "path that is not a system location)",
    )
    _add(
        group,
        "--node-resync-seconds",
        type=float,
        default=30.0,
        help="how often every volume and the node's record are checked again (default 30)",
    )
    _add(
        group,
        "--remove-all",
        action="store_true",
        help="remove this cluster's unused Docker volumes on this node, unmount its "
        "volumes and detach their loop devices (the images stay), then exit (`corral down`)",
    )
    _add(
        group,
        "--delete-data",
        action="store_true",
        help="with --remove-all: also delete every image file and folder of this cluster "
        "in the volumes folder (`corral down --delete-volumes`)",
    )


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node part of node `args.node` until cancelled (or, with --remove-all,
    remove what it made and stop the process)."""
    from corral_volmgr.node.docker_volumes import DockerVolumes

    settings = settings_from_args(args, ctx.cluster.id, ctx.cluster.placement_shards)
    remove_all = bool(getattr(args, "remove_all", False))
    docker = await cluster_service.open_docker(ctx, args, task_status=task_status)
    try:
        volumes = DockerVolumes(docker, settings.cluster_id, settings.node)
        if remove_all:
            await _remove_all(ctx, settings, volumes, bool(getattr(args, "delete_data", False)))
            task_status.started()
            ctx.task_group.cancel_scope.cancel()
            return
        await _run_part(ctx, settings, volumes, task_status)
    finally:
        with anyio.CancelScope(shield=True):
            await docker.close()


async def _remove_all(
    ctx: ServiceContext, settings: NodeSettings, volumes: DockerVolumes, delete_data: bool
) -> None:
    from corral_volmgr.node.part import NodePart

    part = NodePart(ctx.buckets, settings, volumes)
    report = await part.remove_all(delete_data=delete_data)
    for line in report.done:
        print(line, flush=True)
    if not report.done:
        print(f"nothing of cluster {settings.cluster_id} on node {settings.node}", flush=True)
    if report.errors:
        raise RefusedToStart("--remove-all left some behind: " + "; ".join(report.errors))
    kept = "deleted" if delete_data else "kept"
    log.info("removed node %s's volumes (data %s)", settings.node, kept)


async def _run_part(
    ctx: ServiceContext,
    settings: NodeSettings,
    volumes: DockerVolumes,
    task_status: TaskStatus[None],
) -> None:
    from corral_volmgr.node.part import NodePart

    part = NodePart(ctx.buckets, settings, volumes)
    async with anyio.create_task_group() as tg:
        await tg.start(part.run)
        ctx.health["node_part"] = True
        log.info(
            "volmgr node part of %s running (volumes in %s, loop devices %s)",
            settings.node,
            settings.volumes_dir,
            "work" if not part.loop_problem else f"unavailable: {part.loop_problem}",
        )
        task_status.started()


def settings_from_args(
    args: argparse.Namespace, cluster_id: str, placement_shards: int = 1
) -> NodeSettings:
    """The node part's settings from its flags; RefusedToStart naming a bad flag."""
    from corral_volmgr.node.capacity import parse_capacity
    from corral_volmgr.node.part import NodeSettings

    node = cluster_service.node_name(args)
    resync = cluster_service.node_resync_seconds(args)
    volumes_dir = str(getattr(args, "volumes_dir", "") or DEFAULT_VOLUMES_DIR)
    try:
        check_path("--volumes-dir", volumes_dir)
    except ValueError as error:
        raise RefusedToStart(str(error)) from None
    if volumes_dir == "/":
        raise RefusedToStart("`--volumes-dir` '/' is the root folder: give a folder of corral's")
    try:
        room = parse_capacity(str(getattr(args, "capacity", "") or ""))
    except ValueError as error:
        raise RefusedToStart(str(error)) from None
    allowed = []
    for path in getattr(args, "host_path_allow", None) or []:
        try:
            check_path("--host-path-allow", str(path))
        except ValueError as error:
            raise RefusedToStart(str(error)) from None
        allowed.append(str(path))
    return NodeSettings(
        node=node,
        cluster_id=cluster_id,
        placement_shards=placement_shards,
        volumes_dir=Path(volumes_dir),
        capacity_bytes=room,
        host_path_allow=tuple(allowed),
        resync_seconds=resync,
    )
