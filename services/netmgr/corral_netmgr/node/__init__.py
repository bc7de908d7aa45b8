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

import anyio
from anyio.abc import TaskStatus

from corral.natsio.service import RefusedToStart, ServiceContext


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
    remove what it made and return)."""
    raise RefusedToStart("the node part of netmgr is being built (issue 8)")
