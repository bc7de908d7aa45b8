"""A node's placements without a consumer per node: what it would cost nats-server.

Every node agent watches its own placements through an ordered JetStream consumer
filtered on its keys (corral.natsio.kv.NatsBucket.watch): gap-free and in order, which
the agents' safety rules count on (docs/safety.md), and about 51 KiB of nats-server's
memory per node (bench_watch_memory.py). A watch without a consumer that keeps both
properties: read the stream itself by sequence, from the entry after the last one read,
filtered on the node's keys (a batched direct get, `next_by_subj` + `batch`: the
stream's own order, nothing skipped), and read again when told something changed (the
stream republishes each write's headers on a core subject per key, `republish` with
`headers_only`; a wake-up lost only delays the read, it loses nothing).

This measures both on one placements shard of a 5,000-node cluster in 16 shards (312
nodes, 20 keys each: 6,240 entries of 900 bytes): N nodes follow their keys either way,
then every node's keys change R times (a new key each), and it prints nats-server's CPU
per change delivered, the time until every node had every change, and the server's
resident memory per node following. Also the cost of a read alone: one that finds
nothing new, one of the last 5% of the stream, one of a node's whole history.

    .venv/bin/python bench/bench_sequence_reads.py [--nodes 312] [--keys 20] [--rounds 3]

Numbers only, no assertion.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

import anyio
import nats
from bench_dns import cpu_seconds
from bench_watch_memory import open_watches, settled_mib
from local_nats import LocalNats, local_nats
from nats.aio.client import Client
from nats.js import api as js_api

from corral.natsio.bus import BUCKET_MAX_CONSUMERS
from corral.natsio.kv import NatsBucket

BUCKET = "bench_shard"
STREAM = f"KV_{BUCKET}"
WAKE = "bench.wake"
VALUE = b"x" * 900


def node_filter(node: str) -> str:
    return f"$KV.{BUCKET}.{node}.>"


class SequenceReader:
    """One node's keys, read by stream sequence: gap-free and in order by construction."""

    def __init__(self, nc: Client, node: str) -> None:
        self.nc = nc
        self.node = node
        self.next_sequence = 1
        self.delivered = 0
        self.inbox = nc.new_inbox()
        self.replies: Any = None
        self.woken = anyio.Event()

    async def start(self) -> None:
        self.replies = await self.nc.subscribe(self.inbox)

        async def wake(msg: Any) -> None:
            self.woken.set()

        await self.nc.subscribe(f"{WAKE}.{self.node}.>", cb=wake)

    async def read(self) -> int:
        """Every entry of the node's keys from next_sequence on; how many."""
        request = {"seq": self.next_sequence, "next_by_subj": node_filter(self.node), "batch": 1000}
        await self.nc.publish(
            f"$JS.API.DIRECT.GET.{STREAM}", json.dumps(request).encode(), reply=self.inbox
        )
        found = 0
        while True:
            msg = await self.replies.next_msg(timeout=10)
            headers = msg.headers or {}
            if "Status" in headers:  # 204 end of batch, 404 nothing from there
                return found
            self.next_sequence = int(headers["Nats-Sequence"]) + 1
            found += 1

    async def follow(self) -> None:
        while True:
            await self.woken.wait()
            self.woken = anyio.Event()
            self.delivered += await self.read()


@dataclass
class Result:
    way: str
    nodes: int
    resident_before: float
    resident_with: float
    cpu_per_change_us: float
    all_delivered_s: float


async def fill(nc: Client, nodes: int, keys: int, republish: bool) -> Any:
    js = nc.jetstream()
    kv = await js.create_key_value(bucket=BUCKET, history=5, direct=True)
    config = (await js.stream_info(STREAM)).config
    config.max_consumers = BUCKET_MAX_CONSUMERS  # as corral's buckets (the server caps at 1,000)
    if republish:
        config.republish = js_api.RePublish(
            src=f"$KV.{BUCKET}.>", dest=f"{WAKE}.>", headers_only=True
        )
    await js.update_stream(config)
    for key in range(keys):
        for node in range(nodes):
            await kv.put(f"node-{node}.default.r-{key}", VALUE)
    return kv


