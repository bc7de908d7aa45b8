"""Issue 10's numbers (docs/rollouts.md) through every real piece, on two engines.

    .venv/bin/python bench/bench_rollout.py [--rounds 2] [--replicas 20]
                                            [--out bench/results/rollout.txt]

Runs the cluster tests/e2e/test_zero_downtime_rollout.py runs (bench/two_nodes.py: the
scheduler, netmgr's cluster part, netmgr's node part and a node agent for each of two
Docker engines, in-process, on a nats-server of its own), with the Deployment `web` of
that test (busybox httpd on 8080, an httpGet readiness probe every second) behind a
ClusterIP Service. Then:

1. Requests during a rolling update: a client container on node one sends requests
   through the Service's name without pause, each a new `wget` (a DNS lookup, a new
   connection); `web` (4 replicas) is updated to a new template. Printed: requests sent
   during the update, how many failed, and the update's duration (apply -> every
   replica updated and available, the old containers gone).
2. Update duration for --replicas replicas with the readiness probe, against its floor:
   the same number of fresh replicas from nothing to all ready (the same starts at the
   same concurrency plus each probe's first success), then the update of all of them.
3. Automatic rollback: `web` with autoRollback (crashLoopRestarts 2 within 60 s) updated
   to a template whose container exits at once. Printed: from the apply to the
   scheduler's decision (status.autoRollback set), and to the rollback completed (the
   old template's replicas all available again, no other container left).

Everything it makes goes after (containers, Services, the Deployment, the node parts'
chains and networks, the second engine); the host's packet filter, routes and Docker
networks are compared with before. Needs root, dockerd and the test image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from two_nodes import TwoNodes, cli, run, run_bench, two_nodes

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.state import DeploymentStatus
from tests.e2e.test_zero_downtime_rollout import (
    CLIENT_LOOP,
    LOG,
    STOP,
    manifest,
    rolled_out,
)

REPO = Path(__file__).resolve().parent.parent
IMAGE = "corral-test/busybox:1"
KEY = names.object_key("default", "web")
ROLLBACK_SPEC = """\
  progressDeadlineSeconds: 600
  autoRollback:
    crashLoopRestarts: 2
    crashLoopWindowSeconds: 60
"""


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Waits for `check`, polling every 20 ms; the monotonic time it first held."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s: {what}")
        await anyio.sleep(0.02)
    return time.monotonic()


async def status(cluster: TwoNodes) -> DeploymentStatus | None:
    entry = await cluster.buckets[names.DEPLOYMENT_STATUS_BUCKET].get(KEY)
    return None if entry is None or entry.value is None else decode(entry.value, DeploymentStatus)


async def apply(nats_url: str, text: str) -> float:
    """`corral apply -f` of `text`; the monotonic time just before it was sent."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        file.write(text)
    try:
        started = time.monotonic()
        await cli(nats_url, "apply", "-f", file.name)
        return started
    finally:
        os.unlink(file.name)


async def removed(nats_url: str, cluster: TwoNodes) -> None:
    """`web` deleted and every container of it gone from both engines."""
    await cli(nats_url, "delete", "deployment", "web")

    async def gone() -> bool:
        for engine in cluster.engines.values():
            label = f"label={names.LABEL_DEPLOYMENT}=web"
            if (await run("docker", "ps", "-aq", "--filter", label, engine=engine)).split():
                return False
        return True

    await until(gone, 120, "web's containers gone")


async def client_counts(client: str) -> tuple[int, int]:
    out = await run("docker", "exec", client, "sh", "-c", f"cat {LOG} 2>/dev/null", check=False)
    lines = out.split()
    return lines.count("ok"), lines.count("fail")


