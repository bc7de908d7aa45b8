"""Running the scheduler in-process against the test's nats-server, and helpers to
play a node agent (register nodes, heartbeat) through the real buckets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import msgspec
from nats.aio.client import Client as NATS

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Reply
from corral.contract.state import Node, NodeCapacity, Placement
from corral.natsio.kv import NatsBucket, write_record
from corral.natsio.service import ServiceContext, run_service
from corral_scheduler.main import build_parser, run
from tests.waiting import eventually  # noqa: F401  (re-exported for the scheduler tests)

T = TypeVar("T")


@asynccontextmanager
async def running_scheduler(
    nats_url: str, *, nodes: Mapping[str, Mapping[str, int]] | None = None
) -> AsyncIterator[ServiceContext]:
    """The scheduler in-process; `nodes` (name -> register_node capacities) heartbeat
    meanwhile, as their agents would."""
    args = build_parser().parse_args(["--nats", nats_url, "--metrics-port", "0"])
    async with anyio.create_task_group() as tg:
        ctx: ServiceContext = await tg.start(run_service, "scheduler", run, args)
        for name, capacity in (nodes or {}).items():
            tg.start_soon(heartbeat, ctx.buckets[names.NODES_BUCKET], name, capacity)
        try:
            yield ctx
        finally:
            tg.cancel_scope.cancel()


async def heartbeat(nodes: NatsBucket, name: str, capacity: Mapping[str, int]) -> None:
    while True:
        try:
            await register_node(nodes, name, **capacity)
        except Exception:  # NATS away (a test may stop it): an agent keeps trying
            pass
        await anyio.sleep(0.5)


async def request(nc: NATS, kind: str, verb: str, payload: bytes) -> Reply:
    msg = await nc.request(names.api_subject(kind, verb), payload, timeout=5)
    return decode(msg.data, Reply)


async def register_node(
    nodes: NatsBucket, name: str, *, cpu: int = 4000, memory: int = 8 * 2**30, pods: int = 110
) -> int:
    node = Node(
        name=name,
        capacity=NodeCapacity(cpu_millis=cpu, memory_bytes=memory, pods=pods),
        runtime="hollow",
        heartbeat_at=time.time(),
    )
    entry = await nodes.get(name)
    return await write_record(nodes, name, node, None if entry is None else entry.revision)


async def placements(bucket: NatsBucket) -> dict[str, Placement]:
    found: dict[str, Placement] = {}
    async for entry in bucket.watch():
        if entry is None:
            break
        if entry.value is not None:
            try:
                found[entry.key] = decode(entry.value, Placement)
            except msgspec.DecodeError:
                continue
    return found


def deployment_json(
    name: str, replicas: int, image: str = "corral-test/busybox:1", **extra: object
) -> bytes:
    template: dict[str, object] = {"image": image, **extra}
    return encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "template": template},
        }
    )
