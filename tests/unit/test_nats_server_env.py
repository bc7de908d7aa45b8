"""What corral adds to nats-server's environment: its GOGC, unless the operator tuned Go's
collector (GOGC or GOMEMLIMIT)."""

from __future__ import annotations

import pytest

from corral.client.local.nats_server import NATS_SERVER_GOGC, nats_server_env


def test_gogc_is_added_to_an_environment_that_does_not_tune_the_collector() -> None:
    assert nats_server_env({"PATH": "/usr/bin"}) == {"GOGC": NATS_SERVER_GOGC}


@pytest.mark.parametrize("tuned", [{"GOGC": "100"}, {"GOGC": "off"}, {"GOMEMLIMIT": "1GiB"}])
def test_an_operators_own_tuning_is_left_as_it_is(tuned: dict[str, str]) -> None:
    assert nats_server_env({"PATH": "/usr/bin", **tuned}) == {}
