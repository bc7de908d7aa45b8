"""The whole of issue 8 through every real piece: the scheduler, netmgr's cluster part,
two node agents on two Docker engines (the local one and a second dockerd), netmgr's
node part beside each, and the CLI. A client container on node one reaches a Service
of four replicas spread over both nodes by DNS name, by VIP and by node port; a headless
Service resolves to the replicas; a container on another network reaches none of it; a
killed replica leaves the endpoints; a Service scaled to zero refuses at once; and the
host is left as it was.

Traffic goes only to the test's own containers, the engines' bridges and the host's own
addresses on them.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.network_state import Endpoints, NetworkSlice, NodeNetwork
from corral.natsio.kv import NatsBucket
from tests.agents import running_agent
from tests.e2e.conftest import AgentFactory
from tests.e2e.second_engine import BRIDGE_ADDRESS
from tests.e2e.test_deployment_lifecycle import corral
from tests.e2e.test_netmgr_node import (
    Guard,
    remove_all,
    remove_containers,
    running_node_part,
    second_host,
    sh,
    unchanged_host,
)
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker

__all__ = ["second_host", "unchanged_host"]  # fixtures, used by name

HTTPD = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
REQUESTS = 200


async def ok(nats_url: str, *args: str) -> str:
    result = await corral(nats_url, *args)
    return result.stdout


async def record(bucket: NatsBucket, key: str, kind: type) -> object | None:
    entry = await bucket.get(key)
    return None if entry is None or entry.value is None else decode(entry.value, kind)


def running_names(deployment: str, engine: str | None) -> dict[str, str]:
    """container hostname -> container id, of the running replicas on one engine."""
    ids = sh(
        "docker", "ps", "-q", "--filter", "status=running",
        "--filter", f"label={names.LABEL_DEPLOYMENT}={deployment}", engine=engine,
    ).stdout.split()  # fmt: skip
    found = {}
    for cid in ids:
        host = sh(
            "docker", "inspect", "-f", "{{.Config.Hostname}}", cid, engine=engine, check=False
        )  # fmt: skip
        if host.returncode == 0:  # else it went meanwhile (a replica stopping)
            found[host.stdout.strip()] = cid
    return found


async def run(*argv: str, engine: str | None = None) -> str:
    """A command in a thread: the agents and node parts share this test's event loop."""
    done = await anyio.to_thread.run_sync(lambda: sh(*argv, engine=engine))
    return done.stdout


async def in_client(client: str, script: str) -> str:
    done = await anyio.to_thread.run_sync(
        lambda: sh("docker", "exec", client, "sh", "-c", script, check=False)
    )
    return done.stdout


async def hits(client: str, address: str, port: int, count: int) -> collections.Counter[str]:
    """`count` HTTP requests from inside `client`, one connection each: who answered."""
    script = (
        f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); "
        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {address} {port} | tail -n 1; echo; done"
    )
    answers = [line.strip() for line in (await in_client(client, script)).splitlines()]
    answers = [line for line in answers if line]
    return collections.Counter(answers)


async def endpoints_in_force(
    buckets: dict[str, NatsBucket],
    key: str,
    nodes: tuple[str, ...],
    accept: Callable[[Endpoints], bool],
) -> Endpoints | None:
    """A Service's Endpoints, when `accept` holds for them and every node reports its
    rules at their revision or later (NodeNetwork.endpointsRevision); else None."""
    entry = await buckets[names.ENDPOINTS_BUCKET].get(key)
    if entry is None or entry.value is None:
        return None
    found = decode(entry.value, Endpoints)
    if not accept(found):
        return None
    for node in nodes:
        seen = await record(buckets[names.NODE_NETWORK_BUCKET], node, NodeNetwork)
        if not isinstance(seen, NodeNetwork) or seen.endpoints_revision < entry.revision:
            return None
    return found


@pytest.fixture
def clients() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    remove_containers(*made)


