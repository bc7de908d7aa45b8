"""The one back-off rule every retry loop uses (corral.contract.backoff)."""

from __future__ import annotations

import random

import pytest

from corral.contract.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_again_after_a_reset() -> None:
    delays = Backoff(first=0.5, most=5.0)
    assert [delays.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    delays.reset()
    assert delays.next() == 0.5


def test_the_delay_after_a_count_of_failures_follows_the_same_rule() -> None:
    waits = [Backoff.after_failures(n, first=1.0, most=60.0) for n in range(9)]
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_a_count_of_failures_that_grew_for_days_never_overflows() -> None:
    assert Backoff.after_failures(10**6, first=1.0, most=60.0) == 60.0


def test_a_spread_scatters_each_delay_around_the_same_doubling_sequence() -> None:
    draws = iter([0.0, 0.5, 0.999, 0.25, 0.75])
    delays = Backoff(first=1.0, most=4.0, spread=0.5, draw=lambda: next(draws))
    got = [delays.next() for _ in range(5)]
    # 1, 2, 4, 4, 4 scattered from half to one and a half times each
    assert got == pytest.approx([0.5, 2.0, 5.996, 3.0, 5.0])


def test_loops_that_fail_together_do_not_retry_together() -> None:
    herd = [
        Backoff(first=1.0, most=5.0, spread=0.5, draw=random.Random(n).random) for n in range(500)
    ]
    for step, middle in enumerate([1.0, 2.0, 4.0, 5.0, 5.0]):
        waits = [delays.next() for delays in herd]
        assert all(middle * 0.5 <= wait < middle * 1.5 for wait in waits), step
        # The herd's retries are spread over the whole window, not bunched in one part.
        assert min(waits) < middle * 0.6 and max(waits) > middle * 1.4
        assert len({round(wait, 3) for wait in waits}) > 400


@pytest.mark.parametrize("spread", [-0.1, 1.0, 2.0])
def test_a_spread_outside_0_to_1_is_refused(spread: float) -> None:
    with pytest.raises(ValueError, match=f"spread {spread}"):
        Backoff(spread=spread)
