"""Conditional KV writes: one awaited after another vs pipelined (kv.write_many).

    .venv/bin/python bench/bench_kv_writes.py [--writes 10000] [--rounds 3] [--payload 300]
                                              [--out table.txt]

Starts its own nats-server (JetStream on, a free loopback port, a temporary store),
creates a bucket of `--writes` keys, then updates every key once per mode, each update
conditional on the revision the previous round returned (compare-and-set, so a lost or
reordered write would show as a conflict):

  sequential      await bucket.update(...) for one key after another
  write_many N    kv.write_many(bucket, updates, max_in_flight=N), N = 64, 256, 1024

and prints, per mode, the median writes/s over the rounds (interleaved, so drift hits
every mode alike), the client's CPU per write, and the event loop's stalls while writing
(p99, median over the rounds, and the worst of all): a task sleeping 1 ms at a time
measures how late it wakes up (what a request handler in the same process would wait).
The idle line is the same meter with nothing else running: the machine's own noise.
Everything it made is removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from local_nats import local_nats

from corral.natsio.bus import connect
from corral.natsio.kv import Create, NatsBucket, Update, write_many

BUCKET = "bench_kv_writes"
TICK = 0.001
IN_FLIGHT = (64, 256, 1024)


class StallMeter:
    """How late a task that sleeps TICK at a time wakes up: the loop's worst stall."""

    def __init__(self) -> None:
        self.late: list[float] = []

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await anyio.sleep(TICK)
            self.late.append(time.perf_counter() - started - TICK)

    @property
    def worst(self) -> float:
        return max(self.late, default=0.0)

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.late, n=100)[98] if len(self.late) > 1 else self.worst


@dataclass
class Mode:
    name: str
    in_flight: int | None  # None: one after another
    rates: list[float] = field(default_factory=list)
    cpu_per_write: list[float] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)


async def update_all(
    bucket: NatsBucket, revisions: dict[str, int], payload: bytes, in_flight: int | None
) -> dict[str, int]:
    if in_flight is None:
        return {
            key: await bucket.update(key, payload, revision) for key, revision in revisions.items()
        }
    outcomes = await write_many(
        bucket,
        [Update(key, payload, revision) for key, revision in revisions.items()],
        max_in_flight=in_flight,
    )
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} writes failed, first: {failed[0].error!r}")
    return {outcome.write.key: outcome.revision or 0 for outcome in outcomes}


async def measure(url: str, args: argparse.Namespace) -> list[Mode]:
    nc = await connect(url, name="bench-kv-writes")
    try:
        js = nc.jetstream()
        bucket = NatsBucket(await js.create_key_value(bucket=BUCKET, history=1), BUCKET)
        payload = b"x" * args.payload
        created = await write_many(
            bucket, [Create(f"key-{n:06}", payload) for n in range(args.writes)]
        )
        revisions = {o.write.key: o.revision or 0 for o in created if o.ok}
        assert len(revisions) == args.writes, "seeding the bucket failed"
        modes = [Mode("sequential", None)] + [Mode(f"write_many {n}", n) for n in IN_FLIGHT]
        for _ in range(args.rounds):
            for mode in modes:
                meter = StallMeter()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(meter.run)
                    await anyio.sleep(0.05)  # the meter is ticking
                    cpu, wall = time.process_time(), time.perf_counter()
                    revisions = await update_all(bucket, revisions, payload, mode.in_flight)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    tg.cancel_scope.cancel()
                mode.rates.append(args.writes / wall)
                mode.cpu_per_write.append(cpu / args.writes)
                mode.stalls.append(meter.worst)
                mode.p99s.append(meter.p99)
        idle = StallMeter()
        with anyio.move_on_after(1.0):
            await idle.run()
        modes.append(Mode("(idle loop, 1 s)", None, stalls=[idle.worst], p99s=[idle.p99]))
        await js.delete_key_value(BUCKET)
        return modes
    finally:
        await nc.close()


def table(modes: list[Mode], args: argparse.Namespace) -> str:
    lines = [
        f"{args.writes} conditional updates of {args.payload}-byte values, one nats-server "
        f"(JetStream, file store), median of {args.rounds} rounds:",
        f"  {'mode':<18} {'writes/s':>10} {'vs sequential':>14} {'client CPU/write':>17}"
        f" {'loop stall p99':>15} {'worst':>9}",
    ]
    base = statistics.median(modes[0].rates)
    for mode in modes:
        stall = f"{statistics.median(mode.p99s) * 1000:.1f} ms {max(mode.stalls) * 1000:6.1f} ms"
        if not mode.rates:
            lines.append(f"  {mode.name:<18} {'':>10} {'':>14} {'':>17} {stall:>25}")
            continue
        rate = statistics.median(mode.rates)
        cpu = statistics.median(mode.cpu_per_write) * 1e6
        lines.append(
            f"  {mode.name:<18} {rate:>10,.0f} {rate / base:>13.1f}x {cpu:>14.0f} us {stall:>25}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--payload", type=int, default=300, help="bytes per value")
    parser.add_argument("--out", type=Path, help="also save the table here")
    args = parser.parse_args()
    with local_nats("corral-bench-kv-") as server:
        text = table(anyio.run(measure, server.url, args), args)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
