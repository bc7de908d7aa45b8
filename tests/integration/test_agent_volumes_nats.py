"""The node agent (hollow runtime) waiting for its node's volume attachments over a real
NATS: the watch is filtered on its own node's keys, started only once a replica with a
claim lands, and the attachment of the volume the claim's status is Bound to, written by
volmgr's node part, starts the replica (a Released volume's attachment still naming the
claim never does)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import ClaimSource, ContainerTemplate, Volume, VolumeMount
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.contract.volume_state import ClaimStatus, VolumeAttachment
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from tests.agents import running_agent
from tests.waiting import eventually

NODE = "hollow-vol-1"
STREAM = f"KV_{names.VOLUME_ATTACHMENTS_BUCKET}"


def placed(replica: str, template: ContainerTemplate) -> Placement:
    return Placement(
        replica=replica,
        deployment="web",
        node=NODE,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


WITH_CLAIM = ContainerTemplate(
    image="example/app:1",
    volumes=[Volume(name="data", persistent_volume_claim=ClaimSource(claim_name="data"))],
    volume_mounts=[VolumeMount(name="data", mount_path="/data")],
)


async def attachment_filters(nats_url: str) -> list[str]:
    nc = await connect(nats_url, name="test-consumers")
    try:
        infos = await nc.jetstream().consumers_info(STREAM)
        return sorted(info.config.filter_subject or "" for info in infos)
    finally:
        await nc.close()


async def test_a_hollow_agent_waits_for_its_own_nodes_attachment_over_nats(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    statuses = buckets[names.REPLICA_STATUS_BUCKET]
    attachments = buckets[names.VOLUME_ATTACHMENTS_BUCKET]

    async def status(replica: str) -> ReplicaStatus | None:
        entry = await statuses.get(names.placement_key(NODE, "default", replica))
        return None if entry is None or entry.value is None else decode(entry.value, ReplicaStatus)

    async def put(attachment: VolumeAttachment) -> None:
        key = names.attachment_key(attachment.node, attachment.volume)
        await attachments.put(key, encode(attachment))

    flags = ("--runtime", "hollow", "--heartbeat-seconds", "0.2", "--state-dir", str(tmp_path))
    async with running_agent(nats_url, NODE, *flags):
        plain = placed("web-p1", ContainerTemplate(image="example/app:1"))
        await buckets[names.PLACEMENTS_BUCKET].put(plain.key, encode(plain))
        await eventually(lambda: status("web-p1"), lambda s: s is not None and s.state == "Running")
        assert await attachment_filters(nats_url) == []  # no volumes here: no watch

        web = placed("web-v1", WITH_CLAIM)
        await buckets[names.PLACEMENTS_BUCKET].put(web.key, encode(web))
        waiting = await eventually(
            lambda: status("web-v1"),
            lambda s: s is not None and s.message == "waiting for claim data to be bound",
        )
        assert waiting is not None and waiting.state == ReplicaState.CREATING
        assert await attachment_filters(nats_url) == [
            f"$KV.{names.VOLUME_ATTACHMENTS_BUCKET}.{names.placement_prefix(NODE)}"
        ]
        ready = VolumeAttachment(
            volume="pv-1",
            node=NODE,
            claim="default.data",
            ready=True,
            docker_volume=names.docker_volume_name("pv-1", "c"),
        )
        # The claim is Bound to pv-1; a Released volume's attachment here still names
        # the claim (deleted and made again under the same name), ready: never used.
        bound = ClaimStatus(name="data", phase="Bound", volume="pv-1")
        await buckets[names.CLAIM_STATUS_BUCKET].put("default.data", encode(bound))
        released = msgspec.structs.replace(
            ready, volume="pv-old", docker_volume=names.docker_volume_name("pv-old", "c")
        )
        await put(released)
        # Another node's attachment of the claim serves nothing here.
        await put(msgspec.structs.replace(ready, node="hollow-vol-2"))
        await put(msgspec.structs.replace(ready, ready=False))
        pending = await eventually(
            lambda: status("web-v1"),
            lambda s: s is not None and s.message == "waiting for volume pv-1 on this node",
        )
        assert pending is not None and pending.state == ReplicaState.CREATING
        await put(ready)
        await eventually(
            lambda: status("web-v1"), lambda s: s is not None and s.state == ReplicaState.RUNNING
        )
