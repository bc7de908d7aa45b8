"""What the integration tests of netmgr's and volmgr's cluster parts share: running one
in-process (netmgr_harness.py, volmgr_harness.py), asking its API, reading its records."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from nats.aio.client import Client as NATS

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.events import Reply
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext, ServiceRun, run_service
from tests.waiting import eventually


@asynccontextmanager
async def running_cluster_part(
    service: str,
    build_parser: Callable[[Sequence[str]], argparse.ArgumentParser],
    run: ServiceRun,
    nats_url: str,
    flags: Sequence[str],
) -> AsyncIterator[ServiceContext]:
    """`service` (its `build_parser` and `run`) with `flags` as on its command line."""
    args = build_parser([]).parse_args(["--nats", nats_url, "--metrics-port", "0", *flags])
    async with anyio.create_task_group() as tg:
        ctx: ServiceContext = await tg.start(run_service, service, run, args)
        try:
            yield ctx
        finally:
            tg.cancel_scope.cancel()


async def request(nc: NATS, kind: str, verb: str, payload: bytes) -> Reply:
    msg = await nc.request(names.api_subject(kind, verb), payload, timeout=5)
    return decode(msg.data, Reply)


async def record(bucket: NatsBucket, key: str, kind: type[Any]) -> Any:
    entry = await bucket.get(key)
    return None if entry is None or entry.value is None else decode(entry.value, kind)


async def absent(bucket: NatsBucket, key: str) -> None:
    await eventually(lambda: bucket.get(key), lambda e: e is None or e.value is None)
