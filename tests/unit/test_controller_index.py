"""Change feeds and indexes kept from a Mirror's changes: (key, old, new) per real change,
indexes updated per changed key (never rebuilt), counted owners, and changes of a
secondary kind mapped to the primary keys to reconcile."""

from __future__ import annotations

import uuid
from collections import Counter

import anyio
import msgspec

from corral.contract.codec import encode
from corral.natsio.controller import ChangeFeed, Controller, Index, indexed_under, owners
from corral.natsio.kv import Entry, MemoryBucket, Mirror, write_record
from corral.natsio.workqueue import WorkQueue
from tests.waiting import eventually


class Pod(msgspec.Struct, frozen=True):
    """A stand-in for a placement: where it runs and who owns it."""

    node: str
    owner: str
    cpu: int = 1


class Revisions:
    def __init__(self) -> None:
        self.revision = 0

    def next(self) -> int:
        self.revision += 1
        return self.revision


def put(mirror: Mirror[Pod], revisions: Revisions, key: str, pod: Pod) -> None:
    mirror.apply(Entry(key, encode(pod), revisions.next()))


def delete(mirror: Mirror[Pod], revisions: Revisions, key: str) -> None:
    mirror.apply(Entry(key, None, revisions.next()))


def pods() -> tuple[Mirror[Pod], Revisions]:
    return Mirror(MemoryBucket("pods"), Pod), Revisions()


def by_node(key: str, pod: Pod) -> tuple[str]:
    return (pod.node,)


def owner_of(key: str, pod: Pod) -> str:
    return pod.owner


def test_an_index_follows_adds_moves_and_deletes_of_one_key() -> None:
    mirror, revisions = pods()
    index = Index(ChangeFeed(mirror), by_node)
    put(mirror, revisions, "p1", Pod("n1", "web"))
    put(mirror, revisions, "p2", Pod("n1", "web"))
    assert index.get("n1") == {"p1", "p2"}
    put(mirror, revisions, "p1", Pod("n2", "web"))  # moved
    assert index.get("n1") == {"p2"}
    assert index.get("n2") == {"p1"}
    delete(mirror, revisions, "p2")
    assert "n1" not in index  # an emptied value is gone, not kept empty
    assert set(index.values()) == {"n2"}
    assert index.get("n1") == frozenset()
    delete(mirror, revisions, "p1")
    assert len(index) == 0


def test_an_owner_stays_under_a_value_until_its_last_object_there_goes() -> None:
    mirror, revisions = pods()
    owners_by_node = Index(ChangeFeed(mirror), by_node, primary=owner_of)
    put(mirror, revisions, "p1", Pod("n1", "web"))
    put(mirror, revisions, "p2", Pod("n1", "web"))
    put(mirror, revisions, "p3", Pod("n1", "db"))
    assert owners_by_node.get("n1") == {"web", "db"}
    assert owners_by_node.count("n1") == 2
    delete(mirror, revisions, "p1")
    assert owners_by_node.get("n1") == {"web", "db"}  # p2 still runs there
    delete(mirror, revisions, "p2")
    assert owners_by_node.get("n1") == {"db"}


def test_one_change_touches_only_that_key_never_the_whole_index() -> None:
    mirror, revisions = pods()
    calls = 0

    def counted(key: str, pod: Pod) -> tuple[str]:
        nonlocal calls
        calls += 1
        return (pod.node,)

    index = Index(ChangeFeed(mirror), counted)
    for number in range(1000):
        put(mirror, revisions, f"p{number}", Pod(f"n{number % 10}", "web"))
    calls = 0
    put(mirror, revisions, "p7", Pod("n3", "web"))
    assert calls == 2  # the old value out, the new one in: not 1000
    delete(mirror, revisions, "p8")
    assert calls == 3
    assert index.count("n3") == 101 and index.count("n7") == 99 and index.count("n8") == 99


def test_a_feed_reports_old_and_new_and_skips_changes_that_change_nothing() -> None:
    mirror, revisions = pods()
    seen: list[tuple[str, Pod | None, Pod | None]] = []
    before: list[str] = []
    mirror.on_change = before.append  # a callback set before the feed: still called
    feed = ChangeFeed(mirror)
    feed.subscribe(lambda key, old, new: seen.append((key, old, new)))
    put(mirror, revisions, "p1", Pod("n1", "web"))
    put(mirror, revisions, "p1", Pod("n1", "web"))  # the watch echoing an own write
    put(mirror, revisions, "p1", Pod("n2", "web"))
    delete(mirror, revisions, "p1")
    delete(mirror, revisions, "p1")
    assert seen == [
        ("p1", None, Pod("n1", "web")),
        ("p1", Pod("n1", "web"), Pod("n2", "web")),
        ("p1", Pod("n2", "web"), None),
    ]
    assert before == ["p1"] * 5


