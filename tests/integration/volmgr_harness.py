"""Running volmgr's cluster part in-process, for the tests of every folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from corral.natsio.service import ServiceContext, run_service
from corral_volmgr.main import build_parser, run


@asynccontextmanager
async def running_volmgr(nats_url: str, *flags: str) -> AsyncIterator[ServiceContext]:
    """volmgr's cluster part (flags as on its command line, e.g. `--host-path-allow
    /srv`). It makes the StorageClass `local` at start; no node part runs: a test
    writes NodeVolumes and VolumeAttachment records itself as one would."""
    args = build_parser([]).parse_args(["--nats", nats_url, "--metrics-port", "0", *flags])
    async with anyio.create_task_group() as tg:
        ctx: ServiceContext = await tg.start(run_service, "volmgr", run, args)
        try:
            yield ctx
        finally:
            tg.cancel_scope.cancel()
