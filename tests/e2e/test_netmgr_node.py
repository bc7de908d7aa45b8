"""netmgr's node part on the local Docker engine (docs/networking.md): Docker networks,
isolation, Services through the kernel, --remove-all.

The test writes the cluster part's records itself (NetworkStatus, NetworkSlice,
Endpoints), runs the node part in-process on a real nats-server, and makes its own
busybox containers on the corral Docker networks. Every test leaves `iptables-save`,
`ip route` and `docker network ls` as it found them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import msgspec
import pytest
from prometheus_client import REGISTRY

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_state import (
    EndpointAddress,
    EndpointPort,
    Endpoints,
    NetworkSlice,
    NetworkStatus,
    NodeNetwork,
)
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext, base_parser, run_service
from corral_netmgr import node as node_part
from tests.e2e.second_engine import second_engine
from tests.waiting import eventually

pytestmark = pytest.mark.docker


def sh(
    *argv: str, check: bool = True, engine: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; `engine`: the DOCKER_HOST its docker commands talk to."""
    env = None if engine is None else {**os.environ, "DOCKER_HOST": engine}
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60, env=env)


def host_state() -> dict[str, list[str]]:
    """What a test must leave as it found: the packet filter (without counters), the
    routes, the Docker networks."""
    saved = sh("iptables-save").stdout
    rules = sorted(
        re.sub(r"\[\d+:\d+\]", "", line)
        for line in saved.splitlines()
        if line and not line.startswith("#")
    )
    return {
        "iptables": rules,
        # without "linkdown": a bridge's carrier follows whether any container is on it
        "routes": sorted(
            line.replace(" linkdown", "") for line in sh("ip", "route").stdout.splitlines()
        ),
        "networks": sorted(sh("docker", "network", "ls", "--format", "{{.Name}}").stdout.split()),
    }


@dataclass
class Guard:
    """What this test made, by the names it shows in `iptables-save`, `ip route` and
    `docker network ls` (its chain prefix, cluster id, bridges, subnets)."""

    marks: list[str]

    def ours(self, line: str) -> bool:
        return any(mark in line for mark in self.marks)


@pytest.fixture
def unchanged_host(docker_engine: str) -> Iterator[Guard]:
    """After the test the host is as before. Other corral tests may run at the same time
    on this machine (their bridges `crl...`, networks `corral_...`): their lines are
    the only difference allowed, and nothing of this test's may be left."""
    guard = Guard([])
    before = host_state()
    yield guard
    after = host_state()
    for kind in before:
        changed = set(before[kind]) ^ set(after[kind])
        assert not [line for line in changed if guard.ours(line)], kind
        assert not [line for line in after[kind] if guard.ours(line)], kind
        foreign = [line for line in changed if "crl" not in line.lower() and "corral_" not in line]
        assert not foreign, (kind, foreign)


def parser() -> argparse.ArgumentParser:
    """The node part's command line as main.py makes it (--node, --docker-host)."""
    made = base_parser("netmgr", 0)
    made.add_argument("--node", default="")
    made.add_argument("--docker-host")
    node_part.add_arguments(made)
    return made


