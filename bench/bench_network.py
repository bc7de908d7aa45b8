"""Issue 8's numbers (docs/networking.md) through every real piece, on two engines.

    .venv/bin/python bench/bench_network.py [--rounds 5] [--requests 300] [--bulk-mb 50]
                                            [--dns-queries 1000] [--out bench/results/network.txt]

Runs what tests/e2e/test_services_two_nodes.py runs: a nats-server of its own
(bench/local_nats.py), a second dockerd on its own bridge (tests/e2e/second_engine.py),
and in-process on one event loop the scheduler, netmgr's cluster part, netmgr's node part
for both nodes and both node agents. A Deployment `web` (busybox httpd on 8080) is
exposed as a NodePort Service (port 80). Then:

1. Endpoint propagation. Rounds of: scale 1 -> 4, kill two replicas (`docker rm -f`), scale
   4 -> 1. Watches of the replica status, endpoints and node network buckets, in this
   process, note when each record arrives. A sample runs from its event to the change
   being in force on EVERY node (each node's NodeNetwork.endpointsRevision >= the revision
   of the first Endpoints record with the change):
     ready      the replica's ReplicaStatus arrives Running with its IP
     kill       just before `docker rm -f` of its container
     scale-down the scale request sent (in-process, CorralClient; the replicas' status
                may go only after netmgr acted; not counted in ready+kill)
2. Requests and bulk transfer from a client container on node one (on the default corral
   network) to the single replica by its IP, by the VIP and by the NodePort on the
   host's address on each engine's bridge: a busybox `nc` loop in the client, timed from
   here around one `nsenter -t <pid> -a sh -c '<loop>'` (its own cost, timed alone, is
   subtracted; busybox `date` has no %N; `docker exec` costs ~100 ms and varies), the
   same loop inside the replica to 127.0.0.1 (what fork + httpd alone cost), and a
   Python loop in the client's network namespace (`nsenter -n`: no fork per request).
3. DNS: a Python (dnslib) loop in the client's network namespace asks for the Service's
   name, once to Docker's resolver 127.0.0.11 (it forwards to corral's node DNS) and once
   straight to the slice's gateway:53.

Everything it makes goes after: containers, Services, the Deployment, the node parts'
chains and networks (--remove-all, as `corral down` does), the second engine; the host's
packet filter, routes and Docker networks are compared with before. Needs root (nsenter,
iptables), dockerd and the test image (scripts/build-test-image).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from two_nodes import cli, run, run_bench, sh, two_nodes

from corral.client.api import CorralClient
from corral.contract import names
from corral.contract.codec import decode
from corral.contract.network_state import Endpoints, NetworkSlice, NodeNetwork
from corral.contract.state import ReplicaStatus
from corral.natsio.kv import NatsBucket
from tests.e2e.second_engine import BRIDGE_ADDRESS

REPO = Path(__file__).resolve().parent.parent
IMAGE = "corral-test/busybox:1"
HTTPD = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
SERVICE_KEY = names.object_key("default", "web")
HOST_ONE = "172.17.0.1"  # docker0: the host's address on engine one's bridge
HOST_TWO = BRIDGE_ADDRESS.split("/")[0]
GET = "GET / HTTP/1.0\\r\\n\\r\\n"
BULK_ROUNDS = 7
SLICES = 10  # batches the request loops are cut into, the paths taking turns


# --- what the watches saw ---------------------------------------------------------------


@dataclass
class Seen:
    """Arrival times (time.monotonic) of the records this benchmark follows."""

    # Endpoints of `web`: (revision, arrival, ready IPs)
    endpoints: list[tuple[int, float, frozenset[str]]] = field(default_factory=list)
    # node -> [(arrival, endpointsRevision)]
    nodes: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    # (replica, container id) -> (arrival of its first Running status with an IP, the IP)
    ready: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)

    def current(self) -> tuple[int, frozenset[str]]:
        return (
            (self.endpoints[-1][0], self.endpoints[-1][2]) if self.endpoints else (0, frozenset())
        )

    def node_revision(self, node: str) -> int:
        return self.nodes[node][-1][1] if self.nodes.get(node) else 0

    def in_force_at(self, revision: int, nodes: list[str]) -> float | None:
        """When the last of `nodes` reported endpointsRevision >= revision."""
        times = []
        for node in nodes:
            arrived = [t for t, r in self.nodes.get(node, []) if r >= revision]
            if not arrived:
                return None
            times.append(arrived[0])
        return max(times)

    def first_revision(self, after: float, ip: str, present: bool) -> int | None:
        """The first Endpoints revision with `ip` ready (present) or not, after the last
        revision that arrived by `after` and was the other way."""
        start = 0
        for index, (_, arrived, ips) in enumerate(self.endpoints):
            if arrived <= after and (ip in ips) != present:
                start = index
        for revision, _, ips in self.endpoints[start:]:
            if (ip in ips) == present:
                return revision
        return None


async def follow(buckets: dict[str, NatsBucket], seen: Seen) -> None:
    async def endpoints() -> None:
        async for entry in buckets[names.ENDPOINTS_BUCKET].watch(SERVICE_KEY):
            if entry is None or entry.key != SERVICE_KEY:
                continue
            now = time.monotonic()
            ips: frozenset[str] = frozenset()
            if entry.value is not None:
                record = decode(entry.value, Endpoints)
                ips = frozenset(a.ip for a in record.addresses if a.ready)
            seen.endpoints.append((entry.revision, now, ips))

    async def node_networks() -> None:
        async for entry in buckets[names.NODE_NETWORK_BUCKET].watch():
            if entry is None or entry.value is None:
                continue
            now = time.monotonic()
            record = decode(entry.value, NodeNetwork)
            seen.nodes.setdefault(record.node, []).append((now, record.endpoints_revision))

    async def statuses() -> None:
        async for entry in buckets[names.REPLICA_STATUS_BUCKET].watch():
            if entry is None or entry.value is None:
                continue
            now = time.monotonic()
            status = decode(entry.value, ReplicaStatus)
            if status.deployment != "web" or status.state != "Running" or not status.ips:
                continue
            ident = (status.replica, status.container_id)
            if ident not in seen.ready:
                seen.ready[ident] = (now, next(iter(status.ips.values())))

    async with anyio.create_task_group() as tg:
        tg.start_soon(endpoints)
        tg.start_soon(node_networks)
        tg.start_soon(statuses)


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s: {what}")
        await anyio.sleep(0.01)


# --- commands, in threads: the agents and node parts share this event loop -------------


async def timed(*argv: str, engine: str | None = None) -> tuple[float, str]:
    """Wall time of a command run from a thread, and its output."""

    def call() -> tuple[float, str]:
        env = None if engine is None else {**os.environ, "DOCKER_HOST": engine}
        started = time.perf_counter()
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, env=env, check=True
        )
        return time.perf_counter() - started, done.stdout

    return await anyio.to_thread.run_sync(call)


def web_containers(engine: str | None) -> list[str]:
    return sh(
        "docker", "ps", "-q", "--filter", "status=running",
        "--filter", f"label={names.LABEL_DEPLOYMENT}=web", engine=engine,
    ).stdout.split()  # fmt: skip


def container_ip(cid: str, engine: str | None) -> str:
    """Its address, or "" when it is gone meanwhile (a scaled-down replica going)."""
    out = sh(
        "docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        cid, engine=engine, check=False,
    ).stdout  # fmt: skip
    return out.split()[0] if out.split() else ""


# --- 1. propagation ---------------------------------------------------------------------


@dataclass
class Samples:
    ready: list[float] = field(default_factory=list)
    kill: list[float] = field(default_factory=list)
    down: list[float] = field(default_factory=list)


async def settled(seen: Seen, nodes: list[str], count: int, within: float = 90) -> None:
    """`count` ready addresses, in force on every node."""

    def done() -> bool:
        revision, ips = seen.current()
        return len(ips) == count and all(seen.node_revision(n) >= revision for n in nodes)

    await until(done, within, f"{count} endpoints in force on {nodes}")


async def propagation_round(
    client: CorralClient, seen: Seen, nodes: list[str], engines: list[str | None], samples: Samples
) -> None:
    async def sample_ready(since: float) -> None:
        for arrived, ip in [v for v in seen.ready.values() if v[0] >= since]:
            revision = seen.first_revision(arrived, ip, present=True)
            assert revision is not None, ip
            at = seen.in_force_at(revision, nodes)
            assert at is not None, ip
            samples.ready.append(at - arrived)

    # scale up
    started = time.monotonic()
    await client.scale("web", 4)
    await settled(seen, nodes, 4)
    await sample_ready(started)

    # kill two, one at a time, on alternate engines where there are some
    for engine in engines:
        victim, ip = "", ""
        for cid in await anyio.to_thread.run_sync(web_containers, engine):
            address = await anyio.to_thread.run_sync(container_ip, cid, engine)
            if address in seen.current()[1]:
                victim, ip = cid, address
        if not victim:
            continue
        killed = time.monotonic()
        await run("docker", "rm", "-f", victim, engine=engine)

        def gone(killed: float = killed, ip: str = ip) -> bool:
            revision = seen.first_revision(killed, ip, present=False)
            return revision is not None and seen.in_force_at(revision, nodes) is not None

        await until(gone, 60, f"{ip} out of the endpoints on every node")
        revision = seen.first_revision(killed, ip, present=False)
        assert revision is not None
        at = seen.in_force_at(revision, nodes)
        assert at is not None
        samples.kill.append(at - killed)
        await settled(seen, nodes, 4)  # the replacement
        await sample_ready(killed)

    # scale down
    before = seen.current()[1]
    asked = time.monotonic()
    await client.scale("web", 1)
    await settled(seen, nodes, 1)
    for ip in before - seen.current()[1]:
        revision = seen.first_revision(asked, ip, present=False)
        assert revision is not None
        at = seen.in_force_at(revision, nodes)
        assert at is not None
        samples.down.append(at - asked)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (
        f"n={len(ordered):3d}  p50 {at(0.5):7.1f} ms  p90 {at(0.9):7.1f} ms  "
        f"p99 {at(0.99):7.1f} ms  max {ordered[-1] * 1000:7.1f} ms"
    )


# --- 2. and 3.: from inside the client's network namespace ------------------------------

# Run with the venv's Python under `nsenter -t <pid> -n`: the client container's network,
# this host's file system. Prints one JSON line.
PROBE = r"""
import json, socket, sys, time
mode = sys.argv[1]
if mode == "http":
    host, port, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    took, answered = [], 0
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        took.append(time.perf_counter() - t)
        answered += data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n")[0]
    print(json.dumps({"total": time.perf_counter() - started, "took": took, "ok": answered}))
