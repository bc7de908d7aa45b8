"""netmgr's node part (`corral-netmgr --node NAME`): one beside every node agent, on the
same Docker engine (docs/networking.md).

It makes this node's Docker network for each of its NetworkSlices, the routes to other
nodes' slices (flannel's host-gw), the packet-filter rules for isolation and Services,
and runs the DNS server on its slices' gateways. main.py adds `--node` and
`--docker-host` and calls `run` when `--node` is set; `add_arguments` adds the node
part's own flags.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from corral.contract.network_state import Endpoints
from corral.natsio import cluster_service
from corral.natsio.service import RefusedToStart, ServiceContext

if TYPE_CHECKING:
    from corral_netmgr.node.docker_networks import DockerNetworks
    from corral_netmgr.node.iptables import Iptables
    from corral_netmgr.node.part import NodeSettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The node part's own flags (main.py adds `--node` and `--docker-host`)."""
    group = parser.add_argument_group("node part (with --node)")
    group.add_argument(
        "--node-address",
        default="",
        help="this node's address other nodes route its slices via "
        "(default: the host's source address on its default route)",
    )
    group.add_argument(
        "--dns-port",
        type=int,
        default=53,
        help="the port of the DNS server on each slice's gateway (default 53; 0: none)",
    )
    group.add_argument(
        "--node-resync-seconds",
        type=float,
        default=30.0,
        help="how often every rule, route and Docker network is checked again (default 30)",
    )
    group.add_argument(
        "--remove-all",
        action="store_true",
        help="remove this node's packet-filter chains and jumps, its routes and its "
        "Docker networks, then exit (`corral down`)",
    )


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node part of node `args.node` until cancelled (or, with --remove-all,
    remove what it made and stop the process)."""
    from corral_netmgr.node.docker_networks import DockerNetworks
    from corral_netmgr.node.host import machine_id
    from corral_netmgr.node.iptables import Iptables
    from corral_netmgr.node.part import NodePart

    settings = settings_from_args(args, ctx.cluster.id, machine_id())
    node = settings.node
    docker = await cluster_service.open_docker(ctx, args, task_status=task_status)
    try:
        networks = DockerNetworks(docker, settings.cluster_id, node)
        iptables = Iptables(settings.prefix)
        if getattr(args, "remove_all", False):
            part = NodePart(ctx.buckets, settings, networks, iptables)
            task_status.started()
            errors = await part.remove_all()
            if errors:
                raise RefusedToStart("--remove-all left some behind: " + "; ".join(errors))
            log.info(
                "removed node %s's rules, routes and the Docker networks no container uses", node
            )
            ctx.task_group.cancel_scope.cancel()
            return
        await _run_part(ctx, settings, networks, iptables, task_status)
    finally:
        with anyio.CancelScope(shield=True):
            await docker.close()


async def _run_part(
    ctx: ServiceContext,
    settings: NodeSettings,
    networks: DockerNetworks,
    iptables: Iptables,
    task_status: TaskStatus[None],
) -> None:
    from corral_netmgr.node.dns import DnsServer, ServiceDirectory, resolv_conf_upstreams
    from corral_netmgr.node.part import NodePart

    directory = ServiceDirectory()

    def on_endpoints(key: str, endpoints: Endpoints | None) -> None:
        if endpoints is None:
            directory.remove(key)
        else:
            directory.put(endpoints)

    dns = DnsServer(directory, resolv_conf_upstreams()) if settings.dns_port else None
    part = NodePart(ctx.buckets, settings, networks, iptables, dns=dns, on_endpoints=on_endpoints)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(part.run)
            ctx.health["node_part"] = True
            log.info(
                "node part of %s running (chains %s-*, address %s)",
                settings.node,
                settings.prefix,
                settings.node_address or "from the default route",
            )
            task_status.started()
    finally:
        if dns is not None:
            with anyio.CancelScope(shield=True):
                await dns.close()


def settings_from_args(args: argparse.Namespace, cluster_id: str, host_id: str) -> NodeSettings:
    """The node part's settings from its flags; RefusedToStart naming a bad flag."""
    from corral_netmgr.node.part import NodeSettings

    node = cluster_service.node_name(args)
    resync = cluster_service.node_resync_seconds(args)
    dns_port = int(getattr(args, "dns_port", 53))
    if not 0 <= dns_port <= 65535:
        raise RefusedToStart(f"--dns-port {dns_port} is not a port (0-65535; 0: no DNS)")
    return NodeSettings(
        node=node,
        cluster_id=cluster_id,
        node_address=_address(getattr(args, "node_address", "")),
        host_id=host_id,
        resync_seconds=resync,
        dns_port=dns_port,
    )


def _address(text: str) -> str:
    if not text:
        return ""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise RefusedToStart(f"--node-address {text!r} is not an IPv4 address") from None
