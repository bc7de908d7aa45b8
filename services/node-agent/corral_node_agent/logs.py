"""The agent's log service: its containers' output streamed over NATS on request.

A LogRequest on corral.logs.<node> (with a reply inbox) names a replica; the agent
reads that replica's container's log from its engine and answers with LogChunks on
the inbox (corral.contract.logs: the protocol, its flow control and how either side
notices the other went away; docs/api.md, "Logs"). Memory stays bounded whatever the
client does: at most LOG_WINDOW_CHUNKS chunks unacknowledged, a few engine frames
read ahead, and at most `max_streams` streams at once.

Only this cluster's containers are served: an engine may run the containers of
several clusters (docs/safety.md), so a container is picked only when its cluster
label is the agent's cluster id (or a cluster the node adopted); while the agent has
not recognised the store's cluster as its own (at start, or a store of another
cluster), every request is answered with an error.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import math
import time
from collections.abc import Collection, Iterable
from typing import Literal, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import ObjectSendStream, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.logs import (
    LOG_IDLE_SECONDS,
    LOG_KEEPALIVE_SECONDS,
    LOG_WINDOW_CHUNKS,
    MAX_LOG_CHUNK_BYTES,
    LogAck,
    LogChunk,
    LogPiece,
    LogRequest,
)
from corral.natsio.bus import flush_subscriptions, unsubscribe_quietly
from corral_node_agent.runtime import (
    ContainerState,
    LogFrame,
    ObservedContainer,
    Runtime,
    RuntimeFailure,
)
from corral_node_agent.safety import Identity

log = logging.getLogger(__name__)

MAX_LOG_STREAMS = 64  # streams served at once by one agent; more are refused
READ_AHEAD_FRAMES = 16  # engine frames read before the chunk that carries them is sent


class ClientGone(Exception):
    """The client stopped acknowledging (or said stop): the stream ends."""


class ChunkPacker:
    """Engine frames -> the pieces of chunks of at most `limit` bytes of text each,
    decoded per stream as UTF-8 (a character split across frames is kept whole)."""

    def __init__(self, limit: int = MAX_LOG_CHUNK_BYTES) -> None:
        self.limit = limit
        self._decoders = {
            stream: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for stream in ("stdout", "stderr")
        }
        # The chunk being gathered: runs of one stream's bytes (whole characters), merged
        # into one piece each when the chunk closes (a line per frame costs no piece).
        self._runs: list[tuple[Literal["stdout", "stderr"], list[bytes]]] = []
        self._size = 0
        self.full: list[list[LogPiece]] = []  # chunks' pieces ready to send, oldest first

    def add(self, frame: LogFrame) -> None:
        stream: Literal["stdout", "stderr"] = "stderr" if frame.stream == "stderr" else "stdout"
        data = self._decoders[stream].decode(frame.data).encode()
        while data:
            room = self.limit - self._size
            cut = min(room, len(data))
            while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:
                cut -= 1  # never inside a character
            if cut == 0:
                self._close()
                continue
            if self._runs and self._runs[-1][0] == stream:
                self._runs[-1][1].append(data[:cut])
            else:
                self._runs.append((stream, [data[:cut]]))
            self._size += cut
            data = data[cut:]
            if self._size >= self.limit:
                self._close()

    def finish(self) -> None:
        """The log ended: what the decoders hold (an incomplete character) goes too."""
        for stream, decoder in self._decoders.items():
            rest = decoder.decode(b"", final=True)
            if rest:
                self.add(LogFrame(stream, rest.encode()))
        self._close()

    def take(self) -> list[LogPiece]:
        """The next chunk's pieces: a full one, else what is gathered (maybe none)."""
        self._close()
        return self.full.pop(0) if self.full else []

    @property
    def gathered(self) -> int:
        """Bytes of text gathered for the chunk not closed yet."""
        return self._size

    def _close(self) -> None:
        if self._runs:
            self.full.append(
                [
                    LogPiece(stream=stream, text=b"".join(parts).decode())
                    for stream, parts in self._runs
                ]
            )
            self._runs, self._size = [], 0


class ClusterMembership(Protocol):
    """What the log service needs of the agent (NodeAgent): whose containers it serves."""

    @property
    def identity(self) -> Identity: ...

    @property
    def cluster_id(self) -> str: ...

    @property
    def adopted(self) -> frozenset[str]: ...


def serving_cluster(membership: ClusterMembership) -> str:
    """The cluster whose containers' logs may be served: the agent's, once it has
    recognised the store's cluster as its own; '' until then (nothing is served)."""
    if membership.identity != Identity.RECOGNISED:
        return ""
    return membership.cluster_id


