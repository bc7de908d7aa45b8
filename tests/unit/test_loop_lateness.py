"""The loop-lateness measure: how late a wake-up was, from the clock; a loop held up
shows as a late wake-up, an idle one not."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest

from corral.natsio.loop_lateness import measure_loop_lateness


async def _observed(count: int, *, every: float, clock: Iterator[float]) -> list[float]:
    seen: list[float] = []
    with anyio.CancelScope() as scope:

        def observe(late: float) -> None:
            seen.append(late)
            if len(seen) == count:
                scope.cancel()

        await measure_loop_lateness(every=every, observe=observe, clock=lambda: next(clock))
    return seen


async def test_lateness_is_the_time_past_due_and_never_below_zero() -> None:
    # due = before + every; late = after - due (an early clock reading counts as 0)
    clock = iter([10.0, 10.35, 20.0, 20.1, 30.0, 30.0, 40.0])  # the last: the next due
    seen = await _observed(3, every=0.1, clock=clock)
    assert seen == [pytest.approx(0.25), pytest.approx(0.0), 0.0]


async def test_a_held_loop_is_seen_late_by_about_as_long_as_it_was_held() -> None:
    seen: list[float] = []
    enough = anyio.Event()
    wanted = [3]

    def observe(late: float) -> None:
        seen.append(late)
        if len(seen) >= wanted[0]:
            enough.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: measure_loop_lateness(every=0.02, observe=observe))
        await enough.wait()
        idle = list(seen)
        enough, wanted[0] = anyio.Event(), len(seen) + 1
        time.sleep(0.3)  # noqa: ASYNC251 - the point: the loop held, nothing else runs
        await enough.wait()
        tg.cancel_scope.cancel()
    assert max(idle) < 0.25  # not held: on time, give or take a loaded machine
    assert seen[len(idle)] >= 0.25  # woke at least the hold minus its own sleep late
