"""A TCP proxy on loopback that a test can cut: a network partition between one
client (a node agent) and its NATS server, on this machine only.

    open       bytes flow both ways
    closed     every connection is closed, and new ones are closed at once
               (the client sees the partition: connection refused or reset)
    blackhole  connections stay open, new ones are accepted, and every byte is
               dropped (the client only finds out from its own pings and timeouts)

Going back to open closes what the blackhole held (its bytes are lost, so those
TCP streams are broken, as after a real partition that outlived TCP's patience).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketStream, TaskGroup


class Mode(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    BLACKHOLE = "blackhole"


class PartitionProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.mode = Mode.OPEN
        self._connections: set[anyio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def close_connections(self) -> None:
        for scope in list(self._connections):
            scope.cancel()

    def cut(self, mode: Mode = Mode.CLOSED) -> None:
        self.mode = mode
        if mode == Mode.CLOSED:
            self.close_connections()

    def heal(self) -> None:
        self.close_connections()
        self.mode = Mode.OPEN

    async def _pump(self, source: SocketStream, sink: SocketStream | None) -> None:
        async for chunk in source:
            if self.mode == Mode.OPEN and sink is not None:
                await sink.send(chunk)
            elif self.mode == Mode.CLOSED:
                return
            # BLACKHOLE: dropped

    async def _serve(self, client: SocketStream) -> None:
        with anyio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client:
                    if self.mode == Mode.CLOSED:
                        return
                    if self.mode == Mode.BLACKHOLE:
                        await self._pump(client, None)
                        return
                    upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
                    async with upstream, anyio.create_task_group() as tg:
                        tg.start_soon(self._pump_then_cancel, client, upstream, tg)
                        tg.start_soon(self._pump_then_cancel, upstream, client, tg)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            finally:
                self._connections.discard(scope)

    async def _pump_then_cancel(
        self, source: SocketStream, sink: SocketStream, tg: TaskGroup
    ) -> None:
        try:
            await self._pump(source, sink)
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def partition_proxy(upstream_port: int) -> AsyncIterator[PartitionProxy]:
    proxy = PartitionProxy(upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy._serve)
        try:
            yield proxy
        finally:
            proxy.close_connections()
            tg.cancel_scope.cancel()
