"""The private attributes of nats-py that corral.natsio.nats_internals reads are still
there, with the types it expects, in the installed nats-py: an upgrade fails here
first, loudly, not in production."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from importlib.metadata import version

import pytest
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadBucketError
from nats.js.kv import KeyValue

from corral.natsio import nats_internals


def _bucket(js: JetStreamContext) -> KeyValue:
    return KeyValue(name="nodes", stream="KV_nodes", pre="$KV.nodes.", js=js, direct=False)


def test_the_installed_nats_py_is_a_version_the_adapter_was_checked_against() -> None:
    installed = version(nats_internals.LIBRARY)
    assert installed in nats_internals.CHECKED_VERSIONS, (
        f"nats-py {installed} is installed, but corral.natsio.nats_internals was checked "
        f"against {sorted(nats_internals.CHECKED_VERSIONS)}: read nats/js/kv.py and "
        "nats/aio/client.py of the new version, then add it to CHECKED_VERSIONS"
    )


def test_a_bucket_still_keeps_its_jetstream_context_and_subject_prefix() -> None:
    js = Client().jetstream()
    kv = _bucket(js)
    assert nats_internals.key_value_jetstream(kv) is js
    assert nats_internals.key_value_subject(kv, "node-1") == "$KV.nodes.node-1"


def test_keyvalue_delete_still_publishes_its_marker_as_the_adapter_does() -> None:
    # NatsBucket.delete repeats KeyValue.delete to keep the marker's revision.
    source = inspect.getsource(KeyValue.delete)
    assert 'await self._js.publish(f"{self._pre}{key}", headers=hdrs)' in source
    assert "hdrs[KV_OP] = KV_DEL" in source
    assert "EXPECTED_LAST_SUBJECT_SEQUENCE" in source
    assert inspect.getsource(JetStreamContext.key_value).count("pre=KV_PRE_TEMPLATE") == 1


def test_a_watcher_still_keeps_its_consumer_subscription() -> None:
    watcher = KeyValue.KeyWatcher(_bucket(Client().jetstream()))
    assert nats_internals.watch_subscription(watcher) is None  # until the watch subscribes
    assert "watcher._sub = await self._js.subscribe(" in inspect.getsource(KeyValue.watch)
    assert inspect.signature(JetStreamContext.subscribe).return_annotation in (
        "PushSubscription",
        JetStreamContext.PushSubscription,
    )
    assert inspect.iscoroutinefunction(JetStreamContext.PushSubscription.consumer_info)


def test_a_push_subscription_still_keeps_its_stream_and_current_consumer() -> None:
    nc = Client()
    inner = Subscription(nc, 1, "_INBOX.x")
    subscription = JetStreamContext.PushSubscription(nc.jetstream(), inner, "KV_nodes", "c-1")
    assert nats_internals.subscription_consumer(subscription) == ("KV_nodes", "c-1")
    # An ordered consumer made again under a new name is the one read from after it.
    assert "self._psub._consumer = cinfo.name" in inspect.getsource(JetStreamContext)
    subscription._consumer = None  # type: ignore[assignment]
    with pytest.raises(nats_internals.LibraryChanged, match=r"PushSubscription\._consumer"):
        nats_internals.subscription_consumer(subscription)


def test_a_client_still_keeps_the_servers_info_as_a_dict() -> None:
    nc = Client()
    assert nats_internals.server_info(nc) == {}
    assert "self._server_info = srv_info" in inspect.getsource(Client)


def test_an_attribute_that_changed_type_is_named_in_the_error() -> None:
    watcher = KeyValue.KeyWatcher(_bucket(Client().jetstream()))
    watcher._sub = object()
    with pytest.raises(nats_internals.LibraryChanged, match=r"KeyWatcher\._sub"):
        nats_internals.watch_subscription(watcher)
    nc = Client()
    del nc._server_info
    with pytest.raises(nats_internals.LibraryChanged, match=r"Client\._server_info"):
        nats_internals.server_info(nc)


def test_an_ordered_consumer_made_again_gets_a_new_subscription_id_at_once() -> None:
    nc = Client()
    inner = Subscription(nc, 7, "_INBOX.x")
    subscription = JetStreamContext.PushSubscription(nc.jetstream(), inner, "KV_nodes", "c-1")
    assert nats_internals.subscription_id(subscription) == 7
    # Set in reset_ordered_consumer itself, before the new consumer is asked for.
    source = inspect.getsource(JetStreamContext)
    reset = source[source.index("async def reset_ordered_consumer") :]
    reset = reset[: reset.index("async def recreate_consumer")]
    assert "self._psub._id = nsid" in reset
    assert reset.index("self._psub._id = nsid") < reset.index(
        "create_task(self.recreate_consumer())"
    )
    subscription._id = None  # type: ignore[assignment]
    with pytest.raises(nats_internals.LibraryChanged, match=r"PushSubscription\._id"):
        nats_internals.subscription_id(subscription)


def test_flow_control_is_still_answered_on_arrival_for_a_subscription_with_a_callback() -> None:
    # Why stopping the poller of a watch changes nothing (stop_flow_control_polling):
    # with a callback the delivered count is the count received, which includes every
    # message before a flow-control request, so the request is answered as it comes.
    process = inspect.getsource(Client._process_msg)
    assert process.index("sub._received += 1") < process.index('ctrl_msg.startswith("Flow")')
    assert "if sub._jsi.get_js_delivered() >= sub._jsi._fciseq:" in process
    assert "await self.publish(fc_reply)" in process
    delivered = inspect.getsource(JetStreamContext._JSI.get_js_delivered)
    assert " ".join(delivered.split()[2:6]) == "if self._sub._cb: return self._sub.delivered"
    assert "return self._received" in inspect.getsource(Subscription.delivered.fget)  # type: ignore[attr-defined]
    assert "sub._jsi._fctask = asyncio.create_task(" in inspect.getsource(
        JetStreamContext.subscribe_bind
    )
    assert "self._sub._jsi._fctask.cancel()" in inspect.getsource(
        JetStreamContext.PushSubscription.unsubscribe
    )


def test_a_bucket_says_if_it_reads_by_direct_get_and_a_copy_reads_through_the_api() -> None:
    js = Client().jetstream()
    direct = KeyValue(name="cluster", stream="KV_cluster", pre="$KV.cluster.", js=js, direct=True)
    assert nats_internals.key_value_direct(direct)
    leader = nats_internals.key_value_through_api(direct)
    assert not nats_internals.key_value_direct(leader) and nats_internals.key_value_direct(direct)
    assert nats_internals.key_value_subject(leader, "identity") == "$KV.cluster.identity"
    assert "direct=self._direct" in inspect.getsource(KeyValue._get)


async def test_a_bucket_opened_from_its_streams_config_is_the_one_key_value_opens() -> None:
    """A service reads each bucket's stream once and opens the bucket from it: the same
    KeyValue, field for field, as `JetStreamContext.key_value` makes from its own read."""
    js = Client().jetstream()
    for direct in (True, False, None):
        config = js_api.StreamConfig(name="KV_nodes", max_msgs_per_subject=5, allow_direct=direct)
        js.stream_info = _answering(config)  # type: ignore[method-assign,assignment]
        opened = await js.key_value("nodes")
        ours = nats_internals.key_value_from_config(js, "nodes", config)
        assert vars(ours) == vars(opened)
    with pytest.raises(BadBucketError):  # a stream that keeps no value per key
        nats_internals.key_value_from_config(js, "events", js_api.StreamConfig(name="KV_events"))
    other = Client().jetstream()
    moved = nats_internals.key_value_on(ours, other)
    assert nats_internals.key_value_jetstream(moved) is other
    assert nats_internals.key_value_jetstream(ours) is js
    assert {k: v for k, v in vars(moved).items() if k != "_js"} == {
        k: v for k, v in vars(ours).items() if k != "_js"
    }


def _answering(config: js_api.StreamConfig) -> Callable[..., Awaitable[js_api.StreamInfo]]:
    """A stream_info that answers `config` for KV_nodes, without a server."""

    async def stream_info(name: str, *args: object, **kwargs: object) -> js_api.StreamInfo:
        assert name == "KV_nodes"
        return js_api.StreamInfo(config=config, state=None)  # type: ignore[arg-type]

    return stream_info
