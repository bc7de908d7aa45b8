"""Where a node's placements watch (a JetStream consumer) holds nats-server's memory.

Starts a nats-server of its own with its profiling port, writes one placement key per
node, reads Go's heap profile after forced collections (`?debug=1&gc=1`), opens N
watches (the agents' code path, corral.natsio.kv.NatsBucket.watch), reads it again, and
prints the live heap the watches added, per watch, by call site (the server's frames,
innermost first; sampled sizes scaled as `go tool pprof` scales them, go_memory.py).

    .venv/bin/python bench/consumer_heap.py [--nodes 2000] [--sites 12]

Numbers only, no assertion.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import anyio
from bench_deploy import free_port_block
from bench_watch_memory import open_watches
from go_memory import _FRAME, _RATE, _RECORD, scaled

from corral.client.local.nats_server import (
    jetstream_answers,
    nats_server_command,
    nats_server_env,
)
from corral.contract import names
from corral.natsio.bus import connect, open_buckets


def live_heap_by_site(port: int) -> collections.Counter[str]:
    url = f"http://127.0.0.1:{port}/debug/pprof/heap?debug=1&gc=1"
    with urllib.request.urlopen(url, timeout=60) as reply:
        text = reply.read().decode()
    found = _RATE.search(text)
    if found is None:
        raise ValueError("not a heap profile in text form")
    rate = int(found.group(1)) // 2
    records = list(_RECORD.finditer(text))
    sites: collections.Counter[str] = collections.Counter()
    for index, record in enumerate(records):
        end = records[index + 1].start() if index + 1 < len(records) else len(text)
        frames = [f.rsplit("/", 1)[-1] for f in _FRAME.findall(text, record.end(), end)]
        server = [frame for frame in frames if frame.startswith("server.")]
        site = " < ".join(server[:3]) or (frames[0] if frames else "?")
        sites[site] += int(scaled(int(record.group(1)), int(record.group(2)), rate))
    return sites


async def added_by_watches(url: str, profile: int, nodes: int) -> collections.Counter[str]:
    nc = await connect(url, name="bench-consumer-heap")
    try:
        placements = (await open_buckets(nc.jetstream()))[names.PLACEMENTS_BUCKET]
        for index in range(nodes):
            key = names.placement_key(f"node-{index}", "default", "web-1")
            await placements.put(key, b"{}")
        before = live_heap_by_site(profile)
        async with anyio.create_task_group() as tg:
            await open_watches(tg, placements, [f"node-{index}" for index in range(nodes)])
            after = live_heap_by_site(profile)
            tg.cancel_scope.cancel()
        return collections.Counter({site: after[site] - before[site] for site in after})
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--sites", type=int, default=12)
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    port = free_port_block(3)
    command = nats_server_command("127.0.0.1", port, store / "jetstream")
    server = subprocess.Popen(
        [*command, "-m", str(port + 1), "--profile", str(port + 2)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **nats_server_env()},
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while not anyio.run(jetstream_answers, url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start within 15 s")
            time.sleep(0.1)
        added = anyio.run(added_by_watches, url, port + 2, args.nodes)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(store, ignore_errors=True)
    total = sum(value for value in added.values() if value > 0)
    print(
        f"{args.nodes} watches: live heap +{total / 2**20:.1f} MiB, "
        f"{total / args.nodes / 1024:.1f} KiB each; by call site, bytes per watch:"
    )
    for site, value in added.most_common(args.sites):
        print(f"{value / args.nodes:8.0f}  {site}")


if __name__ == "__main__":
    main()
