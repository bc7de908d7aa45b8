"""The placements split into shards, one bucket each, read and written as one.

A cluster's placements may be kept in several buckets (`Cluster.placement_shards`), each
node's in one of them (`names.placement_shard`): an agent watches its own node's keys
with a subject filter, and nats-server reads past every other key of the bucket to find
them, so the work per placement grows with the nodes watching one bucket
(docs/architecture.md, "How far one placements bucket goes").

Each key belongs to the shard of its node (`names.placement_node`: the key's first
token), so every revision of one node's keys is of one stream, and what an agent is
told of its placements (a revision, docs/safety.md) is comparable with what its watch
delivered. Revisions of two shards are not: a watch of every shard is one watch per
shard (`ShardedMirror`, one `Mirror` each, each with its own echo), never one stream.

    placements = ShardedMirror(shard_buckets(buckets, cluster.placement_shards), Placement)
    placements.get(key)            # from its node's shard
    placements.newest(node)        # the newest revision of that node's keys
    await write_many(placements.bucket, writes)   # each write to its key's shard
    for mirror in placements.shards: ...          # one watch per shard: current, echoes

A cluster of one shard has one bucket, corral_placements, as before shards; a cluster
of more has corral_placements_0 ... _<n-1> (names.placements_buckets).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

from corral.contract import names
from corral.natsio.kv import Bucket, Entry, Mirror, Snapshot, Wakeups

log = logging.getLogger(__name__)
T = TypeVar("T")
B = TypeVar("B", bound=Bucket)


def shard_buckets(buckets: Mapping[str, B], shards: int) -> list[B]:
    """The placements' buckets of a cluster of `shards` shards, shard 0 first, from the
    buckets a service opened (corral.natsio.bus.open_buckets)."""
    return [buckets[name] for name in names.placements_buckets(shards)]


def node_placements_bucket(buckets: Mapping[str, B], shards: int, node: str) -> B:
    """The bucket holding `node`'s placements (what its agent watches)."""
    return buckets[names.placements_bucket_of(node, shards)]


