"""Replicas on corral networks, on a real Docker engine. The test plays the scheduler and
netmgr: it makes each Docker network as netmgr's node part would (name, subnet, gateway,
bridge, labels), and removes every network and container it made."""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator

import anyio
import pytest

from corral.contract import names
from corral.contract.specs import ContainerTemplate
from corral.contract.state import Placement, ReplicaState
from corral.natsio.kv import NatsBucket
from corral_node_agent.docker_runtime import DockerRuntime
from corral_node_agent.runtime import NETWORK_APPEARED
from tests.e2e.conftest import AgentFactory, remove_node_containers
from tests.e2e.test_agent_docker import (
    SLEEP,
    cluster_id,
    containers_of,
    docker,
    eventually,
    place,
    state_is,
    status_of,
    unique,
)

pytestmark = pytest.mark.docker


class NetworkMaker:
    """Makes Docker networks as netmgr's node part does; removes them afterwards."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.made: list[str] = []

    def make(self, network: str, cluster: str) -> ipaddress.IPv4Network:
        """A /24 no other network of the engine holds (another test's may appear at once:
        a refused subnet is tried again elsewhere)."""
        name = names.docker_network_name(network, cluster)
        error = ""
        for _ in range(20):
            second, third = random.randrange(200, 250), random.randrange(256)
            subnet = ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
            gateway = str(subnet.network_address + 1)
            done = subprocess.run(
                [
                    "docker", "network", "create", "--driver", "bridge",
                    "--subnet", str(subnet), "--gateway", gateway,
                    "--opt", f"com.docker.network.bridge.name="
                    f"{names.bridge_name(network, self.node, cluster)}",
                    "--label", f"{names.LABEL_MANAGED}=true",
                    "--label", f"{names.LABEL_CLUSTER}={cluster}",
                    "--label", f"{names.LABEL_NETWORK}={network}",
                    "--label", f"{names.LABEL_NODE}={self.node}",
                    name,
                ],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if done.returncode == 0:
                self.made.append(name)
                return subnet
            error = done.stderr.strip()
            if "overlap" not in error:
                break
        raise RuntimeError(f"docker network create {name}: {error}")

    def remove_all(self) -> None:
        remove_node_containers(self.node)  # a network in use cannot go
        for name in self.made:
            subprocess.run(["docker", "network", "rm", name], capture_output=True, timeout=60)


@pytest.fixture
def networks(node_name: str) -> Iterator[NetworkMaker]:
    maker = NetworkMaker(node_name)
    try:
        yield maker
    finally:
        maker.remove_all()


def on_networks(
    node: str, replica: str, image: str, networks: list[str], command: list[str] = SLEEP
) -> Placement:
    template = ContainerTemplate(
        image=image, command=command[:2], args=command[2:], networks=networks
    )
    return Placement(
        replica=replica,
        deployment="web",
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


def network_name() -> str:
    return f"e2e{uuid.uuid4().hex[:8]}"


async def test_a_replica_joins_its_networks_resolves_through_the_gateway_and_reports_its_ips(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    networks: NetworkMaker,
) -> None:
    front, back = network_name(), network_name()
    web = unique("web")
    async with agent_running("--networks", "on"):
        cluster = await cluster_id(buckets)
        front_subnet = networks.make(front, cluster)
        back_subnet = networks.make(back, cluster)
        await place(buckets, on_networks(node_name, web, test_image, [front, back]))
        await eventually(state_is(buckets, node_name, web, ReplicaState.RUNNING))
        status = await status_of(buckets, node_name, web)
    assert status is not None
    (container,) = containers_of(node_name)
    host = container["HostConfig"]
    assert host["Dns"] == [str(front_subnet.network_address + 1)]  # the first network's gateway
    assert host["DnsSearch"] == ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    attached = container["NetworkSettings"]["Networks"]
    assert set(attached) == {
        names.docker_network_name(front, cluster),
        names.docker_network_name(back, cluster),
    }  # not on Docker's default bridge
    assert set(status.ips) == {front, back}
    assert ipaddress.IPv4Address(status.ips[front]) in front_subnet
    assert ipaddress.IPv4Address(status.ips[back]) in back_subnet
    assert status.ips[front] == attached[names.docker_network_name(front, cluster)]["IPAddress"]
    # Docker's resolver in the container (127.0.0.11) answers the containers' own names
    # and forwards every other name to the Dns given: netmgr's DNS at the gateway.
    resolv = docker("exec", container["Id"], "cat", "/etc/resolv.conf")
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
    gateway = str(front_subnet.network_address + 1)
    asked = names_asked_at(gateway, container["Id"], "probe-svc")
    assert any(name.startswith("probe-svc") for name in asked), asked


def names_asked_at(gateway: str, container: str, name: str) -> list[str]:
    """The names a DNS server on `gateway`:53 is asked while `container` looks `name` up
    (nothing answers: the lookup gives up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((gateway, 53))
        server.settimeout(0.2)
        subprocess.run(
            ["docker", "exec", container, "timeout", "3", "nslookup", name],
            capture_output=True,
            timeout=30,
        )
        asked: list[str] = []
        while True:
            try:
                query, _ = server.recvfrom(512)
            except TimeoutError:
                return asked
            asked.append(_question(query))


def _question(query: bytes) -> str:
    """The name a DNS query asks about (its first question)."""
    labels, at = [], 12
    while at < len(query) and query[at]:
        length = query[at]
        labels.append(query[at + 1 : at + 1 + length].decode(errors="replace"))
        at += 1 + length
    return ".".join(labels)


async def test_a_replica_waits_for_its_network_and_starts_once_it_is_made(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    networks: NetworkMaker,
) -> None:
    late = network_name()
    web = unique("web")
    async with agent_running("--networks", "on"):
        cluster = await cluster_id(buckets)
        await place(buckets, on_networks(node_name, web, test_image, [late]))
        await eventually(state_is(buckets, node_name, web, ReplicaState.CREATING))
        status = await status_of(buckets, node_name, web)
        assert status is not None
        assert status.message == f"waiting for network {late} on this node"
        assert containers_of(node_name) == []  # nothing made while it waits
        subnet = networks.make(late, cluster)  # netmgr made it
        await eventually(state_is(buckets, node_name, web, ReplicaState.RUNNING), within=20)
        status = await status_of(buckets, node_name, web)
    assert status is not None and status.restarts == 0
    assert ipaddress.IPv4Address(status.ips[late]) in subnet
    inspect = json.loads(docker("network", "inspect", names.docker_network_name(late, cluster)))
    assert len(inspect[0]["Containers"]) == 1


async def test_the_engine_tells_the_agent_when_a_corral_network_is_made(
    node_name: str, networks: NetworkMaker
) -> None:
    runtime = DockerRuntime()
    heard: list[str] = []
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.watch, node_name, heard.append)
            networks.make(network_name(), "c0ffee")
            await eventually(lambda: NETWORK_APPEARED in heard, within=10)
            tg.cancel_scope.cancel()
    finally:
        await runtime.close()