async def start_client(
    one: str, cluster: str, slice_one: NetworkSlice, image: str, clients: list[str]
) -> str:
    """A client container on node one, on the default network, resolving Service names
    as replicas do (removed with `clients`): its name."""
    client = f"client-{uuid.uuid4().hex[:8]}"
    clients.append(client)
    await run(
        "docker", "run", "-d", "--name", client,
        "--label", f"{names.LABEL_NODE}={one}",
        "--network", names.docker_network_name("default", cluster),
        "--dns", slice_one.gateway, "--dns-search", "default.svc.cluster.local",
        "--dns-search", "svc.cluster.local", "--dns-search", "cluster.local",
        image, "sleep", "3600",
    )  # fmt: skip
    return client


@asynccontextmanager
async def two_node_cluster(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    second_host: str,
    agent_running: AgentFactory,
    unchanged_host: Guard,
    clients: list[str],
) -> AsyncIterator[tuple[str, str, str, NetworkSlice]]:
    """The scheduler, netmgr's cluster part, and netmgr's node part and a node agent on
    each engine (node two on the second one), once node one's default slice is made:
    (node one, node two, the cluster id, that slice). On the way out every container of
    both nodes goes (`clients` first), then what `corral down` removes."""
    one, two = node_name, f"{node_name}-b"
    slices = buckets[names.NETWORK_SLICES_BUCKET]
    cluster = ""
    try:
        async with (
            running_scheduler(nats_url),
            running_netmgr(nats_url, "--default-network-wait", "30") as netmgr,
        ):
            cluster = netmgr.cluster.id
            unchanged_host.marks += [
                cluster,
                names.chain_prefix(cluster, one),
                names.chain_prefix(cluster, two),
            ]
            async with (
                running_node_part(nats_url, one),
                running_node_part(nats_url, two, "--docker-host", second_host),
                agent_running("--networks", "on"),
                running_agent(
                    nats_url, two, "--docker-host", second_host, "--heartbeat-seconds", "0.5",
                    "--networks", "on",
                ),
            ):  # fmt: skip
                slice_one = await eventually(
                    lambda: record(slices, f"default.{one}", NetworkSlice),
                    lambda found: found is not None,
                    within=30,
                )
                assert isinstance(slice_one, NetworkSlice)
                unchanged_host.marks.append(slice_one.subnet)
                yield one, two, cluster, slice_one
    finally:
        # containers first: a Docker network goes only once nothing is on it
        remove_containers(*clients)
        clients.clear()
        for node, engine in ((one, None), (two, second_host)):
            left = sh(
                "docker", "ps", "-aq", "--filter", f"label={names.LABEL_NODE}={node}",
                engine=engine,
            ).stdout.split()  # fmt: skip
            remove_containers(*left, engine=engine)
        if cluster:  # what `corral down` does once the node parts stopped
            await remove_all(nats_url, one)
            await remove_all(nats_url, two, "--docker-host", second_host)


