"""Issue 9's numbers (docs/volumes.md) with the real local Docker engine and loop devices.

    .venv/bin/python bench/bench_volumes.py [--claims 50] [--provisioned 10] [--write-mb 256]
                                            [--runs 3] [--out bench/results/volumes.txt]   # as root

A nats-server of its own (bench/local_nats.py) and, in this process on one event loop,
volmgr's cluster part (tests/integration/volmgr_harness.py) and, from part 2 on, its node
part for one node with a temporary --volumes-dir (tests/e2e/test_volmgr_node.py). Requests
are raw nats-py requests with JSON payloads on corral.api.<kind>.apply; watches of
corral_claim_status and corral_volume_attachments in this process note when each record
arrives (no polling).

1. Static binding: N PersistentVolumes (dockerVolume tmpfs, 10Mi, no class) are made
   first, then N claims (10Mi, storageClassName "") applied one after another, each timed
   from its request to its ClaimStatus arriving Bound. Then N more volumes and N more
   claims, the claims sent all at once: binds per second from the first request to the
   last Bound, and each claim's latency.
2. Dynamic provisioning: a StorageClass (corral.io/local-volume, Immediate); M claims of
   64Mi applied one after another, each timed from its request to its ClaimStatus Bound
   and to its VolumeAttachment arriving ready on the node (image file, loop device,
   ext4, mount, Docker volume).
3. Sequential writes: a provisioned claim of 512Mi; a container of the test image with
   its Docker volume at /data runs busybox `dd if=/dev/zero of=<f> bs=1M count=256
   conv=fsync` against /data/f and against its own filesystem (/tmp/f), taking turns,
   --runs each; MiB/s from dd's own bytes and seconds.

Everything it makes goes after, in a finally: its containers, then the node part's
`--remove-all --delete-data` (Docker volumes, mounts, loop devices, image files), its
folder, the nats-server and its store. `losetup -a`, `mount`, `docker volume ls` and
`docker ps -a` are compared with before (lines of this run's only: other engineers' tests
may come and go meanwhile). Prints a table; never asserts timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from nats.aio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from host_report import host_report, report_header
from local_nats import local_nats

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.events import Reply
from corral.contract.volume_state import CLAIM_BOUND, ClaimStatus, NodeVolumes, VolumeAttachment
from corral.natsio.bus import connect, ensure_streams, open_buckets
from corral.natsio.kv import NatsBucket
from tests.e2e.test_volmgr_node import remove_all, running_node_part
from tests.integration.volmgr_harness import running_volmgr

REPO = Path(__file__).resolve().parent.parent
IMAGE = "corral-test/busybox:1"
CLASS = "bench-immediate"
NAMESPACE = "default"
DD = re.compile(r"(\d+)\+0 records out")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=300)


async def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command in a thread: the node part shares this event loop."""
    return await anyio.to_thread.run_sync(lambda: sh(*argv, check=check))


def host_state() -> dict[str, list[str]]:
    """What the brief asks to leave as found: loop devices, corral's mounts, Docker
    volumes and containers (every one, with its labels)."""
    return {
        "losetup": sh("losetup", "-a").stdout.splitlines(),
        "mounts": [line for line in sh("mount").stdout.splitlines() if "corral" in line],
        "volumes": sh("docker", "volume", "ls", "-q").stdout.split(),
        "containers": sh(
            "docker", "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Labels}}"
        ).stdout.splitlines(),
    }


# --- requests and what the watches saw ----------------------------------------------------


async def apply(nc: Client, kind: str, body: dict[str, Any]) -> Reply:
    payload = json.dumps({"kind": kind, "apiVersion": "corral/v1", **body}).encode()
    msg = await nc.request(names.api_subject(kind, "apply"), payload, timeout=30)
    reply = decode(msg.data, Reply)
    if not reply.ok:
        raise RuntimeError(f"{kind} {body['metadata']['name']}: {reply.error} ({reply.field})")
    return reply


