"""What ending a watch costs nats-server while requests to its JetStream API wait.

nats-server keeps, in each account, one entry per JetStream API request not yet answered
(the API is a service the account imports; the entry maps the requester's reply subject
back, `Account.imports.rrMap`). An entry goes when the answer does, or two minutes later
for a request the server dropped (its API queue was full). Whenever a subscription on a
subject with a wildcard ends in that account, the server looks through every such entry
(`Account.checkForReverseEntries`, on a goroutine of its own once there are more than
64). A push consumer with flow control (nats-py's ordered consumer: every KV watch) holds
two such subscriptions (`$JS.FC.<stream>.<consumer>.*`, old and new form), so each one
deleted costs two looks through every waiting request.

This measures it: a queue of N requests dropped (a queue limit of 100, N stream-info
requests sent at once), then C consumers made and deleted, with and without flow control;
it prints nats-server's CPU for the deletes, per consumer.

    .venv/bin/python bench/bench_backlog_unsubscribe.py [--waiting 0,2000,10000] [--consumers 300]

Numbers only, no assertion.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
import nats
from bench_deploy import free_port_block
from bench_dns import cpu_seconds
from nats.aio.client import Client
from nats.js import api as js_api

from corral.client.local.nats_server import jetstream_answers, nats_server_binary

STREAM = "bench_backlog"


def start_server(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "server.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{workdir / "js"}", request_queue_limit: 100 }}\n'
    )
    return subprocess.Popen(
        [nats_server_binary(), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def settled_cpu(pid: int, quiet: float = 0.3) -> float:
    """The server's CPU seconds once it has spent none for `quiet` seconds (its
    look-throughs run on goroutines of their own, after the delete is answered)."""
    last = cpu_seconds(pid)
    while True:
        await anyio.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 0.01:
            return now
        last = now


async def drop_requests(nc: Client, count: int) -> None:
    """`count` stream-info requests at once: with a queue limit of 100 nearly all are
    dropped, and their entries wait out the two minutes."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.*")
    for index in range(count):
        await nc.publish(f"$JS.API.STREAM.INFO.{STREAM}", b"", reply=f"{inbox}.{index}")
    await nc.flush()
    # its wildcard subscription stays: ending it would look through them all
    del sub


async def consumers_deleted(nc: Client, pid: int, count: int, flow_control: bool) -> float:
    js = nc.jetstream()
    names = []
    for index in range(count):
        config = js_api.ConsumerConfig(
            name=f"c{'fc' if flow_control else 'plain'}{index}",
            deliver_subject=nc.new_inbox(),
            ack_policy=js_api.AckPolicy.NONE,
            flow_control=flow_control or None,
            idle_heartbeat=5.0 if flow_control else None,
            filter_subject=f"{STREAM}.{index}.>",
            mem_storage=True,
        )
        info = await js.add_consumer(STREAM, config)
        names.append(info.name)
    before = await settled_cpu(pid)
    for name in names:
        await js.delete_consumer(STREAM, name)
    return (await settled_cpu(pid)) - before


async def measure(url: str, pid: int, waiting: int, consumers: int) -> tuple[float, float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(js_api.StreamConfig(name=STREAM, subjects=[f"{STREAM}.>"]))
        await drop_requests(nc, waiting)
        await settled_cpu(pid)
        with_fc = await consumers_deleted(nc, pid, consumers, True)
        without = await consumers_deleted(nc, pid, consumers, False)
        return with_fc, without
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waiting", default="0,2000,10000")
    parser.add_argument("--consumers", type=int, default=300)
    args = parser.parse_args()
    print(
        f"{'requests waiting':>17} | {'CPU per consumer deleted, flow control':>39} | "
        f"{'without':>9}"
    )
    for waiting in (int(n) for n in args.waiting.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix="corral-bench-backlog-"))
        port = free_port_block(1)
        server = start_server(workdir, port)
        try:
            url = f"nats://127.0.0.1:{port}"
            deadline = time.monotonic() + 15
            while not anyio.run(jetstream_answers, url):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start")
                time.sleep(0.1)
            with_fc, without = anyio.run(measure, url, server.pid, waiting, args.consumers)
            print(
                f"{waiting:>17,} | {with_fc / args.consumers * 1000:>36.2f} ms | "
                f"{without / args.consumers * 1000:>6.2f} ms"
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
