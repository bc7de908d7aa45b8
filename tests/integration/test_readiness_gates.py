"""Readiness through a real nats-server (docs/rollouts.md, Probes): the scheduler and
netmgr's cluster part run in-process and the test writes each ReplicaStatus as a node
agent running a readiness probe would (Running with `ready` False, then True). A
rollout waits for the new replica's readiness before it stops the old one, the
Deployment's ready count says so, and the Service's endpoints follow `ready`."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Network
from corral.contract.network_state import Endpoints
from corral.contract.state import DeploymentStatus, Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket
from tests.integration.cluster_part_harness import record
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import (
    deployment_json,
    placements,
    request,
    running_scheduler,
)
from tests.unit.netmgr_helpers import service
from tests.waiting import eventually


def agent_status(p: Placement, ip: str, ready: bool | None) -> ReplicaStatus:
    return ReplicaStatus(
        replica=p.replica,
        deployment=p.deployment,
        node=p.node,
        state=ReplicaState.RUNNING,
        template_hash=p.template_hash,
        ips={"default": ip},
        ready=ready,
        probes={} if ready is None else {"readiness": "ok" if ready else "HTTP 503"},
    )


async def test_a_rollout_waits_for_readiness_and_endpoints_follow_it(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    statuses = buckets[names.REPLICA_STATUS_BUCKET]
    endpoints = buckets[names.ENDPOINTS_BUCKET]

    async def endpoint_replicas() -> list[str]:
        found = await record(endpoints, "default.web", Endpoints)
        return [] if found is None else [a.replica for a in found.addresses]

    async def web_status() -> DeploymentStatus | None:
        entry = await buckets[names.DEPLOYMENT_STATUS_BUCKET].get("default.web")
        return None if entry is None else decode(entry.value, DeploymentStatus)

    async def placed() -> dict[str, Placement]:
        return await placements(buckets[names.PLACEMENTS_BUCKET])

    async with (
        running_scheduler(nats_url, nodes={"n1": {}}) as ctx,
        running_netmgr(nats_url) as net,
    ):
        await eventually(lambda: record(buckets[names.NETWORKS_BUCKET], "default", Network), bool)
        assert (await request(net.nc, "service", "apply", service("web"))).ok
        assert (await request(ctx.nc, "deployment", "apply", deployment_json("web", 1))).ok
        (old,) = (await eventually(placed, lambda p: len(p) == 1)).values()
        await statuses.put(old.key, encode(agent_status(old, "10.128.0.10", True)))
        assert await eventually(endpoint_replicas, lambda r: r == [old.replica])

        # A new template: one surge replica, which runs but is not ready yet.
        new_json = deployment_json("web", 1, image="corral-test/busybox:2")
        assert (await request(ctx.nc, "deployment", "apply", new_json)).ok
        both = await eventually(placed, lambda p: len(p) == 2)
        (new,) = (p for p in both.values() if p.replica != old.replica)
        await statuses.put(new.key, encode(agent_status(new, "10.128.0.11", False)))
        status = await eventually(
            web_status, lambda s: s is not None and s.updated == 1 and s.placed == 2
        )
        assert status is not None and status.ready == 1
        # Decided again on that status (the watch): still both placed, the old one serving.
        for _ in range(20):
            assert set(await placed()) == {old.key, new.key}
            assert await endpoint_replicas() == [old.replica]
            await eventually(web_status, lambda s: s is not None)

        # Ready: it becomes an endpoint, and the old replica is stopped.
        await statuses.put(new.key, encode(agent_status(new, "10.128.0.11", True)))
        assert await eventually(placed, lambda p: set(p) == {new.key})
        assert await eventually(endpoint_replicas, lambda r: r == [new.replica])
        done = await eventually(web_status, lambda s: s is not None and s.ready == 1)
        assert done is not None and (done.placed, done.updated) == (1, 1)

        # Failing its readiness probe again: it leaves the endpoints and the ready count,
        # and stays placed (readiness never restarts a container).
        await statuses.put(new.key, encode(agent_status(new, "10.128.0.11", False)))
        await eventually(endpoint_replicas, lambda r: r == [])
        await eventually(web_status, lambda s: s is not None and s.ready == 0)
        assert set(await placed()) == {new.key}
