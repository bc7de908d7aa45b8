"""The scheduler judges a node at the moment its judgement falls due (its silence
passing R or R', its engine down for E), not on the next one-second tick: the pass
notes the earliest such moment (Snapshot.next_change) and the loop wakes just after it
(control_loop.next_wake)."""

from __future__ import annotations

import math

import pytest

from corral.contract import time_budget
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral_scheduler.control_loop import (
    JUDGE_AFTER_SECONDS,
    JUDGE_MIN_WAIT_SECONDS,
    TICK_SECONDS,
    next_wake,
)
from corral_scheduler.snapshot import Loss, Snapshot
from tests.unit.test_scheduler_heartbeats import heard_cluster
from tests.unit.test_scheduler_liveness import NOW, R_AFTER_STOP, E, R, snapshot

# --- when to wake: a pure rule -------------------------------------------------------


def test_the_loop_waits_until_just_after_a_judgement_falls_due_within_the_tick() -> None:
    assert next_wake(100.0, 100.3) == pytest.approx(0.3 + JUDGE_AFTER_SECONDS)
    assert next_wake(100.0, 100.3) < TICK_SECONDS


def test_with_nothing_due_within_a_tick_the_loop_waits_the_tick() -> None:
    assert next_wake(100.0, math.inf) == TICK_SECONDS
    assert next_wake(100.0, 100.0 + 3 * TICK_SECONDS) == TICK_SECONDS


def test_a_moment_due_now_or_past_waits_the_short_minimum_not_zero() -> None:
    # Nodes that fell silent together fall due spread over a heartbeat: each pass is
    # O(nodes), so passes come no closer than the minimum.
    assert next_wake(100.0, 100.0) == JUDGE_MIN_WAIT_SECONDS
    assert next_wake(100.0, 99.0) == JUDGE_MIN_WAIT_SECONDS
    assert 0 < JUDGE_MIN_WAIT_SECONDS < TICK_SECONDS


# --- when a node's judgement changes with time alone ------------------------------------


def judged(s: Snapshot, at: float) -> tuple[bool, Loss | None, Loss | None]:
    return (s.schedulable("old", at), s.loss("old", at), s.loss("old", at, after_stop=True))


CASES = [
    ({"silent_for": 0.5}, NOW - 0.5 + R),  # heard: schedulable until its silence passes R
    ({"silent_for": R + 0.5}, NOW - (R + 0.5) + R_AFTER_STOP),  # lost; AfterStop at R'
    ({"silent_for": 0.5, "engine_down_for": E - 0.2}, NOW + 0.2),  # the engine down for E
    ({"silent_for": 0.5, "fresh": False}, NOW - 0.5 + R),  # stale: only schedulable changes
]


@pytest.mark.parametrize(("state", "due"), CASES)
def test_a_nodes_judgement_holds_until_its_next_change_and_changes_right_after(
    state: dict[str, object], due: float
) -> None:
    s = snapshot("Fast", **state)  # type: ignore[arg-type]
    assert s.next_change("old", NOW) == pytest.approx(due)
    now = judged(s, NOW)
    for step in range(11):
        assert judged(s, NOW + (due - NOW) * step / 10) == now
    assert judged(s, due + JUDGE_AFTER_SECONDS) != now


@pytest.mark.parametrize(
    "state",
    [
        {"silent_for": R_AFTER_STOP + 1},  # lost for every Deployment: nothing more to come
        {"silent_for": 1000, "fresh": False},  # stale: no loss judged, not schedulable
        {"silent_for": 0.5, "released": True},  # released: until the release ends
        {"silent_for": R_AFTER_STOP + 1, "engine_down_for": 1, "mode": "Held"},
    ],
)
def test_a_node_whose_judgement_changes_no_more_with_time_is_never_due(
    state: dict[str, object],
) -> None:
    assert snapshot("Fast", **state).next_change("old", NOW) == math.inf  # type: ignore[arg-type]


def test_a_held_nodes_engine_is_never_due_for_eviction() -> None:
    s = snapshot("Fast", silent_for=0.5, engine_down_for=E - 0.2, mode="Held")
    assert s.next_change("old", NOW) == pytest.approx(NOW - 0.5 + R)  # only its silence


# --- through the control loop ------------------------------------------------------------


async def test_the_loop_wakes_when_a_nodes_silence_passes_r_not_a_tick_later() -> None:
    async with heard_cluster(2, "a", "b") as cluster:
        assert cluster.placed_on() == ["a", "b"]
        clock = cluster.clock
        last_heard = clock.now  # b's last heartbeat: it falls silent now
        await cluster.pass_seconds(int(NODE_LOST_SECONDS) - 1, beating=("a",))
        clock.now = last_heard + NODE_LOST_SECONDS - 0.3  # a pass 0.3 s before b is due
        cluster.beat("a")
        cluster.echo_back()
        await cluster.echo()
        await cluster.loop.run_pass()
        assert cluster.placed_on() == ["a", "b"]  # not yet
        assert cluster.loop.next_judgement_at == pytest.approx(last_heard + NODE_LOST_SECONDS)
        wait = cluster.loop.wait_seconds()
        assert wait == pytest.approx(0.3 + JUDGE_AFTER_SECONDS)  # not the full tick
        clock.now += wait  # the loop's next pass: b's silence just passed R
        cluster.echo_back()
        await cluster.echo()
        await cluster.loop.run_pass()
        assert cluster.placed_on() == ["a", "a"]


def test_the_isolation_of_a_cut_off_agent_comes_a_margin_before_it_may_be_judged_lost() -> None:
    time_budget.check()
    assert (
        time_budget.ISOLATED_AFTER_SECONDS + time_budget.ISOLATION_MARGIN_SECONDS
        <= time_budget.NODE_LOST_SECONDS
    )
    assert time_budget.NODE_STALE_SECONDS == time_budget.NODE_LOST_SECONDS
