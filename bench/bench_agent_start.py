"""What one node agent's start asks of nats-server's JetStream API, by kind.

Its own nats-server on loopback (local_nats.py) and a scheduler; then node agents
(hollow runtime, each as `corral-node-agent` runs it: its own connection, the store
prepared as every service prepares it) started one after another. Each start is counted
from the agent's first request to its Node record saying Ready (its placements
watched, its statuses read, judged alive), with a subscriber on `$JS.API.>`
(js_api_requests.py: direct gets included). The scheduler's own requests meanwhile
(its watches and acks are not requests; a resync may be) are counted too.

    .venv/bin/python bench/bench_agent_start.py [--agents 5] [--placements-watch reads]

Why it matters: a cluster restarting at once (nats-server back after an outage, a
power cut) starts every agent together, and nats-server queues at most 10,000
JetStream API requests (its request_queue_limit) before it drops them all.

Run it with PYTHONPATH pointing at the code to measure (one checkout, then another).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import anyio
from js_api_requests import ApiRequestCounter, per_second
from local_nats import LocalNats, local_nats

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.state import Node
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from corral.natsio.service import run_service

READY_TIMEOUT_SECONDS = 60.0


async def main(server: LocalNats, agents: int, placements_watch: str) -> None:
    from corral_node_agent.main import buckets_used
    from corral_node_agent.main import build_parser as agent_parser
    from corral_node_agent.main import run as run_agent
    from corral_scheduler.main import build_parser as scheduler_parser
    from corral_scheduler.main import run as run_scheduler

    url = server.url
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as scratch:
        nc = await connect(url, name="bench-agent-start")
        counter = ApiRequestCounter()
        await counter.start(nc)
        async with anyio.create_task_group() as tg:
            args = scheduler_parser().parse_args(["--nats", url, "--metrics-port", "0"])
            await tg.start(run_service, "scheduler", run_scheduler, args)
            nodes = NatsBucket(await nc.jetstream().key_value(names.NODES_BUCKET), "nodes")
            totals: list[int] = []
            queued: list[int] = []  # of each start's requests, those through the API's queue
            every: collections.Counter[str] = collections.Counter()
            seconds: list[float] = []
            for index in range(agents):
                name = f"start-{index}"
                args = agent_parser().parse_args(
                    [
                        *("--nats", url, "--metrics-port", "0", "--runtime", "hollow"),
                        *("--node-name", name, "--state-dir", str(Path(scratch) / name)),
                        *("--placements-watch", placements_watch),
                    ]
                )
                await nc.flush()
                counter.take()
                began = time.monotonic()
                # the buckets it reads, as `corral-node-agent` opens them (service_main)
                await tg.start(
                    partial(run_service, "node-agent", run_agent, args, uses=buckets_used)
                )
                with anyio.fail_after(READY_TIMEOUT_SECONDS):
                    while True:
                        entry = await nodes.get(name)
                        if entry is not None and entry.value and decode(entry.value, Node).ready:
                            break
                        await anyio.sleep(0.05)
                seconds.append(time.monotonic() - began)
                await nc.flush()
                counts = counter.take()
                totals.append(sum(counts.values()))
                queued.append(sum(n for kind, n in counts.items() if not is_direct(kind)))
                every.update(counts)
                print(f"agent {index}: {per_second(counts, 1, top=6, unit='')}", flush=True)
            tg.cancel_scope.cancel()
        await nc.close()
    print(
        f"\n{agents} agents started one after another: JetStream API requests per start "
        f"{statistics.mean(totals):.1f} (each: {', '.join(map(str, totals))}), "
        f"ready after {statistics.median(seconds):.2f} s (median)"
    )
    print(
        "of them through the API's queue (direct gets left out: they wait in no queue and "
        f"leave no entry): {statistics.mean(queued):.1f} (each: {', '.join(map(str, queued))})"
    )
    print(f"by kind, per start: {per_second(every, agents, top=40, unit='')}")


def is_direct(kind: str) -> bool:
    """Whether a request of this kind (js_api_requests.request_kind) is a direct get."""
    return kind.startswith("direct get")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument(
        "--placements-watch",
        default="consumer",
        help="as the node agent's --placements-watch (consumer or reads)",
    )
    cli = parser.parse_args()
    with local_nats() as server:
        anyio.run(main, server, cli.agents, cli.placements_watch)
