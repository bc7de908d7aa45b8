"""How fast corral deploys, heals and idles on the local Docker engine.

    .venv/bin/python bench/bench_deploy.py [--replicas 20] [--rounds 3] [--kills 3]

Starts its own corral with `python -m corral.client.local up -d` (an embedded
nats-server on a free port, the real services as processes, the node agent on
the local Docker engine), then measures:

  (a) a Deployment of N replicas of corral-test/busybox:1 running `sleep 3600`,
      from the apply request to all N Running in the replica status bucket
      (followed with a KV watch), against creating and starting the same N
      containers straight through aiodocker at the same concurrency (8);
  (b) from `docker kill` of one replica's container to that replica Running again;
  (c) each service process' resident memory (VmRSS) when idle.

It removes everything it created: its deployments, containers, processes and
data dir. Needs the test image (scripts/build-test-image).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import anyio

from corral.client.api import CorralClient
from corral.client.local.layout import Layout
from corral.client.local.processes import resident_memory_bytes
from corral.client.local.state_file import SupervisorRecord, read_state
from corral.contract import names
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.kv import Mirror, NatsBucket

IMAGE = "corral-test/busybox:1"
COMMAND = ["sleep", "3600"]
CONCURRENCY = 8  # the node agent's default --max-parallel
NODE = "bench-node"
BENCH_LABEL = "io.corral.bench"


def free_port_block(size: int) -> int:
    """`size` consecutive free ports on loopback, below the kernel's ephemeral range when
    there is room: a block inside it can lose a port before its process binds it, to the
    source port of one of the many connections a run opens (thousands at 5,000 hollow
    nodes)."""
    low = _ephemeral_low()
    for _ in range(200):
        if low - size > 10_000:
            base = random.randrange(10_000, low - size)
        else:  # no room below: any free port the kernel gives, as before
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                base = probe.getsockname()[1]
        if base + size < 65535 and all(_free(port) for port in range(base, base + size)):
            return base
    raise RuntimeError("no block of free ports")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (connections' source ports)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class LocalCorral:
    data_dir: Path
    nats_port: int
    metrics_base: int

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def _run(self, *args: str) -> None:
        command = [
            sys.executable,
            "-m",
            "corral.client.local",
            *args,
            "--data-dir",
            str(self.data_dir),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")

    def up(self) -> None:
        self._run(
            "up",
            "-d",
            "--nats-port",
            str(self.nats_port),
            "--metrics-base-port",
            str(self.metrics_base),
            "--node-name",
            NODE,
            "--runtime",
            "docker",
            "--log-level",
            "WARNING",
        )

    def down(self) -> None:
        self._run("down")

    def record(self) -> SupervisorRecord:
        record = read_state(Layout.at(self.data_dir))
        if record is None:
            raise RuntimeError("corral is not running")
        return record


class ReplicaWatch:
    """The replica status bucket, followed by a watch; wakes waiters on every change."""

    def __init__(self, bucket: NatsBucket) -> None:
        self.changed = anyio.Event()
        self.mirror = Mirror(bucket, ReplicaStatus, on_change=self._wake)

    def _wake(self, _: str) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def of(self, deployment: str) -> dict[str, ReplicaStatus]:
        return {
            key: status
            for key, (status, _) in self.mirror.items.items()
            if status.deployment == deployment
        }

    async def until(self, condition: Callable[[], bool], within: float, what: str) -> None:
        with anyio.fail_after(within):
            while not condition():
                changed = self.changed
                with anyio.move_on_after(1):  # and re-check now and then regardless
                    await changed.wait()
        if not condition():
            raise TimeoutError(what)


def deployment(name: str, replicas: int) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name),
        spec=DeploymentSpec(
            replicas=replicas, template=ContainerTemplate(image=IMAGE, command=COMMAND)
        ),
    )


def running(watch: ReplicaWatch, name: str) -> int:
    return sum(s.state == ReplicaState.RUNNING for s in watch.of(name).values())


async def containers_with(docker: aiodocker.Docker, label: str) -> list[Any]:
    found: list[Any] = await docker.containers.list(all=True, filters={"label": [label]})
    return found


async def until_no_containers(docker: aiodocker.Docker, label: str, within: float) -> None:
    with anyio.fail_after(within):
        while await containers_with(docker, label):  # noqa: ASYNC110 (polling the engine)
            await anyio.sleep(0.2)


async def corral_deploy_seconds(
    client: CorralClient, docker: aiodocker.Docker, watch: ReplicaWatch, name: str, replicas: int
) -> float:
    began = time.perf_counter()
    await client.apply(deployment(name, replicas))
    await watch.until(lambda: running(watch, name) == replicas, 300, f"{name} all Running")
    elapsed = time.perf_counter() - began
    await client.delete("Deployment", name)
    await until_no_containers(docker, f"{names.LABEL_DEPLOYMENT}={name}", 120)
    return elapsed


async def direct_deploy_seconds(docker: aiodocker.Docker, replicas: int) -> float:
    limiter = anyio.CapacityLimiter(CONCURRENCY)
    created: list[Any] = []

    async def one(index: int) -> None:
        async with limiter:
            container = await docker.containers.create(
                {
                    "Image": IMAGE,
                    "Entrypoint": COMMAND,
                    "Labels": {BENCH_LABEL: "direct"},
                    "HostConfig": {"RestartPolicy": {"Name": "no"}},
                }
            )
            created.append(container)
            await container.start()

    began = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(replicas):
            group.start_soon(one, index)
    elapsed = time.perf_counter() - began
    await remove_all(docker, f"{BENCH_LABEL}=direct")
    return elapsed


async def remove_all(docker: aiodocker.Docker, label: str) -> int:
    containers = await containers_with(docker, label)
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def remove(container: Any) -> None:
        async with limiter:
            try:
                await container.delete(force=True)
            except aiodocker.exceptions.DockerError as error:
                if error.status != 404:
                    raise

    async with anyio.create_task_group() as group:
        for container in containers:
            group.start_soon(remove, container)
    return len(containers)


async def heal_seconds(
    client: CorralClient, docker: aiodocker.Docker, watch: ReplicaWatch, kills: int
) -> list[float]:
    name = "bench-heal"
    replicas = max(kills, 3)
    await client.apply(deployment(name, replicas))
    await watch.until(lambda: running(watch, name) == replicas, 300, f"{name} all Running")
    timings = []
    for victim_key in sorted(watch.of(name))[:kills]:
        before = watch.of(name)[victim_key]

        def replaced(key: str = victim_key, old: ReplicaStatus = before) -> bool:
            now = watch.of(name).get(key)
            return (
                now is not None
                and now.state == ReplicaState.RUNNING
                and (now.container_id != old.container_id or now.restarts > old.restarts)
            )

        began = time.perf_counter()
        await docker.containers.container(before.container_id).kill()
        await watch.until(replaced, 120, f"{victim_key} Running again")
        timings.append(time.perf_counter() - began)
    await client.delete("Deployment", name)
    await until_no_containers(docker, f"{names.LABEL_DEPLOYMENT}={name}", 120)
    return timings


def memory_by_service(record: SupervisorRecord) -> dict[str, float]:
    """Resident memory in MiB of each process corral up runs (and the supervisor)."""
    sizes = {"supervisor": resident_memory_bytes(record.pid)}
    for child in record.children:
        sizes[child.name] = None if child.pid is None else resident_memory_bytes(child.pid)
    return {name: size / 2**20 for name, size in sizes.items() if size is not None}


async def node_ready(client: CorralClient, within: float) -> None:
    with anyio.fail_after(within):
        while True:
            node = (await client.nodes()).get(NODE)
            if node is not None and node.ready:
                return
            await anyio.sleep(0.2)


def rounds(timings: list[float]) -> str:
    return ", ".join(f"{seconds:.2f}" for seconds in timings)


def print_memory(title: str, sizes: dict[str, float]) -> None:
    print(f"  {title}: " + ", ".join(f"{name} {mib:.1f}" for name, mib in sizes.items()))


async def measure(local: LocalCorral, args: argparse.Namespace) -> None:
    async with aiodocker.Docker() as docker:
        await docker.images.inspect(IMAGE)  # fails early without the image
        client = await CorralClient.connect(local.nats_url, name="corral-bench")
        try:
            await node_ready(client, 60)
            await anyio.sleep(args.settle)
            idle_at_start = memory_by_service(local.record())
            kv = await client.js.key_value(names.REPLICA_STATUS_BUCKET)
            watch = ReplicaWatch(NatsBucket(kv, names.REPLICA_STATUS_BUCKET))
            async with anyio.create_task_group() as group:
                await group.start(watch.mirror.run)
                corral: list[float] = []
                direct: list[float] = []
                for index in range(args.rounds):  # interleaved, so drift hits both alike
                    name = f"bench-{index}"
                    corral.append(
                        await corral_deploy_seconds(client, docker, watch, name, args.replicas)
                    )
                    direct.append(await direct_deploy_seconds(docker, args.replicas))
                heal = await heal_seconds(client, docker, watch, args.kills)
                group.cancel_scope.cancel()
            await anyio.sleep(args.settle)
            idle_at_end = memory_by_service(local.record())
        finally:
            await client.close()

    corral_median, direct_median = statistics.median(corral), statistics.median(direct)
    print(f"\ncorral bench on {os.cpu_count()} cores, {args.replicas} replicas of {IMAGE}")
    print(f"(a) deploy {args.replicas} replicas to all Running, median of {args.rounds}:")
    print(f"  corral Deployment:          {corral_median:6.2f} s   (rounds: {rounds(corral)})")
    direct_title = f"aiodocker direct (conc {CONCURRENCY}):"
    print(f"  {direct_title:<27} {direct_median:6.2f} s   (rounds: {rounds(direct)})")
    print(f"  ratio corral / direct:      {corral_median / direct_median:6.2f}")
    print(f"(b) docker kill -> replica Running again, median of {len(heal)}:")
    print(f"  {statistics.median(heal):6.2f} s   (each: {rounds(heal)})")
    print("(c) resident memory (VmRSS, MiB)")
    print_memory("idle after start", idle_at_start)
    print_memory("idle after the runs", idle_at_end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before VmRSS")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    ports = free_port_block(5)  # one block: two searches could pick overlapping ones
    local = LocalCorral(data_dir, ports, ports + 1)
    try:
        print(f"starting corral (data {data_dir}, nats {local.nats_url})", flush=True)
        local.up()
        anyio.run(measure, local, args)
    finally:
        try:
            local.down()
        finally:
            anyio.run(cleanup_containers)
            shutil.rmtree(data_dir, ignore_errors=True)


async def cleanup_containers() -> None:
    async with aiodocker.Docker() as docker:
        left = await remove_all(docker, f"{names.LABEL_NODE}={NODE}")
        left += await remove_all(docker, BENCH_LABEL)
        if left:
            print(f"removed {left} leftover container(s)")


if __name__ == "__main__":
    main()
