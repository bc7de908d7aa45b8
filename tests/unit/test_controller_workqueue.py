"""The work queue: a key is queued once however often it is added, never handed to two
workers at once, processed again when added during processing, delayed with a per-key
back-off that grows and is forgotten on success; shutting down drains it."""

from __future__ import annotations

import uuid

import anyio
import pytest
from prometheus_client import REGISTRY

from corral.contract.backoff import Backoff
from corral.natsio.workqueue import QueueShutDown, WorkQueue, add_in_slices


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_a_key_added_many_times_while_queued_is_handed_out_once() -> None:
    queue = WorkQueue(unique_name())
    for key in ("a", "a", "b", "a", "b"):
        queue.add(key)
    assert len(queue) == 2
    assert await queue.get() == "a"
    assert await queue.get() == "b"
    assert len(queue) == 0
    assert "a" not in queue


async def test_a_key_added_while_processed_waits_for_done_and_is_processed_once_more() -> None:
    queue = WorkQueue(unique_name())
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")
    queue.add("a")
    # Marked to do again, but no other worker may take it while it is processed.
    assert "a" in queue
    assert queue.processing("a")
    assert len(queue) == 0
    queue.done("a")
    assert len(queue) == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert len(queue) == 0 and "a" not in queue


async def test_done_for_a_key_no_worker_took_never_queues_it_twice() -> None:
    queue = WorkQueue(unique_name())
    queue.add("a")
    queue.done("a")  # a caller's mistake: "a" was queued, not taken
    assert len(queue) == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert len(queue) == 0


async def test_a_second_worker_waits_while_the_only_key_is_processed() -> None:
    queue = WorkQueue(unique_name())
    queue.add("a")
    first = await queue.get()
    queue.add("a")
    taken: list[str] = []

    async def second_worker() -> None:
        taken.append(await queue.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(second_worker)
        await anyio.wait_all_tasks_blocked()
        assert taken == []  # "a" is being processed: not handed out again
        queue.done(first)
    assert taken == ["a"]


async def test_back_off_doubles_per_failure_up_to_the_cap_and_is_forgotten_on_success() -> None:
    clock = FakeClock()
    queue = WorkQueue(unique_name(), backoff=Backoff(first=1.0, most=8.0), clock=clock)
    delays = []
    for _ in range(5):
        delays.append(queue.add_rate_limited("a"))
        assert queue.due_in("a") == delays[-1]
        clock.advance(delays[-1])
        assert await queue.get() == "a"
        queue.done("a")
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert queue.failures("a") == 5
    assert queue.add_rate_limited("b") == 1.0  # per key
    queue.forget("a")
    assert queue.failures("a") == 0
    assert queue.add_rate_limited("a") == 1.0


async def test_a_delayed_key_is_not_ready_before_it_is_due() -> None:
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    queue.add_after("a", 5.0)
    taken: list[str] = []

    async def worker() -> None:
        taken.append(await queue.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.9)
        queue.wake()
        await anyio.wait_all_tasks_blocked()
        assert taken == []
        assert queue.due_in("a") == pytest.approx(0.1)
        clock.advance(0.1)
        queue.wake()
    assert taken == ["a"]
    assert queue.due_in("a") is None


async def test_of_several_delays_of_one_key_the_earliest_counts() -> None:
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    queue.add_after("a", 5.0)
    queue.add_after("a", 2.0)
    queue.add_after("a", 10.0)
    assert queue.due_in("a") == 2.0
    clock.advance(2.0)
    assert await queue.get() == "a"
    queue.done("a")
    clock.advance(10.0)  # the superseded timers do not bring it back
    queue.add("b")
    assert await queue.get() == "b"
    assert len(queue) == 0 and "a" not in queue


async def test_a_waiting_worker_wakes_by_itself_when_a_delayed_key_falls_due() -> None:
    queue = WorkQueue(unique_name())  # the real clock, a tiny delay
    queue.add_after("a", 0.02)
    with anyio.fail_after(5):
        assert await queue.get() == "a"


async def test_a_delay_of_zero_or_less_queues_at_once() -> None:
    queue = WorkQueue(unique_name(), clock=FakeClock())
    queue.add_after("a", 0.0)
    queue.add_after("b", -1.0)
    assert len(queue) == 2


async def test_a_cancelled_waiting_worker_passes_its_wake_up_to_another() -> None:
    queue = WorkQueue(unique_name())
    taken: list[str] = []

    async def worker(scope: anyio.CancelScope) -> None:
        with scope:
            taken.append(await queue.get())

    first, second = anyio.CancelScope(), anyio.CancelScope()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(worker, second)
            await anyio.wait_all_tasks_blocked()
            first.cancel()  # the first worker is leaving, but has not run yet ...
            queue.add("a")  # ... when the key wakes it: the second must take the key
    assert taken == ["a"]
    assert queue.processing("a")


async def test_shutting_down_hands_out_what_is_queued_then_ends_every_worker() -> None:
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    queue.add("a")
    queue.add_after("later", 1.0)
    queue.shut_down()
    queue.add("b")  # ignored
    assert await queue.get() == "a"
    clock.advance(2.0)  # delayed keys were dropped
    with pytest.raises(QueueShutDown):
        await queue.get()
    queue.done("a")
    assert len(queue) == 0


async def test_a_waiting_worker_ends_when_the_queue_shuts_down() -> None:
    queue = WorkQueue(unique_name())
    ended = []

    async def worker() -> None:
        with pytest.raises(QueueShutDown):
            await queue.get()
        ended.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await anyio.wait_all_tasks_blocked()
        queue.shut_down()
    assert ended == [True]


async def test_metrics_tell_depth_head_age_adds_and_retries_labelled_by_the_queue_name() -> None:
    clock = FakeClock()
    name = unique_name()
    queue = WorkQueue(name, clock=clock)

    def sample(metric: str) -> float | None:
        return REGISTRY.get_sample_value(metric, {"name": name})

    queue.add("a")
    queue.add("a")
    queue.add("b")
    clock.advance(3.0)
    assert sample("corral_workqueue_depth") == 2
    assert sample("corral_workqueue_head_age_seconds") == 3.0
    assert sample("corral_workqueue_adds_total") == 3
    key = await queue.get()
    clock.advance(1.5)
    assert sample("corral_workqueue_longest_running_seconds") == 1.5
    assert sample("corral_workqueue_queue_seconds_count") == 1
    assert sample("corral_workqueue_queue_seconds_sum") == 3.0
    queue.add_rate_limited(key)
    queue.done(key)
    assert sample("corral_workqueue_retries_total") == 1
    assert sample("corral_workqueue_delayed") == 1
    assert sample("corral_workqueue_longest_running_seconds") == 0.0


async def test_adding_many_keys_in_slices_yields_to_the_event_loop() -> None:
    queue = WorkQueue(unique_name())
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        added = await add_in_slices(queue, (f"k{n}" for n in range(10_000)))
        tg.cancel_scope.cancel()
    assert added == 10_000 and len(queue) == 10_000
    assert ticks >= 5  # the ticker ran between the slices


def test_a_queue_needs_a_name_for_its_metrics() -> None:
    with pytest.raises(ValueError, match="name"):
        WorkQueue("")
