"""Running netmgr's cluster part in-process, for the tests of every folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from corral.natsio.service import ServiceContext
from corral_netmgr.main import build_parser, run
from tests.integration.cluster_part_harness import running_cluster_part


@asynccontextmanager
async def running_netmgr(nats_url: str, *flags: str) -> AsyncIterator[ServiceContext]:
    """netmgr's cluster part (flags as on its command line). Without node parts in a
    test, nothing reports its host's ranges: the `default` network is made at once
    unless `--default-network-wait` is given."""
    if "--default-network-wait" not in flags:
        flags = (*flags, "--default-network-wait", "0")
    async with running_cluster_part("netmgr", build_parser, run, nats_url, flags) as ctx:
        yield ctx
