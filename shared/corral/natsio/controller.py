"""The controller runtime: watches feed indexed caches, changes enqueue keys, workers
reconcile one key at a time (docs/architecture.md, "The controller runtime").

    deployments = Mirror(buckets[names.DEPLOYMENTS_BUCKET], Deployment)
    placements = ShardedMirror(shard_buckets(buckets, cluster.placement_shards), Placement)
    nodes = Mirror(buckets[names.NODES_BUCKET], Node)
    placement_changes = ChangeFeed(placements)
    # node -> the Deployments with a placement there (counted: one of two going keeps it)
    deployments_by_node = Index(
        placement_changes, by=lambda key, p: (p.node,), primary=lambda key, p: owner_key(p)
    )
    # Deployment -> its placements' keys
    placements_by_deployment = Index(placement_changes, by=lambda key, p: (owner_key(p),))

    controller = Controller(
        "scheduler", reconcile, workers=4, resync_seconds=30.0,
        resync_keys=lambda: deployments.items.keys(),
    )
    controller.watch(ChangeFeed(deployments))                        # its own key
    controller.watch(placement_changes, owners(lambda key, p: owner_key(p)))
    controller.watch(ChangeFeed(nodes), indexed_under(deployments_by_node))
    async with anyio.create_task_group() as tg:
        for mirror in (deployments, placements, nodes):
            await tg.start(mirror.run)     # the replays enqueue every key once
        await tg.start(controller.run)

`reconcile(key)` reads what it needs from the mirrors and indexes, decides, writes
(kv.write_many), and returns None (done until the next change) or
`Result(requeue_after=s)`. An exception is logged and the key retried with back-off;
it never stops the controller. Every key of the primary kind is enqueued again every
`resync_seconds` (level-triggered: nothing depends on having seen every change).

A `ChangeFeed` turns a Mirror's `on_change(key)` into `(key, old, new)` (None: absent),
skipping changes that leave the value equal (a replay, the watch echoing this process'
own write). An `Index` maps index values to primary keys and is updated per change of
one key in O(number of values of that key), never rebuilt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, ItemsView, Iterable, KeysView
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus
from prometheus_client import Counter, Histogram

from corral.contract.backoff import Backoff
from corral.natsio.kv import Mirror
from corral.natsio.sharded import ShardedMirror
from corral.natsio.workqueue import QueueShutDown, WorkQueue, add_in_slices

T = TypeVar("T")
log = logging.getLogger(__name__)

# (key, old, new): the value before and after the change; None: absent (deleted, never
# written, or unreadable: see Mirror.unreadable).
ChangeHandler = Callable[[str, T | None, T | None], Any]
# A change of a watched kind -> the primary keys to reconcile.
KeyMapper = Callable[[str, T | None, T | None], Iterable[str]]
# Whether a change (key, old, new) is of a kind that goes in a queue's prompt lane.
ChangeTest = Callable[[str, T | None, T | None], bool]

RECONCILES = Counter(
    "corral_controller_reconciles_total",
    "Reconciles by result: ok, requeue (asked to look again later), error (retried with back-off)",
    ["controller", "result"],
)
RECONCILE_SECONDS = Histogram(
    "corral_controller_reconcile_seconds",
    "Time one reconcile of one key took",
    ["controller"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RESYNC_KEYS = Counter(
    "corral_controller_resync_keys_total", "Keys enqueued by periodic resyncs", ["controller"]
)


# --- watching ------------------------------------------------------------------------


class ChangeFeed(Generic[T]):
    """The changes of one Mirror as (key, old, new), for indexes and controllers.

    It installs itself as the mirror's `on_change` (a callback set before is still called
    first, with every change as before). Handlers run in the order subscribed; one that
    raises is logged and never stops the mirror or the other handlers.
    """

    def __init__(self, mirror: Mirror[T] | ShardedMirror[T]) -> None:
        self.mirror = mirror
        self._previous = mirror.on_change
        # The value each handler last saw per key: the same objects the mirror holds.
        self._last: dict[str, T] = {key: value for key, (value, _) in mirror.items.items()}
        self._handlers: list[ChangeHandler[T]] = []
        mirror.on_change = self._changed

    def subscribe(self, handler: ChangeHandler[T]) -> None:
        self._handlers.append(handler)

    def items(self) -> ItemsView[str, T]:
        """Every key and value as the handlers last saw them."""
        return self._last.items()

    def _changed(self, key: str) -> None:
        try:
            if self._previous is not None:
                self._previous(key)
        finally:
            self._dispatch(key)

    def _dispatch(self, key: str) -> None:
        new = self.mirror.get(key)
        old = self._last.get(key)
        if new is None:
            self._last.pop(key, None)
        else:
            self._last[key] = new
        if old is new or old == new:
            return
        for handler in self._handlers:
            try:
                handler(key, old, new)
            except Exception:
                log.exception("a change handler of %s failed on %s", self.mirror.bucket.name, key)


class Index(Generic[T]):
    """Index values -> the primary keys of the objects that have them, kept per change.

    `by(key, value)` names the index values of one object (e.g. its node); `primary(key,
    value)` the primary key it stands for (default: its own key, e.g. a placement key; or
    its owner, e.g. its Deployment's key). Both must be pure functions of the object.
    Several objects with one primary key under one value are counted, so the primary
    key stays until the last of them goes.
    """

    def __init__(
        self,
        feed: ChangeFeed[T],
        by: Callable[[str, T], Iterable[str]],
        *,
        primary: Callable[[str, T], str] | None = None,
    ) -> None:
        self._by = by
        self._primary = primary
        self._refs: dict[str, dict[str, int]] = {}  # index value -> primary key -> count
        for key, value in list(feed.items()):
            self._add(key, value)
        feed.subscribe(self.changed)

    def get(self, value: str) -> frozenset[str]:
        """The primary keys under `value` (a copy: safe to hold across awaits)."""
        found = self._refs.get(value)
        return frozenset(found) if found else frozenset()

    def count(self, value: str) -> int:
        """How many distinct primary keys are under `value`."""
        return len(self._refs.get(value, ()))

    def values(self) -> KeysView[str]:
        """The index values that have at least one primary key (a live view)."""
        return self._refs.keys()

    def __contains__(self, value: object) -> bool:
        return value in self._refs

    def __len__(self) -> int:
        return len(self._refs)

    def changed(self, key: str, old: T | None, new: T | None) -> None:
        """Apply one change (a ChangeFeed calls this)."""
        if old is not None:
            self._remove(key, old)
        if new is not None:
            self._add(key, new)

    def _ref(self, key: str, value: T) -> str:
        return key if self._primary is None else self._primary(key, value)

    def _add(self, key: str, value: T) -> None:
        ref = self._ref(key, value)
        for index_value in set(self._by(key, value)):
            refs = self._refs.setdefault(index_value, {})
            refs[ref] = refs.get(ref, 0) + 1

    def _remove(self, key: str, value: T) -> None:
        ref = self._ref(key, value)
        for index_value in set(self._by(key, value)):
            refs = self._refs.get(index_value)
            if refs is None or ref not in refs:
                continue
            if refs[ref] <= 1:
                del refs[ref]
                if not refs:
                    del self._refs[index_value]
            else:
                refs[ref] -= 1


def owners(primary: Callable[[str, T], str]) -> KeyMapper[T]:
    """A change of an owned object enqueues its owner as it was before and after (a
    placement moved from one Deployment to another enqueues both)."""

    def mapper(key: str, old: T | None, new: T | None) -> Iterable[str]:
        return {primary(key, value) for value in (old, new) if value is not None}

    return mapper


def indexed_under(index: Index[Any]) -> KeyMapper[Any]:
    """A change of object `key` enqueues the primary keys `index` holds under `key` (a
    node's change enqueues the Deployments with placements on it)."""

    def mapper(key: str, old: object, new: object) -> Iterable[str]:
        return index.get(key)

    return mapper


# --- reconciling ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """What a reconcile asks for: None, done until the next change; else look again after
    `requeue_after` seconds (a timer of its own, e.g. a replica's grace period), in the
    lane the key came from (`prompt` None: a retry of the same work, e.g. after a
    conflict) or the one `prompt` says (False for a timer of its own: a deadline is
    not urgent because the change that set it was)."""

    requeue_after: float | None = None
    prompt: bool | None = None

    def __post_init__(self) -> None:
        if self.requeue_after is not None and not (
            math.isfinite(self.requeue_after) and self.requeue_after >= 0
        ):
            raise ValueError(
                f"Result.requeue_after must be a finite number of seconds >= 0, "
                f"got {self.requeue_after!r}"
            )


Reconcile = Callable[[str], Awaitable[Result | None]]


class Controller:
    """N workers reconciling keys from a WorkQueue, with back-off and periodic resync.

    Runs until cancelled (a reconcile in progress is cancelled at its next await) or
    until `shut_down()` (workers finish what is being processed and what is queued,
    then `run` returns).
    """

    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        workers: int = 1,
        resync_seconds: float | None = None,
        resync_keys: Callable[[], Iterable[str]] | None = None,
        backoff: Backoff | None = None,
        reconcile_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError(f"Controller workers must be at least 1, got {workers}")
        if resync_seconds is not None:
            if not (math.isfinite(resync_seconds) and resync_seconds > 0):
                raise ValueError(f"Controller resync_seconds must be > 0, got {resync_seconds}")
            if resync_keys is None:
                raise ValueError("Controller resync_keys is needed when resync_seconds is set")
        if reconcile_timeout is not None and not reconcile_timeout > 0:
            raise ValueError(f"Controller reconcile_timeout must be > 0, got {reconcile_timeout}")
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.resync_seconds = resync_seconds
        self.resync_keys = resync_keys
        self.reconcile_timeout = reconcile_timeout
        self.clock = clock
        self.queue = WorkQueue(name, backoff=backoff, clock=clock)
        self._ok = RECONCILES.labels(name, "ok")
        self._requeue = RECONCILES.labels(name, "requeue")
        self._error = RECONCILES.labels(name, "error")
        self._seconds = RECONCILE_SECONDS.labels(name)
        self._resync_keys = RESYNC_KEYS.labels(name)

    # --- feeding ---------------------------------------------------------------------

    def enqueue(self, key: str, *, prompt: bool = False) -> None:
        """Reconcile `key` soon (sync: callable from any callback); `prompt`: in the
        queue's prompt lane (WorkQueue), for a change in what runs."""
        self.queue.add(key, prompt=prompt)

    def enqueue_all(self, keys: Iterable[str], *, prompt: bool = False) -> None:
        """Reconcile each of `keys` soon (e.g. the Deployments on a node judged lost)."""
        self.queue.add_all(keys, prompt=prompt)

    def enqueue_after(self, key: str, delay: float) -> None:
        self.queue.add_after(key, delay)

    def watch(
        self,
        feed: ChangeFeed[T],
        to_keys: KeyMapper[T] | None = None,
        *,
        prompt: bool | ChangeTest[T] = False,
    ) -> None:
        """Enqueue on every change in `feed`: the changed key itself (the primary kind), or
        the primary keys `to_keys(key, old, new)` names (a secondary kind). `prompt`: in
        the queue's prompt lane (WorkQueue), every change or those `prompt(key, old, new)`
        says (a replica going down must not wait behind a burst of placing)."""
        queue = self.queue
        is_prompt: ChangeTest[T] = prompt if callable(prompt) else (lambda *_: prompt)
        if to_keys is None:

            def own_key(key: str, old: T | None, new: T | None) -> None:
                queue.add(key, prompt=is_prompt(key, old, new))

            feed.subscribe(own_key)
        else:
            mapper = to_keys

            def mapped(key: str, old: T | None, new: T | None) -> None:
                queue.add_all(mapper(key, old, new), prompt=is_prompt(key, old, new))

            feed.subscribe(mapped)

    async def resync(self) -> int:
        """Enqueue every key of the primary kind now; returns how many."""
        if self.resync_keys is None:
            return 0
        added = await add_in_slices(self.queue, list(self.resync_keys()))
        self._resync_keys.inc(added)
        return added

    def shut_down(self) -> None:
        self.queue.shut_down()

    # --- running ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            if self.resync_seconds is not None:
                tg.start_soon(self._resync_forever, self.resync_seconds)
            async with anyio.create_task_group() as workers:
                for _ in range(self.workers):
                    workers.start_soon(self._work)
                task_status.started()
            tg.cancel_scope.cancel()  # the workers ended (shut down): so does the resync

    async def _resync_forever(self, every: float) -> None:
        while True:
            await anyio.sleep(every)
            await self.resync()

    async def _work(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            try:
                await self.process(key)
            finally:
                self.queue.done(key)

    async def process(self, key: str) -> None:
        """Reconcile `key` once and queue what follows (a worker calls this with a key it
        took from the queue). A retry or requeue goes back to the lane it came from."""
        started = self.clock()
        prompt = self.queue.taken_prompt(key)
        try:
            if self.reconcile_timeout is None:
                result = await self.reconcile(key)
            else:
                with anyio.fail_after(self.reconcile_timeout):
                    result = await self.reconcile(key)
        except Exception as error:
            delay = self.queue.add_rate_limited(key, prompt=prompt)
            failures = self.queue.failures(key)
            self._error.inc()
            log.warning(
                "%s: reconcile of %s failed (%d in a row; again in %.3g s): %s: %s",
                self.name,
                key,
                failures,
                delay,
                type(error).__name__,
                error,
                exc_info=failures == 1,  # the trace once, not at every retry
            )
            return
        finally:
            self._seconds.observe(max(0.0, self.clock() - started))
        self.queue.forget(key)
        if isinstance(result, Result) and result.requeue_after is not None:
            self._requeue.inc()
            lane = prompt if result.prompt is None else result.prompt
            self.queue.add_after(key, result.requeue_after, prompt=lane)
        else:
            self._ok.inc()
