"""A Deployment naming a network that does not exist stays Pending with that reason, and
is decided again (only it) as soon as netmgr's record of the network appears."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Network
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import DeploymentStatus, Node, NodeCapacity
from corral_scheduler.decide import Usage, schedule_deployment
from corral_scheduler.snapshot import Snapshot
from tests.unit.test_scheduler_control_loop import _value, running
from tests.unit.test_scheduler_incremental import record_reconciles
from tests.waiting import eventually


def deployment(name: str, networks: list[str], replicas: int = 2) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, generation=1),
        spec=DeploymentSpec(
            replicas=replicas, template=ContainerTemplate(image="app:1", networks=networks)
        ),
    )


def decide(d: Deployment, networks: frozenset[str]) -> tuple[int, DeploymentStatus]:
    """Placements made and the status written when deciding `d` on one roomy node."""
    node = Node(name="a", capacity=NodeCapacity(cpu_millis=4000, memory_bytes=2**33))
    view = Snapshot(
        deployments={d.key: d}, nodes={"a": node}, node_last_seen={"a": 0.0}, networks=networks
    )
    plan = schedule_deployment(
        view,
        d.key,
        0.0,
        usage={"a": Usage()},
        taken_names=set(),
        ready_nodes={"a"},
        wall_time=1.0,
        new_suffix=iter(["x1", "x2", "x3"]).__next__,
    )
    ((status, _),) = plan.statuses
    return len(plan.place), status


def test_a_template_naming_a_network_that_does_not_exist_places_nothing_and_says_why() -> None:
    placed, status = decide(deployment("web", ["front", "back"]), frozenset({"front"}))
    assert placed == 0
    assert (status.pending, status.pending_reason) == (2, "network back does not exist")


def test_a_template_whose_networks_all_exist_is_placed() -> None:
    placed, status = decide(deployment("web", ["front", "back"]), frozenset({"front", "back"}))
    assert (placed, status.pending, status.pending_reason) == (2, 0, "")


def test_the_default_network_always_counts_as_existing() -> None:
    # netmgr makes it when it starts; no record of it is needed (nor one of any network).
    assert decide(deployment("web", ["default"]), frozenset())[0] == 2
    assert decide(deployment("web", []), frozenset())[0] == 2


async def test_a_network_appearing_decides_again_only_the_deployments_that_name_it() -> None:
    async with running() as cluster:
        await cluster.heartbeat("a")
        await cluster.tick(1, beating=("a",))
        deployments = cluster.buckets[names.DEPLOYMENTS_BUCKET]
        for d in (deployment("web", ["back"]), deployment("db", ["store"])):
            await deployments.put(d.key, encode(d))
        await cluster.tick(1, beating=("a",))
        status = await cluster.buckets[names.DEPLOYMENT_STATUS_BUCKET].get("default.web")
        assert status is not None and status.value is not None
        assert decode(status.value, DeploymentStatus).pending_reason == (
            "network back does not exist"
        )
        assert cluster.loop.placements.items == {}
        seen = record_reconciles(cluster.loop)
        back = Network(metadata=ObjectMeta(name="back"))
        await cluster.buckets[names.NETWORKS_BUCKET].put("back", encode(back))
        await eventually(lambda: _value(cluster.loop.network_names()), lambda n: "back" in n)
        await cluster.loop.drain()
        assert set(seen) == {"default.web"}  # db waits for another network: not decided again
        assert sorted(p.deployment for p in cluster.loop.placements.values()) == ["web", "web"]
