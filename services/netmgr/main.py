"""corral-netmgr: will own Network and Service.

Today it only joins the cluster: it connects to NATS, makes sure corral's streams
and buckets exist, and serves /metrics and /healthz. It serves no spec subject
yet, so a client gets "no responders" rather than a fake answer.
"""

from __future__ import annotations

import argparse

import anyio
from anyio.abc import TaskStatus

from corral.service import ServiceContext, base_parser, service_main

DEFAULT_PORT = 9103


def build_parser() -> argparse.ArgumentParser:
    return base_parser("netmgr", DEFAULT_PORT)


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()


def main() -> None:
    service_main("netmgr", build_parser(), run)


if __name__ == "__main__":
    main()
