"""Running volmgr's cluster part in-process, for the tests of every folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from corral.natsio.service import ServiceContext
from corral_volmgr.main import build_parser, run
from tests.integration.cluster_part_harness import running_cluster_part


@asynccontextmanager
async def running_volmgr(nats_url: str, *flags: str) -> AsyncIterator[ServiceContext]:
    """volmgr's cluster part (flags as on its command line, e.g. `--host-path-allow
    /srv`). It makes the StorageClass `local` at start; no node part runs: a test
    writes NodeVolumes and VolumeAttachment records itself as one would."""
    async with running_cluster_part("volmgr", build_parser, run, nats_url, flags) as ctx:
        yield ctx
