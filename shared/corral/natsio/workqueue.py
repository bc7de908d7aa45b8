"""A de-duplicating work queue of keys, as client-go's workqueue: the heart of a controller.

    queue = WorkQueue("scheduler")
    queue.add("default.web")            # from a watch callback: sync, O(1)
    key = await queue.get()             # a worker takes it: no other worker gets it now
    try: ...reconcile key...
    finally: queue.done(key)

The rules (docs/architecture.md, "The controller runtime"):

- A key added while it waits is queued once: ten changes of one Deployment before a
  worker gets to it are one reconcile.
- A key added while a worker processes it is not handed to another worker; it is
  queued again when `done(key)` is called, so the change is never lost and one key
  is never processed by two workers at once.
- `add_after(key, delay)` queues it once the delay has passed (the earliest of several
  pending delays wins); `add_rate_limited(key)` does so after the key's next back-off
  (corral.contract.backoff: first, first*factor, ... capped), and `forget(key)` resets
  that back-off once the key succeeds.
- `shut_down()` stops taking keys; workers get what is queued, then QueueShutDown.
- Two lanes. `add(key, prompt=True)` queues a key in the prompt lane: changes in what
  runs (a replica's status, a node judged lost), which must not wait behind a burst of
  new work (a hundred Deployments applied at once, each placing a thousand replicas).
  While both lanes hold keys, a worker takes from the lane that is owed time: the
  workers' seconds on keys taken while both lanes held keys are kept as a balance
  (time-fair, not key-fair: a prompt key may be a status to count, a normal one may
  place a thousand replicas), carried over while a lane is empty (a lane whose keys
  come one at a time still gets its half), and bounded by the longest such key (neither
  lane saves up a credit that would starve the other; a lane alone saves up none); a
  lone lane has every turn. A key is queued once: added `prompt` while it waits in the
  other lane, it moves to the prompt lane (in a busy cluster every Deployment waits in
  the other lane for its own changes, and a node lost must not leave its Deployments
  there); added without, it stays where it is.

Delays are measured on `clock` (monotonic by default). A waiting `get` sleeps until the
next delayed key is due, or until `wake()`: a test with a fake clock advances it and
calls `wake()`.

Metrics (Prometheus, labelled only by the queue's name, a constant chosen in code,
never by a key): depth, delayed keys, adds, retries, the wait of the key at the head,
the longest running key, and the time keys wait between add and get.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import anyio
import anyio.lowlevel
from prometheus_client import Counter, Gauge, Histogram

from corral.contract.backoff import Backoff

_NAME: Final = ["name"]
DEPTH = Gauge("corral_workqueue_depth", "Keys queued and ready for a worker", _NAME)
PROMPT_DEPTH = Gauge(
    "corral_workqueue_prompt_depth", "Of the keys queued and ready, those in the prompt lane", _NAME
)
DELAYED = Gauge("corral_workqueue_delayed", "Keys waiting for a delay (back-off, requeue)", _NAME)
ADDS = Counter("corral_workqueue_adds_total", "Keys added (before de-duplication)", _NAME)
RETRIES = Counter("corral_workqueue_retries_total", "Keys requeued with back-off", _NAME)
HEAD_AGE = Gauge(
    "corral_workqueue_head_age_seconds",
    "How long the key at the head of the queue has waited",
    _NAME,
)
LONGEST_RUNNING = Gauge(
    "corral_workqueue_longest_running_seconds",
    "How long the key processed for the longest time so far has been processed",
    _NAME,
)
QUEUE_SECONDS = Histogram(
    "corral_workqueue_queue_seconds",
    "From a key added (or due) to a worker taking it",
    _NAME,
    buckets=(0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Keys the periodic tasks (resync, delayed promotion) handle between two checkpoints, so
# 100,000 keys never hold the event loop in one go.
CHECKPOINT_EVERY: Final = 1000


class QueueShutDown(Exception):
    """The queue was shut down and nothing is left in it."""


class WorkQueue:
    def __init__(
        self,
        name: str,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name:
            raise ValueError("WorkQueue name must not be empty (it labels the metrics)")
        self.name = name
        # The back-off rule per key (its first, most and factor; the state is a count).
        self.backoff = backoff if backoff is not None else Backoff(first=0.05, most=30.0)
        self.clock = clock
        # The two lanes (normal, prompt): ready keys in order, as (entry, key). A key
        # ready has one live entry (`_entry`); one that moved to the prompt lane leaves
        # a void entry behind, skipped when it comes up.
        self._lanes: tuple[deque[tuple[int, str]], deque[tuple[int, str]]] = (deque(), deque())
        self._entry: dict[str, int] = {}  # ready key -> its live entry
        self._live = [0, 0]  # live entries per lane
        self._entries = 0  # entries made: the next one's number
        self._dirty: dict[str, float] = {}  # keys to process -> since when they wait
        self._prompt: set[str] = set()  # of `_dirty`, those in the prompt lane
        # keys a worker has -> since when, whether it took them from the prompt lane, and
        # whether the other lane held keys then (its time counts towards the balance)
        self._processing: dict[str, tuple[float, bool, bool]] = {}
        # The workers' seconds on the prompt lane's keys less those on the other's, each
        # counted only when taken while the other lane held keys too, within +-_longest
        # (the longest such a key took): the prompt lane has the next turn while it is
        # not ahead.
        self._balance = 0.0
        self._longest = 0.0
        self._failures: dict[str, int] = {}  # consecutive failures per key
        self._due: dict[str, float] = {}  # delayed keys -> when they are due
        self._due_prompt: set[str] = set()  # of `_due`, those due in the prompt lane
        self._timers: list[tuple[float, int, str]] = []  # heap of (due, order, key)
        self._order = 0
        self._getters: deque[anyio.Event] = deque()  # one Event per waiting get()
        self._shut_down = False
        self._adds = ADDS.labels(name)
        self._retries = RETRIES.labels(name)
        self._queue_seconds = QUEUE_SECONDS.labels(name)
        DEPTH.labels(name).set_function(lambda: len(self))
        PROMPT_DEPTH.labels(name).set_function(self.prompt_waiting)
        DELAYED.labels(name).set_function(lambda: len(self._due))
        HEAD_AGE.labels(name).set_function(self.head_age)
        LONGEST_RUNNING.labels(name).set_function(self.longest_running)

    # --- state -----------------------------------------------------------------------

    def __len__(self) -> int:
        """Keys queued and ready for a worker (not those being processed or delayed)."""
        return len(self._entry)

    def prompt_waiting(self) -> int:
        """Keys queued and ready in the prompt lane."""
        return self._live[1]

    def __contains__(self, key: object) -> bool:
        """True while `key` waits to be processed (queued, or added during processing)."""
        return key in self._dirty

    def processing(self, key: str) -> bool:
        return key in self._processing

    def taken_prompt(self, key: str) -> bool:
        """Whether a worker took `key`, being processed, from the prompt lane (its
        requeue goes back there)."""
        taken = self._processing.get(key)
        return taken is not None and taken[1]

    def due_in(self, key: str) -> float | None:
        """Seconds until a delayed `key` is due (0 when overdue); None: not delayed."""
        due = self._due.get(key)
        return None if due is None else max(0.0, due - self.clock())

    def failures(self, key: str) -> int:
        """Consecutive failures of `key` since it was last forgotten."""
        return self._failures.get(key, 0)

    def head_age(self) -> float:
        """Seconds the key at the head of the queue (of either lane, the longer waiting)
        has waited; 0 when empty."""
        heads = [self._dirty[key] for key in map(self._head, (False, True)) if key is not None]
        if not heads:
            return 0.0
        return max(0.0, self.clock() - min(heads))

    def longest_running(self) -> float:
        """Seconds the key processed longest so far has been processed; 0 when none."""
        if not self._processing:
            return 0.0
        return max(0.0, self.clock() - min(taken[0] for taken in self._processing.values()))

    @property
    def shutting_down(self) -> bool:
        return self._shut_down

    # --- adding ----------------------------------------------------------------------

    def add(self, key: str, *, prompt: bool = False) -> None:
        """Queue `key` now, once however often it is added before a worker takes it;
        `prompt`: in the prompt lane (a key waiting in the other lane moves there)."""
        if self._shut_down:
            return
        self._adds.inc()
        if key in self._dirty:
            if prompt:
                self._move_to_prompt(key)
            return
        self._dirty[key] = self.clock()
        if prompt:
            self._prompt.add(key)
        if key in self._processing:
            return  # queued again by done(key)
        self._enter(key)
        self._notify()

    def add_all(self, keys: Iterable[str], *, prompt: bool = False) -> None:
        for key in keys:
            self.add(key, prompt=prompt)

    def add_after(self, key: str, delay: float, *, prompt: bool = False) -> None:
        """Queue `key` once `delay` seconds have passed; at once when delay <= 0. Of several
        pending delays of one key, the earliest counts; `prompt` (of any of them): then
        in the prompt lane."""
        if self._shut_down:
            return
        if delay <= 0:
            self.add(key, prompt=prompt)
            return
        if prompt:
            self._due_prompt.add(key)
        due = self.clock() + delay
        known = self._due.get(key)
        if known is not None and known <= due:
            return
        self._due[key] = due
        self._order += 1
        heapq.heappush(self._timers, (due, self._order, key))
        if self._timers[0][2] == key and self._timers[0][0] == due:
            self.wake()  # sooner than what the getters sleep for

    def add_rate_limited(self, key: str, *, prompt: bool = False) -> float:
        """Queue `key` after its next back-off (one more failure), in the prompt lane if
        `prompt`; returns the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = Backoff.after_failures(
            failures,
            first=self.backoff.first,
            most=self.backoff.most,
            factor=self.backoff.factor,
        )
        self._retries.inc()
        self.add_after(key, delay, prompt=prompt)
        return delay

    def forget(self, key: str) -> None:
        """`key` succeeded: its next failure waits the first back-off again."""
        self._failures.pop(key, None)

    # --- taking ----------------------------------------------------------------------

    async def get(self) -> str:
        """The next ready key, now marked as processing: call done(key) when finished.
        Raises QueueShutDown once the queue is shut down and empty."""
        while True:
            self._promote_due()
            if self._entry:
                contended = all(self._live)
                prompt = self._take_prompt()
                key = self._head(prompt)
                assert key is not None  # the lane taken has a live entry
                self._lanes[prompt].popleft()
                del self._entry[key]
                self._live[prompt] -= 1
                self._prompt.discard(key)
                now = self.clock()
                self._queue_seconds.observe(max(0.0, now - self._dirty.pop(key)))
                self._processing[key] = (now, prompt, contended)
                if self._entry:
                    self._notify()  # more ready: let the next getter go too
                return key
            if self._shut_down:
                raise QueueShutDown(f"work queue {self.name} is shut down")
            event = anyio.Event()
            self._getters.append(event)
            timeout = self._timers[0][0] - self.clock() if self._timers else None
            try:
                with anyio.move_on_after(timeout if timeout is None else max(timeout, 0.0)):
                    await event.wait()
            except BaseException:
                if event.is_set():
                    self._notify()  # woken, but leaving (cancelled): pass the turn on
                else:
                    self._getters.remove(event)
                raise
            if not event.is_set():
                self._getters.remove(event)  # a delayed key is due: look again

    def done(self, key: str) -> None:
        """The worker finished `key`: if it was added meanwhile, it is queued again."""
        taken = self._processing.pop(key, None)
        if taken is None:
            return  # not taken by get(): it may be queued already, never queue it twice
        since, prompt, contended = taken
        if contended:  # a lane alone owes the other nothing
            took = max(0.0, self.clock() - since)
            self._longest = max(self._longest, took)
            balance = self._balance + (took if prompt else -took)
            self._balance = max(-self._longest, min(self._longest, balance))
        if key in self._dirty and not self._shut_down:
            self._enter(key)
            self._notify()

    def shut_down(self) -> None:
        """Take no more keys; delayed keys are dropped; waiting getters see the end once
        what is queued has been taken."""
        self._shut_down = True
        self._due.clear()
        self._due_prompt.clear()
        self._timers.clear()
        while self._getters:
            self._getters.popleft().set()

    def wake(self) -> None:
        """Make every waiting get() look again (a fake clock was advanced, a timer added)."""
        while self._getters:
            self._getters.popleft().set()

    # --- inside ----------------------------------------------------------------------

    def _notify(self) -> None:
        if self._getters:
            self._getters.popleft().set()

    def _move_to_prompt(self, key: str) -> None:
        """A key waiting (dirty) goes to the prompt lane, unless it is there already."""
        if key in self._prompt:
            return
        self._prompt.add(key)
        if key in self._entry:  # ready (else queued again by done(key))
            self._live[0] -= 1
            self._enter(key)

    def _enter(self, key: str) -> None:
        """Make `key` ready, in its lane: a new live entry (one it had is void now)."""
        lane = key in self._prompt
        self._entries += 1
        self._entry[key] = self._entries
        self._lanes[lane].append((self._entries, key))
        self._live[lane] += 1

    def _head(self, prompt: bool) -> str | None:
        """The key first in a lane (None: none), its void entries dropped on the way."""
        lane = self._lanes[prompt]
        while lane:
            entry, key = lane[0]
            if self._entry.get(key) == entry:
                return key
            lane.popleft()
        return None

    def _take_prompt(self) -> bool:
        """Whether the next key comes from the prompt lane (one of the lanes holds keys):
        a lone lane has the turn; of two, the prompt lane unless it is ahead."""
        normal_waiting, prompt_waiting = self._live
        if not (normal_waiting and prompt_waiting):
            return bool(prompt_waiting)
        return self._balance <= 0

    def _promote_due(self) -> None:
        if not self._timers:
            return
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            due, _, key = heapq.heappop(self._timers)
            if self._due.get(key) != due:
                continue  # superseded by an earlier delay of the same key
            del self._due[key]
            prompt = key in self._due_prompt
            self._due_prompt.discard(key)
            if key in self._dirty:
                if prompt:
                    self._move_to_prompt(key)
                continue
            self._dirty[key] = due  # it has waited since it was due
            if prompt:
                self._prompt.add(key)
            if key not in self._processing:
                self._enter(key)


async def add_in_slices(queue: WorkQueue, keys: Iterable[str]) -> int:
    """Add many keys, yielding to the event loop every CHECKPOINT_EVERY of them; returns
    how many were added."""
    count = 0
    for key in keys:
        queue.add(key)
        count += 1
        if count % CHECKPOINT_EVERY == 0:
            await anyio.lowlevel.checkpoint()
    return count
