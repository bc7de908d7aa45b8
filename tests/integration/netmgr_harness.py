"""Running netmgr's cluster part in-process, for the tests of every folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from corral.natsio.service import ServiceContext, run_service
from corral_netmgr.main import build_parser, run


@asynccontextmanager
async def running_netmgr(nats_url: str, *flags: str) -> AsyncIterator[ServiceContext]:
    """netmgr's cluster part (flags as on its command line). Without node parts in a
    test, nothing reports its host's ranges: the `default` network is made at once
    unless `--default-network-wait` is given."""
    if "--default-network-wait" not in flags:
        flags = (*flags, "--default-network-wait", "0")
    args = build_parser([]).parse_args(["--nats", nats_url, "--metrics-port", "0", *flags])
    async with anyio.create_task_group() as tg:
        ctx: ServiceContext = await tg.start(run_service, "netmgr", run, args)
        try:
            yield ctx
        finally:
            tg.cancel_scope.cancel()
