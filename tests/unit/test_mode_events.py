"""ModeEventBudget: a burst of mode changes reported, then one per interval, and the
first reported after a hold says how many were held."""

from __future__ import annotations

import pytest

from corral_node_agent.mode_events import ModeEventBudget


def test_a_burst_is_reported_then_changes_are_held_and_counted() -> None:
    budget = ModeEventBudget(burst=3, every=30.0)
    assert [budget.take(0.0) for _ in range(3)] == [0, 0, 0]
    assert budget.take(1.0) is None
    assert budget.take(2.0) is None
    # One token back after 30 s (counted from the last refill, not from the burst).
    assert budget.take(29.0) is None
    assert budget.take(31.5) == 3  # the three held before it
    assert budget.take(32.0) is None


def test_a_quiet_agent_gets_its_whole_burst_back_and_no_more() -> None:
    budget = ModeEventBudget(burst=2, every=10.0)
    assert budget.take(0.0) == 0 and budget.take(0.0) == 0
    assert budget.take(0.5) is None
    assert budget.take(1_000.0) == 1
    assert budget.take(1_000.0) == 0
    assert budget.take(1_000.0) is None  # refilled to the burst, not beyond


@pytest.mark.parametrize(("burst", "every"), [(0, 1.0), (1, 0.0), (1, float("nan"))])
def test_a_budget_that_could_never_report_is_refused(burst: int, every: float) -> None:
    with pytest.raises(ValueError, match="burst"):
        ModeEventBudget(burst=burst, every=every)


def test_a_change_that_must_be_reported_always_is_and_says_what_was_held() -> None:
    budget = ModeEventBudget(burst=1, every=30.0)
    assert budget.take(0.0) == 0
    assert budget.take(1.0) is None
    assert budget.take(2.0, spend_only=True) == 1  # Stopping: reported, with the count
    assert budget.take(2.5, spend_only=True) == 0  # no token, reported all the same
    assert budget.tokens == 0.0
    assert budget.take(3.0) is None  # the flaps stay held