def pick_container(
    containers: Iterable[ObservedContainer],
    request: LogRequest,
    node: str,
    cluster_id: str,
    adopted: Collection[str] = frozenset(),
) -> ObservedContainer | None:
    """The replica's container on this node and of this cluster (`cluster_id`, or a
    cluster the node adopted; none at all when `cluster_id` is ''): the one of the id
    asked for (a prefix will do), else the running one, else the latest started."""
    if not cluster_id:
        return None
    mine = [
        c
        for c in containers
        if c.replica == request.replica
        and c.namespace == request.namespace
        and c.node == node
        and (c.cluster == cluster_id or (c.cluster != "" and c.cluster in adopted))
    ]
    if request.container_id:
        mine = [c for c in mine if c.id.startswith(request.container_id)] or mine
    mine.sort(key=lambda c: (c.state == ContainerState.RUNNING, c.started_at or 0.0))
    return mine[-1] if mine else None


class _Stream:
    """One client's stream: numbering, the window and the client's liveness."""

    def __init__(self, nc: NATS, inbox: str, node: str, service: LogService) -> None:
        self.nc = nc
        self.inbox = inbox
        self.node = node
        self.service = service
        self.seq = 0
        self.acked = -1
        self.heard_at = time.monotonic()
        self.control = ""
        self.acks_changed = anyio.Event()

    async def send(self, chunk_pieces: list[LogPiece], *, last: bool = False, error: str = "",
                   field: str = "") -> None:  # fmt: skip
        if not last:
            await self._credit()
        chunk = LogChunk(
            seq=self.seq,
            node=self.node,
            pieces=chunk_pieces,
            control=self.control if self.seq == 0 else "",
            end=last and not error,
            error=error,
            field=field,
        )
        self.seq += 1
        await self.nc.publish(self.inbox, encode(chunk))
        self.service.chunks_sent += 1

    async def _credit(self) -> None:
        """Wait until the window has room; ClientGone when the client fell silent."""
        while self.seq > self.acked + self.service.window:
            self.check_alive()
            changed = self.acks_changed
            with anyio.move_on_after(self.service.idle_seconds / 4):
                await changed.wait()
        self.check_alive()

    def check_alive(self) -> None:
        if time.monotonic() - self.heard_at > self.service.idle_seconds:
            raise ClientGone(f"no acknowledgement for {self.service.idle_seconds:g}s")

    def heard(self, ack: LogAck) -> None:
        self.heard_at = time.monotonic()
        self.acked = max(self.acked, ack.seq)
        self.acks_changed.set()
        self.acks_changed = anyio.Event()


