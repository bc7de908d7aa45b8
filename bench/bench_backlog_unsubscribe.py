"""What ending a watch costs nats-server while requests to its JetStream API wait.

nats-server keeps, in each account, one entry per JetStream API request not yet answered
(the API is a service the account imports; the entry maps the requester's reply subject
back, `Account.imports.rrMap`). An entry goes when the answer does, when a look-through
finds nobody subscribed to its reply subject any more, or at a sweep two to four minutes
later for a request the server dropped (its API queue was full). Whenever a subscription
on a subject with a wildcard ends in that account (a client unsubscribing, or closing its
connection with one), the server looks through every such entry
(`Account.checkForReverseEntries`, on a goroutine of its own once there are more than
64). A push consumer with flow control (nats-py's ordered consumer: every KV watch) holds
two such subscriptions (`$JS.FC.<stream>.<consumer>.*`, old and new form), so each one
deleted costs two looks through every waiting request.

This measures it: a server whose API queue limit is 100, N stream-info requests sent at
once (the ones answered are counted and left out: the rest were dropped, their entries
kept, as long as the requester's wildcard reply subscription stays), then C consumers
made and deleted, with and without flow control, in turn; it prints nats-server's CPU
for the deletes, per consumer.

    .venv/bin/python bench/bench_backlog_unsubscribe.py [--waiting 0,10000] [--consumers 300]

Numbers only, no assertion.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
import nats
from bench_deploy import free_port_block
from bench_dns import cpu_seconds
from local_nats import stop_and_remove
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api as js_api

from corral.client.local.nats_server import jetstream_answers, nats_server_binary, nats_server_env

STREAM = "bench_backlog"
# Entries of dropped requests go at a sweep 2-4 minutes after they are made: a run
# longer than that measures fewer than it says.
ENTRY_LIFETIME = 120.0


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
        env={**os.environ, **nats_server_env()},  # as `corral up` runs it (its GOGC)
    )


async def settled_cpu(pid: int, quiet: float = 0.3, limit: float = 60.0) -> float:
    """The server's CPU seconds once it has spent next to none for `quiet` seconds (its
    look-throughs run on goroutines of their own, after the delete is answered)."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while True:
        await anyio.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 0.01 or time.monotonic() > deadline:
            return now
        last = now


async def drop_requests(nc: Client, count: int) -> int:
    """`count` stream-info requests at once; with a queue limit of 100 nearly all are
    dropped. Returns how many were not answered: their entries stay, as the wildcard
    subscription for their replies does (ending it would look through them all)."""
    answered = 0

    async def answer(msg: Msg) -> None:
        nonlocal answered
        answered += 1

    inbox = nc.new_inbox()
    await nc.subscribe(f"{inbox}.*", cb=answer)
    for index in range(count):
        await nc.publish(f"$JS.API.STREAM.INFO.{STREAM}", b"", reply=f"{inbox}.{index}")
    await nc.flush()
    await anyio.sleep(1)  # the queue's answers, if any
    return count - answered


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
            # Nobody reads their deliver subjects: without it the server deletes them
            # itself after 5 s, before (or while) they are measured.
            inactive_threshold=3600.0,
        )
        info = await js.add_consumer(STREAM, config)
        names.append(info.name)
    before = await settled_cpu(pid)
    for name in names:
        await js.delete_consumer(STREAM, name)
    return (await settled_cpu(pid)) - before


async def measure(url: str, pid: int, waiting: int, consumers: int) -> tuple[int, float, float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(js_api.StreamConfig(name=STREAM, subjects=[f"{STREAM}.>"]))
        began = time.monotonic()
        kept = await drop_requests(nc, waiting)
        await settled_cpu(pid)
        # In turn, the order changing with the size: neither always measured later.
        first, second = (True, False) if waiting % 2 == 0 else (False, True)
        measured = {first: await consumers_deleted(nc, pid, consumers, first)}
        measured[second] = await consumers_deleted(nc, pid, consumers, second)
        if time.monotonic() - began > ENTRY_LIFETIME:
            print(f"  (over {ENTRY_LIFETIME:.0f} s: some entries may have gone meanwhile)")
        return kept, measured[True], measured[False]
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waiting", default="0,10000,50000,100000")
    parser.add_argument("--consumers", type=int, default=300)
    args = parser.parse_args()
    print(
        f"{'requests sent':>13} | {'not answered':>12} | "
        f"{'CPU per consumer deleted, flow control':>38} | {'without':>9}"
    )
    for waiting in (int(n) for n in args.waiting.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix="corral-bench-backlog-"))
        server: subprocess.Popen[bytes] | None = None
        try:
            port = free_port_block(1)
            server = start_server(workdir, port)
            url = f"nats://127.0.0.1:{port}"
            deadline = time.monotonic() + 15
            while not anyio.run(jetstream_answers, url):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start")
                time.sleep(0.1)
            kept, with_fc, without = anyio.run(measure, url, server.pid, waiting, args.consumers)
            print(
                f"{waiting:>13,} | {kept:>12,} | {with_fc / args.consumers * 1000:>35.2f} ms | "
                f"{without / args.consumers * 1000:>6.2f} ms"
            )
        finally:
            stop_and_remove(server, workdir)


if __name__ == "__main__":
    main()
