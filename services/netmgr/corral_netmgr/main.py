"""corral-netmgr: owns Networks and Services (docs/networking.md).

Without `--node` it runs the cluster part: one active at a time (corral.natsio.lease,
key lease.netmgr), it answers corral.api.network.* and corral.api.service.*, applies
the durable specs of both kinds from the CORRAL_SPECS stream, and runs the network and endpoints
controllers (corral_netmgr.cluster_loop). A standby waits for the lease, serving only
/metrics and /healthz.

With `--node NAME` it runs the node part instead (corral_netmgr.node), imported only
then.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
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
from corral_netmgr import metrics
from corral_netmgr.cluster_loop import DEFAULT_NETWORK_WAIT, ClusterLoop
from corral_netmgr.network_api import KIND as NETWORK_KIND
from corral_netmgr.network_api import NetworkAPI
from corral_netmgr.service_api import KIND as SERVICE_KIND
from corral_netmgr.service_api import ServiceAPI

DEFAULT_PORT = 9103
# netmgr's durable consumers of the specs of each kind.
NETWORK_DURABLE = "netmgr-network"
SERVICE_DURABLE = "netmgr-service"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The flags; with `--node` in `argv` (default: this process's), the node part's too."""
    return cluster_service.build_parser("netmgr", DEFAULT_PORT, argv, _add_flags)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    """netmgr's own flags (cluster_service adds `--node` and `--docker-host`)."""
    parser.add_argument(
        "--default-network-wait",
        type=float,
        default=DEFAULT_NETWORK_WAIT,
        metavar="SECONDS",
        help="the cluster part picks the `default` network's range once a node part has "
        "reported its host's used ranges, or after this long (default %(default)s)",
    )


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    cluster_part = partial(run_cluster_part, ctx, default_network_wait=args.default_network_wait)
    await cluster_service.run(ctx, args, "netmgr", cluster_part, task_status=task_status)


async def run_cluster_part(
    ctx: ServiceContext,
    *,
    lease_seconds: float | None = None,
    default_network_wait: float = DEFAULT_NETWORK_WAIT,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Hold the lease and run the cluster part under it; stand by while another holds it.
    Started once active, or at once as a standby."""
    serve_here = partial(serve, ctx, default_network_wait=default_network_wait)
    await cluster_service.hold_lease(
        ctx,
        "netmgr",
        serve_here,
        metrics.ACTIVE,
        lease_seconds=lease_seconds,
        task_status=task_status,
    )


def build_apis(
    loop: ClusterLoop,
    progress: Bucket,
    *,
    network_position: SpecPosition = no_stream,
    service_position: SpecPosition = no_stream,
) -> tuple[NetworkAPI, ServiceAPI]:
    """The Network and Service APIs over the loop's mirrors, under its one lock."""
    m = loop.mirrors
    network_api = NetworkAPI(
        m.networks,
        deployments=m.deployments,
        services=m.services,
        node_network=m.node_network,
        lock=loop.lock,
        progress=progress,
        spec_position=network_position,
    )
    service_api = ServiceAPI(
        m.services,
        networks=m.networks,
        node_network=m.node_network,
        lock=loop.lock,
        progress=progress,
        spec_position=service_position,
    )
    return network_api, service_api


async def serve(
    ctx: ServiceContext, tg: TaskGroup, *, default_network_wait: float = DEFAULT_NETWORK_WAIT
) -> ClusterLoop:
    """Start the cluster part in `tg`: watches, durable consumers, request answering,
    then the `default` network and the controllers."""
    loop = ClusterLoop(
        dict(ctx.buckets),
        default_network_wait=default_network_wait,
        placement_shards=ctx.cluster.placement_shards,
    )
    leases = ctx.buckets[names.LEASES_BUCKET]
    await tg.start(loop.start_mirrors)
    network_api, service_api = build_apis(
        loop,
        leases,
        network_position=partial(spec_stream_position, ctx.js, NETWORK_KIND),
        service_position=partial(spec_stream_position, ctx.js, SERVICE_KIND),
    )
    kinds = [
        SpecKind(NETWORK_KIND, NETWORK_DURABLE, names.NETWORKS_BUCKET, network_api.handlers()),
        SpecKind(SERVICE_KIND, SERVICE_DURABLE, names.SERVICES_BUCKET, service_api.handlers()),
    ]
    await serve_spec_kinds(ctx, tg, kinds, queue="netmgr")
    await tg.start(loop.run_controllers, network_api.ensure_default)
    return loop


def main() -> None:
    service_main("netmgr", build_parser(), run)


if __name__ == "__main__":
    main()
