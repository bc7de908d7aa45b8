"""Waiting on conditions with a deadline: tests never sleep a fixed time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    within: float = 10.0,
    interval: float = 0.05,
) -> T:
    """Poll `probe` until `accept` holds, or fail with the last value seen."""
    last: T | None = None
    with anyio.move_on_after(within):
        while True:
            last = await probe()
            if accept(last):
                return last
            await anyio.sleep(interval)
    raise AssertionError(f"condition not met within {within} s; last value: {last!r}")


async def current(value: T) -> T:
    """`value` as a probe for `eventually`, read each time the lambda around it runs:
    `eventually(lambda: current(loop.passes), lambda n: n > 2)`."""
    return value
