"""The cut-off clock survives the agent's restarts (corral_node_agent.cut_off_clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_node_agent import cut_off_clock
from corral_node_agent.cut_off_clock import LastAckFile, cut_off_since

F = 20.0


def test_a_first_start_counts_from_the_process_start() -> None:
    assert cut_off_since(None, 1000.0, F) == 1000.0


def test_a_restart_during_a_partition_counts_from_the_last_acknowledged_write() -> None:
    # acked at 1000, the process died and restarted at 1012: F comes at 1020, not 1032
    assert cut_off_since(1000.0, 1012.0, F) == 1000.0
    # restarted at 1019: it still gets its few seconds to reach NATS (F at 1022)
    assert cut_off_since(1000.0, 1019.0, F) + F == 1019.0 + cut_off_clock.STARTUP_GRACE_SECONDS


def test_a_restart_after_a_long_stop_still_gets_its_grace_to_reach_nats() -> None:
    since = cut_off_since(1000.0, 5000.0, F)
    assert since + F == 5000.0 + cut_off_clock.STARTUP_GRACE_SECONDS


def test_the_last_ack_is_kept_per_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cut_off_clock, "boot_id", lambda: "boot-1")
    LastAckFile(tmp_path).save(1234.5)
    assert LastAckFile(tmp_path).load() == 1234.5
    monkeypatch.setattr(cut_off_clock, "boot_id", lambda: "boot-2")  # a reboot
    assert LastAckFile(tmp_path).load() is None
    assert LastAckFile(None).load() is None
