"""The Controller: workers reconcile one key at a time, a key changed during its
reconcile is reconciled once more afterwards, failures are retried with a growing
back-off and never stop the controller, Result asks for a later look, every primary
key is resynced periodically, and it stops on cancellation or shut_down."""

from __future__ import annotations

import uuid
from collections import Counter

import anyio
import pytest
from prometheus_client import REGISTRY

from corral.contract.backoff import Backoff
from corral.natsio.controller import Controller, Result
from tests.waiting import current as _value
from tests.waiting import eventually


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_one_key_is_never_reconciled_by_two_workers_and_a_change_meanwhile_is_not_lost() -> (
    None
):
    active: Counter[str] = Counter()
    most_at_once: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    release = anyio.Event()
    first_started = anyio.Event()

    async def reconcile(key: str) -> None:
        active[key] += 1
        most_at_once[key] = max(most_at_once[key], active[key])
        calls[key] += 1
        try:
            if calls[key] == 1:
                first_started.set()
                await release.wait()
            await anyio.lowlevel.checkpoint()
        finally:
            active[key] -= 1

    controller = Controller(unique_name(), reconcile, workers=4)
    async with anyio.create_task_group() as tg:
        await tg.start(controller.run)
        controller.enqueue("a")
        await first_started.wait()
        for _ in range(5):  # five changes while the first reconcile runs
            controller.enqueue("a")
        controller.enqueue("b")
        await anyio.wait_all_tasks_blocked()
        assert calls == {"a": 1, "b": 1}  # three idle workers, yet "a" waits
        release.set()
        await eventually(lambda: _value(calls["a"]), lambda n: n == 2)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert calls == {"a": 2, "b": 1}  # the five changes: one more reconcile, not five
    assert most_at_once["a"] == 1


async def test_a_raising_reconcile_is_retried_and_never_stops_the_controller() -> None:
    calls: Counter[str] = Counter()

    async def reconcile(key: str) -> None:
        calls[key] += 1
        if key == "bad" and calls[key] <= 3:
            raise RuntimeError("the store said no")

    name = unique_name()
    controller = Controller(name, reconcile, workers=2, backoff=Backoff(first=0.001, most=0.004))
    async with anyio.create_task_group() as tg:
        await tg.start(controller.run)
        controller.enqueue("bad")
        controller.enqueue("good")
        await eventually(lambda: _value(calls["bad"]), lambda n: n == 4)
        controller.enqueue("later")  # the workers still take new keys
        await eventually(lambda: _value(calls["later"]), lambda n: n == 1)
        tg.cancel_scope.cancel()
    assert calls["good"] == 1
    assert controller.queue.failures("bad") == 0  # forgotten once it succeeded
    errors = REGISTRY.get_sample_value(
        "corral_controller_reconciles_total", {"controller": name, "result": "error"}
    )
    assert errors == 3


async def test_failures_back_off_longer_each_time_and_a_success_starts_over() -> None:
    clock = FakeClock()
    failing = True

    async def reconcile(key: str) -> None:
        if failing:
            raise ConnectionError("NATS away")

    controller = Controller(
        unique_name(), reconcile, backoff=Backoff(first=0.5, most=4.0), clock=clock
    )
    delays = []
    for _ in range(5):
        await controller.process("a")
        delays.append(controller.queue.due_in("a"))
        clock.advance(10.0)
        assert await controller.queue.get() == "a"
        controller.queue.done("a")
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    failing = False
    await controller.process("a")
    assert controller.queue.failures("a") == 0
    assert controller.queue.due_in("a") is None  # done until the next change
    failing = True
    await controller.process("a")
    assert controller.queue.due_in("a") == 0.5


