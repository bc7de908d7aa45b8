"""corral-node-agent: the entry point and flags of the node agent."""

from __future__ import annotations

import argparse
import logging

import anyio
from anyio.abc import TaskStatus

from corral import names
from corral.service import ServiceContext, base_parser, service_main
from corral_node_agent.agent import NodeAgent, NodeNameTaken
from corral_node_agent.docker_runtime import DockerRuntime
from corral_node_agent.hollow_runtime import (
    HOLLOW_DEFAULT_CPU_MILLIS,
    HOLLOW_DEFAULT_MEMORY_BYTES,
    HollowRuntime,
)
from corral_node_agent.runtime import Runtime
from corral_node_agent.settings import ENV_AGENT_ID, settings_from_args

log = logging.getLogger(__name__)

SERVICE = "node-agent"
DEFAULT_METRICS_PORT = 9102


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(SERVICE, DEFAULT_METRICS_PORT)
    parser.add_argument("--node-name", help="this node's name (default: the hostname)")
    parser.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="a node label (repeatable)",
    )
    parser.add_argument(
        "--agent-id",
        help=f"this agent's id in the Node record; keep it across restarts so a restarted "
        f"agent recognises its own record (default: ${ENV_AGENT_ID}, else random)",
    )
    parser.add_argument("--runtime", choices=("docker", "hollow"), default="docker")
    parser.add_argument(
        "--docker-host", help="the engine's address (default: $DOCKER_HOST, the local socket)"
    )
    parser.add_argument("--cpu", help="CPU capacity, e.g. 2 or 1500m (default: the engine's)")
    parser.add_argument("--memory", help="memory capacity, e.g. 4Gi (default: the engine's)")
    parser.add_argument("--pods", type=int, default=110, help="most replicas on this node")
    parser.add_argument("--heartbeat-seconds", type=float, default=2.0)
    parser.add_argument("--resync-seconds", type=float, default=10.0)
    parser.add_argument("--max-parallel", type=int, default=8, help="container operations at once")
    return parser


def build_runtime(args: argparse.Namespace) -> Runtime:
    if args.runtime == "hollow":
        return HollowRuntime(
            cpu_millis=HOLLOW_DEFAULT_CPU_MILLIS, memory_bytes=HOLLOW_DEFAULT_MEMORY_BYTES
        )
    return DockerRuntime(args.docker_host)


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    settings = settings_from_args(args)
    agent = NodeAgent(
        settings,
        build_runtime(args),
        placements=ctx.buckets[names.PLACEMENTS_BUCKET],
        nodes=ctx.buckets[names.NODES_BUCKET],
        statuses=ctx.buckets[names.REPLICA_STATUS_BUCKET],
        events=ctx.events,
        health=ctx.health,
        is_connected=lambda: bool(ctx.nc.is_connected),
    )
    ctx.health["engine"] = False
    try:
        await agent.run(task_status=task_status)
    except NodeNameTaken as error:
        log.error("refusing to start: %s", error)
        raise  # the service exits non-zero


def main() -> None:
    service_main(SERVICE, build_parser(), run)


if __name__ == "__main__":
    main()
