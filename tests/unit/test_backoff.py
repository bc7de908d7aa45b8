"""The one back-off rule every retry loop uses (corral.contract.backoff)."""

from __future__ import annotations

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
