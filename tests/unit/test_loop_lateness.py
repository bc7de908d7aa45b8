"""The loop-lateness measure: a loop held up shows as a late wake-up, an idle one not."""

from __future__ import annotations

import time

import anyio

from corral.natsio.loop_lateness import measure_loop_lateness


async def test_a_held_loop_is_seen_late_by_about_as_long_as_it_was_held() -> None:
    seen: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: measure_loop_lateness(every=0.02, observe=seen.append))
        while len(seen) < 3:
            await anyio.sleep(0.01)
        idle = list(seen)
        time.sleep(0.3)  # the loop held: nothing else runs
        count = len(seen)
        while len(seen) == count:
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert max(idle) < 0.25  # not held: on time, give or take a loaded machine
    assert seen[count] >= 0.25  # woke at least the hold minus its own sleep late