def volume(name: str) -> dict[str, Any]:
    tmpfs = {"driver": "local", "options": {"type": "tmpfs", "device": "tmpfs"}}
    spec = {"capacity": {"storage": "10Mi"}, "dockerVolume": tmpfs}
    return {"metadata": {"name": name}, "spec": spec}


def claim(name: str, size: str, storage_class: str) -> dict[str, Any]:
    spec = {"resources": {"requests": {"storage": size}}, "storageClassName": storage_class}
    return {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


@dataclass
class Seen:
    """Arrival times (time.monotonic) of the first Bound status of each claim and the
    first ready attachment of each volume."""

    bound: dict[str, tuple[float, str]] = field(default_factory=dict)  # claim -> (t, volume)
    # claim -> the first status naming its volume (provisioning: Pending, "being made")
    decided: dict[str, float] = field(default_factory=dict)
    ready: dict[str, tuple[float, VolumeAttachment]] = field(default_factory=dict)  # volume


async def follow(buckets: dict[str, NatsBucket], seen: Seen) -> None:
    async def claims() -> None:
        async for entry in buckets[names.CLAIM_STATUS_BUCKET].watch():
            if entry is None or entry.value is None:
                continue
            now = time.monotonic()
            status = decode(entry.value, ClaimStatus)
            if status.volume and status.name not in seen.decided:
                seen.decided[status.name] = now
            if status.phase == CLAIM_BOUND and status.name not in seen.bound:
                seen.bound[status.name] = (now, status.volume)

    async def attachments() -> None:
        async for entry in buckets[names.VOLUME_ATTACHMENTS_BUCKET].watch():
            if entry is None or entry.value is None:
                continue
            now = time.monotonic()
            record = decode(entry.value, VolumeAttachment)
            if record.ready and record.volume not in seen.ready:
                seen.ready[record.volume] = (now, record)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claims)
        tg.start_soon(attachments)


async def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s: {what}")
        await anyio.sleep(0.005)


