"""The `corral up` supervisor: nats-server first, then the services; each kept running.

Start: refuse when this data dir already has a live supervisor or a port is taken;
stop the leftovers of a supervisor that died; start nats-server and wait until
JetStream answers; start the services and wait until each /healthz answers 200.
Then supervise until SIGINT/SIGTERM, and stop in order: services (SIGTERM, then
SIGKILL after a timeout), then nats-server, so the services drain cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import anyio

from corral.local.child import ChildState, supervise_child
from corral.local.health import wait_healthy
from corral.local.layout import Layout
from corral.local.nats_server import wait_for_jetstream
from corral.local.plan import UpOptions, busy_ports, nats_child, service_children
from corral.local.processes import ProcessRef, start_time, stop_processes
from corral.local.state_file import (
    ChildRecord,
    SupervisorRecord,
    read_state,
    remove_files,
    running_supervisor,
    write_pid,
    write_state,
)

log = logging.getLogger(__name__)

NATS_TIMEOUT = 30.0
HEALTH_TIMEOUT = float(os.environ.get("CORRAL_UP_TIMEOUT", "90"))


class CannotStart(RuntimeError):
    """corral up cannot start here; the message says why and what to do."""


def stop_leftovers(layout: Layout) -> list[str]:
    """Stop the children of a supervisor of this data dir that died without stopping them."""
    record = read_state(layout)
    if record is None or record.ref().alive():
        return []
    refs = {child.name: child.ref() for child in record.children}
    alive = {name: ref for name, ref in refs.items() if ref is not None and ref.alive()}
    if alive:
        log.warning("stopping leftovers of an earlier run: %s", ", ".join(sorted(alive)))
        stop_processes(list(alive.values()), timeout=10)
    remove_files(layout)
    return sorted(alive)


def _check_can_start(options: UpOptions) -> None:
    layout = options.layout
    running = running_supervisor(layout)
    if running is not None:
        raise CannotStart(
            f"corral is already running from {layout.data_dir} (pid {running.pid}); "
            "`corral down` stops it"
        )
    stop_leftovers(layout)
    busy = busy_ports(options)
    if busy:
        raise CannotStart(
            f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 already in use; "
            "choose others with --nats-port / --metrics-base-port"
        )


async def _wait_all_healthy(children: list[ChildState], within: float) -> list[str]:
    """Wait for every /healthz concurrently; returns the names that did not answer in time."""
    late: list[str] = []

    async def one(child: ChildState) -> None:
        assert child.spec.health_url is not None
        try:
            with anyio.fail_after(within):
                await wait_healthy(child.spec.health_url)
        except TimeoutError:
            late.append(child.spec.name)

    async with anyio.create_task_group() as group:
        for child in children:
            group.start_soon(one, child)
    return sorted(late)


async def run_supervisor(
    options: UpOptions,
    *,
    on_ready: Callable[[SupervisorRecord], None] | None = None,
) -> None:
    """Run until SIGINT or SIGTERM; raises CannotStart when it cannot begin."""
    layout = options.layout
    layout.create()
    _check_can_start(options)

    me = ProcessRef(os.getpid(), start_time(os.getpid()) or 0)
    nats = ChildState(nats_child(options))
    services = [ChildState(spec) for spec in service_children(options)]
    record = SupervisorRecord(
        pid=me.pid, started=me.started, data_dir=str(layout.data_dir), nats_url=options.nats_url
    )

    def save() -> None:
        record.children = [
            ChildRecord(
                name=child.spec.name,
                pid=child.pid,
                started=None if child.pid is None else start_time(child.pid),
                restarts=child.restarts,
                log=str(child.spec.log),
                metrics_url=child.spec.metrics_url,
                health_url=child.spec.health_url,
            )
            for child in (nats, *services)
        ]
        write_state(layout, record)

    stop = anyio.Event()
    startup = anyio.CancelScope()

    async def stop_on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                log.info("received %s: stopping", signal.Signals(received).name)
                stop.set()
                startup.cancel()

    write_pid(layout, me.pid)
    save()
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(stop_on_signal)
            async with anyio.create_task_group() as nats_group:
                await nats_group.start(supervise_child, nats, save)
                async with anyio.create_task_group() as services_group:
                    with startup:
                        with anyio.fail_after(NATS_TIMEOUT):
                            await wait_for_jetstream(options.nats_url)
                        log.info("nats-server answers on %s", options.nats_url)
                        for child in services:
                            await services_group.start(supervise_child, child, save)
                        late = await _wait_all_healthy(services, HEALTH_TIMEOUT)
                        if late:
                            log.error(
                                "no healthy /healthz within %.0f s from: %s (see their logs in %s)",
                                HEALTH_TIMEOUT,
                                ", ".join(late),
                                layout.logs,
                            )
                        else:
                            record.ready = True
                            save()
                            log.info("all services healthy")
                            if on_ready is not None:
                                on_ready(record)
                    await stop.wait()
                    record.stopping = True
                    save()
                    log.info("stopping services")
                    services_group.cancel_scope.cancel()
                log.info("stopping nats-server")
                nats_group.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    finally:
        remove_files(layout)
    log.info("corral stopped")
