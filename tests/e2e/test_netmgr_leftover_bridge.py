"""A bridge dockerd left behind by a network create it failed half-way (two creates at
once, its iptables race on nftables) is deleted before the network is made again:
otherwise dockerd takes it as a bridge it did not make and leaves it, and its route,
on the host after the network is removed. A network whose bridge was deleted behind
dockerd's back is remade, once no container is attached."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiodocker
import pytest

from corral.contract.network_state import NetworkSlice
from corral_netmgr.node.docker_networks import DockerNetworks, Wanted, wanted

pytestmark = pytest.mark.docker

CLUSTER = f"e2e-leftover-{uuid.uuid4().hex[:8]}"  # two runs on one engine never meet
SLICE = NetworkSlice(network="left", node="n1", subnet="10.251.77.0/24", gateway="10.251.77.1")


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ip(*argv: str, check: bool = True) -> str:
    """`ip ARGV` (quick: run in the test's thread)."""
    return subprocess.run(["ip", *argv], check=check, capture_output=True, text=True).stdout


@asynccontextmanager
async def node_networks() -> AsyncIterator[tuple[Wanted, DockerNetworks]]:
    """The slice's network as node n1 of the test's cluster wants it; afterwards its
    network and bridge are gone, whatever the test did."""
    want = wanted(SLICE, CLUSTER)
    docker = aiodocker.Docker()
    networks = DockerNetworks(docker, CLUSTER, "n1")
    try:
        yield want, networks
    finally:
        try:
            await networks.remove(want.name)
        finally:
            await docker.close()
            if link_exists(want.bridge):
                ip("link", "del", want.bridge, check=False)


async def test_a_leftover_bridge_of_the_networks_own_name_is_deleted_before_the_create(
    docker_engine: str,
) -> None:
    async with node_networks() as (want, networks):
        ip("link", "add", want.bridge, "type", "bridge")  # as dockerd leaves it
        assert await networks.ensure(want)
        assert link_exists(want.bridge)  # dockerd's own bridge now
        await networks.remove(want.name)
        assert not link_exists(want.bridge)  # removed with its network: nothing left
        assert want.bridge not in ip("route")


async def test_a_bridge_of_that_name_with_something_attached_is_left_alone(
    docker_engine: str,
) -> None:
    """Another engine of the same host shares its links: a bridge in use is never
    deleted, even under this network's name (the create then fails, and says so)."""
    port = f"crlt{uuid.uuid4().hex[:8]}"
    async with node_networks() as (want, networks):
        try:
            ip("link", "add", want.bridge, "type", "bridge")
            ip("link", "add", port, "type", "veth", "peer", "name", f"{port}p")
            ip("link", "set", port, "master", want.bridge)
            try:
                await networks.ensure(want)
            except RuntimeError:
                pass  # dockerd may refuse a bridge with a port, or take it: either way
            assert link_exists(f"{want.bridge}/brif/{port}")  # still the bridge's port
        finally:
            ip("link", "del", port, check=False)


async def test_a_network_whose_bridge_was_deleted_is_remade(docker_engine: str) -> None:
    """A bridge deleted behind dockerd's back (by hand, or a leftover sweep racing the
    create of another start of this node part) leaves a network dockerd still lists
    and no container could use: ensure remakes it."""
    async with node_networks() as (want, networks):
        assert await networks.ensure(want)
        assert not await networks.ensure(want)  # there and whole (its bridge seen)
        ip("link", "del", want.bridge)
        assert await networks.ensure(want)  # remade
        assert link_exists(want.bridge)
        assert not await networks.ensure(want)


async def test_a_network_that_lost_its_bridge_under_a_container_says_so(
    docker_engine: str, test_image: str
) -> None:
    async with node_networks() as (want, networks):
        assert await networks.ensure(want)
        assert not await networks.ensure(want)  # its bridge seen on the host
        container = await networks.docker.containers.create(
            {
                "Image": test_image,
                "Cmd": ["sleep", "300"],
                "Labels": {"io.corral.test": CLUSTER},
                "HostConfig": {"NetworkMode": want.name},
            },
            name=f"{CLUSTER}-user",
        )
        try:
            ip("link", "del", want.bridge)
            with pytest.raises(RuntimeError, match="lost its bridge") as raised:
                await networks.ensure(want)
            assert f"{CLUSTER}-user" in str(raised.value)  # who keeps it
            assert await networks.inspect(want.name) is not None  # left for its container
        finally:
            await container.delete(force=True)
        assert await networks.ensure(want)  # remade once it is gone
        assert link_exists(want.bridge)