elif mode == "bulk":
    host, port = sys.argv[2], int(sys.argv[3])
    t = time.perf_counter()
    got = 0
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        while chunk := s.recv(1 << 20):
            got += len(chunk)
    print(json.dumps({"seconds": time.perf_counter() - t, "bytes": got}))
elif mode == "dns":
    from dnslib import DNSRecord
    server, name, count, expect = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    took, lost, wrong = [], 0, 0
    for i in range(count + 50):
        query = DNSRecord.question(name, "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            t = time.perf_counter()
            s.sendto(query.pack(), (server, 53))
            try:
                data, _ = s.recvfrom(4096)
            except socket.timeout:
                lost += 1
                continue
            elapsed = time.perf_counter() - t
        answer = DNSRecord.parse(data)
        if answer.header.id != query.header.id or expect not in [str(r.rdata) for r in answer.rr]:
            wrong += 1
        if i >= 50:
            took.append(elapsed)
    print(json.dumps({"took": took, "lost": lost, "wrong": wrong}))
"""


async def probe(pid: str, *args: str) -> dict[str, object]:
    out = await run("nsenter", "-t", pid, "-n", sys.executable, "-c", PROBE, *args)
    result: dict[str, object] = json.loads(out)
    return result


def nc_loop(address: str, port: int, count: int) -> str:
    return (
        f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); "
        f"printf '{GET}' | nc -w 3 {address} {port} | tail -n 1; done"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.2f} ms"


async def paths_and_dns(
    nats_url: str,
    args: argparse.Namespace,
    one: str,
    cluster: str,
    web: Endpoints,
    slice_one: NetworkSlice,
    engines: dict[str, str | None],
    clients: list[str],
    lines: list[str],
) -> None:
    say = lines.append
    replica_ip = web.addresses[0].ip
    replica_node = web.addresses[0].node
    replica_engine = engines[replica_node]
    replica = ""
    for cid in await anyio.to_thread.run_sync(web_containers, replica_engine):
        if await anyio.to_thread.run_sync(container_ip, cid, replica_engine) == replica_ip:
            replica = cid
    assert replica, f"no container with {replica_ip}"
    node_port = web.ports[0].node_port
    paths = [
        ("direct", replica_ip, 8080),
        ("VIP", web.cluster_ip, 80),
        (f"NodePort {HOST_ONE}", HOST_ONE, node_port),
        (f"NodePort {HOST_TWO}", HOST_TWO, node_port),
    ]
    client = f"bench-client-{uuid.uuid4().hex[:8]}"
    clients.append(client)
    await run(
        "docker", "run", "-d", "--name", client, "--label", f"{names.LABEL_NODE}={one}",
        "--network", names.docker_network_name("default", cluster),
        "--dns", slice_one.gateway, "--dns-search", "default.svc.cluster.local",
        IMAGE, "sleep", "3600",
    )  # fmt: skip
    pid = (await run("docker", "inspect", "-f", "{{.State.Pid}}", client)).strip()
    where = "node two (engine two)" if replica_node != one else "node one"
    say(f"(the one replica {replica_ip} is on {where}; the client on node one)")

    # busybox nc, the whole loop in one process
    n = args.requests
    # Inside the containers through nsenter (all their namespaces, their busybox): a
    # process of the host, so far cheaper and steadier than `docker exec` (~100 ms).
    replica_pid = (
        await run("docker", "inspect", "-f", "{{.State.Pid}}", replica, engine=replica_engine)
    ).strip()
    inside = ("nsenter", "-t", pid, "-a", "sh", "-c")
    in_replica = ("nsenter", "-t", replica_pid, "-a", "sh", "-c")
    execs = [(await timed(*inside, "true"))[0] for _ in range(9)]
    exec_cost = statistics.median(execs)
    say("")
    # the paths take turns, in SLICES batches, so that load from elsewhere on the
    # machine hits each alike; per path the median batch's time per request
    batch = max(1, n // SLICES)
    say(
        f"2a. {batch * SLICES} sequential HTTP requests per path, busybox nc (a fork per "
        f"request), in {SLICES} interleaved batches (median batch)"
    )
    say(f"    `nsenter -a sh -c true` alone: {ms(exec_cost)} (subtracted)")
    per_request: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    base: list[float] = []
    for _ in range(SLICES):
        wall, out = await timed(*in_replica, nc_loop("127.0.0.1", 8080, batch))
        assert len(out.split()) == batch, "the replica's own loop lost answers"
        base.append((wall - exec_cost) / batch)
        for name, address, port in paths:
            wall, out = await timed(*inside, nc_loop(address, port, batch))
            answers = out.split()
            assert len(answers) == batch, f"{name}: {len(answers)} of {batch} answered"
            per_request[name].append((wall - exec_cost) / batch)
    baseline = statistics.median(base)
    say(
        f"    in the replica to 127.0.0.1:8080 (fork + httpd, no network): "
        f"{1 / baseline:7.0f} req/s  {ms(baseline)}/req"
    )
    direct = statistics.median(per_request["direct"])
    for name, _, _ in paths:
        each = statistics.median(per_request[name])
        say(
            f"    {name:22s} {1 / each:7.0f} req/s  {ms(each)}/req  "
            f"ratio to direct {direct / each:5.2f}   minus the replica's own loop "
            f"{ms(each - baseline)}/req"
        )

    # Python in the client's network namespace: no fork per request
    say("")
    say(
        f"2b. {batch * SLICES} sequential HTTP requests per path, Python in the client's "
        f"network namespace (a new connection each), {SLICES} interleaved batches"
    )
    py: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    per: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    for _ in range(SLICES):
        for name, address, port in paths:
            result = await probe(pid, "http", address, str(port), str(batch))
            assert result["ok"] == batch, f"{name}: {result['ok']} of {batch} answered"
            assert isinstance(result["total"], float) and isinstance(result["took"], list)
            py[name].append(result["total"] / batch)
            per[name] += result["took"]
    py_direct = statistics.median(py["direct"])
    p50_direct = statistics.median(per["direct"])
    say("    (ratios to direct: of req/s (median batch), and of the p50 latency, which a")
    say("    busy machine disturbs less)")
    for name, _, _ in paths:
        each = statistics.median(py[name])
        took = sorted(per[name])
        p50 = took[len(took) // 2]
        say(
            f"    {name:22s} {1 / each:7.0f} req/s  p50 {ms(p50)}  "
            f"p99 {ms(took[int(0.99 * len(took))])}  ratio req/s {py_direct / each:4.2f}  "
            f"ratio p50 {p50_direct / p50:4.2f}"
        )

    # bulk
    mb = args.bulk_mb
    await run(
        "docker", "exec", replica, "dd", "if=/dev/zero", "of=/www/big", "bs=1M", f"count={mb}",
        engine=replica_engine,
    )  # fmt: skip
    size = mb * 1024 * 1024
    say("")
    say(
        f"2c. bulk: GET of a {mb} MiB file from httpd, {BULK_ROUNDS} interleaved rounds: "
        "MiB/s of the median round (of the best)"
    )
    bulk_nc: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    bulk_py: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    for name, address, port in paths:  # check once that the whole file comes through
        fetch = f"printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {address} {port} | wc -c"
        got = int((await run("docker", "exec", client, "sh", "-c", fetch)).strip())
        assert got > size, f"{name}: {got} bytes"
    for _ in range(BULK_ROUNDS):
        for name, address, port in paths:
            fetch = f"printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {address} {port} >/dev/null"
            wall, _ = await timed(*inside, fetch)
            bulk_nc[name].append(wall - exec_cost)
            result = await probe(pid, "bulk", address, str(port))
            assert isinstance(result["bytes"], int) and result["bytes"] > size, result
            assert isinstance(result["seconds"], float)
            bulk_py[name].append(result["seconds"])
    nc_direct = statistics.median(bulk_nc["direct"])
    py_bulk_direct = statistics.median(bulk_py["direct"])
    for name, _, _ in paths:
        a, b = statistics.median(bulk_nc[name]), statistics.median(bulk_py[name])
        best_a, best_b = min(bulk_nc[name]), min(bulk_py[name])
        say(
            f"    {name:22s} nc {mb / a:5.0f} ({mb / best_a:5.0f}) MiB/s ratio {nc_direct / a:4.2f}"
            f"   Python {mb / b:5.0f} ({mb / best_b:5.0f}) MiB/s ratio {py_bulk_direct / b:4.2f}"
        )

    # DNS
    q = args.dns_queries
    say("")
    say(
        f"3. DNS: A web.default.svc.cluster.local. from the client's network namespace, {q} queries"
    )
    for server, label in (
        ("127.0.0.11", "Docker's resolver 127.0.0.11 -> node DNS"),
        (slice_one.gateway, f"node DNS at the gateway {slice_one.gateway}"),
    ):
        result = await probe(
            pid, "dns", server, "web.default.svc.cluster.local.", str(q), web.cluster_ip
        )
        answered = result["took"]
        assert isinstance(answered, list) and len(answered) == q, result
        assert result["lost"] == 0 and result["wrong"] == 0, result
        ordered = sorted(float(t) for t in answered)
        say(
            f"    {label:42s} p50 {ms(ordered[q // 2])}  p99 {ms(ordered[int(0.99 * q)])}  "
            f"max {ms(ordered[-1])}"
        )


# --- the whole ---------------------------------------------------------------------------


async def bench(
    nats_url: str, second_host: str, args: argparse.Namespace, lines: list[str], marks: list[str]
) -> None:
    say = lines.append
    async with two_nodes(nats_url, second_host, marks) as cluster:
        one, two = cluster.one, cluster.two
        nodes = [one, two]
        buckets = cluster.buckets
        seen = Seen()
        async with anyio.create_task_group() as watches:
            watches.start_soon(follow, buckets, seen)
            await cli(
                nats_url, "create", "deployment", "web", f"--image={IMAGE}",
                "--replicas=1", "--port=8080", "--", "sh", "-c", HTTPD,
            )  # fmt: skip
            await cli(
                nats_url, "expose", "deployment", "web", "--type=NodePort",
                "--port=80", "--target-port=8080",
            )  # fmt: skip
            await settled(seen, nodes, 1)

            samples = Samples()
            async with await CorralClient.connect(nats_url, name="bench") as client:
                for _ in range(args.rounds):
                    await propagation_round(client, seen, nodes, [second_host, None], samples)
            say("1. endpoint propagation: event -> in force on both nodes")
            say(f"    ready      {percentiles(samples.ready)}")
            say(f"    kill       {percentiles(samples.kill)}")
            say(f"    ready+kill {percentiles(samples.ready + samples.kill)}")
            say(f"    scale-down {percentiles(samples.down)}  (from the request)")
            say("    (Kubernetes' conformance test allows p50 20 s, p90 50 s)")

            await settled(seen, nodes, 1)
            entry = await buckets[names.ENDPOINTS_BUCKET].get(SERVICE_KEY)
            assert entry is not None and entry.value is not None
            web = decode(entry.value, Endpoints)
            await paths_and_dns(
                nats_url, args, one, cluster.cluster, web, cluster.slice_one,
                cluster.engines, cluster.clients, lines,
            )  # fmt: skip
            await cli(nats_url, "delete", "service", "web")
            await cli(nats_url, "delete", "deployment", "web")
            watches.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="propagation rounds (7 samples each)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--bulk-mb", type=int, default=50)
    parser.add_argument("--dns-queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "network.txt")
    run_bench(
        "bench/bench_network.py",
        parser.parse_args(),
        bench,
        IMAGE,
        "corral-bench-net-",
        "corral-n2-",
    )


if __name__ == "__main__":
    main()
