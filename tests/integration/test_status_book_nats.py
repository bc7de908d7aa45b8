"""A node agent's replica statuses written together on JetStream KV (StatusBook.write_all):
a pass's changes in flight at once, each compare-and-set, what another writer changed
meanwhile read again and written on its new revision, and a watch sees every write."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket
from corral_node_agent.status_book import StatusBook

NODE = "node-a"


def status(n: int, state: ReplicaState) -> ReplicaStatus:
    return ReplicaStatus(replica=f"web-{n:03}", deployment="web", node=NODE, state=state)


async def read_all(bucket: NatsBucket) -> dict[str, ReplicaStatus]:
    found: dict[str, ReplicaStatus] = {}
    async for entry in bucket.watch(names.placement_prefix(NODE)):
        if entry is None:
            break
        if entry.value is not None:
            found[entry.key] = decode(entry.value, ReplicaStatus)
    return found


async def test_a_pass_of_statuses_is_written_together_and_each_write_stays_conditional(
    buckets: dict[str, NatsBucket],
) -> None:
    bucket = buckets[names.REPLICA_STATUS_BUCKET]
    book = StatusBook(bucket, NODE)
    assert await book.write_all(status(n, ReplicaState.PENDING) for n in range(200)) == 200
    # Another writer (an agent that ran the node before, say) changes a tenth of them.
    theirs = [status(n, ReplicaState.FAILED) for n in range(0, 200, 10)]
    for other in theirs:
        entry = await bucket.get(other.key)
        assert entry is not None
        await bucket.update(other.key, b'{"replica": "theirs"}', entry.revision)
    running = [status(n, ReplicaState.RUNNING) for n in range(200)]
    assert await book.write_all(running) == 200
    stored = await read_all(bucket)
    assert len(stored) == 200
    assert {s.state for s in stored.values()} == {ReplicaState.RUNNING}
    assert await book.write_all(running) == 0  # what is stored: nothing to write
    for status_ in running[:3]:
        entry = await bucket.get(status_.key)
        known = book.written[status_.replica]
        assert entry is not None and entry.revision == known[1]  # revisions as stored
