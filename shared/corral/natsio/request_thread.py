"""Answering requests on a thread of their own: an event loop and a NATS connection that
no reconciling shares (docs/architecture.md, "Requests never wait on reconciling").

A controller's event loop is busy while a cluster changes: it decodes thousands of
watched changes a second and commits plans, all read from and written to one NATS
connection. A request answered on that loop waits behind all of it, twice: its message
is read from the same socket as the watched changes, and its handler runs between their
callbacks. `serve_in_thread` runs `serve` (which answers requests, e.g. with
`corral.natsio.bus.serve_spec_requests`) on a thread with its own event loop and its own
connection, so a request waits for neither; what is left shared is the interpreter
lock, which a busy thread hands over every `sys.getswitchinterval()` seconds
(REQUEST_SWITCH_SECONDS while a request thread runs).

`serve` gets the thread's connection and may read the controller's state only by plain
lookups (a dict's `get`: atomic under the interpreter lock), never by iterating it, and
writes only through its own connection. The thread ends when the calling task is
cancelled; if the thread fails, the calling task raises its error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus

from corral.natsio.bus import (
    JS_API_TIMEOUT_SECONDS,
    close_quietly,
    connect,
    flush_subscriptions,
)

log = logging.getLogger(__name__)

# While a request thread runs, a thread busy in Python hands the interpreter lock over
# after at most this long (Python's default is 5 ms): a request waits for it a few
# times (its message read, its handler, its reply), so this bounds what it waits.
REQUEST_SWITCH_SECONDS: Final = 0.001
JOIN_SECONDS: Final = 10.0

ServeInThread = Callable[..., Coroutine[Any, Any, None]]
"""async def serve(nc: NATS, js: JetStreamContext, *, task_status: TaskStatus[None])"""


async def serve_in_thread(
    url: str | Sequence[str],
    name: str,
    serve: ServeInThread,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run `serve` on a thread with its own event loop and NATS connection (to `url`,
    named `name`); started once `serve` is; until cancelled."""
    started: concurrent.futures.Future[None] = concurrent.futures.Future()
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    stop = _Stop()

    async def thread_main() -> None:
        with anyio.CancelScope() as scope:
            stop.bind(asyncio.get_running_loop(), scope)
            nc = await connect(url, name=name)
            try:
                js = nc.jetstream(timeout=JS_API_TIMEOUT_SECONDS)
                async with anyio.create_task_group() as tg:
                    await tg.start(serve, nc, js)
                    await flush_subscriptions(nc)  # what `serve` subscribed to
                    _settle(started, None)
            finally:
                await close_quietly(nc)

    def run_thread() -> None:
        try:
            anyio.run(thread_main)
        except BaseException as error:  # handed to the calling task, which raises it
            _settle(started, error)
            _settle(done, error)
        else:
            _settle(started, RuntimeError(f"{name}: stopped before it started"))
            # Only a stop ends it well: `serve` returning on its own would leave
            # requests unanswered without a word.
            _settle(done, None if stop.requested else RuntimeError(f"{name}: stopped by itself"))

    thread = threading.Thread(target=run_thread, name=name, daemon=True)
    _SWITCH.enter()
    thread.start()
    try:
        await asyncio.wrap_future(started)
        task_status.started()
        await asyncio.wrap_future(done)
    finally:
        stop.request()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join, JOIN_SECONDS)
        if thread.is_alive():
            log.warning("%s did not stop within %.0f s", name, JOIN_SECONDS)
        _SWITCH.leave()


class _SwitchInterval:
    """REQUEST_SWITCH_SECONDS while any request thread runs; the interval found before
    the first is put back when the last stops (in whatever order they stop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._previous = 0.0

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._previous = sys.getswitchinterval()
                sys.setswitchinterval(min(self._previous, REQUEST_SWITCH_SECONDS))
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                sys.setswitchinterval(self._previous)


_SWITCH = _SwitchInterval()


def _settle(future: concurrent.futures.Future[None], error: BaseException | None) -> None:
    """Settle `future` unless it is already (the calling task's wait cancels it)."""
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass


class _Stop:
    """Cancels the thread's work from another thread, also when asked before it began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scope: anyio.CancelScope | None = None

    def bind(self, loop: asyncio.AbstractEventLoop, scope: anyio.CancelScope) -> None:
        with self._lock:
            self._loop, self._scope = loop, scope
            if self._requested:
                scope.cancel()

    @property
    def requested(self) -> bool:
        return self._requested

    def request(self) -> None:
        with self._lock:
            self._requested = True
            if self._loop is not None and self._scope is not None:
                try:
                    self._loop.call_soon_threadsafe(self._scope.cancel)
                except RuntimeError:  # the thread's loop has closed: nothing to stop
                    pass