def replica_containers(node: str, replica: str) -> list[str]:
    return [
        c["Id"]
        for c in containers_of(node)
        if c["Config"]["Labels"].get(names.LABEL_REPLICA) == replica
    ]


def network_removed(name: str) -> bool:
    """`docker network rm`: refused while a container runs on it (a restart came
    first), so the caller tries again."""
    done = subprocess.run(["docker", "network", "rm", name], capture_output=True, timeout=60)
    return done.returncode == 0


async def test_a_stopped_replica_whose_network_was_removed_gets_a_new_container(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    networks: NetworkMaker,
) -> None:
    """Docker lets a network go while only stopped containers are on it, and such a
    container never starts again ("network ... not found"): the agent removes it and,
    once the network is back, runs a new one."""
    net = network_name()
    web = unique("web")
    crashing = on_networks(node_name, web, test_image, [net], ["sh", "-c", "sleep 1; exit 1"])
    async with agent_running("--networks", "on"):
        cluster = await cluster_id(buckets)
        networks.make(net, cluster)
        await place(buckets, crashing)

        async def backing_off() -> bool:  # exited, its next start seconds away
            status = await status_of(buckets, node_name, web)
            return (
                status is not None
                and status.state == ReplicaState.CRASH_LOOP
                and (status.restarts >= 2)
            )

        await eventually(backing_off, within=30)
        (old,) = replica_containers(node_name, web)
        before = await status_of(buckets, node_name, web)
        assert before is not None
        await eventually(lambda: network_removed(names.docker_network_name(net, cluster)))
        # Its start fails for good: removed, and a new one waits for the network.
        await eventually(lambda: old not in replica_containers(node_name, web), within=30)
        networks.make(net, cluster)  # netmgr makes it again
        await eventually(lambda: bool(replica_containers(node_name, web)), within=30)
        assert old not in replica_containers(node_name, web)

        async def started_anew() -> bool:  # the new container ran: a restart counted
            status = await status_of(buckets, node_name, web)
            return status is not None and status.restarts > before.restarts

        await eventually(started_anew, within=30)
