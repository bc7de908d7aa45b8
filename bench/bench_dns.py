"""The node part's DNS server (corral_netmgr.node.dns) under load, on loopback only.

    .venv/bin/python bench/bench_dns.py [--services 1000] [--queries 20000] [--in-flight 4]
                                        [--forwarded 5000] [--out bench/results/dns.txt]

Starts, each in its own process (so that the client's work is not counted as the
server's): the DNS server on 127.0.0.1 (a free port) with `--services` Services in 10
namespaces (every 10th headless, with 3 endpoints), and a fake upstream resolver on
127.0.0.1 that answers every A question at once. Then fires queries over UDP from this
process, `--in-flight` at a time (each worker sends one, waits for its answer, sends the
next), and prints per kind of query the answers/s, the latency (send to answer, as the
client sees it) p50/p99/max, and the server process's CPU time per answer (user + system,
from /proc: what the answers cost, whatever else the machine runs):

  A, clusterIP     <service>.<namespace>.svc.cluster.local.  (random Service)
  A, headless      <service>.<namespace>.svc.cluster.local.  (3 addresses)
  A, bare name     <service>.                                  (unexpanded)
  NXDOMAIN         nope-<n>.<namespace>.svc.cluster.local.
  forwarded        www-<n>.example.com. -> the fake upstream  (--forwarded of them)

and the server's resident memory (VmRSS) with the Services loaded. Each answer's rcode
and id are checked; a query unanswered within 2 s counts as lost.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import struct
import time
from multiprocessing.connection import Connection
from pathlib import Path

from dnslib import QTYPE, RR, A, DNSRecord

from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints

NAMESPACES = 10
TIMEOUT = 2.0
WARMUP = 500
NOERROR, NXDOMAIN = 0, 3


def endpoints(count: int) -> list[Endpoints]:
    records = []
    for i in range(count):
        headless = i % 10 == 9
        records.append(
            Endpoints(
                service=f"svc-{i}",
                namespace=f"ns-{i % NAMESPACES}",
                cluster_ip="None" if headless else f"10.96.{i // 250}.{i % 250 + 1}",
                ports=[EndpointPort(port=80, target_port=8080, name="http")],
                addresses=[
                    EndpointAddress(
                        ip=f"10.{128 + j}.{i // 250}.{i % 250 + 1}", replica=f"r{j}", node="n"
                    )
                    for j in range(3)
                ]
                if headless
                else [],
            )
        )
    return records


# --- the processes under test -----------------------------------------------------------


def run_server(services: int, upstream_port: int, pipe: Connection) -> None:
    from corral_netmgr.node.dns import DnsServer, ServiceDirectory

    async def main() -> None:
        directory = ServiceDirectory(endpoints(services))
        server = DnsServer(directory, [("127.0.0.1", upstream_port)])
        await server.start([("127.0.0.1", 0)])
        pipe.send(server.bound[0][1])
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told
        await server.close()

    asyncio.run(main())


class _Upstream(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = DNSRecord.parse(data)
        reply = query.reply()
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        self.transport.sendto(reply.pack(), addr)


def run_upstream(pipe: Connection) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
        pipe.send(transport.get_extra_info("sockname")[1])
        await loop.run_in_executor(None, pipe.recv)
        transport.close()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the client ------------------------------------------------------------------------------


class Client(asyncio.DatagramProtocol):
    """One UDP socket; replies matched to their query by id."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) >= 4:
            future = self.waiting.pop(struct.unpack_from("!H", data)[0], None)
            if future is not None and not future.done():
                future.set_result(data)

    async def ask(self, template: bytes) -> bytes | None:
        while self.next_id in self.waiting:
            self.next_id = (self.next_id + 1) % 65536
        ident = self.next_id
        self.next_id = (self.next_id + 1) % 65536
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[ident] = future
        self.transport.sendto(struct.pack("!H", ident) + template[2:])
        try:
            async with asyncio.timeout(TIMEOUT):
                return await future
        except TimeoutError:
            self.waiting.pop(ident, None)
            return None


class Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.lost = 0
        self.wrong = 0
        self.elapsed = 0.0
        self.server_cpu = 0.0

    def line(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return f"  {self.name:<16} no answers ({self.lost} lost)"
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        rate = len(lat) / self.elapsed
        cpu = self.server_cpu / len(lat) * 1e6
        return (
            f"  {self.name:<16} {len(lat):>7,} {rate:>10,.0f} {p50:>8.3f} ms {p99:>8.3f} ms "
            f"{lat[-1] * 1000:>8.2f} ms {cpu:>7.0f} us {self.lost:>5} {self.wrong:>6}"
        )


async def fire(
    pid: int,
    client: Client,
    name: str,
    templates: list[bytes],
    rcode: int,
    answers: int,
    n: int,
    in_flight: int,
) -> Result:
    result = Result(name)
    rng = random.Random(name)
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            reply = await client.ask(rng.choice(templates))
            if reply is None:
                result.lost += 1
                continue
            result.latencies.append(time.perf_counter() - started)
            got_rcode = reply[3] & 0x0F
            got_answers = struct.unpack_from("!H", reply, 6)[0]
            if got_rcode != rcode or got_answers != answers:
                result.wrong += 1

    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    result.elapsed = time.perf_counter() - started
    result.server_cpu = cpu_seconds(pid) - cpu
    return result


def pack(name: str) -> bytes:
    packed: bytes = DNSRecord.question(name, "A").pack()
    return packed


async def measure(pid: int, port: int, args: argparse.Namespace) -> list[Result]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    services = args.services
    cluster = [
        pack(f"svc-{i}.ns-{i % NAMESPACES}.svc.cluster.local.")
        for i in range(services)
        if i % 10 != 9
    ]
    headless = [
        pack(f"svc-{i}.ns-{i % NAMESPACES}.svc.cluster.local.")
        for i in range(services)
        if i % 10 == 9
    ]
    bare = [pack(f"svc-{i}.") for i in range(services) if i % 10 != 9]
    missing = [pack(f"nope-{i}.ns-{i % NAMESPACES}.svc.cluster.local.") for i in range(1000)]
    outside = [pack(f"www-{i}.example.com.") for i in range(1000)]
    try:
        await fire(pid, client, "warmup", cluster, NOERROR, 1, WARMUP, args.in_flight)
        return [
            await fire(
                pid, client, "A, clusterIP", cluster, NOERROR, 1, args.queries, args.in_flight
            ),
            await fire(
                pid, client, "A, headless", headless, NOERROR, 3, args.queries, args.in_flight
            ),
            await fire(pid, client, "A, bare name", bare, NOERROR, 1, args.queries, args.in_flight),
            await fire(pid, client, "NXDOMAIN", missing, NXDOMAIN, 0, args.queries, args.in_flight),
            await fire(
                pid, client, "forwarded", outside, NOERROR, 1, args.forwarded, args.in_flight
            ),
        ]
    finally:
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=20000, help="per kind of local query")
    parser.add_argument("--forwarded", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="also write the output here")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    upstream_pipe, upstream_end = ctx.Pipe()
    upstream = ctx.Process(target=run_upstream, args=(upstream_end,), daemon=True)
    upstream.start()
    upstream_port = upstream_pipe.recv()
    server_pipe, server_end = ctx.Pipe()
    server = ctx.Process(
        target=run_server, args=(args.services, upstream_port, server_end), daemon=True
    )
    server.start()
    try:
        port = server_pipe.recv()
        assert server.pid is not None
        rss_loaded = rss_mib(server.pid)
        results = asyncio.run(measure(server.pid, port, args))
        rss_after = rss_mib(server.pid)
    finally:
        for pipe, process in ((server_pipe, server), (upstream_pipe, upstream)):
            pipe.send("stop")
            process.join(10)
            if process.is_alive():
                process.kill()
    lines = [
        f"DNS server on 127.0.0.1, {args.services} Services ({args.services // 10} headless), "
        f"UDP, {args.in_flight} in flight, one client process; {os.cpu_count()} cores",
        f"  {'query':<16} {'answers':>7} {'answers/s':>10} {'p50':>11} {'p99':>11} "
        f"{'max':>11} {'srv CPU/q':>10} {'lost':>5} {'wrong':>6}",
        *(result.line() for result in results),
        f"server resident memory (VmRSS): {rss_loaded:.1f} MiB with the Services loaded, "
        f"{rss_after:.1f} MiB after the run",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
