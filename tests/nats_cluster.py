"""A real 3-server NATS cluster on loopback (random free ports, JetStream on each),
for failover tests and bench/bench_failover.py. Any server can be killed and started
again on its ports and store."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import nats
from nats.js import JetStreamContext

from corral.client.local.nats_server import nats_server_binary
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Reply
from corral.contract.specs import Deployment
from corral.natsio.bus import bucket_stream
from corral.natsio.service import ServiceContext
from corral_scheduler.main import DURABLE, LED_BUCKETS


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class ClusterServer:
    def __init__(self, name: str, port: int, route_port: int, routes: list[int], store: Path):
        self.name = name
        self.port = port
        self.route_port = route_port
        self.routes = routes
        self.store = store
        self.url = f"nats://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            nats_server_binary(),
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--server_name",
            self.name,
            "--jetstream",
            "--store_dir",
            str(self.store),
            "--cluster_name",
            "corral-test",
            "--cluster",
            f"nats://127.0.0.1:{self.route_port}",
            "--routes",
            ",".join(f"nats://127.0.0.1:{port}" for port in self.routes),
        ]

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"nats-server {self.name} exited at start") from None
                time.sleep(0.02)
        raise RuntimeError(f"nats-server {self.name} did not listen within 10 s")

    def kill(self) -> None:
        """SIGKILL: the server dies as a crashed machine's would, without a goodbye."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NatsCluster:
    """Three nats-server processes routed to each other on 127.0.0.1."""

    def __init__(self, root: Path, size: int = 3) -> None:
        ports = _free_ports(2 * size)
        client_ports, route_ports = ports[:size], ports[size:]
        self.servers = [
            ClusterServer(
                f"n{i + 1}",
                client_ports[i],
                route_ports[i],
                [port for j, port in enumerate(route_ports) if j != i],
                root / f"n{i + 1}",
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every server's address, comma-separated, as a user would write it."""
        return ",".join(server.url for server in self.servers)

    def start(self) -> None:
        for server in self.servers:
            server.start()

    def stop(self) -> None:
        for server in self.servers:
            if server.process is not None:
                server.process.terminate()
                try:
                    server.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait(timeout=10)
                server.process = None

    def server_at(self, port: int) -> ClusterServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise LookupError(f"no server of this cluster listens on {port}")


async def wait_for_jetstream(cluster: NatsCluster, within: float = 30.0) -> None:
    """Until the cluster has a JetStream meta leader (it can make an R3 asset)."""
    deadline = time.monotonic() + within
    while True:
        try:
            nc = await nats.connect(cluster.url.split(","), connect_timeout=1, error_cb=_quiet)
        except Exception:
            nc = None
        if nc is not None:
            try:
                await nc.jetstream(timeout=2).account_info()
                return
            except Exception:
                pass
            finally:
                await nc.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the NATS cluster had no JetStream leader within {within} s")
        await anyio.sleep(0.2)


@asynccontextmanager
async def running_nats_cluster(root: Path) -> AsyncIterator[NatsCluster]:
    """Three nats-server processes under `root`, JetStream ready; stopped on exit."""
    cluster = NatsCluster(root)
    cluster.start()
    try:
        await wait_for_jetstream(cluster)
        yield cluster
    finally:
        cluster.stop()


async def _quiet(_: Exception) -> None:
    """nats-py logs every failed attempt; a test waiting for a cluster expects some."""


@dataclass(frozen=True)
class Failover:
    killed: str  # the server the scheduler was connected to
    moved_to: str  # the server it carried on through
    request_seconds: float  # kill -> an apply request answered ok
    published_seconds: float  # kill -> that spec acknowledged by the CORRAL_SPECS stream
    durable_seconds: float  # kill -> a durable spec (published after the kill) stored


async def leaders_of(js: JetStreamContext, durable: str) -> list[str]:
    """The Raft leaders of everything the scheduler writes: its buckets, the spec
    stream and its consumer."""
    led = (*LED_BUCKETS, names.PLACEMENTS_BUCKET)  # a cluster of one shard here
    infos = [await js.stream_info(bucket_stream(bucket)) for bucket in led]
    infos.append(await js.stream_info(names.SPEC_STREAM))
    clusters = [info.cluster for info in infos]
    clusters.append((await js.consumer_info(names.SPEC_STREAM, durable)).cluster)
    return [cluster.leader or "" if cluster else "" for cluster in clusters]


async def _leaders_or_mine(js: JetStreamContext, me: str) -> list[str]:
    """The leaders; a JetStream API request that timed out (a busy 3-server cluster on a
    small machine) counts as not there yet."""
    try:
        return await leaders_of(js, DURABLE)
    except nats.errors.TimeoutError:
        return [me]


async def measure_failover(cluster: NatsCluster, scheduler: ServiceContext) -> Failover:
    """Kill the server `scheduler` is connected to (SIGKILL), then time how long until
    (a) an apply request, retried as a client would, is answered ok, and (b) a durable
    spec published after the kill is stored. Waits first until the Raft leaders of
    what the scheduler writes are off its server (its steady state)."""
    me = scheduler.nc._server_info["server_name"]
    deadline = time.monotonic() + 30
    while me in await _leaders_or_mine(scheduler.js, me):
        if time.monotonic() > deadline:
            raise RuntimeError(f"leaders stayed on {me}: {await leaders_of(scheduler.js, DURABLE)}")
        await anyio.sleep(0.2)
    victim = next(server for server in cluster.servers if server.name == me)
    others = [server.url for server in cluster.servers if server is not victim]
    client = await nats.connect(others, connect_timeout=1, error_cb=_quiet)
    try:
        js = client.jetstream(timeout=2)
        deployments = await js.key_value(names.DEPLOYMENTS_BUCKET)
        first = decode((await client.request(APPLY, spec("failover", 1), timeout=5)).data, Reply)
        assert first.ok, first
        victim.kill()
        killed_at = time.monotonic()
        while True:  # (a) a client retrying its apply
            try:
                answer = await client.request(APPLY, spec("failover", 2), timeout=1)
                if decode(answer.data, Reply).ok:
                    break
            except Exception:
                pass
            await anyio.sleep(0.05)
        request_seconds = time.monotonic() - killed_at
        while True:  # (b) a durable spec, published (acknowledged by the stream) after the kill
            try:
                await js.publish(names.spec_subject("deployment", "apply"), spec("failover", 3))
                break
            except Exception:
                await anyio.sleep(0.05)
        published_seconds = time.monotonic() - killed_at
        while True:
            try:
                entry = await deployments.get("default.failover")
                if entry.value and decode(entry.value, Deployment).spec.replicas == 3:
                    break
            except Exception:
                pass
            await anyio.sleep(0.05)
        durable_seconds = time.monotonic() - killed_at
        moved_to = scheduler.nc._server_info.get("server_name", "?")
        return Failover(me, moved_to, request_seconds, published_seconds, durable_seconds)
    finally:
        await client.close()


APPLY = names.api_subject("deployment", "apply")


def spec(name: str, replicas: int) -> bytes:
    return encode(
        {
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "template": {"image": "corral-test/busybox:1"}},
        }
    )
