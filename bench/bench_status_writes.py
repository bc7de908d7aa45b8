"""A node agent's pass of replica statuses: written one awaited write after another
(StatusBook.write) against together (StatusBook.write_all), on a real nats-server.

    .venv/bin/python bench/bench_status_writes.py [--counts 20,110] [--repeat 7]

Prints the median time to write N new statuses of one node either way (110: a full node
at Kubernetes' default pod limit, written at once after an agent restarts or a burst of
placements). The server is idle: under load each round trip is longer, and the pass
one after another pays it N times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
from local_nats import local_nats

from corral.contract import names
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.bus import connect, ensure_streams, open_buckets
from corral.natsio.kv import Bucket
from corral_node_agent.status_book import StatusBook


async def one_pass(bucket: Bucket, node: str, count: int, together: bool) -> float:
    book = StatusBook(bucket, node)
    statuses = [
        ReplicaStatus(
            replica=f"{node}-{n:03}", deployment="web", node=node, state=ReplicaState.PENDING
        )
        for n in range(count)
    ]
    started = time.perf_counter()
    if together:
        await book.write_all(statuses)
    else:
        for status in statuses:
            await book.write(status)
    return time.perf_counter() - started


async def measure(url: str, counts: list[int], repeat: int) -> None:
    nc = await connect(url, name="bench-status-writes")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        bucket = (await open_buckets(js))[names.REPLICA_STATUS_BUCKET]
        print(f"one node's new replica statuses, median of {repeat} passes (idle server):")
        for count in counts:
            for together, how in ((False, "one after another"), (True, "together")):
                seconds = [
                    await one_pass(bucket, f"n{count}-{how[0]}-{run}", count, together)
                    for run in range(repeat)
                ]
                median = statistics.median(seconds) * 1000
                print(f"  {count:4d} statuses, {how:18s}: {median:7.1f} ms")
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="20,110", help="statuses per pass, comma-separated")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    counts = [int(count) for count in args.counts.split(",")]
    with local_nats() as server:
        anyio.run(measure, server.url, counts, args.repeat)


if __name__ == "__main__":
    main()
