"""A bridge dockerd left behind by a network create it failed half-way (two creates at
once, its iptables race on nftables) is deleted before the network is made again:
otherwise dockerd takes it as a bridge it did not make and leaves it, and its route,
on the host after the network is removed."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import aiodocker
import pytest

from corral.contract.network_state import NetworkSlice
from corral_netmgr.node.docker_networks import DockerNetworks, wanted

pytestmark = pytest.mark.docker

CLUSTER = f"e2e-leftover-{uuid.uuid4().hex[:8]}"  # two runs on one engine never meet
SLICE = NetworkSlice(network="left", node="n1", subnet="10.251.77.0/24", gateway="10.251.77.1")


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ip(*argv: str, check: bool = True) -> str:
    """`ip ARGV` (quick: run in the test's thread)."""
    return subprocess.run(["ip", *argv], check=check, capture_output=True, text=True).stdout


async def test_a_leftover_bridge_of_the_networks_own_name_is_deleted_before_the_create(
    docker_engine: str,
) -> None:
    want = wanted(SLICE, CLUSTER)
    docker = aiodocker.Docker()
    networks = DockerNetworks(docker, CLUSTER, "n1")
    try:
        ip("link", "add", want.bridge, "type", "bridge")  # as dockerd leaves it
        assert await networks.ensure(want)
        assert link_exists(want.bridge)  # dockerd's own bridge now
        await networks.remove(want.name)
        assert not link_exists(want.bridge)  # removed with its network: nothing left
        assert want.bridge not in ip("route")
    finally:
        try:
            await networks.remove(want.name)
        finally:
            await docker.close()
            if link_exists(want.bridge):
                ip("link", "del", want.bridge, check=False)


async def test_a_bridge_of_that_name_with_something_attached_is_left_alone(
    docker_engine: str,
) -> None:
    """Another engine of the same host shares its links: a bridge in use is never
    deleted, even under this network's name (the create then fails, and says so)."""
    want = wanted(SLICE, CLUSTER)
    port = f"crlt{uuid.uuid4().hex[:8]}"
    docker = aiodocker.Docker()
    networks = DockerNetworks(docker, CLUSTER, "n1")
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
        try:
            await networks.remove(want.name)
        finally:
            await docker.close()
            ip("link", "del", port, check=False)
            if link_exists(want.bridge):
                ip("link", "del", want.bridge, check=False)