async def measure(server: LocalNats, way: str, nodes: int, keys: int, rounds: int) -> Result:
    nc = await nats.connect(server.url)
    writer = await nats.connect(server.url)
    try:
        kv = await fill(writer, nodes, keys, republish=way == "reads")
        before = await settled_mib(server.pid)
        delivered = [0] * nodes
        async with anyio.create_task_group() as tg:
            if way == "consumers":
                bucket = NatsBucket(await nc.jetstream().key_value(BUCKET), BUCKET)

                def changed(index: int) -> None:
                    delivered[index] += 1

                await open_watches(tg, bucket, [f"node-{i}" for i in range(nodes)], changed)
            else:
                readers = [SequenceReader(nc, f"node-{index}") for index in range(nodes)]
                for reader in readers:
                    await reader.start()
                    await reader.read()  # what is there now
                    tg.start_soon(reader.follow)
            with_them = await settled_mib(server.pid)
            cpu_before = cpu_seconds(server.pid)
            began = time.perf_counter()
            for round_ in range(rounds):
                for node in range(nodes):
                    await kv.put(f"node-{node}.default.new-{round_}", VALUE)
            with anyio.fail_after(300):
                while True:
                    if way == "reads":
                        delivered = [reader.delivered for reader in readers]
                    if all(count >= rounds for count in delivered):
                        break
                    await anyio.sleep(0.01)
            elapsed = time.perf_counter() - began
            cpu = cpu_seconds(server.pid) - cpu_before
            tg.cancel_scope.cancel()
        return Result(way, nodes, before, with_them, cpu / (nodes * rounds) * 1e6, elapsed)
    finally:
        await nc.close()
        await writer.close()


async def read_costs(server: LocalNats, nodes: int, keys: int) -> list[tuple[str, float, float]]:
    nc = await nats.connect(server.url)
    try:
        await fill(nc, nodes, keys, republish=False)
        last = (await nc.jetstream().stream_info(STREAM)).state.last_seq
        costs = []
        cases = (
            ("nothing new", last + 1),
            ("the last 5% of the stream", int(last * 0.95)),
            ("a node's whole history", 1),
        )
        for label, start in cases:
            readers = [SequenceReader(nc, f"node-{index}") for index in range(nodes)]
            for reader in readers:
                reader.replies = await nc.subscribe(reader.inbox)
            count = 0
            cpu_before = cpu_seconds(server.pid)
            began = time.perf_counter()
            for _ in range(max(1, 2000 // nodes)):
                for reader in readers:
                    reader.next_sequence = start
                    await reader.read()
                    count += 1
            wall = (time.perf_counter() - began) / count * 1e6
            cpu = (cpu_seconds(server.pid) - cpu_before) / count * 1e6
            costs.append((label, wall, cpu))
            for reader in readers:
                await reader.replies.unsubscribe()
        return costs
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=312)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"one shard: {args.nodes} nodes x {args.keys} keys of {len(VALUE)} B; "
        f"{args.rounds} rounds of one new key per node"
    )
    print(
        "way        nats-server MiB before -> following  KiB/node  "
        "server CPU per change  all delivered"
    )
    for way in ("consumers", "reads"):
        with local_nats() as server:
            result = anyio.run(measure, server, way, args.nodes, args.keys, args.rounds)
        each = (result.resident_with - result.resident_before) * 1024 / result.nodes
        print(
            f"{way:<10s} {result.resident_before:8.1f} -> {result.resident_with:8.1f}"
            f"        {each:6.1f}   {result.cpu_per_change_us:10.0f} us"
            f"        {result.all_delivered_s:6.2f} s"
        )
    with local_nats() as server:
        costs = anyio.run(read_costs, server, args.nodes, args.keys)
    print("one read by sequence (persistent reply inbox), wall / server CPU:")
    for label, wall, cpu in costs:
        print(f"  {label:<28s} {wall:7.0f} us / {cpu:6.0f} us")


if __name__ == "__main__":
    main()
