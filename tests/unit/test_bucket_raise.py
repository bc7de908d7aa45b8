"""A bucket's stream raised at a service's start (corral.natsio.bus._raise_bucket): from the
configuration read at the start's lookup when nothing is to change (no second read), and
from a fresh read when something is: another service may have raised it meanwhile, and
that is never written back lower."""

from __future__ import annotations

import copy
from typing import Any

from nats.js import api as js_api

from corral.contract import names
from corral.natsio.bus import BUCKET_MAX_CONSUMERS, StoreSettings, _raise_bucket, bucket_stream

BUCKET = names.NODES_BUCKET


class FakeJetStream:
    """stream_info answers the stream as it is now; update_stream records and applies."""

    def __init__(self, stored: js_api.StreamConfig) -> None:
        self.stored = stored
        self.infos = 0
        self.updates: list[js_api.StreamConfig] = []

    async def stream_info(self, name: str, *args: Any, **kwargs: Any) -> js_api.StreamInfo:
        assert name == bucket_stream(BUCKET)
        self.infos += 1
        return js_api.StreamInfo(config=copy.copy(self.stored), state=None)  # type: ignore[arg-type]

    async def update_stream(self, config: js_api.StreamConfig) -> js_api.StreamInfo:
        self.updates.append(config)
        self.stored = copy.copy(config)
        return js_api.StreamInfo(config=copy.copy(config), state=None)  # type: ignore[arg-type]


def _config(replicas: int = 1, max_bytes: int = 1 << 20) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=bucket_stream(BUCKET),
        num_replicas=replicas,
        max_bytes=max_bytes,
        max_consumers=BUCKET_MAX_CONSUMERS,
        max_msgs_per_subject=5,
        allow_direct=True,  # its agents read their Node records with direct gets
    )


async def test_a_stream_as_it_should_be_is_neither_read_again_nor_updated() -> None:
    js = FakeJetStream(_config())
    read = _config()
    settings = StoreSettings(replicas=1, bucket_max_bytes=1 << 20)
    assert await _raise_bucket(js, BUCKET, settings, read) is read  # type: ignore[arg-type]
    assert js.infos == 0 and js.updates == []


async def test_a_raise_is_made_from_the_stream_now_never_lowering_what_another_raised() -> None:
    read = _config(replicas=1, max_bytes=1 << 20)  # at this start's lookup
    js = FakeJetStream(_config(replicas=3, max_bytes=1 << 20))  # raised by another since
    settings = StoreSettings(replicas=1, bucket_max_bytes=1 << 30)  # this one: more bytes
    raised = await _raise_bucket(js, BUCKET, settings, read)  # type: ignore[arg-type]
    assert js.infos == 1 and len(js.updates) == 1
    assert js.updates[0].num_replicas == 3  # the other's raise kept
    assert js.updates[0].max_bytes == 1 << 30  # and this one's made
    assert raised.num_replicas == 3 and raised.max_bytes == 1 << 30
    assert read.num_replicas == 1 and read.max_bytes == 1 << 20  # the caller's left as read