def test_an_unreadable_record_is_seen_as_gone_by_the_indexes() -> None:
    mirror, revisions = pods()
    index = Index(ChangeFeed(mirror), by_node)
    put(mirror, revisions, "p1", Pod("n1", "web"))
    mirror.apply(Entry("p1", b"{not json", revisions.next()))
    assert "p1" in mirror.unreadable
    assert index.get("n1") == frozenset()


def test_a_failing_handler_neither_stops_the_others_nor_the_mirror() -> None:
    mirror, revisions = pods()
    feed = ChangeFeed(mirror)

    def broken(key: str, old: Pod | None, new: Pod | None) -> None:
        raise RuntimeError("bug in a handler")

    feed.subscribe(broken)
    index = Index(feed, by_node)
    put(mirror, revisions, "p1", Pod("n1", "web"))
    put(mirror, revisions, "p2", Pod("n2", "web"))
    assert mirror.get("p2") == Pod("n2", "web")
    assert index.get("n1") == {"p1"} and index.get("n2") == {"p2"}


def test_an_index_made_after_the_mirror_filled_starts_with_its_items() -> None:
    mirror, revisions = pods()
    put(mirror, revisions, "p1", Pod("n1", "web"))
    feed = ChangeFeed(mirror)
    index = Index(feed, by_node)
    assert index.get("n1") == {"p1"}
    delete(mirror, revisions, "p1")
    assert len(index) == 0


async def test_changes_of_secondary_kinds_enqueue_their_primary_keys() -> None:
    async def reconcile(key: str) -> None:
        return None

    controller = Controller(f"test-{uuid.uuid4().hex[:8]}", reconcile)
    queue = controller.queue
    placements, revisions = pods()
    nodes: Mirror[Pod] = Mirror(MemoryBucket("nodes"), Pod)
    placement_changes = ChangeFeed(placements)
    owners_by_node = Index(placement_changes, by_node, primary=owner_of)
    controller.watch(placement_changes, owners(owner_of))
    controller.watch(ChangeFeed(nodes), indexed_under(owners_by_node))

    put(placements, revisions, "p1", Pod("n1", "web"))
    put(placements, revisions, "p2", Pod("n2", "db"))
    assert await drained(queue) == {"web", "db"}

    put(placements, revisions, "p1", Pod("n1", "api"))  # moved to another owner: both
    assert await drained(queue) == {"web", "api"}

    nodes.apply(Entry("n1", encode(Pod("n1", "-")), 1))  # a node changed: its owners only
    assert await drained(queue) == {"api"}

    delete(placements, revisions, "p2")  # a deletion still names its owner
    assert await drained(queue) == {"db"}


async def drained(queue: WorkQueue) -> set[str]:
    """Every key queued now, each taken and marked done."""
    keys = set()
    while len(queue):
        key = await queue.get()
        queue.done(key)
        keys.add(key)
    return keys


async def test_a_write_to_the_bucket_reaches_the_reconcile_of_its_owner() -> None:
    reconciled: Counter[str] = Counter()

    async def reconcile(key: str) -> None:
        reconciled[key] += 1

    bucket = MemoryBucket("pods")
    mirror = Mirror(bucket, Pod)
    feed = ChangeFeed(mirror)
    placements_by_owner = Index(feed, lambda key, pod: (pod.owner,))
    controller = Controller(f"test-{uuid.uuid4().hex[:8]}", reconcile, workers=2)
    controller.watch(feed, owners(owner_of))
    await write_record(bucket, "p1", Pod("n1", "web"), None)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)  # the replay enqueues what is stored
        await tg.start(controller.run)
        await eventually(lambda: _count(reconciled, "web"), lambda n: n == 1)
        await write_record(bucket, "p2", Pod("n2", "db"), None)
        await eventually(lambda: _count(reconciled, "db"), lambda n: n == 1)
        tg.cancel_scope.cancel()
    assert placements_by_owner.get("db") == {"p2"}


async def _count(counter: Counter[str], key: str) -> int:
    return counter[key]
