"""What a NATS client error says in the service's log: never an empty message."""

from __future__ import annotations

import nats.errors
import pytest

from corral.natsio import bus


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (TimeoutError(), "NATS: TimeoutError"),  # no text of its own: its type
        (nats.errors.TimeoutError(), "NATS: nats: timeout"),
    ],
)
async def test_a_nats_error_is_logged_with_its_text_or_else_its_type(
    error: Exception, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger=bus.__name__):
        await bus._log_nats_error(error)
    assert [record.getMessage() for record in caplog.records] == [said]
