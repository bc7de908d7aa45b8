"""The identity read by direct get (any replica of corral_cluster answers, one cut off
from its leader included): a replica's answer is taken only when it is the node's own
cluster; anything else is read again from the stream's leader, and the checks the
agent acts on (around a new read of its placements) read the leader only."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.state import Cluster
from corral.natsio.kv import Entry, MemoryBucket
from corral_node_agent.local_record import LocalRecord, LocalRecordFile
from corral_node_agent.membership import Membership
from corral_node_agent.safety import Identity

NODE = "node-a"


class LaggingReplica(MemoryBucket):
    """A bucket whose replica answers an old identity; its leader holds the current."""

    def __init__(self, replica_says: str, leader_says: str) -> None:
        super().__init__("cluster")
        self.replica = Entry(names.CLUSTER_KEY, encode(Cluster(id=replica_says)), 1)
        self._write(names.CLUSTER_KEY, encode(Cluster(id=leader_says)))
        self.reads: list[str] = []

    async def get(self, key: str) -> Entry | None:
        self.reads.append("replica")
        return self.replica

    async def leader_get(self, key: str) -> Entry | None:
        self.reads.append("leader")
        return self.items.get(key)


def member_of(tmp_path: Path, cluster_id: str, bucket: MemoryBucket) -> Membership:
    local = LocalRecordFile(tmp_path)
    local.save(LocalRecord(node=NODE, cluster_id=cluster_id))
    return Membership(NODE, bucket, local)


@pytest.mark.parametrize(
    ("replica_says", "reads"),
    [
        ("c-new", ["replica"]),  # the node's own cluster: enough for the periodic check
        # Adopted into the new store, a replica cut off since the wipe still says the
        # old id; taken alone it made the node Held (which never stops replicas at F).
        ("c-old", ["replica", "leader"]),
    ],
)
async def test_a_replica_is_believed_only_when_it_says_the_nodes_own_cluster(
    tmp_path: Path, replica_says: str, reads: list[str]
) -> None:
    bucket = LaggingReplica(replica_says, "c-new")
    membership = member_of(tmp_path, "c-new", bucket)
    await membership.check()  # the first read: from the leader
    assert membership.identity == Identity.RECOGNISED and bucket.reads == ["leader"]
    bucket.reads.clear()
    await membership.check()
    assert membership.identity == Identity.RECOGNISED and bucket.reads == reads


async def test_before_acting_only_the_leader_is_asked_and_no_replica_lifts_its_verdict(
    tmp_path: Path,
) -> None:
    # The store was wiped and made anew (c-new); a replica behind still says c-old, the
    # node's own: taken, the node would act on the new store's empty placements. And
    # once the leader said Mismatch (Held: nothing removed, even cut off), that replica
    # believed would lift Held, and the agent cut off later removed its replicas at F.
    bucket = LaggingReplica("c-old", "c-new")
    membership = member_of(tmp_path, "c-old", bucket)
    await membership.check(from_leader=True)
    assert membership.identity == Identity.MISMATCH and bucket.reads == ["leader"]
    bucket.reads.clear()
    await membership.check()
    assert membership.identity == Identity.MISMATCH and bucket.reads == ["leader"]


async def test_a_replica_read_spanning_another_checks_verdict_is_void(tmp_path: Path) -> None:
    # The periodic check asks a replica (Recognised then); meanwhile the store is wiped
    # and a check before a new watch reads Mismatch from the leader. The replica, behind
    # the wipe, then answers the node's old id: that must not lift the Mismatch.
    bucket = GatedReplica("c-old", "c-old")
    membership = member_of(tmp_path, "c-old", bucket)
    await membership.check(from_leader=True)
    assert membership.identity == Identity.RECOGNISED
    async with anyio.create_task_group() as tg:
        tg.start_soon(membership.check)  # the periodic check: waits on the replica
        await bucket.asked.wait()
        bucket._write(names.CLUSTER_KEY, encode(Cluster(id="c-new")))  # wiped, made anew
        await membership.check(from_leader=True)
        assert membership.identity == Identity.MISMATCH
        bucket.answer.set()
    assert membership.identity == Identity.MISMATCH


class GatedReplica(LaggingReplica):
    """A replica that answers only when the test lets it."""

    def __init__(self, replica_says: str, leader_says: str) -> None:
        super().__init__(replica_says, leader_says)
        self.asked = anyio.Event()
        self.answer = anyio.Event()

    async def get(self, key: str) -> Entry | None:
        self.asked.set()
        await self.answer.wait()
        return await super().get(key)
