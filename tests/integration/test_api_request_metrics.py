"""corral_api_request_seconds: every API request a service answers is counted and
timed by kind, verb and result, its wait for a place included, through a real
nats-server (corral.natsio.api_metrics)."""

from __future__ import annotations

from functools import partial

import anyio
import pytest
from prometheus_client import REGISTRY

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.events import REASON_INTERNAL, REASON_INVALID, REASON_NOT_FOUND, Reply
from corral.natsio import bus
from corral.natsio.api_metrics import result_of
from corral.natsio.bus import connect, serve_spec_requests
from tests.waiting import current, eventually

KIND = "MetricTest"  # a kind of this test's own: counts of other tests never mix in


def count(verb: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "corral_api_request_seconds_count",
        {"kind": KIND.lower(), "verb": verb, "result": result},
    )
    return value or 0.0


def seconds(verb: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "corral_api_request_seconds_sum",
        {"kind": KIND.lower(), "verb": verb, "result": result},
    )
    return value or 0.0


async def test_every_answered_request_is_counted_and_timed_by_kind_verb_and_result(
    nats_url: str,
) -> None:
    async def apply(raw: bytes) -> Reply:
        if raw == b"slow":
            await anyio.sleep(0.2)  # the handler's own work: what is timed
        return Reply(ok=True, kind=KIND, name=raw.decode())

    async def delete(raw: bytes) -> Reply:
        return Reply(ok=False, kind=KIND, reason=REASON_NOT_FOUND, error="no such thing")

    async def scale(raw: bytes) -> Reply:
        raise RuntimeError("a bug")

    server = await connect(nats_url, name="test-server")
    client = await connect(nats_url, name="test-client")
    keys = [
        ("apply", "ok"),
        ("delete", REASON_NOT_FOUND),
        ("scale", REASON_INTERNAL),
        ("unknown", REASON_INVALID),
    ]
    before = {key: count(*key) for key in keys}
    slow_before = seconds("apply", "ok")
    try:
        async with anyio.create_task_group() as tg:
            handlers = {"apply": apply, "delete": delete, "scale": scale}
            await tg.start(partial(serve_spec_requests, server, KIND, handlers, queue="test"))

            async def ask(verb: str, payload: bytes = b"x") -> Reply:
                msg = await client.request(names.api_subject(KIND, verb), payload, timeout=10)
                return decode(msg.data, Reply)

            assert (await ask("apply")).ok
            assert (await ask("delete")).reason == REASON_NOT_FOUND
            assert (await ask("scale")).reason == REASON_INTERNAL
            refused = await ask("frobnicate")  # a verb nobody serves: no label of its own
            assert refused.reason == REASON_INVALID

            assert (await ask("apply", b"slow")).ok

            async def probe() -> dict[tuple[str, str], float]:
                return {key: count(*key) - before[key] for key in keys}

            want = {
                ("apply", "ok"): 2,
                ("delete", REASON_NOT_FOUND): 1,
                ("scale", REASON_INTERNAL): 1,
                ("unknown", REASON_INVALID): 1,
            }
            await eventually(probe, lambda got: got == want)
            # The slow answer's time is in the sum: the handler's time is what is timed.
            assert seconds("apply", "ok") - slow_before >= 0.2
            assert (
                REGISTRY.get_sample_value(
                    "corral_api_request_seconds_count",
                    {"kind": KIND.lower(), "verb": "frobnicate", "result": REASON_INVALID},
                )
                is None
            )
            tg.cancel_scope.cancel()
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        (Reply(ok=True), "ok"),
        (Reply(ok=True, reason="Superseded"), "ok"),
        (Reply(ok=False, reason=REASON_NOT_FOUND), REASON_NOT_FOUND),
        (Reply(ok=False), "Unknown"),
        (Reply(ok=False, reason="made up by a handler"), "Unknown"),
    ],
)
def test_the_result_label_is_ok_or_a_known_reason(reply: Reply, label: str) -> None:
    assert result_of(reply) == label


def bucket(verb: str, result: str, le: str) -> float:
    value = REGISTRY.get_sample_value(
        "corral_api_request_seconds_bucket",
        {"kind": KIND.lower(), "verb": verb, "result": result, "le": le},
    )
    return value or 0.0


async def test_a_request_waiting_for_a_place_counts_its_wait(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus, "MAX_CONCURRENT_REQUESTS", 1)  # one answered at a time
    release = anyio.Event()

    async def scale(raw: bytes) -> Reply:
        if raw == b"hold":
            await release.wait()
        return Reply(ok=True, kind=KIND)

    server = await connect(nats_url, name="test-server")
    client = await connect(nats_url, name="test-client")
    count_before, quick_before = count("scale", "ok"), bucket("scale", "ok", "0.25")
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(serve_spec_requests, server, KIND, {"scale": scale}, queue="t"))
            arrived = server.stats["in_msgs"]

            async def ask(payload: bytes) -> None:
                await client.request(names.api_subject(KIND, "scale"), payload, timeout=10)

            tg.start_soon(ask, b"hold")
            await eventually(lambda: current(server.stats["in_msgs"]), lambda n: n >= arrived + 1)
            tg.start_soon(ask, b"quick")  # read at once, then waits for the only place
            await eventually(lambda: current(server.stats["in_msgs"]), lambda n: n >= arrived + 2)
            await anyio.sleep(0.6)  # the first answer holds the place this long
            release.set()
            await eventually(lambda: current(count("scale", "ok")), lambda n: n >= count_before + 2)
            # Neither answer took under 0.25 s: the quick one waited for its place.
            assert bucket("scale", "ok", "0.25") == quick_before
            tg.cancel_scope.cancel()
    finally:
        await client.close()
        await server.close()
