"""A node agent's replica statuses written together on JetStream KV (StatusBook.write_all):
a pass's changes in flight at once, each compare-and-set, what another writer changed
meanwhile read again and written on its new revision, and a watch sees every write; and
read back at once, never from a store older than what the book wrote."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket
from corral_node_agent.status_book import StatusBook
from tests.api_requests import CONSUMER_REQUESTS, api_requests

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


async def test_statuses_are_loaded_at_once_and_never_from_a_store_older_than_the_book(
    buckets: dict[str, NatsBucket], nats_url: str
) -> None:
    """A load is one direct get of the node's statuses (no consumer made), unless the
    store answering is older than a status the book wrote: then it is read with a watch."""
    bucket = buckets[names.REPLICA_STATUS_BUCKET]
    book = StatusBook(bucket, NODE)
    assert await book.write_all(status(n, ReplicaState.RUNNING) for n in range(5)) == 5
    await bucket.put(names.placement_key("node-b", "default", "other"), b"{}")  # not this node's
    written = dict(book.written)
    async with api_requests(nats_url, CONSUMER_REQUESTS) as requests:
        await book.load()
    assert requests == []
    assert book.written == written
    # The book wrote a revision the store has not (a replica behind): read with a watch.
    newest = max(revision for _, revision in written.values())
    book.written["web-000"] = (written["web-000"][0], newest + 10)
    async with api_requests(nats_url, CONSUMER_REQUESTS) as requests:
        await book.load()
    assert any(".CREATE." in subject for subject in requests)
    assert book.written == written
