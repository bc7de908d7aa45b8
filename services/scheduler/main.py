"""corral-scheduler: owns Deployments; places their replicas on Ready nodes."""

from __future__ import annotations

import argparse
from functools import partial

import anyio
from anyio.abc import TaskStatus

from corral import names
from corral.bus import consume_spec_stream, serve_spec_requests
from corral.service import ServiceContext, base_parser, service_main
from corral_scheduler.control_loop import ControlLoop
from corral_scheduler.deployment_api import KIND, DeploymentAPI

DEFAULT_PORT = 9101


def build_parser() -> argparse.ArgumentParser:
    return base_parser("scheduler", DEFAULT_PORT)


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    loop = ControlLoop(dict(ctx.buckets), ctx.events)
    await ctx.task_group.start(loop.run)
    handlers = DeploymentAPI(ctx.buckets[names.DEPLOYMENTS_BUCKET]).handlers()
    await ctx.task_group.start(
        partial(serve_spec_requests, ctx.nc, KIND, handlers, queue="scheduler")
    )
    await ctx.task_group.start(
        partial(
            consume_spec_stream,
            ctx.js,
            KIND,
            handlers,
            ctx.events,
            durable="scheduler-deployment",
        )
    )
    ctx.health["control_loop"] = True
    task_status.started()


def main() -> None:
    service_main("scheduler", build_parser(), run)


if __name__ == "__main__":
    main()
