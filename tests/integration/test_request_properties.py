"""Property-based, through a real nats-server and the scheduler's request handlers:
generated apply, scale and delete requests (valid, mutated, hostile) each get a Reply,
ok or an error naming a field, and the scheduler keeps serving."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Reply
from corral.contract.specs import DeleteRequest, Deployment, ScaleRequest
from tests.integration.scheduler_harness import deployment_json, request, running_scheduler
from tests.unit.test_payload_properties import SEEDS, is_json_object, mutated, wire_names

GOOD = deployment_json("web", 2)
NAMES = ["web", "api", "db"]
WHOLE_PAYLOAD = re.compile(r"^(malformed JSON: |payload is )")
KIND_OF_VERB: dict[str, type[msgspec.Struct]] = {
    "apply": Deployment,
    "scale": ScaleRequest,
    "delete": DeleteRequest,
}


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(NAMES))
    verb = draw(st.sampled_from(list(KIND_OF_VERB)))
    if verb == "apply":
        document: dict[str, Any] = json.loads(json.dumps(SEEDS[Deployment]))
        document["metadata"] = {"name": name, "labels": {"app": name}}
        document["spec"]["replicas"] = draw(st.integers(min_value=0, max_value=5))
        return verb, encode(document)
    if verb == "scale":
        return verb, encode({"name": name, "replicas": draw(st.integers(0, 5))})
    return verb, encode({"name": name})


@st.composite
def mutated_request(draw: st.DrawFn) -> tuple[str, bytes]:
    verb = draw(st.sampled_from(list(KIND_OF_VERB)))
    return verb, draw(mutated(KIND_OF_VERB[verb]))


requests = valid_request() | mutated_request()


def check_reply(verb: str, payload: bytes, reply: Reply) -> None:
    assert reply.error.isprintable() and reply.field.isprintable(), reply
    if reply.ok:
        assert not reply.error
        return
    assert not reply.error.startswith("internal error"), reply.error
    if reply.field:  # a field of the payload, or an unknown one it named
        head = re.split(r"[.\[]", reply.field, maxsplit=1)[0]
        assert head in wire_names(KIND_OF_VERB[verb]) or "unknown field" in reply.error, reply
    else:  # only what is wrong with the payload as a whole goes without a field
        assert WHOLE_PAYLOAD.match(reply.error) or not is_json_object(payload), reply


def test_generated_requests_each_get_a_reply_naming_a_field_and_the_scheduler_keeps_serving(
    nats_url: str,
) -> None:
    seen: dict[str, int] = {"ok": 0, "refused": 0}
    with start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(running_scheduler(nats_url)) as ctx:

            @settings(
                max_examples=100,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(generated=requests)
            def each_gets_a_reply(generated: tuple[str, bytes]) -> None:
                verb, payload = generated
                reply = portal.call(request, ctx.nc, "deployment", verb, payload)
                check_reply(verb, payload, reply)
                seen["ok" if reply.ok else "refused"] += 1

            each_gets_a_reply()
            assert seen["ok"] >= 5 and seen["refused"] >= 20, seen

            # still serving: a valid apply is accepted and stored as sent
            reply = portal.call(request, ctx.nc, "deployment", "apply", GOOD)
            assert reply.ok, reply
            entry = portal.call(ctx.buckets[names.DEPLOYMENTS_BUCKET].get, "default.web")
            assert entry is not None and entry.value is not None
            assert decode(entry.value, Deployment).spec.replicas == 2
            # every stored Deployment is one the API accepts
            for name in NAMES:
                entry = portal.call(ctx.buckets[names.DEPLOYMENTS_BUCKET].get, f"default.{name}")
                if entry is not None and entry.value is not None:
                    decode(entry.value, Deployment)
