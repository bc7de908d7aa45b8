"""Every private attribute of nats-py that corral reads, in one place.

Checked against nats-py 2.16.0 (`CHECKED_VERSIONS`). nats-py has no public API for
what these give, so corral reads them here and nowhere else:

- `KeyValue._js`, `KeyValue._pre`: `KeyValue.delete` returns True, not the delete
  marker's revision, which a Mirror needs to apply its own delete at the right place.
  `NatsBucket.delete` publishes the marker itself, as `KeyValue.delete` does (on the
  bucket's JetStream context, to `<_pre><key>`), and keeps the ack's sequence.
- `KeyValue.KeyWatcher._sub`: the watch's ordered consumer. nats-py marks the end of
  the current entries too early (see `NatsBucket.watch`); the consumer's info says
  how many messages it had delivered, which is where they really end.
- `PushSubscription._stream`, `._consumer`: the consumer a watch reads from now (nats-py
  makes a new one under a new name when an ordered consumer falls behind), deleted
  when the watch stops (`NatsBucket.watch`).
- `PushSubscription._id`: changed, synchronously, when nats-py re-makes an ordered
  consumer after a gap: `NatsBucket.watch` says so to its reader (entries purged
  meanwhile may have been skipped).
- `PushSubscription._sub`, `Subscription._cb`, `Subscription._jsi._fctask`: nats-py
  polls every ordered consumer for a flow-control reply to send, four times a second,
  in a task of its own. For a subscription with a callback (every KV watch) it never
  has one to send: the delivered count it compares (`Subscription._received`) counts
  each message on arrival, so `Client._process_msg` answers each flow-control request
  as it comes. `NatsBucket.watch` stops the task (a hollow cluster runs a watch per
  node: 2,000 wake-ups a second in a 500-node process).
- `KeyValue._direct`: whether nats-py reads a bucket with direct gets (any replica
  answers; set from the stream's `allow_direct` when the bucket is opened). A direct
  get that finds nothing is asked again of the stream's leader through the JetStream
  API (`NatsBucket.get`), on a copy of the bucket with `_direct` off.
- `nats.js.client.KV_STREAM_TEMPLATE`, `KV_PRE_TEMPLATE` and what `JetStreamContext.key_value`
  does with a stream's info: a service reads each bucket's stream once at start and
  opens the bucket from it (`key_value_from_config`), where `key_value` would read it
  again.
- `KeyValue._js` again: a bucket opened through one JetStream context (a service's
  setup, with long timeouts) is used through another (`key_value_on`) on a copy, as
  `nats.js.JetStreamContext.key_value` would open it, without its stream info request.
- `Client._server_info`: the INFO the connected server sent (`server_name`,
  `cluster`), for the Raft leader step-down; the client exposes only its version.

`tests/unit/test_nats_internals.py` checks that the installed nats-py is a checked
version and that these attributes are still there, with the types read here: an
upgrade of nats-py fails that test, not production. After checking a new version's
source (nats/js/kv.py, nats/aio/client.py), add it to `CHECKED_VERSIONS`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any, Final

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE
from nats.js.errors import BadBucketError
from nats.js.kv import KeyValue

LIBRARY: Final = "nats-py"
CHECKED_VERSIONS: Final = frozenset({"2.16.0"})


class LibraryChanged(RuntimeError):
    """A private attribute of the library is gone or holds something else."""


def _changed(what: str, found: object) -> LibraryChanged:
    return LibraryChanged(
        f"{LIBRARY}: {what} is {type(found).__name__}, not what corral.natsio.nats_internals "
        f"was checked against ({LIBRARY} {', '.join(sorted(CHECKED_VERSIONS))})"
    )


def key_value_jetstream(kv: KeyValue) -> JetStreamContext:
    """The JetStream context the bucket publishes through (`KeyValue._js`)."""
    js = getattr(kv, "_js", None)
    if not isinstance(js, JetStreamContext):
        raise _changed("KeyValue._js", js)
    return js


def jetstream_client(js: JetStreamContext) -> Client:
    """The connection a JetStream context talks through (`JetStreamContext._nc`)."""
    nc = getattr(js, "_nc", None)
    if not isinstance(nc, Client):
        raise _changed("JetStreamContext._nc", nc)
    return nc


def jetstream_api_prefix(js: JetStreamContext) -> str:
    """The context's JetStream API subject prefix (`_prefix`: "$JS.API", or a domain's)."""
    prefix = getattr(js, "_prefix", None)
    if not isinstance(prefix, str):
        raise _changed("JetStreamContext._prefix", prefix)
    return prefix


def key_value_subject(kv: KeyValue, key: str) -> str:
    """The subject `key` is stored under (`KeyValue._pre` + key)."""
    prefix = getattr(kv, "_pre", None)
    if not isinstance(prefix, str):
        raise _changed("KeyValue._pre", prefix)
    return f"{prefix}{key}"


def key_value_direct(kv: KeyValue) -> bool:
    """Whether the bucket is read with direct gets (`KeyValue._direct`)."""
    direct = getattr(kv, "_direct", None)
    if not isinstance(direct, bool):
        raise _changed("KeyValue._direct", direct)
    return direct


def key_value_from_config(js: JetStreamContext, bucket: str, config: StreamConfig) -> KeyValue:
    """The bucket as `JetStreamContext.key_value` opens it (its stream `KV_<bucket>`,
    subjects `$KV.<bucket>.`, direct gets as the stream's `allow_direct`), from the
    stream's configuration read already, without asking the server again. Raises
    BadBucketError, as it does, for a stream that keeps no value per key."""
    if config.max_msgs_per_subject is None or config.max_msgs_per_subject < 1:
        raise BadBucketError
    return KeyValue(
        name=bucket,
        stream=KV_STREAM_TEMPLATE.format(bucket=bucket),
        pre=KV_PRE_TEMPLATE.format(bucket=bucket),
        js=js,
        direct=bool(config.allow_direct),
    )


def key_value_on(kv: KeyValue, js: JetStreamContext) -> KeyValue:
    """The same bucket through another JetStream context (`KeyValue._js`): opened once
    with a context for setting up, used with the service's own, without asking the
    server about the stream again."""
    key_value_jetstream(kv)
    moved = copy.copy(kv)
    moved._js = js
    return moved


def key_value_through_api(kv: KeyValue) -> KeyValue:
    """The same bucket, read through the JetStream API (the stream's leader) rather
    than with direct gets."""
    key_value_direct(kv)
    leader = copy.copy(kv)
    leader._direct = False
    return leader


def watch_subscription(watcher: KeyValue.KeyWatcher) -> JetStreamContext.PushSubscription | None:
    """The watch's consumer subscription (`KeyWatcher._sub`); None before it is made."""
    subscription = getattr(watcher, "_sub", None)
    if subscription is not None and not isinstance(subscription, JetStreamContext.PushSubscription):
        raise _changed("KeyWatcher._sub", subscription)
    return subscription


def subscription_consumer(subscription: JetStreamContext.PushSubscription) -> tuple[str, str]:
    """(stream, consumer name) a push subscription reads from now (`_stream`,
    `_consumer`)."""
    stream = getattr(subscription, "_stream", None)
    consumer = getattr(subscription, "_consumer", None)
    if not isinstance(stream, str):
        raise _changed("PushSubscription._stream", stream)
    if not isinstance(consumer, str):
        raise _changed("PushSubscription._consumer", consumer)
    return stream, consumer


def subscription_id(subscription: JetStreamContext.PushSubscription) -> int:
    """The client-side id of the subscription delivering a push consumer's messages now
    (`PushSubscription._id`). nats-py gives it a new one, before any message of the new
    consumer can arrive, when it re-makes an ordered consumer after a gap (the new
    consumer's name is only set later, when the server has answered)."""
    sid = getattr(subscription, "_id", None)
    if not isinstance(sid, int):
        raise _changed("PushSubscription._id", sid)
    return sid


def stop_flow_control_polling(subscription: JetStreamContext.PushSubscription) -> bool:
    """Cancel the flow-control poller of a push subscription with a callback (see the
    module's docstring); True when cancelled, False when there is none or the
    subscription has no callback (its poller can act: left running)."""
    inner = getattr(subscription, "_sub", None)
    jsi = getattr(inner, "_jsi", None)
    if jsi is None:
        raise _changed("PushSubscription._sub._jsi", jsi)
    if getattr(inner, "_cb", None) is None:
        return False
    task = getattr(jsi, "_fctask", None)
    if task is None:
        return False
    if not isinstance(task, asyncio.Task):
        raise _changed("Subscription._jsi._fctask", task)
    task.cancel()
    jsi._fctask = None
    return True


def server_info(nc: Client) -> Mapping[str, Any]:
    """The INFO of the server the client is connected to (`Client._server_info`)."""
    info = getattr(nc, "_server_info", None)
    if not isinstance(info, dict):
        raise _changed("Client._server_info", info)
    return info
