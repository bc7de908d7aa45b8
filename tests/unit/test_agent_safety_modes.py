"""The agent's safety state machine, as a table: what it may do for what it sees."""

from __future__ import annotations

import pytest

from corral.contract import time_budget
from corral_node_agent.safety import (
    Budget,
    Displacement,
    Identity,
    Mode,
    Observation,
    decide_mode,
    doubts_placements,
    needs_new_watch,
    permissions,
)

BUDGET = Budget(isolated_after=3.0, stop_after=15.0)
OK = Identity.RECOGNISED


def seen(
    now: float,
    last_ack: float | None = 100.0,
    identity: Identity = OK,
    current: bool = True,
    displacement: Displacement = Displacement.NONE,
    started_at: float = 0.0,
) -> Observation:
    return Observation(
        now=now,
        started_at=started_at,
        last_ack=last_ack,
        identity=identity,
        placements_current=current,
        displacement=displacement,
    )


@pytest.mark.parametrize(
    ("observation", "mode"),
    [
        (seen(101.0), Mode.ACTIVE),
        (seen(101.0, current=False), Mode.SYNCING),
        (seen(1.0, last_ack=None), Mode.STARTING),
        (seen(101.0, identity=Identity.UNKNOWN), Mode.STARTING),
        (seen(102.9), Mode.ACTIVE),  # a failover's few seconds change nothing
        (seen(103.1), Mode.ISOLATED),
        (seen(114.9), Mode.ISOLATED),
        (seen(115.1), Mode.STOPPING),  # F after the last acknowledged write
        (seen(115.1, current=False), Mode.STOPPING),
        # A restarted agent that never reaches NATS still stops at F after its start.
        (seen(14.9, last_ack=None, identity=Identity.UNKNOWN), Mode.STARTING),
        (seen(15.1, last_ack=None, identity=Identity.UNKNOWN), Mode.STOPPING),
        # A store that is not this node's: touch nothing, even when cut off.
        (seen(101.0, identity=Identity.MISMATCH), Mode.HELD),
        (seen(500.0, identity=Identity.MISMATCH), Mode.HELD),
        (seen(101.0, identity=Identity.LOST), Mode.HELD),
        (seen(101.0, identity=Identity.UNREADABLE), Mode.HELD),
        # Displacement beats everything.
        (seen(101.0, displacement=Displacement.SAME_ENGINE), Mode.HANDED_OVER),
        (seen(500.0, displacement=Displacement.OTHER_ENGINE), Mode.RETIRED),
        (
            seen(101.0, identity=Identity.MISMATCH, displacement=Displacement.SAME_ENGINE),
            Mode.HANDED_OVER,
        ),
    ],
)
def test_the_mode_follows_from_what_the_agent_sees(observation: Observation, mode: Mode) -> None:
    assert decide_mode(observation, BUDGET) == mode


def test_only_an_active_agent_creates_and_only_stopping_or_retired_ones_remove_all() -> None:
    creating = {mode for mode in Mode if permissions(mode).create}
    removing_all = {mode for mode in Mode if permissions(mode).remove_all}
    removing_unplaced = {mode for mode in Mode if permissions(mode).remove_unplaced}
    assert creating == {Mode.ACTIVE}
    assert removing_unplaced == {Mode.ACTIVE}
    assert removing_all == {Mode.STOPPING, Mode.RETIRED}
    # Held, handed over, isolated, starting and syncing agents touch nothing at all.
    for mode in (Mode.HELD, Mode.HANDED_OVER, Mode.ISOLATED, Mode.STARTING, Mode.SYNCING):
        assert permissions(mode) == permissions(Mode.HELD)


def test_a_foreign_store_or_a_cut_off_past_f_means_reading_the_placements_afresh() -> None:
    assert {mode for mode in Mode if needs_new_watch(mode)} == {
        Mode.STOPPING,
        Mode.HELD,
        Mode.HANDED_OVER,
        Mode.RETIRED,
    }


def test_cut_off_the_watch_runs_on_but_the_placements_are_in_doubt() -> None:
    assert {mode for mode in Mode if doubts_placements(mode)} == {Mode.ISOLATED}
    assert not any(needs_new_watch(mode) and doubts_placements(mode) for mode in Mode)


def test_the_written_time_budget_keeps_its_own_rules() -> None:
    time_budget.check()
    default = Budget()
    assert default.stop_after == time_budget.CUT_OFF_STOP_SECONDS
    assert default.stop_after > time_budget.WORST_FAILOVER_SECONDS
    assert time_budget.NODE_LOST_SECONDS < default.stop_after
