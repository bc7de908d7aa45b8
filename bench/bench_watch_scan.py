"""What nats-server spends per placement written, as the nodes watching grow.

    .venv/bin/python bench/bench_watch_scan.py [--watchers 100,1000,3000] [--writes 10000]
        [--shards 1,16] [--value-bytes 600] [--late-watches 50] [--timeout 300]

Every node agent watches its own placements: one consumer on the placements bucket,
filtered on its node's keys (`<node>.>`). A replica's key is its own subject, so the
bucket holds one subject per replica. This benchmark makes such a bucket on a
nats-server of its own and starts --watchers watches as agents do (`NatsBucket.watch`,
100 to a connection, as a hollow cluster pools them); then it writes --writes keys
spread evenly over the watchers' nodes (`kv.write_many`, each a create, 64 // K in flight
per bucket) and waits (--timeout at most) until every watch has delivered its own. It
prints, for each count of watchers:

- nats-server's CPU (user + system, /proc) per key written, from the first write until
  every watch delivered its keys;
- how long that took;
- nats-server's CPU per new watch of a node's keys started afterwards on the full
  bucket (--late-watches of them: an agent restarted, or cut off and back, reads its
  placements afresh).

With --shards K above 1 the keys go to K buckets by node (node i's to bucket i mod K)
and each watch to its node's bucket: what a placements bucket split by node would cost.
Nothing of corral is changed by it; it measures how the server's work grows.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import anyio
from bench_dns import cpu_seconds
from local_nats import exit_on_sigterm, local_nats
from nats.aio.client import Client as NATS
from nats.js import api as js_api

from corral.natsio.bus import BUCKET_MAX_CONSUMERS, connect
from corral.natsio.kv import WRITES_IN_FLIGHT, Create, NatsBucket, write_many

WATCHERS_PER_CONNECTION = 100
WATCHES_STARTING_AT_ONCE = 50


@dataclass
class Watcher:
    node: str
    received: int = 0
    done: anyio.Event = field(default_factory=anyio.Event)
    wanted: int = 0


@dataclass(frozen=True)
class Row:
    watchers: int
    shards: int
    cpu_per_write_us: float
    delivered_in: float
    cpu_per_late_watch_ms: float


def node_name(index: int) -> str:
    return f"node-{index}"


async def make_buckets(nc: NATS, shards: int) -> list[NatsBucket]:
    """As corral makes its buckets (history 5, file storage, as many consumers as
    corral's allow): bench_scan_0 ..."""
    js = nc.jetstream()
    buckets = []
    for shard in range(shards):
        name = f"bench_scan_{shard}"
        kv = await js.create_key_value(bucket=name, history=5, storage=js_api.StorageType.FILE)
        config = (await js.stream_info(f"KV_{name}")).config
        config.max_consumers = BUCKET_MAX_CONSUMERS
        await js.update_stream(config)
        buckets.append(NatsBucket(kv, name))
    return buckets


async def follow(bucket: NatsBucket, watcher: Watcher, started: anyio.Event) -> None:
    async for entry in bucket.watch(f"{watcher.node}.>"):
        if entry is None:
            started.set()
            continue
        watcher.received += 1
        if watcher.received >= watcher.wanted:
            watcher.done.set()


async def start_watches(
    tg: anyio.abc.TaskGroup,
    pools: list[list[NatsBucket]],
    watchers: list[Watcher],
    shard_of: dict[str, int],
    first: int = 0,
) -> None:
    """Start one watch per watcher (the first numbered `first`, for its connection),
    WATCHES_STARTING_AT_ONCE at a time; returns once every watch delivered its current
    entries."""
    limiter = anyio.CapacityLimiter(WATCHES_STARTING_AT_ONCE)

    async def one(index: int, watcher: Watcher) -> None:
        started = anyio.Event()
        async with limiter:
            buckets = pools[(first + index) // WATCHERS_PER_CONNECTION]
            tg.start_soon(follow, buckets[shard_of[watcher.node]], watcher, started)
            await started.wait()

    async with anyio.create_task_group() as starting:
        for index, watcher in enumerate(watchers):
            starting.start_soon(one, index, watcher)


async def measure(url: str, pid: int, count: int, shards: int, args: argparse.Namespace) -> Row:
    connections: list[NATS] = []
    try:
        writer = await connect(url, name="bench-watch-scan-writer")
        connections.append(writer)
        writer_buckets = await make_buckets(writer, shards)
        pools: list[list[NatsBucket]] = []
        for index in range(-(-(count + args.late_watches) // WATCHERS_PER_CONNECTION)):
            nc = await connect(url, name=f"bench-watch-scan-{index}")
            connections.append(nc)
            js = nc.jetstream()
            pools.append([NatsBucket(await js.key_value(b.name), b.name) for b in writer_buckets])
        watchers = [Watcher(node_name(i)) for i in range(count)]
        shard_of = {node_name(i): i % shards for i in range(count)}
        writes: list[list[Create]] = [[] for _ in range(shards)]
        value = b"x" * args.value_bytes
        for n in range(args.writes):
            node = node_name(n % count)
            watchers[n % count].wanted += 1
            writes[shard_of[node]].append(Create(f"{node}.default.r-{n}", value))
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(args.timeout):
                await start_watches(tg, pools, watchers, shard_of)
            cpu_before, began = cpu_seconds(pid), time.monotonic()
            # As many writes in flight in all as to one bucket alone, however many.
            in_flight = max(1, WRITES_IN_FLIGHT // shards)

            async def write(bucket: NatsBucket, batch: list[Create]) -> None:
                for outcome in await write_many(bucket, batch, max_in_flight=in_flight):
                    if not outcome.ok:
                        raise RuntimeError(f"{outcome.write.key} not written: {outcome.error}")

            async with anyio.create_task_group() as writing:
                for bucket, batch in zip(writer_buckets, writes, strict=True):
                    writing.start_soon(write, bucket, batch)
            with anyio.fail_after(args.timeout):
                for watcher in watchers:
                    if watcher.wanted:
                        await watcher.done.wait()
            delivered_in = time.monotonic() - began
            cpu_writes = cpu_seconds(pid) - cpu_before
            # New watches of nodes already watched, on the full buckets: an agent that
            # reads its placements afresh (restarted, or cut off and back).
            late = [Watcher(node_name(i % count)) for i in range(args.late_watches)]
            cpu_before = cpu_seconds(pid)
            with anyio.fail_after(args.timeout):
                await start_watches(tg, pools, late, shard_of, first=count)
            cpu_late = cpu_seconds(pid) - cpu_before
            tg.cancel_scope.cancel()
        return Row(
            watchers=count,
            shards=shards,
            cpu_per_write_us=cpu_writes / args.writes * 1e6,
            delivered_in=delivered_in,
            cpu_per_late_watch_ms=cpu_late / max(1, args.late_watches) * 1000,
        )
    finally:
        with anyio.CancelScope(shield=True):
            for nc in connections:
                await nc.close()


def main() -> None:
    exit_on_sigterm()  # its nats-server stopped and its store removed all the same
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", default="100,1000,3000", help="comma-separated counts")
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--shards", default="1,16", help="comma-separated bucket counts")
    parser.add_argument("--value-bytes", type=int, default=600, help="a placement's size")
    parser.add_argument("--late-watches", type=int, default=50)
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds for each phase of a row at most"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.watchers.split(",")]
    shard_counts = [int(s) for s in args.shards.split(",")]
    if min(counts) < 1 or min(shard_counts) < 1 or args.writes < 1:
        parser.error("--watchers, --shards and --writes must be at least 1")
    if args.late_watches < 0 or args.timeout <= 0:
        parser.error("--late-watches must not be negative, --timeout must be positive")
    print(
        f"nats-server's work per key written, {args.writes:,} keys of {args.value_bytes} B "
        "spread over the watchers' nodes, each watcher a consumer filtered on its node:"
    )
    print(
        "| watchers | buckets | server CPU per key written | all delivered after "
        "| server CPU per new watch on the full bucket |"
    )
    print("|---|---|---|---|---|")
    for shards in shard_counts:
        for count in counts:
            # A server of its own per row: no consumers or messages carried over.
            with local_nats("corral-bench-scan-") as server:
                row = anyio.run(measure, server.url, server.pid, count, shards, args)
            print(
                f"| {row.watchers:,} | {row.shards} | {row.cpu_per_write_us:,.0f} µs "
                f"| {row.delivered_in:.1f} s | {row.cpu_per_late_watch_ms:.1f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main()
