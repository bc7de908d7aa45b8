"""The garbage-collection policy of long-lived processes (corral.natsio.gc_policy):
survivors frozen once a second, a full collection now and then, long pauses logged."""

from __future__ import annotations

import gc
import logging
import math
from functools import partial

import anyio
import pytest

from corral.natsio import gc_policy
from corral.natsio.gc_policy import (
    GcPolicy,
    PauseLog,
    collect_now,
    keep_collecting,
    log_long_pauses,
)


def test_the_gc_policy_freezes_what_survived_and_collects_all_now_and_then() -> None:
    policy = GcPolicy(full_seconds=10)
    try:
        policy.tick(0.0)
        assert gc.get_freeze_count() > 0 and policy.full_collections == 0
        policy.tick(5.0)
        assert policy.full_collections == 0
        policy.tick(10.0)
        assert policy.full_collections == 1
        assert gc.get_freeze_count() > 0  # frozen again after the full collection
    finally:
        gc.unfreeze()


def test_a_policy_without_full_collections_never_unfreezes() -> None:
    policy = GcPolicy(full_seconds=math.inf)
    try:
        for now in (0.0, 1e6, 1e9):
            policy.tick(now)
        assert policy.full_collections == 0  # no tick unfroze and collected everything
    finally:
        gc.unfreeze()


async def test_keep_collecting_ticks_every_given_seconds_until_cancelled() -> None:
    ticks: list[float] = []
    three = anyio.Event()

    class Counting(GcPolicy):
        def tick(self, now: float) -> None:
            ticks.append(now)
            if len(ticks) == 3:
                three.set()

    with anyio.fail_after(0.9):  # not the default second between two ticks
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(keep_collecting, Counting(), every=0.01))
            await three.wait()
            tg.cancel_scope.cancel()
    assert len(ticks) == 3 and ticks == sorted(ticks)


def _ours(caplog: pytest.LogCaptureFixture) -> list[str]:
    """This test's own pause lines (a PauseLog of the test process may log real ones)."""
    return [r.getMessage() for r in caplog.records if "objects collected" in r.getMessage()]


def test_a_long_collection_is_noted_and_reported_with_its_generation_a_short_one_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    pauses = PauseLog(threshold=0.2, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger=gc_policy.__name__)
    pauses("start", {"generation": 0})
    now[0] += 0.05
    pauses("stop", {"generation": 0, "collected": 3})
    pauses.report()
    assert "(3 objects collected)" not in " ".join(_ours(caplog))
    pauses("start", {"generation": 2})
    now[0] += 1.5
    pauses("stop", {"generation": 2, "collected": 7})
    assert "(7 objects collected)" not in " ".join(_ours(caplog))  # noted, not logged yet
    pauses.report()
    assert (
        "generation 2 held this process 1.50 s (7 objects collected), ending at "
        in (_ours(caplog)[-1])
    )
    assert pauses.longest == pytest.approx(1.5)
    pauses("stop", {"generation": 1, "collected": 0})  # a stop without its start: nothing
    pauses.report()
    assert sum("(7 objects collected)" in line for line in _ours(caplog)) == 1  # once


def test_pauses_are_noted_by_one_callback_however_often_registered_and_a_tick_reports(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = list(gc.callbacks)
    caplog.set_level(logging.WARNING, logger=gc_policy.__name__)
    try:
        gc.callbacks[:] = [c for c in gc.callbacks if not isinstance(c, PauseLog)]
        first = log_long_pauses(threshold=0.0)  # every collection is long
        assert log_long_pauses() is first
        assert sum(isinstance(c, PauseLog) for c in gc.callbacks) == 1
        gc.collect()  # a real collection goes through it
        assert first.longest > 0 and first.pauses
        GcPolicy(full_seconds=math.inf).tick(0.0)  # logs what was noted
        assert any("generation 2 held this process" in line for line in _ours(caplog))
        caplog.clear()
        gc.collect()
        collect_now(None, 0.0)  # Python's own collections: the pauses reported all the same
        assert any("generation 2 held this process" in line for line in _ours(caplog))
    finally:
        gc.callbacks[:] = before
        gc.unfreeze()
