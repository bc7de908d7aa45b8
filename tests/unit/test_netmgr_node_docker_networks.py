"""The node part's Docker networks (corral_netmgr.node.docker_networks) against a fake
engine: what counts as a network's users, and when a network matches its slice."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from corral.contract.network_state import NetworkSlice
from corral.natsio.host_tools import Ran
from corral_netmgr.node import docker_networks
from corral_netmgr.node.docker_networks import (
    DockerNetworks,
    NetworkInUse,
    Wanted,
    matches,
    wanted,
)

CLUSTER = "c0ffee00"
SLICE = NetworkSlice(network="blue", node="n1", subnet="10.130.1.0/24", gateway="10.130.1.1")


class FakeContainer:
    def __init__(self, name: str, state: str, networks: list[str]) -> None:
        self.id = f"id-{name}"
        self._container = {"Names": [f"/{name}"], "State": state}
        self.networks = networks

    def __getitem__(self, key: str) -> Any:  # as aiodocker's DockerContainer
        return self._container[key]

    def state_of(self, network: str) -> str:
        return str(self._container["State"]) if network in self.networks else ""


class FakeNetwork:
    def __init__(self, engine: FakeEngine, shown: dict[str, Any]) -> None:
        self.engine, self.shown = engine, shown

    async def show(self) -> dict[str, Any]:
        name = self.shown["Name"]
        running = [c for c in self.engine.containers if c.state_of(name) == "running"]
        return {**self.shown, "Containers": {c.id: {"Name": c.id[3:]} for c in running}}

    async def delete(self) -> None:  # this network, by its id, as Docker does
        name = self.shown["Name"]
        if self.engine.networks.get(name, {}).get("Id") != self.shown["Id"]:
            raise aiodocker.DockerError(404, {"message": f"network {self.shown['Id']} not found"})
        del self.engine.networks[name]


class FakeEngine:
    """Docker's behaviour that matters: `Containers` in a network's inspect output lists
    running containers only; containers/json with all and a network filter lists all."""

    def __init__(self) -> None:
        self.networks: dict[str, dict[str, Any]] = {}
        self.containers: list[FakeContainer] = []
        self.list_calls: list[dict[str, Any]] = []
        self.links: Path | None = None  # where a create makes the network's bridge link
        self.raced = False  # the next create meets another's create of the same name
        self.meanwhile: Callable[[], None] | None = None

    async def get(self, name_or_id: str) -> FakeNetwork:
        for shown in self.networks.values():
            if name_or_id in (shown["Name"], shown["Id"]):
                return FakeNetwork(self, shown)
        raise aiodocker.DockerError(404, {"message": f"network {name_or_id} not found"})

    async def create(self, config: dict[str, Any]) -> None:
        self.networks[config["Name"]] = {
            "Name": config["Name"],
            "Id": f"netid-{config['Name']}",
            "Driver": config["Driver"],
            "IPAM": config["IPAM"],
            "Options": config["Options"],
            "Labels": config["Labels"],
        }
        if self.raced:  # the other create made it (its bridge swept away meanwhile)
            self.raced = False
            raise aiodocker.DockerError(409, {"message": "network already exists"})
        if self.links is not None:
            (self.links / config["Options"]["com.docker.network.bridge.name"]).mkdir()

    async def list(self, **params: Any) -> list[Any]:
        if "filters" not in params:  # networks/json: every network
            return list(self.networks.values())
        self.list_calls.append(params)
        if self.meanwhile is not None:  # something happens while containers are listed
            self.meanwhile()
            self.meanwhile = None
        keys = json.loads(params["filters"])["network"]
        every = params.get("all") in ("1", "true", True)
        return [
            c
            for c in self.containers
            if any(k in (n, f"netid-{n}") for n in c.networks for k in keys)
            and (every or c._container["State"] == "running")
        ]


class FakeDocker:
    def __init__(self) -> None:
        self.engine = FakeEngine()
        self.networks = self.engine
        self.containers = _Containers(self.engine)


class _Containers:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    async def list(self, **params: Any) -> list[FakeContainer]:
        return await self.engine.list(**params)


@pytest.fixture
def docker() -> FakeDocker:
    return FakeDocker()


async def test_a_network_whose_only_container_is_stopped_is_not_removed(docker: FakeDocker):
    networks = DockerNetworks(docker, CLUSTER, "n1")  # type: ignore[arg-type]
    want = wanted(SLICE, CLUSTER)
    assert await networks.ensure(want)
    docker.engine.containers.append(FakeContainer("web-1", "exited", [want.name]))
    with pytest.raises(NetworkInUse, match=r"web-1 \(exited\)"):
        await networks.remove(want.name)
    assert want.name in docker.engine.networks
    assert json.loads(docker.engine.list_calls[0]["filters"]) == {
        "network": [want.name, f"netid-{want.name}"]
    }


async def test_a_network_whose_slice_changed_is_not_remade_while_a_stopped_container_has_it(
    docker: FakeDocker,
):
    networks = DockerNetworks(docker, CLUSTER, "n1")  # type: ignore[arg-type]
    await networks.ensure(wanted(SLICE, CLUSTER))
    name = wanted(SLICE, CLUSTER).name
    docker.engine.containers.append(FakeContainer("web-1", "created", [name]))
    moved = NetworkSlice(network="blue", node="n1", subnet="10.130.7.0/24", gateway="10.130.7.1")
    with pytest.raises(NetworkInUse):
        await networks.ensure(wanted(moved, CLUSTER))
    assert docker.engine.networks[name]["IPAM"]["Config"][0]["Subnet"] == "10.130.1.0/24"
    docker.engine.containers.clear()  # the stopped replica removed: now it is remade
    assert await networks.ensure(wanted(moved, CLUSTER))
    assert docker.engine.networks[name]["IPAM"]["Config"][0]["Subnet"] == "10.130.7.0/24"


async def test_a_network_made_again_meanwhile_is_not_the_one_removed(docker: FakeDocker):
    """Between the check for its users and the delete, another start of this node part
    removed the network and made it again: the one inspected is gone, the new one
    stays (deleted by name, it would go)."""
    networks = DockerNetworks(docker, CLUSTER, "n1")  # type: ignore[arg-type]
    want = wanted(SLICE, CLUSTER)
    await networks.ensure(want)

    def made_again() -> None:
        shown = docker.engine.networks[want.name]
        docker.engine.networks[want.name] = {**shown, "Id": "netid-made-again"}

    docker.engine.meanwhile = made_again
    await networks.remove(want.name)
    assert docker.engine.networks[want.name]["Id"] == "netid-made-again"


async def test_a_network_without_containers_is_removed(docker: FakeDocker):
    networks = DockerNetworks(docker, CLUSTER, "n1")  # type: ignore[arg-type]
    want = wanted(SLICE, CLUSTER)
    await networks.ensure(want)
    docker.engine.containers.append(FakeContainer("other", "exited", ["bridge"]))
    await networks.remove(want.name)
    assert want.name not in docker.engine.networks


def shown_of(want_config: dict[str, Any], extra: list[dict[str, str]]) -> dict[str, Any]:
    ipam = {**want_config["IPAM"], "Config": want_config["IPAM"]["Config"] + extra}
    return {**want_config, "IPAM": ipam}


def test_a_network_with_an_extra_ipv6_ipam_config_still_matches_its_slice():
    want = wanted(SLICE, CLUSTER)
    v6 = {"Subnet": "fd00:dead:beef::/64", "Gateway": "fd00:dead:beef::1"}
    assert matches(shown_of(want.config(), [v6]), want)
    assert matches(shown_of(want.config(), []), want)
    other_v4 = {"Subnet": "10.131.0.0/24", "Gateway": "10.131.0.1"}
    assert not matches(shown_of(want.config(), [other_v4]), want)
    moved = wanted(
        NetworkSlice(network="blue", node="n1", subnet="10.130.7.0/24", gateway="10.130.7.1"),
        CLUSTER,
    )
    assert not matches(shown_of(want.config(), [v6]), moved)


async def test_a_network_without_its_bridge_is_remade_only_once_seen_and_not_again_soon(
    docker: FakeDocker, tmp_path: Path
) -> None:
    networks = DockerNetworks(docker, CLUSTER, "n1")  # type: ignore[arg-type]
    networks.sys_net = tmp_path  # the host's links as this test lays them out
    want = wanted(SLICE, CLUSTER)
    assert await networks.ensure(want)
    # Its bridge never seen: the engine's links are elsewhere (an engine in a VM, a
    # rootless one; a host docker0 proves nothing). Never remade, however often looked at.
    (tmp_path / "docker0").mkdir()
    for _ in range(3):
        assert not await networks.ensure(want)
    docker.engine.links = tmp_path  # from now on the engine's links are the host's
    link = tmp_path / want.bridge
    link.mkdir()
    assert not await networks.ensure(want)  # seen: this process sees the engine's links
    link.rmdir()  # deleted behind dockerd's back
    assert await networks.ensure(want)  # remade, with its bridge
    assert link.exists()
    link.rmdir()
    with pytest.raises(RuntimeError, match=r"lost its bridge .* again within 300 s"):
        await networks.ensure(want)  # gone again at once: said, not remade in a loop
    assert want.name in docker.engine.networks
    link.mkdir()
    assert not await networks.ensure(want)


async def seen_then_lost(docker: FakeDocker, links: Path) -> tuple[DockerNetworks, Wanted, Path]:
    """The slice's network made, its bridge seen on the host (`links`), then deleted
    behind dockerd's back: the node part, the network and the (gone) link."""
    networks = DockerNetworks(docker, CLUSTER, "n1")  # type: ignore[arg-type]
    networks.sys_net = links
    want = wanted(SLICE, CLUSTER)
    link = links / want.bridge
    link.mkdir()
    assert await networks.ensure(want)
    assert not await networks.ensure(want)  # seen
    link.rmdir()
    return networks, want, link


