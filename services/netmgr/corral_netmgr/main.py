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
import importlib
import logging
import sys
import uuid
from collections.abc import Sequence
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
log = logging.getLogger(__name__)


def _node_part() -> Any:
    """The node part's module, or a clear refusal when it cannot be imported."""
    try:
        node = importlib.import_module("corral_netmgr.node")
    except ImportError as error:
        raise RefusedToStart(
            f"--node needs netmgr's node part (corral_netmgr.node), which cannot be "
            f"imported: {error}"
        ) from None
    return node


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The flags; with `--node` in `argv` (default: this process's), the node part's too."""
    parser = base_parser("netmgr", DEFAULT_PORT)
    parser.add_argument(
        "--node",
        metavar="NAME",
        default="",
        help="run the node part for this node (beside its agent) instead of the cluster part",
    )
    parser.add_argument(
        "--default-network-wait",
        type=float,
        default=DEFAULT_NETWORK_WAIT,
        metavar="SECONDS",
        help="the cluster part picks the `default` network's range once a node part has "
        "reported its host's used ranges, or after this long (default %(default)s)",
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
        ctx, default_network_wait=args.default_network_wait, task_status=task_status
    )


async def run_cluster_part(
    ctx: ServiceContext,
    *,
    lease_seconds: float | None = None,
    default_network_wait: float = DEFAULT_NETWORK_WAIT,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Hold the lease and run the cluster part under it; stand by while another holds it.
    Started once active, or at once as a standby."""
    holder = f"netmgr-{uuid.uuid4().hex[:12]}"
    lease = Lease(ctx.buckets[names.LEASES_BUCKET], holder, service="netmgr")
    if lease_seconds is not None:
        lease.lease_seconds = lease_seconds
    ctx.health["cluster_part"] = True
    started = False
    try:
        while True:
            if not await _try(lease):
                if not started:
                    log.info("another netmgr holds the lease; standing by")
                    task_status.started()
                    started = True
                await anyio.sleep(lease.renew_seconds)
                continue
            log.info("holding the lease %s: running the cluster part", lease.key)
            metrics.ACTIVE.set(1)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lease.keep, tg.cancel_scope)
                    await serve(ctx, tg, default_network_wait=default_network_wait)
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
    loop = ClusterLoop(dict(ctx.buckets), default_network_wait=default_network_wait)
    leases = ctx.buckets[names.LEASES_BUCKET]
    await tg.start(loop.start_mirrors)
    network_api, service_api = build_apis(
        loop,
        leases,
        network_position=partial(spec_stream_position, ctx.js, NETWORK_KIND),
        service_position=partial(spec_stream_position, ctx.js, SERVICE_KIND),
    )
    # The durable consumers first: an object written by request before one exists
    # would make a first start look like a consumer lost with its progress record.
    for kind, api, durable, bucket in (
        (NETWORK_KIND, network_api, NETWORK_DURABLE, names.NETWORKS_BUCKET),
        (SERVICE_KIND, service_api, SERVICE_DURABLE, names.SERVICES_BUCKET),
    ):
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
    for kind, api in ((NETWORK_KIND, network_api), (SERVICE_KIND, service_api)):
        await tg.start(partial(serve_spec_requests, ctx.nc, kind, api.handlers(), queue="netmgr"))
    await tg.start(loop.run_controllers, network_api.ensure_default)
    return loop


def main() -> None:
    service_main("netmgr", build_parser(), run)


if __name__ == "__main__":
    main()