async def test_a_result_with_requeue_after_looks_again_after_that_delay() -> None:
    clock = FakeClock()

    async def reconcile(key: str) -> Result:
        return Result(requeue_after=7.0)

    name = unique_name()
    controller = Controller(name, reconcile, clock=clock)
    await controller.process("a")
    assert controller.queue.due_in("a") == 7.0
    assert len(controller.queue) == 0
    clock.advance(7.0)
    assert await controller.queue.get() == "a"
    requeues = REGISTRY.get_sample_value(
        "corral_controller_reconciles_total", {"controller": name, "result": "requeue"}
    )
    assert requeues == 1


async def test_a_reconcile_that_hangs_past_its_timeout_is_retried_with_back_off() -> None:
    async def reconcile(key: str) -> None:
        await anyio.sleep_forever()

    controller = Controller(
        unique_name(), reconcile, reconcile_timeout=0.01, backoff=Backoff(first=60.0, most=60.0)
    )
    with anyio.fail_after(5):
        await controller.process("a")
    assert controller.queue.failures("a") == 1
    assert controller.queue.due_in("a") == pytest.approx(60.0, abs=1.0)


async def test_every_primary_key_is_enqueued_again_at_each_resync() -> None:
    calls: Counter[str] = Counter()
    primary = {"x": 1, "y": 2}

    async def reconcile(key: str) -> None:
        calls[key] += 1

    controller = Controller(
        unique_name(), reconcile, resync_seconds=0.01, resync_keys=lambda: primary.keys()
    )
    async with anyio.create_task_group() as tg:
        await tg.start(controller.run)
        await eventually(lambda: _value(min(calls["x"], calls["y"])), lambda n: n >= 3)
        tg.cancel_scope.cancel()
    assert set(calls) == {"x", "y"}


async def test_a_resync_by_hand_enqueues_every_primary_key_once() -> None:
    async def reconcile(key: str) -> None:
        return None

    keys = [f"d{n}" for n in range(2500)] + ["d1", "d2"]
    controller = Controller(
        unique_name(), reconcile, resync_seconds=3600.0, resync_keys=lambda: keys
    )
    assert await controller.resync() == 2502
    assert len(controller.queue) == 2500


async def test_cancelling_the_controller_stops_a_reconcile_in_progress_and_releases_its_key() -> (
    None
):
    started = anyio.Event()
    cancelled = []

    async def reconcile(key: str) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(key)
            raise

    controller = Controller(unique_name(), reconcile, workers=2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(controller.run)
            controller.enqueue("a")
            await started.wait()
            assert controller.queue.processing("a")
            tg.cancel_scope.cancel()
    assert cancelled == ["a"]
    assert not controller.queue.processing("a")
    assert controller.queue.failures("a") == 0  # a cancellation is not a failure


async def test_shut_down_lets_the_workers_finish_what_is_queued_then_run_returns() -> None:
    done: list[str] = []

    async def reconcile(key: str) -> None:
        await anyio.lowlevel.checkpoint()
        done.append(key)

    controller = Controller(
        unique_name(), reconcile, workers=2, resync_seconds=3600.0, resync_keys=lambda: ()
    )
    for key in ("a", "b", "c"):
        controller.enqueue(key)
    controller.shut_down()
    with anyio.fail_after(5):
        await controller.run()  # returns by itself, the resync loop included
    assert sorted(done) == ["a", "b", "c"]


def test_bad_settings_are_refused_naming_the_field() -> None:
    async def reconcile(key: str) -> None:
        return None

    with pytest.raises(ValueError, match="workers"):
        Controller(unique_name(), reconcile, workers=0)
    with pytest.raises(ValueError, match="resync_keys"):
        Controller(unique_name(), reconcile, resync_seconds=1.0)
    with pytest.raises(ValueError, match="resync_seconds"):
        Controller(unique_name(), reconcile, resync_seconds=0.0, resync_keys=lambda: ())
    with pytest.raises(ValueError, match="reconcile_timeout"):
        Controller(unique_name(), reconcile, reconcile_timeout=0.0)
    with pytest.raises(ValueError, match="requeue_after"):
        Result(requeue_after=-1.0)
    with pytest.raises(ValueError, match="requeue_after"):
        Result(requeue_after=float("nan"))