async def test_a_remade_network_whose_new_bridge_is_not_seen_either_loses_the_proof(
    docker: FakeDocker, tmp_path: Path
) -> None:
    """A link of that name on the host that was not the engine's (its links are in a
    VM): the remade network's bridge is not seen either, so nothing is remade again."""
    networks, want, _ = await seen_then_lost(docker, tmp_path)
    assert await networks.ensure(want)  # remade: its new bridge is not on this host
    for _ in range(3):
        assert not await networks.ensure(want)  # no proof any more: no error, no remake


def deleting_links(monkeypatch: pytest.MonkeyPatch, link: Path) -> None:
    """`ip link del <bridge>` (the leftover sweep's) deletes `link`, a bridge laid out
    as a directory with an empty brif/."""

    def delete() -> None:
        (link / "brif").rmdir()
        link.rmdir()

    async def ip_link_del(argv: list[str], check: bool = True) -> Ran:
        assert argv == ["ip", "link", "del", link.name]
        delete()
        return Ran(0, "", "")

    monkeypatch.setattr(docker_networks.host, "run", ip_link_del)


async def test_a_leftover_link_on_the_host_is_no_proof_when_the_engines_links_are_elsewhere(
    docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine runs in a VM; a link of the network's bridge name is left on the host
    (an engine that ran there before). The sweep deletes it, the network is made in the
    VM, its bridge never seen here: nothing is remade."""
    networks = DockerNetworks(docker, CLUSTER, "n1")  # type: ignore[arg-type]
    networks.sys_net = tmp_path  # docker.engine.links stays None: the VM's links
    want = wanted(SLICE, CLUSTER)
    link = tmp_path / want.bridge
    (link / "brif").mkdir(parents=True)

    deleting_links(monkeypatch, link)
    assert await networks.ensure(want)
    for _ in range(3):
        assert not await networks.ensure(want)


async def test_a_bridge_swept_while_another_start_made_the_network_is_remade(
    docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two starts of this node part: this one sweeps the bridge of the other's create
    in progress (made, its network not yet listed), then finds the network made. The
    sweep saw the link: the network without it is remade at the next look."""
    networks = DockerNetworks(docker, CLUSTER, "n1")  # type: ignore[arg-type]
    networks.sys_net = tmp_path
    docker.engine.links = tmp_path
    want = wanted(SLICE, CLUSTER)
    link = tmp_path / want.bridge
    (link / "brif").mkdir(parents=True)  # the other start's create, half-way

    deleting_links(monkeypatch, link)
    docker.engine.raced = True
    assert not await networks.ensure(want)  # made meanwhile, by the other start
    assert not link.exists()
    assert await networks.ensure(want)  # remade, with its bridge
    assert link.exists()


async def test_a_network_without_its_bridge_under_a_container_stays_and_is_not_counted_remade(
    docker: FakeDocker, tmp_path: Path
) -> None:
    networks, want, _ = await seen_then_lost(docker, tmp_path)
    docker.engine.containers.append(FakeContainer("web-1", "exited", [want.name]))
    with pytest.raises(RuntimeError, match=r"lost its bridge .*containers have no network.*web-1"):
        await networks.ensure(want)
    assert want.name in docker.engine.networks
    docker.engine.containers.clear()
    assert await networks.ensure(want)  # remade once it is free: no "again within"
