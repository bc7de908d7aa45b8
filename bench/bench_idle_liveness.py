"""NATS traffic and KV writes of idle nodes: what proving a node alive costs.

Its own nats-server on loopback (local_nats.py: monitoring with -m on a free port), the scheduler
and N node agents (hollow runtime) in this process; once every node is
Ready and settled, counts over a window: messages and bytes through the server
(/varz in_msgs + out_msgs, in_bytes + out_bytes) and writes to the nodes and
placements buckets (their streams' last sequence), per node and second.

    .venv/bin/python bench/bench_idle_liveness.py [--nodes 20] [--seconds 20]

Run it with PYTHONPATH pointing at the code to measure (one checkout, then another).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio
from local_nats import LocalNats, local_nats

from corral.contract import names
from corral.natsio.bus import bucket_stream, connect
from corral.natsio.service import run_service


async def main(server: LocalNats, nodes: int, seconds: float) -> None:
    from corral_node_agent.main import build_parser as agent_parser
    from corral_node_agent.main import run as run_agent
    from corral_scheduler.main import build_parser as scheduler_parser
    from corral_scheduler.main import run as run_scheduler

    url = server.url
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as scratch:
        nc = await connect(url, name="bench")
        js = nc.jetstream()
        async with anyio.create_task_group() as tg:
            args = scheduler_parser().parse_args(["--nats", url, "--metrics-port", "0"])
            await tg.start(run_service, "scheduler", run_scheduler, args)
            for index in range(nodes):
                state = Path(scratch) / f"agent-{index}"
                args = agent_parser().parse_args(
                    [
                        *("--nats", url, "--metrics-port", "0", "--runtime", "hollow"),
                        *("--node-name", f"idle-{index}", "--state-dir", str(state)),
                    ]
                )
                await tg.start(run_service, "node-agent", run_agent, args)
            await anyio.sleep(8)  # settled: every agent Active, judged, acknowledged

            async def writes() -> int:
                total = 0
                for bucket in (names.NODES_BUCKET, names.PLACEMENTS_BUCKET):
                    info = await js.stream_info(bucket_stream(bucket))
                    total += info.state.last_seq
                return total

            before, written = server.varz(), await writes()
            started = time.monotonic()
            await anyio.sleep(seconds)
            elapsed = time.monotonic() - started
            after, written_after = server.varz(), await writes()
            tg.cancel_scope.cancel()
        await nc.close()
    per = nodes * elapsed
    msgs = (after["in_msgs"] + after["out_msgs"] - before["in_msgs"] - before["out_msgs"]) / per
    data = (after["in_bytes"] + after["out_bytes"] - before["in_bytes"] - before["out_bytes"]) / per
    kv = (written_after - written) / per
    print(
        f"{nodes} idle nodes, {elapsed:.1f} s: {msgs:.1f} NATS msgs/s, {data:,.0f} bytes/s, "
        f"{kv:.2f} KV writes/s per node (nodes + placements buckets)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    options = parser.parse_args()
    with local_nats() as local:
        anyio.run(main, local, options.nodes, options.seconds)