async def requests_during_update(
    nats_url: str, cluster: TwoNodes, say: Callable[[str], None]
) -> None:
    engines = list(cluster.engines.values())
    await apply(nats_url, manifest(IMAGE, "1"))
    await cli(nats_url, "expose", "deployment", "web", "--port=80", "--target-port=8080")
    await until(lambda: rolled_out(cluster.buckets, engines), 120, "web v1 rolled out")
    client = f"bench-client-{uuid.uuid4().hex[:8]}"
    cluster.clients.append(client)
    await run(
        "docker", "run", "-d", "--name", client, *cluster.client_args(), IMAGE, "sleep", "3600"
    )
    await run("docker", "exec", "-d", client, "sh", "-c", CLIENT_LOOP)

    async def some() -> bool:
        return (await client_counts(client))[0] >= 20

    await until(some, 30, "the client's first requests")
    before = await client_counts(client)
    started = await apply(nats_url, manifest(IMAGE, "2"))
    done = await until(lambda: rolled_out(cluster.buckets, engines), 180, "web v2 rolled out")
    during = await client_counts(client)
    await run("docker", "exec", client, "touch", STOP)
    sent = sum(during) - sum(before)
    failed = during[1] - before[1]
    say("1. requests through the Service's name during a rolling update (4 replicas, 2 nodes)")
    say(f"    sent {sent}, failed {failed}, update {done - started:.2f} s")
    await cli(nats_url, "delete", "service", "web")
    await removed(nats_url, cluster)


async def update_against_floor(
    nats_url: str, cluster: TwoNodes, replicas: int, rounds: int, say: Callable[[str], None]
) -> None:
    engines = list(cluster.engines.values())
    floors: list[float] = []
    updates: list[float] = []
    for _ in range(rounds):
        started = await apply(nats_url, manifest(IMAGE, "1", replicas))
        done = await until(lambda: rolled_out(cluster.buckets, engines, replicas), 300, "fresh")
        floors.append(done - started)
        started = await apply(nats_url, manifest(IMAGE, "2", replicas))
        done = await until(lambda: rolled_out(cluster.buckets, engines, replicas), 300, "update")
        updates.append(done - started)
        await removed(nats_url, cluster)
    floor, update = statistics.median(floors), statistics.median(updates)
    say(f"2. {replicas} replicas with a readiness probe, median of {rounds}")
    say(f"    floor (fresh, to all ready):  {floor:.2f} s   (rounds: {_each(floors)})")
    say(f"    rolling update (25%/25%):     {update:.2f} s   (rounds: {_each(updates)})")
    say(f"    ratio update / floor:         {update / floor:.2f}")


async def automatic_rollback(nats_url: str, cluster: TwoNodes, say: Callable[[str], None]) -> None:
    engines = list(cluster.engines.values())
    await apply(nats_url, manifest(IMAGE, "1", 4, ROLLBACK_SPEC))
    await until(lambda: rolled_out(cluster.buckets, engines), 120, "web v1 rolled out")
    bad = manifest(IMAGE, "2", 4, ROLLBACK_SPEC, command="exit 1")
    started = await apply(nats_url, bad)

    async def decided() -> bool:
        found = await status(cluster)
        return found is not None and found.auto_rollback is not None

    decision = await until(decided, 300, "the automatic rollback decided")
    done = await until(lambda: rolled_out(cluster.buckets, engines), 300, "rolled back")
    found = await status(cluster)
    why = found.auto_rollback if found is not None else None
    say("3. automatic rollback of a crash-looping revision (2 restarts within 60 s)")
    say(f"    apply -> decision {decision - started:.2f} s, -> rolled back {done - started:.2f} s")
    if why is not None:
        say(f"    status.autoRollback: {why.from_revision} -> {why.to_revision}, {why.reason}")
    await removed(nats_url, cluster)


def _each(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


async def bench(
    nats_url: str, second_host: str, args: argparse.Namespace, lines: list[str], marks: list[str]
) -> None:
    async with two_nodes(nats_url, second_host, marks) as cluster:
        await requests_during_update(nats_url, cluster, lines.append)
        await update_against_floor(nats_url, cluster, args.replicas, args.rounds, lines.append)
        await automatic_rollback(nats_url, cluster, lines.append)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rollout.txt")
    run_bench(
        "bench/bench_rollout.py",
        parser.parse_args(),
        bench,
        IMAGE,
        "corral-bench-rollout-",
        "corral-r2-",
    )


if __name__ == "__main__":
    main()
