"""A store written before keys carried the namespace is moved to the keys of now by
its owners at start, and nothing running is replaced for it."""

from __future__ import annotations

import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import DeploymentStatus, Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket
from tests.integration.scheduler_harness import running_scheduler
from tests.integration.test_cluster_hollow import hollow_agent
from tests.waiting import eventually

NODE = "node-1"


async def keys(bucket: NatsBucket) -> set[str]:
    found: set[str] = set()
    async for entry in bucket.watch():
        if entry is None:
            break
        if entry.value is not None and "_echo" not in entry.key:
            found.add(entry.key)
    return found


async def write_a_store_of_before_namespaces(buckets: dict[str, NatsBucket]) -> list[str]:
    """A Deployment of 2 replicas as a corral of before namespaces stored it; the
    replicas' names."""
    template = ContainerTemplate(image="app:1")
    web = Deployment(
        metadata=ObjectMeta(name="web", generation=1, uid="u-1"),
        spec=DeploymentSpec(replicas=2, template=template),
    )

    # Records of then had no namespace field: take it out of what is stored.
    def legacy(record: object) -> bytes:
        document = msgspec.json.decode(encode(record))
        document.pop("namespace", None)
        return msgspec.json.encode(document)

    await buckets[names.DEPLOYMENTS_BUCKET].put("web", encode(web))
    await buckets[names.DEPLOYMENT_STATUS_BUCKET].put(
        "web", legacy(DeploymentStatus(name="web", observed_generation=1, replicas=2))
    )
    replicas = ["web-bbbbb", "web-ccccc"]
    for replica in replicas:
        placement = Placement(
            replica=replica,
            deployment="web",
            node=NODE,
            template=template,
            template_hash=template.template_hash(),
            generation=1,
        )
        await buckets[names.PLACEMENTS_BUCKET].put(f"{NODE}.{replica}", legacy(placement))
        status = ReplicaStatus(
            replica=replica, deployment="web", node=NODE, state=ReplicaState.PENDING
        )
        await buckets[names.REPLICA_STATUS_BUCKET].put(f"{NODE}.{replica}", legacy(status))
    return replicas


async def test_a_store_from_before_namespaces_is_moved_and_its_replicas_keep_their_names(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    replicas = await write_a_store_of_before_namespaces(buckets)
    async with running_scheduler(nats_url), hollow_agent(nats_url, NODE):
        new_placements = {names.placement_key(NODE, "default", r) for r in replicas}
        assert await keys(buckets[names.DEPLOYMENTS_BUCKET]) == {"default.web"}
        assert await eventually(
            lambda: keys(buckets[names.PLACEMENTS_BUCKET]), lambda k: k == new_placements
        )

        async def running() -> set[str]:
            found = set()
            for key in await keys(buckets[names.REPLICA_STATUS_BUCKET]):
                entry = await buckets[names.REPLICA_STATUS_BUCKET].get(key)
                assert entry is not None and entry.value is not None
                if decode(entry.value, ReplicaStatus).state == ReplicaState.RUNNING:
                    found.add(key)
            return found

        # the agent moved its statuses too, and its replicas run under their old names
        await eventually(running, lambda k: k == new_placements)
        assert await keys(buckets[names.REPLICA_STATUS_BUCKET]) == new_placements
        status = await eventually(
            lambda: buckets[names.DEPLOYMENT_STATUS_BUCKET].get("default.web"),
            lambda e: (
                e is not None
                and e.value is not None
                and decode(e.value, DeploymentStatus).ready == 2
            ),
        )
        assert status is not None
        assert await keys(buckets[names.DEPLOYMENT_STATUS_BUCKET]) == {"default.web"}