@asynccontextmanager
async def running_node_part(nats_url: str, node: str, *flags: str) -> AsyncIterator[ServiceContext]:
    args = parser().parse_args(
        ["--nats", nats_url, "--metrics-port", "0", "--node", node, "--node-resync-seconds", "2",
         *flags]
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        ctx: ServiceContext = await tg.start(run_service, "netmgr", node_part.run, args)
        try:
            yield ctx
        finally:
            tg.cancel_scope.cancel()


async def remove_all(nats_url: str, node: str, *flags: str) -> None:
    args = parser().parse_args(
        ["--nats", nats_url, "--metrics-port", "0", "--node", node, "--remove-all", *flags]
    )
    with anyio.fail_after(60):
        await run_service("netmgr", node_part.run, args)


@dataclass
class Net:
    name: str
    subnet: str  # the whole range
    slice: str
    gateway: str


def two_networks() -> tuple[Net, Net]:
    """Two ranges nothing on this host uses (10.2xx.0.0/16), one /24 slice each."""
    taken = sh("ip", "route").stdout
    octets = [o for o in range(200, 250) if f"10.{o}." not in taken]
    a, b = random.sample(octets, 2)
    return (
        Net("red", f"10.{a}.0.0/16", f"10.{a}.3.0/24", f"10.{a}.3.1"),
        Net("blue", f"10.{b}.0.0/16", f"10.{b}.3.0/24", f"10.{b}.3.1"),
    )


async def put(bucket: NatsBucket, key: str, value: object) -> int:
    return await bucket.put(key, encode(value))


async def add_network(buckets: dict[str, NatsBucket], net: Net, node: str) -> None:
    await put(
        buckets[names.NETWORK_STATUS_BUCKET],
        net.name,
        NetworkStatus(name=net.name, subnet=net.subnet, slice_prefix=24),
    )
    await put(
        buckets[names.NETWORK_SLICES_BUCKET],
        f"{net.name}.{node}",
        NetworkSlice(network=net.name, node=node, subnet=net.slice, gateway=net.gateway),
    )


def docker_network(name: str, engine: str | None = None) -> dict[str, object] | None:
    done = sh(
        "docker", "network", "inspect", name, "--format", "{{json .}}", check=False, engine=engine
    )
    if done.returncode != 0:
        return None
    found: dict[str, object] = json.loads(done.stdout)
    return found


def container(
    image: str, node: str, network: str, name: str, *command: str, engine: str | None = None
) -> str:
    """A test container on `network`, labelled as `node`'s (removed with the node)."""
    run = sh(
        "docker", "run", "-d", "--name", name, "--hostname", name, "--network", network,
        "--label", f"{names.LABEL_NODE}={node}", image, *command, engine=engine,
    )  # fmt: skip
    return run.stdout.strip()


def httpd(image: str, node: str, network: str, name: str, engine: str | None = None) -> str:
    return container(
        image, node, network, name,
        "sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www",
        engine=engine,
    )  # fmt: skip


def ip_of(name: str, network: str, engine: str | None = None) -> str:
    fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return sh("docker", "inspect", "-f", fmt, name, engine=engine).stdout.strip()


def fetch(
    client: str, address: str, port: int = 80, timeout: int = 5, engine: str | None = None
) -> tuple[bool, str, float]:
    """An HTTP GET from inside `client` (busybox nc): (worked, body or error, seconds)."""
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {timeout} {address} {port}"
    started = time.monotonic()
    done = sh("docker", "exec", client, "sh", "-c", request, check=False, engine=engine)
    took = time.monotonic() - started
    if done.returncode == 0 and " 200 " in done.stdout.split("\n", 1)[0]:
        return True, done.stdout.split("\n\n", 1)[-1].strip(), took  # text mode: \r\n read as \n
    return False, (done.stderr or done.stdout).strip(), took


async def read_record(bucket: NatsBucket, node: str) -> NodeNetwork | None:
    entry = await bucket.get(node)
    return None if entry is None or entry.value is None else decode(entry.value, NodeNetwork)


def rules_applied(node: str) -> float:
    return (
        REGISTRY.get_sample_value("corral_netmgr_node_rules_applied_total", {"node": node}) or 0.0
    )


def remove_containers(*names_: str, engine: str | None = None) -> None:
    if names_:
        sh("docker", "rm", "-f", *names_, check=False, engine=engine)


async def test_a_slice_makes_a_labelled_docker_network_and_the_node_reports_its_network(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    unchanged_host: Guard,
) -> None:
    red, blue = two_networks()
    try:
        async with running_node_part(nats_url, node_name) as ctx:
            cluster = ctx.cluster.id
            unchanged_host.marks += [cluster, names.chain_prefix(cluster, node_name)]
            unchanged_host.marks += [red.slice, blue.slice]
            for net in (red, blue):
                await add_network(buckets, net, node_name)
            red_name = names.docker_network_name("red", cluster)
            blue_name = names.docker_network_name("blue", cluster)
            shown = await eventually(
                lambda: anyio.to_thread.run_sync(docker_network, red_name),
                lambda found: found is not None,
            )
            assert shown is not None
            assert shown["Driver"] == "bridge"
            assert shown["IPAM"]["Config"] == [  # type: ignore[index]
                {"Subnet": red.slice, "Gateway": red.gateway}
            ]
            assert shown["Options"] == {  # type: ignore[comparison-overlap, unused-ignore]
                "com.docker.network.bridge.name": names.bridge_name("red", node_name, cluster)
            }
            assert shown["Labels"] == {
                names.LABEL_MANAGED: "true",
                names.LABEL_CLUSTER: cluster,
                names.LABEL_NETWORK: "red",
                names.LABEL_NODE: node_name,
            }
            record = await eventually(
                lambda: read_record(buckets[names.NODE_NETWORK_BUCKET], node_name),
                lambda r: r is not None and r.ready,
            )
            assert record is not None
            assert record.host_id == sh("cat", "/etc/machine-id").stdout.strip()
            default = sh("ip", "-j", "route", "show", "default").stdout
            assert record.address and record.address in sh("ip", "-4", "addr").stdout
            assert default  # the address came from the default route
            assert "172.17.0.0/16" in record.used_ranges  # Docker's default bridge: not corral's
            assert red.slice not in record.used_ranges and blue.slice not in record.used_ranges
            revision = record.updated_at
            # nothing changed: the record is not written again
            applied = rules_applied(node_name)
            await eventually(  # two resyncs (every 2 s here) applied the rules again
                lambda: anyio.to_thread.run_sync(rules_applied, node_name),
                lambda now: now >= applied + 2,
            )
            again = await read_record(buckets[names.NODE_NETWORK_BUCKET], node_name)
            assert again is not None
            # written again only if something changed (other tests on this machine may
            # make or remove Docker networks meanwhile: used ranges)
            assert again.updated_at == revision or again.used_ranges != record.used_ranges

            # a container keeps a network whose slice is gone until it leaves
            user = f"crl-test-{node_name}"
            container("corral-test/busybox:1", node_name, blue_name, user, "sleep", "300")
            stopped = f"crl-test-{node_name}-stopped"  # Docker lists it in no `Containers`
            label = f"{names.LABEL_NODE}={node_name}"
            sh("docker", "create", "--name", stopped, "--network", blue_name,
               "--label", label, "corral-test/busybox:1", "true")  # fmt: skip
            await buckets[names.NETWORK_SLICES_BUCKET].delete(f"blue.{node_name}")
            record = await eventually(
                lambda: read_record(buckets[names.NODE_NETWORK_BUCKET], node_name),
                lambda r: r is not None and not r.ready and user in r.message,
            )
            assert docker_network(blue_name) is not None
            remove_containers(user)
            await eventually(  # the stopped container alone keeps the network
                lambda: read_record(buckets[names.NODE_NETWORK_BUCKET], node_name),
                lambda r: (
                    r is not None
                    and f"{stopped} (created)" in r.message
                    and f"{user} (running)" not in r.message
                ),
            )
            assert docker_network(blue_name) is not None
            sh("docker", "start", "-a", stopped)  # it can still start: its network is there
            remove_containers(stopped)
            await eventually(
                lambda: anyio.to_thread.run_sync(docker_network, blue_name),
                lambda found: found is None,
            )
            await eventually(
                lambda: read_record(buckets[names.NODE_NETWORK_BUCKET], node_name),
                lambda r: r is not None and r.ready,
            )
            assert docker_network(red_name) is not None

            # a jump gone (Docker rewrote its chains): back at the next resync
            fwd = f"{names.chain_prefix(cluster, node_name)}-FWD"
            sh("iptables", "-D", "DOCKER-USER", "-j", fwd)
            await eventually(
                lambda: anyio.to_thread.run_sync(
                    partial(sh, "iptables", "-C", "DOCKER-USER", "-j", fwd, check=False)
                ),
                lambda done: done.returncode == 0,
            )
    finally:
        remove_containers(f"crl-test-{node_name}", f"crl-test-{node_name}-stopped")
        await remove_all(nats_url, node_name)


async def test_isolation_services_node_ports_and_remove_all_on_a_real_engine(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    test_image: str,
    unchanged_host: Guard,
) -> None:
    red, blue = two_networks()
    made: list[str] = []
    prefix = cluster = ""
    try:
        async with running_node_part(nats_url, node_name) as ctx:
            cluster = ctx.cluster.id
            prefix = names.chain_prefix(cluster, node_name)
            unchanged_host.marks += [prefix, cluster, red.slice, blue.slice]
            unchanged_host.marks += [
                names.bridge_name(n, node_name, cluster) for n in ("red", "blue")
            ]
            for net in (red, blue):
                await add_network(buckets, net, node_name)
            red_name = names.docker_network_name("red", cluster)
            blue_name = names.docker_network_name("blue", cluster)
            for name in (red_name, blue_name):
                await eventually(
                    lambda name=name: anyio.to_thread.run_sync(docker_network, name),  # type: ignore[misc]
                    lambda found: found is not None,
                )
            tag = node_name[-6:]
            web_a, web_b = f"web-a-{tag}", f"web-b-{tag}"
            client, other = f"client-{tag}", f"other-{tag}"
            for name, on in ((web_a, red_name), (web_b, red_name), (other, blue_name)):
                made.append(name)
                httpd(test_image, node_name, on, name)
            made.append(client)
            container(test_image, node_name, red_name, client, "sleep", "600")
            a_ip, b_ip = ip_of(web_a, red_name), ip_of(web_b, red_name)
            other_ip = ip_of(other, blue_name)

            async def get(source: str, address: str, port: int) -> tuple[bool, str, float]:
                return await anyio.to_thread.run_sync(fetch, source, address, port)

            # the same network: reachable (once httpd listens)
            for source, target, name in ((client, a_ip, web_a), (web_b, a_ip, web_a)):
                result = await eventually(
                    lambda s=source, t=target: get(s, t, 8080),  # type: ignore[misc]
                    lambda r: r[0],
                )
                assert result[1] == name
            await eventually(lambda: get(client, other_ip, 8080), lambda r: "refused" not in r[1])

            # two networks: rejected at once (not dropped: no hang), both ways
            for source, target in ((client, other_ip), (other, a_ip)):
                worked, said, took = await get(source, target, 8080)
                assert not worked and took < 3 and "No route to host" in said, (said, took)

            # Services: written as the cluster part would
            endpoints_bucket = buckets[names.ENDPOINTS_BUCKET]
            vip, solo_vip, empty_vip, node_port = (
                "10.96.231.10",
                "10.96.231.12",
                "10.96.231.11",
                31234,
            )
            web = Endpoints(
                service="web",
                cluster_ip=vip,
                type="NodePort",
                network="red",
                ports=[EndpointPort(port=80, target_port=8080, node_port=node_port)],
                addresses=[
                    EndpointAddress(ip=a_ip, replica=web_a, node=node_name),
                    EndpointAddress(ip=b_ip, replica=web_b, node=node_name),
                ],
            )
            solo = Endpoints(
                service="solo",
                cluster_ip=solo_vip,
                network="red",
                ports=[EndpointPort(port=80, target_port=8080)],
                addresses=[EndpointAddress(ip=a_ip, replica=web_a, node=node_name)],
            )
            empty = Endpoints(
                service="empty",
                cluster_ip=empty_vip,
                network="red",
                ports=[EndpointPort(port=80, target_port=8080)],
            )
            for record in (web, solo):
                await put(endpoints_bucket, record.key, record)
            written = await put(endpoints_bucket, empty.key, empty)
            await eventually(
                lambda: read_record(buckets[names.NODE_NETWORK_BUCKET], node_name),
                lambda r: r is not None and r.endpoints_revision >= written,
            )

            def answers(address: str, port: int, count: int, source: str = client) -> list[str]:
                seen = []
                for _ in range(count):
                    worked, body, _ = fetch(source, address, port)
                    seen.append(body if worked else f"failed: {body}")
                return seen

            # the VIP balances over both endpoints
            seen = await anyio.to_thread.run_sync(answers, vip, 80, 30)
            assert set(seen) == {web_a, web_b}, seen
            # a NodePort on the host's address on the bridge (the gateway)
            seen = await anyio.to_thread.run_sync(answers, red.gateway, node_port, 20)
            assert set(seen) == {web_a, web_b}, seen

            # the VIP from the node itself
            def from_host(url: str) -> str:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return str(response.read().decode().strip())

            assert await anyio.to_thread.run_sync(from_host, f"http://{vip}/") in (web_a, web_b)
            # the node port on the node's own address, from the node; not on 127.0.0.1
            # (that would need route_localnet: docs/networking.md)
            reported = await read_record(buckets[names.NODE_NETWORK_BUCKET], node_name)
            assert reported is not None and reported.address
            own = reported.address  # the default route's source address
            assert await anyio.to_thread.run_sync(from_host, f"http://{own}:{node_port}/") in (
                web_a,
                web_b,
            )
            with pytest.raises(OSError, match="refused"):
                await anyio.to_thread.run_sync(from_host, f"http://127.0.0.1:{node_port}/")
            # a replica balanced to itself (hairpin)
            assert await anyio.to_thread.run_sync(answers, solo_vip, 80, 3, web_a) == [web_a] * 3
            # isolation holds through the VIP
            worked, said, took = await get(other, vip, 80)
            assert not worked and took < 3, (said, took)
            # no endpoints: refused at once
            worked, said, took = await get(client, empty_vip, 80)
            assert not worked and took < 3 and "refused" in said, (said, took)
            # a port the Service does not serve: refused at once too (it left by the
            # host's default route). The rule is looked for first: a regression sends
            # nothing off the host.
            rules = sh("iptables-save", "-t", "filter").stdout
            assert f"-d {vip}/32 -j REJECT --reject-with icmp-port-unreachable" in rules
            worked, said, took = await get(client, vip, 81)
            assert not worked and took < 3 and "refused" in said, (said, took)
            # the DNS server on the gateway answers the Service's name
            # (in a thread: the server runs on this test's event loop)
            lookup = ("docker", "exec", client, "nslookup", "web.default.svc.cluster.local")
            looked_up = await anyio.to_thread.run_sync(
                partial(sh, *lookup, red.gateway, check=False)
            )
            assert vip in looked_up.stdout, looked_up
            # UDP through a VIP: a Service on port 53 whose endpoint is that DNS server
            udp_vip = "10.96.231.13"
            udp = Endpoints(
                service="udp",
                cluster_ip=udp_vip,
                network="red",
                ports=[EndpointPort(port=53, target_port=53, protocol="UDP")],
                addresses=[EndpointAddress(ip=red.gateway, replica="dns", node=node_name)],
            )
            written = await put(endpoints_bucket, udp.key, udp)
            await eventually(
                lambda: read_record(buckets[names.NODE_NETWORK_BUCKET], node_name),
                lambda r: r is not None and r.endpoints_revision >= written,
            )
            looked_up = await anyio.to_thread.run_sync(partial(sh, *lookup, udp_vip, check=False))
            assert vip in looked_up.stdout, looked_up

            # an endpoint gone: no more requests to it
            web_one = msgspec.structs.replace(web, addresses=web.addresses[1:])
            written = await put(endpoints_bucket, web.key, web_one)
            await eventually(
                lambda: read_record(buckets[names.NODE_NETWORK_BUCKET], node_name),
                lambda r: r is not None and r.endpoints_revision >= written,
            )
            seen = await anyio.to_thread.run_sync(answers, vip, 80, 10)
            assert set(seen) == {web_b}, seen
            assert prefix in sh("iptables-save").stdout
        # The node part stopped first, as `corral down` stops it (a running one puts its
        # rules back, racing the removal: a chain still jumped to cannot be deleted).
        # Replicas left running (a plain `corral down`): --remove-all removes the
        # node's rules and leaves the networks they are on, and does not fail.
        await remove_all(nats_url, node_name)
        assert prefix not in sh("iptables-save").stdout
        listed = sh("docker", "network", "ls", "--format", "{{.Name}}").stdout
        assert cluster and cluster in listed, listed
    finally:
        remove_containers(*made)
        await remove_all(nats_url, node_name)
    assert prefix and prefix not in sh("iptables-save").stdout
    listed = sh("docker", "network", "ls", "--format", "{{.Name}}").stdout
    assert cluster and cluster not in listed, listed


@pytest.fixture
def second_host(test_image: str) -> Iterator[str]:
    # a short path: the engine's unix socket path must stay under ~100 bytes
    root = Path(tempfile.mkdtemp(prefix="corral-n2-", dir="/tmp"))
    with second_engine(root, test_image) as host:
        yield host


async def test_two_nodes_on_one_host_join_their_networks_keep_isolation_and_their_own_chains(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    test_image: str,
    second_host: str,
    unchanged_host: Guard,
) -> None:
    red, blue = two_networks()
    one, two = node_name, f"{node_name}-b"
    # node two's slices: the next /24 of each range
    red_two = Net(
        "red", red.subnet, red.slice.replace(".3.0/", ".4.0/"), red.gateway.replace(".3.1", ".4.1")
    )
    blue_two = Net(
        "blue",
        blue.subnet,
        blue.slice.replace(".3.0/", ".4.0/"),
        blue.gateway.replace(".3.1", ".4.1"),
    )
    made_one: list[str] = []
    made_two: list[str] = []
    prefixes: list[str] = []
    try:
        async with (
            running_node_part(nats_url, one) as ctx,
            running_node_part(nats_url, two, "--docker-host", second_host),
        ):
            cluster = ctx.cluster.id
            prefixes += [names.chain_prefix(cluster, one), names.chain_prefix(cluster, two)]
            unchanged_host.marks += [cluster, *prefixes]
            unchanged_host.marks += [n.slice for n in (red, blue, red_two, blue_two)]
            for net in (red, blue):
                await add_network(buckets, net, one)
            for net in (red_two, blue_two):
                await add_network(buckets, net, two)
            red_name = names.docker_network_name("red", cluster)
            blue_name = names.docker_network_name("blue", cluster)
            for name, engine in (
                (red_name, None),
                (blue_name, second_host),
                (red_name, second_host),
            ):
                await eventually(
                    lambda n=name, e=engine: anyio.to_thread.run_sync(docker_network, n, e),  # type: ignore[misc]
                    lambda found: found is not None,
                )
            records = buckets[names.NODE_NETWORK_BUCKET]
            for node in (one, two):
                record = await eventually(
                    lambda n=node: read_record(records, n),  # type: ignore[misc]
                    lambda r: r is not None and r.ready,
                )
                assert record is not None and record.host_id
            tag = node_name[-6:]
            client = f"client-{tag}"
            made_one.append(client)
            container(test_image, one, red_name, client, "sleep", "600")
            web_two, other_two = f"web-two-{tag}", f"other-two-{tag}"
            made_two += [web_two, other_two]
            httpd(test_image, two, red_name, web_two, engine=second_host)
            httpd(test_image, two, blue_name, other_two, engine=second_host)
            web_ip = ip_of(web_two, red_name, second_host)
            other_ip = ip_of(other_two, blue_name, second_host)
            assert web_ip.startswith(red_two.slice.rsplit(".", 1)[0])
            # the same network across nodes (two bridges of one host): reachable
            result = await eventually(
                lambda: anyio.to_thread.run_sync(fetch, client, web_ip, 8080),
                lambda r: r[0],
            )
            assert result[1] == web_two
            # another network on the other node: rejected at once, both ways
            worked, said, took = await anyio.to_thread.run_sync(fetch, client, other_ip, 8080)
            assert not worked and took < 3 and "No route to host" in said, (said, took)
            client_ip = ip_of(client, red_name)
            worked, said, took = await anyio.to_thread.run_sync(
                partial(fetch, other_two, client_ip, 8080, engine=second_host)
            )
            assert not worked and took < 3 and "No route to host" in said, (said, took)
            # nodes of one host need no route
            assert sh("ip", "route", "show", "proto", "182").stdout.strip() == ""
    finally:
        remove_containers(*made_one)
        remove_containers(*made_two, engine=second_host)
        await remove_all(nats_url, one)
    # each node owns its chains: removing one node's leaves the other's
    saved = sh("iptables-save").stdout
    if prefixes:
        assert prefixes[0] not in saved and prefixes[1] in saved
    await remove_all(nats_url, two, "--docker-host", second_host)
    assert not any(p in sh("iptables-save").stdout for p in prefixes)
