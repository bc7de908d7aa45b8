"""A real two-node corral for benchmarks, in-process on one event loop.

What tests/e2e/test_services_two_nodes.py runs, for bench_network.py and
bench_rollout.py: the scheduler, netmgr's cluster part, netmgr's node part for both
nodes and both node agents (node one on the local engine, node two on a second dockerd,
tests/e2e/second_engine.py), against a nats-server of the caller's. On the way out,
every container of both nodes goes (clients first), then the node parts' chains,
networks and routes (`--remove-all`, as `corral down` does).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from host_report import host_report, report_header
from local_nats import local_nats

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.network_state import NetworkSlice
from corral.natsio.bus import connect, ensure_streams, open_buckets
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext, run_service
from corral_netmgr import node as node_part
from tests.agents import running_agent
from tests.e2e.second_engine import BRIDGE, BRIDGE_ADDRESS, second_engine
from tests.e2e.test_netmgr_node import host_state, remove_all
from tests.e2e.test_netmgr_node import parser as node_parser
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import running_scheduler

CORRAL = str(Path(sys.executable).parent / "corral")
REPO = Path(__file__).resolve().parent.parent


def sh(
    *argv: str, check: bool = True, engine: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; `engine`: the DOCKER_HOST its docker commands talk to."""
    env = None if engine is None else {**os.environ, "DOCKER_HOST": engine}
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120, env=env)


@asynccontextmanager
async def running_node_part(nats_url: str, node: str, *flags: str) -> AsyncIterator[None]:
    args = node_parser().parse_args(
        ["--nats", nats_url, "--metrics-port", "0", "--node", node, *flags]
    )
    async with anyio.create_task_group() as tg:
        _: ServiceContext = await tg.start(run_service, "netmgr", node_part.run, args)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


# --- commands, in threads: the agents and node parts share this event loop -------------


async def run(*argv: str, engine: str | None = None, check: bool = True) -> str:
    done = await anyio.to_thread.run_sync(lambda: sh(*argv, engine=engine, check=check))
    return done.stdout


async def cli(nats_url: str, *args: str) -> str:
    done = await anyio.to_thread.run_sync(lambda: sh(CORRAL, "--nats", nats_url, *args))
    return done.stdout


@dataclass
class TwoNodes:
    """The running cluster: node names, engines (None: the local one), its id, node
    one's slice of the default network, the KV buckets, and the client containers the
    caller starts (removed first on the way out)."""

    one: str
    two: str
    engines: dict[str, str | None]
    cluster: str
    slice_one: NetworkSlice
    buckets: dict[str, NatsBucket]
    clients: list[str] = field(default_factory=list)

    def client_args(self) -> list[str]:
        """`docker run` flags for a client on node one's default network, resolving
        Service names as replicas do."""
        return [
            "--label", f"{names.LABEL_NODE}={self.one}",
            "--network", names.docker_network_name("default", self.cluster),
            "--dns", self.slice_one.gateway, "--dns-search", "default.svc.cluster.local",
            "--dns-search", "svc.cluster.local", "--dns-search", "cluster.local",
        ]  # fmt: skip


@asynccontextmanager
async def two_nodes(
    nats_url: str, second_host: str, marks: list[str], *agent_flags: str
) -> AsyncIterator[TwoNodes]:
    """Both nodes up and node one's default slice made; `marks` gets what names this
    run's host changes (the cluster id, chain prefixes, the slice) for host_report."""
    node = f"bench-{uuid.uuid4().hex[:8]}"
    one, two = node, f"{node}-b"
    engines: dict[str, str | None] = {one: None, two: second_host}
    nc = await connect(nats_url, name="bench")
    cluster = ""
    clients: list[str] = []
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        buckets = await open_buckets(js)
        async with (
            running_scheduler(nats_url),
            running_netmgr(nats_url, "--default-network-wait", "30") as netmgr,
        ):
            cluster = netmgr.cluster.id
            marks += [cluster, names.chain_prefix(cluster, one), names.chain_prefix(cluster, two)]
            async with (
                running_node_part(nats_url, one),
                running_node_part(nats_url, two, "--docker-host", second_host),
                running_agent(
                    nats_url, one, "--runtime", "docker", "--heartbeat-seconds", "0.5",
                    "--networks", "on", *agent_flags,
                ),
                running_agent(
                    nats_url, two, "--docker-host", second_host,
                    "--heartbeat-seconds", "0.5", "--networks", "on", *agent_flags,
                ),
            ):  # fmt: skip
                slices = buckets[names.NETWORK_SLICES_BUCKET]
                deadline = time.monotonic() + 60
                while (entry := await slices.get(f"default.{one}")) is None or not entry.value:
                    if time.monotonic() > deadline:
                        raise TimeoutError("no default network slice for node one")
                    await anyio.sleep(0.1)
                slice_one = decode(entry.value, NetworkSlice)
                marks.append(slice_one.subnet)
                yield TwoNodes(one, two, engines, cluster, slice_one, buckets, clients)
    finally:
        # containers first (clients, then every one of both nodes): a Docker network
        # goes only once nothing is on it
        if clients:
            await run("docker", "rm", "-f", *clients, check=False)
        for name, engine in engines.items():
            label = f"label={names.LABEL_NODE}={name}"
            left = (await run("docker", "ps", "-aq", "--filter", label, engine=engine)).split()
            if left:
                await run("docker", "rm", "-f", *left, engine=engine, check=False)
        if cluster:  # what `corral down` does once the node parts stopped
            await remove_all(nats_url, one)
            await remove_all(nats_url, two, "--docker-host", second_host)
        await nc.close()


Bench = Callable[[str, str, argparse.Namespace, list[str], list[str]], Awaitable[None]]


def run_bench(
    script: str,
    args: argparse.Namespace,
    bench: Bench,
    image: str,
    nats_prefix: str,
    root_prefix: str,
) -> None:
    """A two-node bench's main() around `bench(nats_url, second_host, args, lines, marks)`:
    the test image built, the second engine's bridge checked free, the header line, a
    nats-server and a second engine of its own, the host report after; the text printed
    and written to args.out."""
    logging.basicConfig(level=logging.WARNING)
    built = subprocess.run(
        [str(REPO / "scripts" / "build-test-image"), image], capture_output=True, text=True
    )
    if built.returncode != 0:
        sys.exit(f"scripts/build-test-image failed: {built.stderr.strip()}")
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        sys.exit(f"bridge {BRIDGE} exists: another second engine (an e2e test?) is running")
    before = host_state()
    lines = report_header(script)
    marks: list[str] = [BRIDGE, BRIDGE_ADDRESS.split("/")[0].rsplit(".", 1)[0] + "."]
    with local_nats(nats_prefix) as nats:
        root = Path(tempfile.mkdtemp(prefix=root_prefix, dir="/tmp"))  # a short socket path
        with second_engine(root, image) as second_host:
            anyio.run(bench, nats.url, second_host, args, lines, marks)
    # other corral tests may run on this machine meanwhile (bridges crl..., networks
    # corral_...): only lines of this run's, or of no corral at all, count
    lines += host_report(
        before,
        host_state(),
        marks,
        looked_at="iptables-save, ip route, docker network ls",
        counts=lambda line: "crl" not in line.lower() and "corral_" not in line,
        others="other changes meanwhile, naming no corral network",
    )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