class ShardedBucket:
    """The shards' buckets as one Bucket: each key read or written in its node's shard.

    A watch is of one node's keys (prefix "<node>.>"), or of every key when there is one
    shard: a watch of every shard would mix revisions of different streams."""

    def __init__(self, shards: Sequence[Bucket]) -> None:
        if not shards:
            raise ValueError("a sharded bucket needs at least one shard")
        self.shards = list(shards)
        self.name = shards[0].name if len(shards) == 1 else f"{shards[0].name}[{len(shards)}]"

    def shard_of(self, key: str) -> Bucket:
        """The bucket of `key` (a placement key, an agent's echo key, or a node prefix)."""
        node = names.placement_node(key)
        return self.shards[names.placement_shard(node, len(self.shards))]

    async def get(self, key: str) -> Entry | None:
        return await self.shard_of(key).get(key)

    async def leader_get(self, key: str) -> Entry | None:
        return await self.shard_of(key).leader_get(key)

    async def create(self, key: str, value: bytes) -> int:
        return await self.shard_of(key).create(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        return await self.shard_of(key).update(key, value, revision)

    async def put(self, key: str, value: bytes) -> int:
        return await self.shard_of(key).put(key, value)

    async def delete(self, key: str, revision: int | None = None) -> int:
        return await self.shard_of(key).delete(key, revision=revision)

    def watch(self, prefix: str = ">") -> AsyncIterator[Entry | None]:
        return self._one_shard(prefix, "watch").watch(prefix)

    async def snapshot(self, prefix: str = ">", *, floor: int = 0) -> Snapshot | None:
        return await self._one_shard(prefix, "snapshot").snapshot(prefix, floor=floor)

    def follow(
        self, prefix: str, wakeups: Wakeups, *, floor: int = 0
    ) -> AsyncIterator[Entry | None]:
        return self._one_shard(prefix, "follow").follow(prefix, wakeups, floor=floor)

    def _one_shard(self, prefix: str, how: str) -> Bucket:
        """The shard holding every key of `prefix` (one node's keys)."""
        if len(self.shards) == 1:
            return self.shards[0]
        if not names.placement_node(prefix) or "*" in names.placement_node(prefix):
            raise ValueError(
                f"{self.name}: a {how} of {prefix!r} would span shards; {how} one node's "
                "keys (<node>.>) or each shard's Mirror"
            )
        return self.shard_of(prefix)


class _ShardedItems(Mapping[str, tuple[T, int]]):
    """Every shard's items as one read-only mapping: each key as its node's shard has it
    (a key found in another shard is in none: ShardedMirror.misplaced)."""

    def __init__(self, owner: ShardedMirror[T]) -> None:
        self._owner = owner

    def __getitem__(self, key: str) -> tuple[T, int]:
        return self._owner.shard(key).items[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._owner.shard(key).items

    def __iter__(self) -> Iterator[str]:
        misplaced = self._owner.misplaced
        for index, shard in enumerate(self._owner.shards):
            if misplaced:
                yield from (key for key in shard.items if (index, key) not in misplaced)
            else:
                yield from shard.items

    def __len__(self) -> int:
        shards = self._owner.shards
        total = sum(len(shard.items) for shard in shards)
        return total - sum(1 for index, key in self._owner.misplaced if key in shards[index].items)


class ShardedMirror(Generic[T]):
    """A Mirror of every placements shard: one Mirror per shard (`shards`), read as one.

    Reads by key and by node go to the key's shard; `items` spans them all; `current`
    is True while every shard's watch is; `on_change(key)` is called for a change in any.
    `bucket` writes each key to its shard (for kv.write_many). What is per watch (its
    echo, how far it delivered) is read of each Mirror in `shards`.
    """

    def __init__(
        self,
        buckets: Sequence[Bucket],
        kind: type[T],
        on_change: Callable[[str], Any] | None = None,
        *,
        on_broken: Callable[[BaseException | None], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        share: Callable[[T], T] | None = None,
    ) -> None:
        self.bucket = ShardedBucket(buckets)
        self.kind = kind
        self.on_change = on_change
        self.shards: list[Mirror[T]] = [
            Mirror(
                bucket,
                kind,
                on_change=partial(self._changed, index),
                on_broken=on_broken,
                clock=clock,
                group_of=names.placement_node,
                share=share,
            )
            for index, bucket in enumerate(buckets)
        ]
        self.items: Mapping[str, tuple[T, int]] = _ShardedItems(self)
        # (shard, key) of keys found in a shard that is not their node's (written by
        # hand, or by a writer that routes otherwise). No agent watches them there, so
        # they are no placement: read as absent everywhere (never run, placed again).
        self.misplaced: set[tuple[int, str]] = set()

    def _changed(self, shard: int, key: str) -> None:
        shards = len(self.shards)  # one shard: every key is in its node's
        if shards > 1 and names.placement_shard(names.placement_node(key), shards) != shard:
            here = self.shards[shard]
            if key in here.items or key in here.unreadable:
                if (shard, key) not in self.misplaced:
                    log.warning(
                        "%s/%s is not in its node's shard of the placements: ignored",
                        here.bucket.name,
                        key,
                    )
                self.misplaced.add((shard, key))
            else:
                self.misplaced.discard((shard, key))
            return
        if self.on_change is not None:
            self.on_change(key)

    def shard(self, key: str) -> Mirror[T]:
        """The Mirror of `key`'s shard (by its node: names.placement_node)."""
        return self.shard_of_node(names.placement_node(key))

    def shard_of_node(self, node: str) -> Mirror[T]:
        return self.shards[names.placement_shard(node, len(self.shards))]

    @property
    def current(self) -> bool:
        return all(shard.current for shard in self.shards)

    @property
    def broken(self) -> bool:
        return any(shard.broken for shard in self.shards)

    @property
    def failures(self) -> int:
        return sum(shard.failures for shard in self.shards)

    @property
    def unreadable(self) -> frozenset[str]:
        misplaced = self.misplaced
        return frozenset(
            key
            for index, shard in enumerate(self.shards)
            for key in shard.unreadable
            if (index, key) not in misplaced
        )

    def values(self) -> list[T]:
        misplaced = self.misplaced
        return [
            value
            for index, shard in enumerate(self.shards)
            for key, (value, _) in shard.items.items()
            if (index, key) not in misplaced
        ]

    def get(self, key: str) -> T | None:
        return self.shard(key).get(key)

    def revision(self, key: str) -> int | None:
        return self.shard(key).revision(key)

    def newest(self, node: str) -> int:
        """The newest revision of `node`'s keys seen or written (0: none), in its shard."""
        return self.shard_of_node(node).newest(node)

    def apply(self, entry: Entry, *, from_watch: bool = False, value: T | None = None) -> None:
        self.shard(entry.key).apply(entry, from_watch=from_watch, value=value)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow every shard forever; started once each has replayed."""
        async with anyio.create_task_group() as tg:
            for shard in self.shards:
                await tg.start(shard.run)
            task_status.started()
