"""What netmgr's and volmgr's cluster parts on in-memory buckets share in their unit
tests (tests/unit/netmgr_helpers.py, volmgr_helpers.py): reading a record, letting the
watches deliver, draining the controllers' queues."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import anyio.lowlevel

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Reply
from corral.natsio.controller import Controller
from corral.natsio.kv import MemoryBucket


@dataclass
class ClusterPart:
    """A cluster part on `buckets`; a service's own adds its loop and its APIs."""

    buckets: dict[str, MemoryBucket]
    # How many rounds drain() runs at most before it gives up on quiet.
    drain_rounds: ClassVar[int] = 50

    def controllers(self) -> Sequence[Controller]:
        """The controllers drain() runs, in order."""
        raise NotImplementedError

    async def record(self, bucket: str, key: str, kind: type[Any]) -> Any:
        entry = await self.buckets[bucket].get(key)
        return None if entry is None or entry.value is None else decode(entry.value, kind)

    async def settle(self) -> None:
        """Let the mirrors' watches deliver what was written."""
        for _ in range(5):
            await anyio.lowlevel.checkpoint()

    async def drain(self) -> None:
        """Let the watches deliver what was written, then reconcile until every
        controller's queue is empty and nothing more comes."""
        for _ in range(self.drain_rounds):
            await self.settle()
            processed = False
            for controller in self.controllers():
                while len(controller.queue):
                    key = await controller.queue.get()
                    try:
                        await controller.process(key)
                    finally:
                        controller.queue.done(key)
                    processed = True
            if not processed:
                return


def memory_buckets() -> dict[str, MemoryBucket]:
    return {name: MemoryBucket(name) for name in names.ALL_BUCKETS}


async def put(bucket: MemoryBucket, key: str, value: Any) -> None:
    await bucket.put(key, encode(value))


def ok(reply: Reply) -> Reply:
    assert reply.ok, reply
    return reply
