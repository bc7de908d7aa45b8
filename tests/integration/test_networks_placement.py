"""The scheduler and a hollow node agent on a real nats-server, the test playing netmgr's
cluster part: a Deployment naming a network without a record waits, Pending with that
reason, and runs (its replicas reporting addresses on the network) once the record is
written."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Network
from corral.contract.specs import ObjectMeta
from corral.contract.state import DeploymentStatus, ReplicaState, ReplicaStatus
from corral.natsio.cluster import read_cluster_identity
from corral.natsio.kv import NatsBucket
from corral_node_agent.hollow_runtime import hollow_ip
from tests.agents import running_agent
from tests.integration.scheduler_harness import deployment_json, request, running_scheduler
from tests.waiting import eventually


async def status_of(buckets: dict[str, NatsBucket], deployment: str) -> DeploymentStatus | None:
    entry = await buckets[names.DEPLOYMENT_STATUS_BUCKET].get(f"default.{deployment}")
    return None if entry is None or not entry.value else decode(entry.value, DeploymentStatus)


async def replica_statuses(buckets: dict[str, NatsBucket]) -> list[ReplicaStatus]:
    found = []
    async for entry in buckets[names.REPLICA_STATUS_BUCKET].watch():
        if entry is None:
            break
        if entry.value:
            found.append(decode(entry.value, ReplicaStatus))
    return found


async def test_a_deployment_waits_for_its_network_and_runs_on_it_once_it_exists(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    agent_flags = ("--runtime", "hollow", "--heartbeat-seconds", "0.5", "--networks", "on")
    async with (
        running_scheduler(nats_url) as scheduler,
        running_agent(nats_url, "node-1", *agent_flags),
    ):
        applied = await request(
            scheduler.nc, "deployment", "apply", deployment_json("web", 2, networks=["back"])
        )
        assert applied.ok, applied.error
        waiting = await eventually(
            lambda: status_of(buckets, "web"), lambda s: s is not None and s.pending == 2
        )
        assert waiting is not None and waiting.pending_reason == "network back does not exist"
        back = Network(metadata=ObjectMeta(name="back"))
        await buckets[names.NETWORKS_BUCKET].put("back", encode(back))  # netmgr made it
        running = await eventually(
            lambda: replica_statuses(buckets),
            lambda found: (
                len(found) == 2 and all(s.state == ReplicaState.RUNNING and s.ips for s in found)
            ),
        )
    identity = await read_cluster_identity(buckets[names.CLUSTER_BUCKET])
    assert identity is not None
    for status in running:
        assert status.ips == {"back": hollow_ip("back", status.replica, identity.id)}