class LogService:
    """Serves corral.logs.<node> from `runtime` until cancelled: the containers of the
    cluster `membership` (the agent) belongs to, none while it does not know it."""

    def __init__(
        self,
        nc: NATS,
        node: str,
        runtime: Runtime,
        membership: ClusterMembership,
        *,
        window: int = LOG_WINDOW_CHUNKS,
        idle_seconds: float = LOG_IDLE_SECONDS,
        keepalive_seconds: float = LOG_KEEPALIVE_SECONDS,
        max_streams: int = MAX_LOG_STREAMS,
    ) -> None:
        self.nc = nc
        self.node = node
        self.runtime = runtime
        self.membership = membership
        self.window = window
        self.idle_seconds = idle_seconds
        self.keepalive_seconds = keepalive_seconds
        self.max_streams = max_streams
        self.active = 0  # streams being served now
        self.served = 0  # streams served in all (ended)
        self.chunks_sent = 0
        self.stopped_by_client = 0  # streams a client stopped, or left by falling silent

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        subscription = await self.nc.subscribe(names.logs_subject(self.node))
        await flush_subscriptions(self.nc)  # started: a log request right after is heard
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                async for msg in subscription.messages:
                    if not msg.reply:
                        continue
                    if self.active >= self.max_streams:
                        refused = LogChunk(
                            seq=0,
                            node=self.node,
                            error=f"node {self.node} serves {self.max_streams} log streams "
                            "already: try again later",
                        )
                        await self.nc.publish(msg.reply, encode(refused))
                        continue
                    self.active += 1
                    tg.start_soon(self._serve_one, msg)
        finally:
            await unsubscribe_quietly(subscription)

    async def _serve_one(self, msg: Msg) -> None:
        stream = _Stream(self.nc, msg.reply, self.node, self)
        try:
            await self._stream(msg.data, stream)
        except ClientGone as gone:
            self.stopped_by_client += 1
            log.debug("log stream for %s ended: %s", msg.reply, gone)
        except Exception as error:  # a service never dies of a message
            log.exception("log stream failed")
            try:
                await stream.send([], last=True, error=f"internal error: {error}")
            except Exception:
                log.debug("telling the client failed", exc_info=True)
        finally:
            self.active -= 1
            self.served += 1

    async def _stream(self, data: bytes, stream: _Stream) -> None:
        try:
            request = decode_payload(data, LogRequest)
        except InvalidPayload as invalid:
            await stream.send([], last=True, error=invalid.message, field=invalid.field)
            return
        cluster_id = serving_cluster(self.membership)
        if not cluster_id:
            await stream.send(
                [],
                last=True,
                error=f"node {self.node} does not know yet that it belongs to this cluster "
                f"(its identity: {self.membership.identity}): no logs until it does; try "
                "again later",
            )
            return
        try:
            container = pick_container(
                await self.runtime.list_containers(),
                request,
                self.node,
                cluster_id,
                self.membership.adopted,
            )
        except RuntimeFailure as failure:
            await stream.send([], last=True, error=f"node {self.node}: {failure}")
            return
        if container is None:
            await stream.send(
                [],
                last=True,
                error=f"replica {request.replica} of namespace {request.namespace} has no "
                f"container on node {self.node}",
            )
            return
        stream.control = self.nc.new_inbox()
        acks = await self.nc.subscribe(stream.control)
        try:
            async with anyio.create_task_group() as tg:
                send, receive = anyio.create_memory_object_stream[LogFrame | RuntimeFailure](
                    READ_AHEAD_FRAMES
                )
                tg.start_soon(self._hear_acks, acks, stream, tg.cancel_scope)
                tg.start_soon(self._read_engine, container.id, request, send)
                gone: ClientGone | None = None
                try:
                    await self._send_chunks(receive, stream, request.follow)
                except ClientGone as silent:
                    gone = silent
                tg.cancel_scope.cancel()
        finally:
            await unsubscribe_quietly(acks)
        if stream.heard_at < 0:  # the client said stop
            raise ClientGone("the client stopped")
        if gone is not None:
            raise gone

    async def _hear_acks(
        self, acks: Subscription, stream: _Stream, scope: anyio.CancelScope
    ) -> None:
        async for msg in acks.messages:
            try:
                ack = decode_payload(msg.data, LogAck)
            except InvalidPayload:
                continue
            if ack.stop:
                stream.heard_at = -math.inf
                scope.cancel()
                return
            stream.heard(ack)

    async def _read_engine(
        self,
        container_id: str,
        request: LogRequest,
        send: ObjectSendStream[LogFrame | RuntimeFailure],
    ) -> None:
        async with send:
            try:
                frames = self.runtime.container_logs(
                    container_id,
                    follow=request.follow,
                    tail=request.tail,
                    since=request.since,
                    timestamps=request.timestamps,
                )
                async for frame in frames:
                    await send.send(frame)
            except RuntimeFailure as failure:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await send.send(failure)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the sender is done (the client went): stop reading

    async def _send_chunks(
        self,
        receive: MemoryObjectReceiveStream[LogFrame | RuntimeFailure],
        stream: _Stream,
        follow: bool,
    ) -> None:
        """Gather what the engine gave into chunks and send them as the window allows;
        a keepalive when a follow is quiet; the end (or the engine's error) last."""
        packer = ChunkPacker()
        failure: RuntimeFailure | None = None
        ended = False
        async with receive:
            while not ended:
                if packer.full:
                    await stream.send(packer.take())
                    continue
                item: LogFrame | RuntimeFailure | None = None
                with anyio.move_on_after(self.keepalive_seconds if follow else math.inf):
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        ended = True
                while item is not None:
                    if isinstance(item, RuntimeFailure):
                        failure, ended = item, True
                        break
                    packer.add(item)
                    if packer.full:
                        break
                    try:
                        item = receive.receive_nowait()
                    except anyio.WouldBlock:
                        # Let the reader hand over what the engine gave already: a chunk
                        # holds all that is there, not just the frames read ahead.
                        await anyio.lowlevel.checkpoint()
                        try:
                            item = receive.receive_nowait()
                        except anyio.WouldBlock:
                            item = None
                        except anyio.EndOfStream:
                            item, ended = None, True
                    except anyio.EndOfStream:
                        item, ended = None, True
                if not ended:
                    # What came (or nothing: a keepalive, when a follow is quiet).
                    await stream.send(packer.take())
        packer.finish()
        while packer.full:
            await stream.send(packer.take())
        if failure is not None:
            await stream.send([], last=True, error=f"node {self.node}: {failure}")
        else:
            await stream.send([], last=True)