async def test_a_service_over_two_nodes_by_name_vip_node_port_and_headless_with_isolation(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    test_image: str,
    second_host: str,
    agent_running: AgentFactory,
    unchanged_host: Guard,
    clients: list[str],
) -> None:
    slices = buckets[names.NETWORK_SLICES_BUCKET]
    async with two_node_cluster(
        nats_url, buckets, node_name, second_host, agent_running, unchanged_host, clients
    ) as (one, two, cluster, slice_one):
        await ok(
            nats_url, "create", "deployment", "web", f"--image={test_image}",
            "--replicas=4", "--port=8080", "--", "sh", "-c", HTTPD,
        )  # fmt: skip
        on_one = await eventually(
            lambda: anyio.to_thread.run_sync(running_names, "web", None),
            lambda found: len(found) == 2,
            within=90,
        )
        on_two = await eventually(
            lambda: anyio.to_thread.run_sync(running_names, "web", second_host),
            lambda found: len(found) == 2,
            within=90,
        )
        replicas = set(on_one) | set(on_two)
        await ok(
            nats_url, "expose", "deployment", "web", "--type=NodePort",
            "--port=80", "--target-port=8080",
        )  # fmt: skip
        await ok(
            nats_url, "create", "service", "web-direct", "--selector", "app=web",
            "--port", "8080:8080", "--cluster-ip", "None",
        )  # fmt: skip

        async def in_force(accept: Callable[[Endpoints], bool]) -> Endpoints | None:
            """The Service's endpoints once `accept`ed and in force on both nodes."""
            return await endpoints_in_force(
                buckets, names.object_key("default", "web"), (one, two), accept
            )

        web = await eventually(
            lambda: in_force(lambda found: len([a for a in found.addresses if a.ready]) == 4),
            lambda found: found is not None,
            within=60,
        )
        assert web is not None
        node_port = web.ports[0].node_port
        assert 30000 <= node_port <= 32767

        client = await start_client(one, cluster, slice_one, test_image, clients)

        by_name = await hits(client, "web", 80, REQUESTS)
        assert set(by_name) == replicas, by_name
        assert sum(by_name.values()) == REQUESTS
        by_vip = await hits(client, web.cluster_ip, 80, 40)
        assert set(by_vip) <= replicas and len(by_vip) >= 2, by_vip
        host_one = "172.17.0.1"  # docker0: the host's address on engine one's bridge
        host_two = BRIDGE_ADDRESS.split("/")[0]
        for address in (host_one, host_two):
            through_port = await hits(client, address, node_port, 40)
            assert set(through_port) <= replicas and len(through_port) >= 2, through_port

        # headless: the name resolves to the replicas themselves
        looked_up = await in_client(client, "nslookup web-direct.default.svc.cluster.local")
        addresses = {a.ip for a in web.addresses}
        assert addresses <= set(looked_up.split()), looked_up

        # another network: neither the VIP nor a replica answers, and at once
        await ok(nats_url, "network", "create", "blue")
        await eventually(
            lambda: record(slices, f"blue.{one}", NetworkSlice),
            lambda found: found is not None,
            within=30,
        )
        blue_client = f"blue-{uuid.uuid4().hex[:8]}"
        clients.append(blue_client)
        blue = names.docker_network_name("blue", cluster)
        await eventually(
            lambda: anyio.to_thread.run_sync(
                lambda: sh("docker", "network", "inspect", blue, check=False).returncode
            ),
            lambda code: code == 0,
            within=30,
        )
        await run(
            "docker", "run", "-d", "--name", blue_client,
            "--label", f"{names.LABEL_NODE}={one}", "--network", blue,
            test_image, "sleep", "3600",
        )  # fmt: skip
        for address, port in [(web.cluster_ip, 80), *((a.ip, 8080) for a in web.addresses)]:
            started = time.monotonic()
            assert await hits(blue_client, address, port, 1) == collections.Counter(), address
            assert time.monotonic() - started < 3.5, f"{address}: not refused at once"
        await run("docker", "rm", "-f", blue_client)
        clients.remove(blue_client)
        await ok(nats_url, "network", "rm", "blue")

        # a replica killed leaves the endpoints; once in force, it gets nothing
        victim, victim_id = next(iter(on_two.items()))
        await run("docker", "rm", "-f", victim_id, engine=second_host)

        before = {a.ip for a in web.addresses}
        await eventually(
            lambda: in_force(lambda found: len(before - {a.ip for a in found.addresses}) == 1),
            lambda found: found is not None,
            within=30,
        )
        after = await hits(client, "web", 80, 60)
        assert victim not in after, after

        # scaled to zero: refused at once, not a hang
        await ok(nats_url, "scale", "deployment", "web", "--replicas=0")

        await eventually(
            lambda: in_force(lambda found: not found.addresses),
            lambda found: found is not None,
            within=60,
        )
        started = time.monotonic()
        assert await hits(client, web.cluster_ip, 80, 1) == collections.Counter()
        assert time.monotonic() - started < 3.5, "a Service with no endpoints must refuse"

        await ok(nats_url, "delete", "service", "web")
        await ok(nats_url, "delete", "service", "web-direct")
        await ok(nats_url, "delete", "deployment", "web")
