"""The NATS side of every service: connecting, the streams and buckets corral
needs, events, and serving a kind's spec subjects (request/reply and durable)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import nats
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js import errors as js_errors

from corral import names
from corral.codec import encode
from corral.events import Event, Reply
from corral.kv import NatsBucket

log = logging.getLogger(__name__)

# A handler gets the raw payload of one verb and returns the reply; it never raises
# for bad input (that is a Reply with ok=False).
SpecHandler = Callable[[bytes], Awaitable[Reply]]


async def connect(url: str, name: str, *, startup_timeout: float = 60.0) -> NATS:
    """Connect, retrying for `startup_timeout` at start (a service may start before
    NATS) and for ever after a disconnect."""
    delay = 0.1
    with anyio.fail_after(startup_timeout):
        while True:
            try:
                return await nats.connect(
                    url,
                    name=name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    allow_reconnect=True,
                    error_cb=_log_nats_error,
                    disconnected_cb=_log_disconnect,
                    reconnected_cb=_log_reconnect,
                )
            except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as error:
                log.warning("NATS at %s not reachable (%s); retrying", url, error)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)


async def _log_nats_error(error: Exception) -> None:
    log.warning("NATS: %s", error or type(error).__name__)


async def _log_disconnect() -> None:
    log.info("NATS: disconnected")


async def _log_reconnect() -> None:
    log.info("NATS: reconnected")


def kv_replicas() -> int:
    """How many NATS servers keep each bucket and stream: $CORRAL_KV_REPLICAS (1 to 5),
    3 on a 3-server cluster (R3), 1 on a single server (the default)."""
    raw = os.environ.get("CORRAL_KV_REPLICAS", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 5:
        raise ValueError(f"CORRAL_KV_REPLICAS must be a whole number from 1 to 5, not {raw!r}")
    return int(raw)


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the streams corral needs; creating an existing one with the same config is a no-op."""
    await _ensure_stream(
        js,
        js_api.StreamConfig(
            name=names.SPEC_STREAM,
            subjects=[f"{names.SPEC_PREFIX}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=7 * 24 * 3600,
            max_msg_size=names.MAX_SPEC_BYTES * 2,  # larger ones are rejected at the server
            storage=js_api.StorageType.FILE,
            num_replicas=kv_replicas(),
        ),
    )
    await _ensure_stream(
        js,
        js_api.StreamConfig(
            name=names.EVENTS_STREAM,
            subjects=[f"{names.EVENTS_PREFIX}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=24 * 3600,
            max_msgs_per_subject=100,
            storage=js_api.StorageType.FILE,
            num_replicas=kv_replicas(),
        ),
    )


async def _ensure_stream(js: JetStreamContext, config: js_api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except js_errors.BadRequestError:
        # It exists with another config (an older corral): bring it to this one.
        await js.update_stream(config)


async def open_buckets(js: JetStreamContext) -> dict[str, NatsBucket]:
    """Open (creating where missing) every corral bucket, by name."""
    buckets: dict[str, NatsBucket] = {}
    for bucket in names.ALL_BUCKETS:
        try:
            kv = await js.key_value(bucket)
        except js_errors.BucketNotFoundError:
            kv = await js.create_key_value(
                bucket=bucket, history=5, storage=js_api.StorageType.FILE, replicas=kv_replicas()
            )
        buckets[bucket] = NatsBucket(kv, bucket)
    return buckets


@dataclass(frozen=True)
class EventPublisher:
    """Publishes Events; a failure to publish one is logged, never raised."""

    nc: NATS
    source: str

    async def emit(
        self,
        object_kind: str,
        object_name: str,
        reason: str,
        message: str,
        *,
        warning: bool = False,
    ) -> None:
        event = Event(
            time=time.time(),
            type="Warning" if warning else "Normal",
            reason=reason,
            object_kind=object_kind,
            object_name=object_name,
            message=message,
            source=self.source,
        )
        subject = (
            names.rejected_subject(object_kind)
            if reason == "Rejected"
            else names.event_subject(object_kind, object_name)
        )
        try:
            await self.nc.publish(subject, encode(event))
        except Exception:
            log.warning("could not publish event %s %s", reason, subject, exc_info=True)


async def _answer(handler: SpecHandler, raw: bytes, subject: str) -> Reply:
    try:
        return await handler(raw)
    except Exception as error:  # a service never dies of a message
        log.exception("handler for %s failed", subject)
        return Reply(ok=False, error=f"internal error: {type(error).__name__}: {error}")


async def serve_spec_requests(
    nc: NATS,
    kind: str,
    handlers: dict[str, SpecHandler],
    *,
    queue: str,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer requests on corral.api.<kind>.<verb>, in a queue group shared by replicas."""
    subscription = await nc.subscribe(f"{names.API_PREFIX}.{kind.lower()}.*", queue=queue)
    task_status.started()
    try:
        async for msg in subscription.messages:
            verb = msg.subject.rsplit(".", 1)[-1]
            handler = handlers.get(verb)
            if handler is None:
                reply = Reply(
                    ok=False,
                    kind=kind,
                    error=f"unknown verb {verb!r} for {kind}: expected one of {sorted(handlers)}",
                )
            else:
                reply = await _answer(handler, msg.data, msg.subject)
            if msg.reply:
                await _quietly(msg.respond(encode(reply)))
    finally:
        with anyio.CancelScope(shield=True):
            await _quietly(subscription.unsubscribe())


async def consume_spec_stream(
    js: JetStreamContext,
    kind: str,
    handlers: dict[str, SpecHandler],
    events: EventPublisher,
    *,
    durable: str,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Apply what was published on corral.spec.<kind>.<verb>, even while this owner was down.

    Specs are applied one at a time, in order. A rejected spec is acknowledged
    (retrying cannot fix it) and told as a Warning event on
    corral.events.rejected.<kind>. An internal failure is retried in place.
    """
    subscription = await js.pull_subscribe(
        f"{names.SPEC_PREFIX}.{kind.lower()}.>",
        durable=durable,
        stream=names.SPEC_STREAM,
        config=js_api.ConsumerConfig(ack_wait=30, max_ack_pending=64),
    )
    task_status.started()
    while True:
        try:
            batch: list[Msg] = await subscription.fetch(batch=32, timeout=5)
        except (nats.errors.TimeoutError, TimeoutError):
            continue  # nothing new within the fetch's wait
        except Exception:  # a disconnect, a JetStream hiccup: never die of it
            log.warning("fetching specs failed; retrying", exc_info=True)
            await anyio.sleep(1)
            continue
        for msg in batch:
            reply = await _apply_in_order(msg, kind, handlers, events)
            if not reply.ok:
                await events.emit(kind, reply.name, "Rejected", reply.error, warning=True)
            await _quietly(msg.ack())


async def _apply_in_order(
    msg: Msg, kind: str, handlers: dict[str, SpecHandler], events: EventPublisher
) -> Reply:
    """Apply one durable spec, retrying it in place while the failure is internal (KV
    unavailable...), so that a later spec never overtakes it. Bad input is final."""
    verb = msg.subject.rsplit(".", 1)[-1]
    handler = handlers.get(verb)
    if handler is None:
        return Reply(ok=False, kind=kind, error=f"unknown verb {verb!r} for {kind}")
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        reply = await _answer(handler, msg.data, msg.subject)
        if not reply.error.startswith("internal error"):
            return reply
        if attempt == 5:
            await events.emit(
                kind, reply.name, "Retrying", f"{msg.subject}: {reply.error}", warning=True
            )
        await _quietly(msg.in_progress())  # keep JetStream from delivering it again meanwhile
        await anyio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _quietly(operation: Awaitable[object]) -> None:
    try:
        await operation
    except Exception:
        log.debug("ignored failure", exc_info=True)
