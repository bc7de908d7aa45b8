"""`python -m corral_node_agent.hollow_cluster --exit-on-start IMAGE=CODE`: hollow engines
whose containers of IMAGE exit at once with CODE (a crash loop for the automatic
rollback's tests and benchmark; tests/integration/test_auto_rollback_nats.py runs it)."""

from __future__ import annotations

import pytest

from corral_node_agent.hollow_cluster import build_parser, settings_from_args


def test_exit_on_start_pairs_become_the_settings_of_every_hollow_engine() -> None:
    args = build_parser().parse_args(
        ["--nodes", "2", "--exit-on-start", "app:2=1", "--exit-on-start", "reg:5000/x=137"]
    )
    assert settings_from_args(args).exit_on_start == {"app:2": 1, "reg:5000/x": 137}
    none = build_parser().parse_args(["--nodes", "2"])
    assert settings_from_args(none).exit_on_start == {}


@pytest.mark.parametrize("pair", ["app:2", "=1", "app:2=one"])
def test_a_malformed_exit_on_start_pair_is_refused_naming_the_flag(pair: str) -> None:
    args = build_parser().parse_args(["--nodes", "1", "--exit-on-start", pair])
    with pytest.raises(SystemExit, match="--exit-on-start"):
        settings_from_args(args)
