"""Replicas on corral networks: the Docker adapter's wiring (a fake engine), and the whole
agent on the hollow runtime (waiting for a network, addresses, --networks on|off|auto)."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiodocker
import anyio
import msgspec
import pytest

from corral.client.local.plan import UpOptions, service_children
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Network
from corral.contract.specs import ContainerTemplate, ObjectMeta
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import MemoryBucket
from corral_node_agent.agent import NodeAgent
from corral_node_agent.docker_runtime import (
    DockerRuntime,
    container_config,
    corral_network_of,
    network_gateway,
    observed_from_inspect,
)
from corral_node_agent.executor import container_spec
from corral_node_agent.hollow_runtime import HollowAddresses, HollowRuntime, hollow_ip
from corral_node_agent.main import build_parser
from corral_node_agent.networks_mode import NetworksMode
from corral_node_agent.runtime import NetworkMissing
from corral_node_agent.settings import settings_from_args
from tests.unit.agent_helpers import CLUSTER_ID, NODE, cluster_bucket, fast_settings
from tests.unit.test_agent_loop import RecordedEvents, eventually

IMAGE = "corral-test/busybox:1"


def placement(replica: str, networks: list[str] | None = None) -> Placement:
    template = ContainerTemplate(image=IMAGE, networks=networks or [])
    return Placement(
        replica=replica,
        deployment="web",
        node=NODE,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


def docker_name(network: str) -> str:
    return names.docker_network_name(network, CLUSTER_ID)


# --- the create body and the inspect data -------------------------------------------------


def test_a_replica_is_made_on_its_first_network_and_resolves_through_its_gateway() -> None:
    spec = container_spec(placement("web-a1", ["front", "back"]), CLUSTER_ID, networks=True)
    assert spec.networks == ("front", "back")
    body = container_config(spec, "10.128.3.1")
    assert body["HostConfig"]["NetworkMode"] == docker_name("front")
    assert body["NetworkingConfig"] == {"EndpointsConfig": {docker_name("front"): {}}}
    assert body["HostConfig"]["Dns"] == ["10.128.3.1"]
    assert body["HostConfig"]["DnsSearch"] == [
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ]


def test_a_template_naming_no_network_joins_default() -> None:
    spec = container_spec(placement("web-a1"), CLUSTER_ID, networks=True)
    assert spec.networks == ("default",)
    assert container_config(spec, "10.128.0.1")["HostConfig"]["NetworkMode"] == docker_name(
        "default"
    )


def test_with_networks_off_a_replica_goes_on_the_engines_default_bridge() -> None:
    body = container_config(container_spec(placement("web-a1"), CLUSTER_ID))
    assert "NetworkingConfig" not in body
    assert body["HostConfig"] == {"RestartPolicy": {"Name": "no"}}


def test_a_template_without_networks_keeps_the_hash_it_had_before_networks_existed() -> None:
    template = ContainerTemplate(image=IMAGE)
    # The hash is of the encoded template; an empty list is omitted (a default), so the
    # containers made before this change are not replaced for it.
    assert b"networks" not in msgspec.json.encode(template)
    assert template.template_hash() == ContainerTemplate(image=IMAGE, networks=[]).template_hash()


def test_docker_network_names_map_back_to_the_clusters_corral_networks() -> None:
    assert corral_network_of(docker_name("front"), CLUSTER_ID) == "front"
    assert corral_network_of(names.docker_network_name("front", "other"), CLUSTER_ID) is None
    assert corral_network_of("bridge", CLUSTER_ID) is None
    assert corral_network_of("corral__" + CLUSTER_ID, CLUSTER_ID) is None


def test_a_networks_gateway_is_its_ipam_gateway_else_its_subnets_first_address() -> None:
    given = {"IPAM": {"Config": [{"Subnet": "10.130.2.0/24", "Gateway": "10.130.2.1"}]}}
    assert network_gateway(given) == "10.130.2.1"
    assert network_gateway({"IPAM": {"Config": [{"Subnet": "10.130.7.0/24"}]}}) == "10.130.7.1"
    assert network_gateway({"IPAM": {"Config": []}}) == ""


def test_inspect_gives_the_addresses_on_corral_networks_and_the_images_ports() -> None:
    observed = observed_from_inspect(
        {
            "Id": "abc",
            "Config": {
                "Labels": {names.LABEL_CLUSTER: CLUSTER_ID, names.LABEL_REPLICA: "web-a1"},
                "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
            },
            "State": {"Status": "running"},
            "NetworkSettings": {
                "Networks": {
                    docker_name("front"): {"IPAddress": "10.128.3.7"},
                    docker_name("back"): {"IPAddress": "10.129.3.7"},
                    names.docker_network_name("front", "other"): {"IPAddress": "10.5.0.2"},
                    "bridge": {"IPAddress": "172.17.0.2"},
                    docker_name("idle"): {"IPAddress": ""},
                }
            },
        }
    )
    assert observed.ips == {"front": "10.128.3.7", "back": "10.129.3.7"}
    assert observed.image_ports == ("53/udp", "8080/tcp")


# --- DockerRuntime.create_container against a fake engine -----------------------------------


@dataclass
class _Created:
    id: str


@dataclass
class FakeEngine:
    """The few engine calls a create makes, as aiodocker sends them."""

    networks: dict[str, dict[str, Any]] = field(default_factory=dict)  # Docker name -> inspect
    created: list[dict[str, Any]] = field(default_factory=list)
    connected: list[tuple[str, str]] = field(default_factory=list)  # (network, container)
    removed: list[str] = field(default_factory=list)
    fail_connect: bool = False

    @property
    def containers(self) -> FakeEngine:
        return self

    async def _query_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        parts = path.split("/")
        if parts[0] == "networks":
            found = self.networks.get(parts[1])
            if found is None or (len(parts) == 3 and self.fail_connect):
                raise aiodocker.DockerError(404, f"network {parts[1]} not found")
            if len(parts) == 3 and parts[2] == "connect":
                container = msgspec.json.decode(kwargs["data"])["Container"]
                self.connected.append((parts[1], container))
                return {}
            return found
        raise AssertionError(f"unexpected call {method} {path}")

    async def create(self, config: dict[str, Any], name: str) -> _Created:
        self.created.append(config)
        return _Created(f"id{len(self.created)}")

    def container(self, container_id: str) -> Any:
        engine = self

        class Handle:
            async def delete(self, force: bool = False) -> None:
                engine.removed.append(container_id)

        return Handle()


def runtime_on(engine: FakeEngine) -> DockerRuntime:
    runtime = DockerRuntime()
    runtime._client = cast(aiodocker.Docker, engine)
    return runtime


def network_data(subnet: str, gateway: str) -> dict[str, Any]:
    return {"IPAM": {"Config": [{"Subnet": subnet, "Gateway": gateway}]}}


async def test_a_replica_is_connected_to_its_other_networks_before_it_starts() -> None:
    engine = FakeEngine(
        networks={
            docker_name("front"): network_data("10.128.3.0/24", "10.128.3.1"),
            docker_name("back"): network_data("10.129.3.0/24", "10.129.3.1"),
        }
    )
    spec = container_spec(placement("web-a1", ["front", "back"]), CLUSTER_ID, networks=True)
    container_id = await runtime_on(engine).create_container(spec)
    (body,) = engine.created
    assert body["HostConfig"]["Dns"] == ["10.128.3.1"]  # the first network's gateway
    assert body["HostConfig"]["NetworkMode"] == docker_name("front")
    assert engine.connected == [(docker_name("back"), container_id)]


async def test_a_missing_network_makes_nothing_and_names_the_network() -> None:
    engine = FakeEngine(networks={docker_name("front"): network_data("10.128.3.0/24", "")})
    spec = container_spec(placement("web-a1", ["front", "back"]), CLUSTER_ID, networks=True)
    with pytest.raises(NetworkMissing) as raised:
        await runtime_on(engine).create_container(spec)
    assert raised.value.network == "back"
    assert engine.created == []


async def test_a_container_that_could_not_join_every_network_is_removed() -> None:
    engine = FakeEngine(
        networks={
            docker_name("front"): network_data("10.128.3.0/24", "10.128.3.1"),
            docker_name("back"): network_data("10.129.3.0/24", "10.129.3.1"),
        },
        fail_connect=True,  # the network went between the inspect and the connect
    )
    spec = container_spec(placement("web-a1", ["front", "back"]), CLUSTER_ID, networks=True)
    with pytest.raises(NetworkMissing):
        await runtime_on(engine).create_container(spec)
    assert engine.removed == ["id1"]


# --- the whole agent on the hollow runtime ---------------------------------------------------


@dataclass
class World:
    runtime: HollowRuntime = field(default_factory=lambda: HollowRuntime(images={IMAGE}))
    placements: MemoryBucket = field(default_factory=lambda: MemoryBucket("placements"))
    statuses: MemoryBucket = field(default_factory=lambda: MemoryBucket("statuses"))
    networks: MemoryBucket = field(default_factory=lambda: MemoryBucket(names.NETWORKS_BUCKET))
    events: RecordedEvents = field(default_factory=RecordedEvents)

    def status(self, replica: str) -> ReplicaStatus | None:
        entry = self.statuses.items.get(names.placement_key(NODE, "default", replica))
        return None if entry is None or entry.value is None else decode(entry.value, ReplicaStatus)

    def state(self, replica: str) -> ReplicaState | None:
        status = self.status(replica)
        return None if status is None else status.state

    async def place(self, p: Placement) -> None:
        await self.placements.put(p.key, encode(p))


@asynccontextmanager
async def agent_of(world: World, mode: NetworksMode) -> AsyncIterator[NodeAgent]:
    agent = NodeAgent(
        fast_settings(networks=mode),
        world.runtime,
        placements=world.placements,
        nodes=MemoryBucket("nodes"),
        statuses=world.statuses,
        cluster=cluster_bucket(),
        events=world.events,
        networks=world.networks,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run)
        yield agent
        tg.cancel_scope.cancel()


async def test_a_running_replica_reports_its_address_on_each_network_and_its_images_ports() -> None:
    world = World()
    world.runtime.exposed_ports[IMAGE] = ["8080/tcp"]
    async with agent_of(world, NetworksMode.ON):
        await world.place(placement("web-a1", ["front", "back"]))
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING)
        await eventually(lambda: bool(world.status("web-a1").ips))  # type: ignore[union-attr]
    status = world.status("web-a1")
    assert status is not None
    assert status.ips == {
        "front": hollow_ip("front", "web-a1", CLUSTER_ID),
        "back": hollow_ip("back", "web-a1", CLUSTER_ID),
    }
    assert status.ips["front"] != status.ips["back"]
    pool = ipaddress.IPv4Network("10.128.0.0/9")
    assert all(ipaddress.IPv4Address(ip) in pool for ip in status.ips.values())
    assert status.image_ports == ["8080/tcp"]


async def test_a_replica_whose_network_is_missing_waits_then_starts_once_it_appears() -> None:
    world = World()
    world.runtime.missing_networks.add("back")
    async with agent_of(world, NetworksMode.ON):
        await world.place(placement("web-a1", ["front", "back"]))
        await eventually(lambda: world.status("web-a1") is not None)
        status = world.status("web-a1")
        assert status is not None
        assert status.state == ReplicaState.CREATING
        assert status.message == "waiting for network back on this node"
        assert "NetworkNotReady" in world.events.reasons()
        world.runtime.missing_networks.clear()  # netmgr made it
        seen: set[ReplicaState] = set()

        def running() -> bool:
            state = world.state("web-a1")
            if state is not None:
                seen.add(state)
            return state == ReplicaState.RUNNING

        await eventually(running, within=10.0)
    assert not seen & {ReplicaState.FAILED, ReplicaState.CRASH_LOOP}
    assert world.runtime.creates == 1  # nothing was made while it waited


async def test_a_network_made_on_the_engine_cuts_the_waiting_replicas_back_off_short() -> None:
    world = World()
    world.runtime.missing_networks.add("back")
    async with agent_of(world, NetworksMode.ON) as agent:
        await world.place(placement("web-a1", ["back"]))
        await eventually(lambda: world.state("web-a1") == ReplicaState.CREATING)
        # As after many tries: the next one would be a minute away.
        agent.tracks["web-a1"] = dataclasses.replace(
            agent.tracks["web-a1"], not_before=time.time() + 60
        )
        world.runtime.add_network("back")  # the engine's network event
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING, within=3.0)


async def test_networks_off_puts_replicas_on_the_bridge_with_no_addresses() -> None:
    world = World()
    world.runtime.missing_networks.add("default")  # would make it wait, were it on
    async with agent_of(world, NetworksMode.OFF):
        await world.place(placement("web-a1"))
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING)
    status = world.status("web-a1")
    assert status is not None and status.ips == {}
    (made,) = world.runtime.containers.values()
    assert made.spec.networks == ()


async def test_auto_joins_networks_once_the_cluster_has_the_default_network(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    with caplog.at_level(logging.WARNING, logger="corral_node_agent.networks_mode"):
        async with agent_of(world, NetworksMode.AUTO) as agent:
            await world.place(placement("web-a1"))
            await world.place(placement("web-a2"))
            await eventually(lambda: world.state("web-a2") == ReplicaState.RUNNING)
            assert world.status("web-a1").ips == {}  # type: ignore[union-attr]
            warnings = [r for r in caplog.records if "no networks yet" in r.getMessage()]
            assert len(warnings) == 1  # once, not per replica
            default = Network(metadata=ObjectMeta(name="default"))
            await world.networks.put("default", encode(default))
            await world.place(placement("web-b1"))
            await eventually(lambda: world.state("web-b1") == ReplicaState.RUNNING)
            await eventually(lambda: bool(world.status("web-b1").ips))  # type: ignore[union-attr]
            reads = agent.networks_choice.reads
            await world.place(placement("web-b2"))
            await eventually(lambda: world.state("web-b2") == ReplicaState.RUNNING)
            assert agent.networks_choice.reads == reads  # seen once: never read again
    assert world.status("web-b1").ips == {  # type: ignore[union-attr]
        "default": hollow_ip("default", "web-b1", CLUSTER_ID)
    }
    assert world.status("web-a1").ips == {}  # type: ignore[union-attr] # not re-created


def test_the_agents_networks_flag_defaults_to_auto_and_corral_up_passes_on(
    tmp_path: Path,
) -> None:
    parser = build_parser()
    base = ["--node-name", "n1", "--state-dir", str(tmp_path / "agent"), "--agent-id", "a1"]
    assert settings_from_args(parser.parse_args(base)).networks == "auto"
    given = parser.parse_args([*base, "--networks", "off"])
    assert settings_from_args(given).networks == NetworksMode.OFF
    with pytest.raises(SystemExit):
        parser.parse_args(["--networks", "sometimes"])
    (agent,) = [c for c in service_children(UpOptions(data_dir=tmp_path)) if c.name == "node-agent"]
    assert agent.command[agent.command.index("--networks") + 1] == "on"  # netmgr runs beside it


def test_hollow_addresses_are_stable_per_replica_and_never_shared_on_a_network() -> None:
    book = HollowAddresses()
    replicas = [f"web-{i}" for i in range(20_000)]
    taken = [book.take(CLUSTER_ID, "default", r) for r in replicas]
    # 20,000 hashes into 2^23 addresses collide ~24 times: each is moved to a free one.
    assert len(set(taken)) == len(replicas)
    pool = ipaddress.IPv4Network("10.128.0.0/9")
    assert all(ipaddress.IPv4Address(a) in pool for a in taken)
    assert not {a.split(".")[3] for a in taken} & {"0", "1", "255"}  # no gateway, no broadcast
    assert book.take(CLUSTER_ID, "default", "web-7") == taken[7]  # a second container of it
    book.release(CLUSTER_ID, "default", "web-7")
    assert book.take(CLUSTER_ID, "default", "web-7") == taken[7]  # still held by the other
    assert book.take(CLUSTER_ID, "other", "web-7") == hollow_ip("other", "web-7", CLUSTER_ID)
    for replica in replicas:
        book.release(CLUSTER_ID, "default", replica)
    book.release(CLUSTER_ID, "default", "web-7")
    assert len(book) == 1  # only web-7 on "other"
