"""What each node's placements watch costs nats-server in memory.

Every node agent watches its own placements (a KV watch filtered on its node's keys:
one ordered JetStream consumer per node, corral.natsio.kv.NatsBucket.watch). This
starts a nats-server of its own (local_nats.py: corral's GOGC), makes corral's buckets,
writes one placement key per node, then opens N such watches on one connection, each
read until it has delivered the bucket's current entries, and prints the server's
resident memory (VmRSS) before and after, per watch. For comparison, on a server of its
own, the same with N plain core-NATS subscriptions on the same subjects (no consumer:
what a watch without JetStream's per-watch state would hold).

    .venv/bin/python bench/bench_watch_memory.py [--nodes 2000 5000]

Numbers only, no assertion.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup
from local_nats import LocalNats, local_nats

from corral.contract import names
from corral.natsio.bus import connect, open_buckets
from corral.natsio.kv import NatsBucket


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def settled_mib(pid: int) -> float:
    """The server's resident memory once it stopped moving (Go returns memory lazily)."""
    last = resident_mib(pid)
    for _ in range(20):
        await anyio.sleep(0.5)
        now = resident_mib(pid)
        if abs(now - last) < 0.5:
            return now
        last = now
    return last


async def open_watches(
    tg: TaskGroup,
    bucket: NatsBucket,
    nodes: list[str],
    changed: Callable[[int], None] = lambda index: None,
) -> None:
    """Start a watch of each node's placements in `tg` (the agents' code path), and
    return once every one has delivered the bucket's current entries; `changed(index)`
    is called for each entry a node's watch delivers after that."""
    current = 0
    all_current = anyio.Event()

    async def watch(index: int) -> None:
        nonlocal current
        seen_current = False
        async for entry in bucket.watch(names.placement_prefix(nodes[index])):
            if entry is not None:
                if seen_current:
                    changed(index)
            elif not seen_current:
                seen_current = True
                current += 1
                if current == len(nodes):
                    all_current.set()

    for index in range(len(nodes)):
        tg.start_soon(watch, index)
    with anyio.fail_after(300):
        await all_current.wait()


async def held(server: LocalNats, nodes: int, kind: str) -> tuple[float, float]:
    """The server's memory before and with `nodes` watches ("watch") or core
    subscriptions ("subscription") on the nodes' placement subjects."""
    nc = await connect(server.url, name="bench-watch-memory")
    try:
        buckets = await open_buckets(nc.jetstream())
        placements: NatsBucket = buckets[names.PLACEMENTS_BUCKET]
        for index in range(nodes):
            node = f"node-{index}"
            await placements.put(names.placement_key(node, "default", "web-1"), b"{}")
        before = await settled_mib(server.pid)
        if kind == "subscription":
            for index in range(nodes):
                prefix = names.placement_prefix(f"node-{index}")
                await nc.subscribe(f"$KV.{names.PLACEMENTS_BUCKET}.{prefix}")
            await nc.flush()
            return before, await settled_mib(server.pid)
        async with anyio.create_task_group() as tg:
            await open_watches(tg, placements, [f"node-{index}" for index in range(nodes)])
            after = await settled_mib(server.pid)
            tg.cancel_scope.cancel()
        return before, after
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2000, 5000])
    args = parser.parse_args()
    print("nodes  held by           nats-server RSS before -> with   KiB each")
    for nodes in args.nodes:
        for kind in ("watch", "subscription"):
            with local_nats() as server:
                before, after = anyio.run(held, server, nodes, kind)
            each = (after - before) * 1024 / nodes
            print(f"{nodes:5d}  a {kind:<15s} {before:8.1f} -> {after:8.1f} MiB  {each:8.1f}")


if __name__ == "__main__":
    main()