def stats(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (
        f"n={len(ordered):3d}  p50 {at(0.5):7.1f} ms  p95 {at(0.95):7.1f} ms  "
        f"p99 {at(0.99):7.1f} ms  max {ordered[-1] * 1000:7.1f} ms"
    )


# --- 1. static binding ----------------------------------------------------------------------


async def static_binding(nc: Client, seen: Seen, count: int, say: Any) -> None:
    for round_ in ("seq", "burst"):
        for i in range(count):
            await apply(nc, "PersistentVolume", volume(f"pv-{round_}-{i:03d}"))
    # one after another
    latencies = []
    for i in range(count):
        name = f"static-seq-{i:03d}"
        sent = time.monotonic()
        await apply(nc, "PersistentVolumeClaim", claim(name, "10Mi", ""))
        await until(lambda name=name: name in seen.bound, 30, f"{name} Bound")
        latencies.append(seen.bound[name][0] - sent)
    # all at once
    burst = [f"static-burst-{i:03d}" for i in range(count)]
    sent_at: dict[str, float] = {}

    async def send(name: str) -> None:
        sent_at[name] = time.monotonic()
        await apply(nc, "PersistentVolumeClaim", claim(name, "10Mi", ""))

    first = time.monotonic()
    async with anyio.create_task_group() as tg:
        for name in burst:
            tg.start_soon(send, name)
    await until(lambda: all(n in seen.bound for n in burst), 60, "every burst claim Bound")
    last = max(seen.bound[n][0] for n in burst)
    volumes = {seen.bound[n][1] for n in burst} | {
        seen.bound[f"static-seq-{i:03d}"][1] for i in range(count)
    }
    say(f"1. static binding: claim applied -> ClaimStatus Bound ({count} volumes made first)")
    say(f"    one after another  {stats(latencies)}")
    say(f"    {count} sent at once   {stats([seen.bound[n][0] - sent_at[n] for n in burst])}")
    say(
        f"    {count} sent at once   all Bound {(last - first) * 1000:.0f} ms after the first "
        f"request: {count / (last - first):,.0f} binds/s"
    )
    say(f"    distinct volumes bound: {len(volumes)} of {2 * count} claims")


# --- 2. dynamic provisioning ----------------------------------------------------------------


@dataclass(frozen=True)
class Provisioned:
    """Seconds from a claim's request until: its status names a volume (the cluster part
    decided, Pending "being made on node"), the volume's attachment is ready on the node
    (the node part made it), the claim is Bound (the cluster part saw the node's report)."""

    volume: str
    decided: float
    ready: float
    bound: float


async def provision(nc: Client, seen: Seen, name: str, size: str) -> Provisioned:
    """Apply a claim of the Immediate class and wait until it is Bound and ready."""
    sent = time.monotonic()
    await apply(nc, "PersistentVolumeClaim", claim(name, size, CLASS))
    await until(lambda: name in seen.bound, 120, f"{name} Bound")
    bound, volume_name = seen.bound[name]
    await until(lambda: volume_name in seen.ready, 120, f"{volume_name} ready on the node")
    return Provisioned(
        volume_name,
        seen.decided[name] - sent,
        seen.ready[volume_name][0] - sent,
        bound - sent,
    )


async def dynamic(nc: Client, seen: Seen, count: int, say: Any) -> None:
    class_body = {
        "metadata": {"name": CLASS},
        "provisioner": "corral.io/local-volume",
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Delete",
    }
    await apply(nc, "StorageClass", class_body)
    made = [await provision(nc, seen, f"dyn-{i:03d}", "64Mi") for i in range(count)]
    enforced = sum(bool(seen.ready[p.volume][1].size_enforced) for p in made)
    say("")
    say(
        "2. dynamic provisioning (corral.io/local-volume, Immediate): "
        "claims of 64Mi one after another"
    )
    say(f"    applied -> volume decided (Pending)    {stats([p.decided for p in made])}")
    say(f"    applied -> ready on the node          {stats([p.ready for p in made])}")
    say(f"    applied -> Bound                      {stats([p.bound for p in made])}")
    say(f"    decided -> ready (the node part)      {stats([p.ready - p.decided for p in made])}")
    say(f"    ready -> Bound (the cluster part)     {stats([p.bound - p.ready for p in made])}")
    say(f"    size enforced (a loop device): {enforced} of {count}")


# --- 3. sequential writes ---------------------------------------------------------------------


def timed(*argv: str) -> tuple[float, str]:
    """Wall time of a command, and its output (stdout and stderr)."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
    return took, done.stdout + done.stderr


async def writes(
    nc: Client, seen: Seen, args: argparse.Namespace, cluster: str, node: str,
    containers: list[str], say: Any,
) -> None:  # fmt: skip
    made = await provision(nc, seen, "write-test", "512Mi")
    attachment = seen.ready[made.volume][1]
    name = f"bench-vol-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    await run(
        "docker", "run", "-d", "--name", name,
        "--label", f"{names.LABEL_CLUSTER}={cluster}", "--label", f"{names.LABEL_NODE}={node}",
        "-v", f"{attachment.docker_volume}:/data", IMAGE, "sleep", "3600",
    )  # fmt: skip
    await run("docker", "exec", name, "mkdir", "-p", "/tmp")  # the image has no /tmp
    pid = (await run("docker", "inspect", "-f", "{{.State.Pid}}", name)).stdout.strip()
    # busybox dd here prints no rate (only "N+0 records out"), and `docker exec` costs
    # ~100 ms that varies: dd runs in the container's namespaces (its mounts, its dd)
    # through nsenter, timed from here; nsenter's own cost (median of 5) is subtracted.
    inside = ("nsenter", "-t", pid, "-a")
    overhead = statistics.median(
        [(await anyio.to_thread.run_sync(timed, *inside, "true"))[0] for _ in range(5)]
    )
    rates: dict[str, list[float]] = {"/data/f": [], "/tmp/f": []}
    for _ in range(args.runs):
        for target in rates:  # taking turns: load from elsewhere hits both alike
            dd = ("dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={args.write_mb}")
            took, said = await anyio.to_thread.run_sync(timed, *inside, *dd, "conv=fsync")
            found = DD.search(said)
            if found is None:
                raise RuntimeError(f"dd did not finish: {said!r}")
            rates[target].append(int(found[1]) / (took - overhead))
            await run(*inside, "rm", "-f", target)
    volume_rate = statistics.median(rates["/data/f"])
    own_rate = statistics.median(rates["/tmp/f"])
    say("")
    say(
        f"3. sequential write, busybox dd bs=1M count={args.write_mb} conv=fsync, "
        f"median of {args.runs}, in the container's namespaces (nsenter: {overhead * 1000:.1f} ms "
        "subtracted)"
    )
    say(
        f"    the container's /data (512Mi: ext4, loop device)  {volume_rate:7.1f} MiB/s   "
        f"(runs: {', '.join(f'{r:.1f}' for r in rates['/data/f'])})"
    )
    say(
        f"    the container's own filesystem (/tmp)            {own_rate:7.1f} MiB/s   "
        f"(runs: {', '.join(f'{r:.1f}' for r in rates['/tmp/f'])})"
    )
    say(f"    ratio volume / container fs: {volume_rate / own_rate:.2f}")
    await run("docker", "rm", "-f", name)
    containers.remove(name)


async def node_ready(nodes: NatsBucket, node: str) -> bool:
    entry = await nodes.get(node)
    return bool(entry and entry.value and decode(entry.value, NodeVolumes).ready)


# --- the whole ---------------------------------------------------------------------------------


async def bench(
    nats_url: str, args: argparse.Namespace, folder: Path, lines: list[str], marks: list[str]
) -> None:
    say = lines.append
    node = f"bench-{uuid.uuid4().hex[:8]}"
    marks.append(node)
    containers: list[str] = []
    cluster = ""
    nc = await connect(nats_url, name="bench")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        buckets = await open_buckets(js)
        seen = Seen()
        async with anyio.create_task_group() as watches:
            watches.start_soon(follow, buckets, seen)
            try:
                async with running_volmgr(nats_url) as volmgr:
                    cluster = volmgr.cluster.id
                    marks.append(cluster)
                    await static_binding(nc, seen, args.claims, say)
                    async with running_node_part(nats_url, node, folder):
                        # provisioning picks among ready node parts: wait for this one's
                        nodes = buckets[names.NODE_VOLUMES_BUCKET]
                        deadline = time.monotonic() + 30
                        while not await node_ready(nodes, node):
                            if time.monotonic() > deadline:
                                raise TimeoutError(f"the node part of {node} is not ready")
                            await anyio.sleep(0.05)
                        await dynamic(nc, seen, args.provisioned, say)
                        await writes(nc, seen, args, cluster, node, containers, say)
            finally:
                if containers:
                    await run("docker", "rm", "-f", *containers, check=False)
                if cluster:  # what `corral down` does once the node part stopped, and the data
                    await remove_all(nats_url, node, folder, "--delete-data")
                watches.cancel_scope.cancel()  # last: cancelling it would cancel the cleanup
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=50, help="static claims, per round")
    parser.add_argument("--provisioned", type=int, default=10, help="dynamic claims of 64Mi")
    parser.add_argument("--write-mb", type=int, default=256, help="dd count (bs=1M)")
    parser.add_argument("--runs", type=int, default=3, help="dd runs per target")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "volumes.txt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        sys.exit("needs root and loop devices (/dev/loop-control): losetup, mkfs, mount")
    built = subprocess.run(
        [str(REPO / "scripts" / "build-test-image"), IMAGE], capture_output=True, text=True
    )
    if built.returncode != 0:
        sys.exit(f"scripts/build-test-image failed: {built.stderr.strip()}")

    before = host_state()
    lines = report_header("bench/bench_volumes.py")
    root = Path(tempfile.mkdtemp(prefix="corral-bench-vol-"))
    marks: list[str] = [str(root)]
    try:
        with local_nats("corral-bench-vol-nats-") as nats:
            anyio.run(bench, nats.url, args, root / "volumes", lines, marks)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines += host_report(
        before, host_state(), marks, looked_at="losetup -a, mount, docker volume ls, docker ps -a"
    )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
