"""What the JetStream API is asked while a test runs, as a subscriber sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from corral.natsio.bus import connect


@asynccontextmanager
async def api_requests(url: str, subjects: str = "$JS.API.>") -> AsyncIterator[list[str]]:
    """The subjects of the JetStream API requests sent meanwhile that `subjects` matches
    (direct gets included: `$JS.API.DIRECT.GET.<stream>`), as a subscriber in the same
    account sees them."""
    seen: list[str] = []
    nc = await connect(url, name="test-api-requests")

    async def record(msg: object) -> None:
        seen.append(msg.subject)  # type: ignore[attr-defined]

    try:
        await nc.subscribe(subjects, cb=record)
        await nc.flush()
        yield seen
        await nc.flush()
    finally:
        await nc.close()


# The consumer requests (made, listed, read, deleted).
CONSUMER_REQUESTS = "$JS.API.CONSUMER.>"
