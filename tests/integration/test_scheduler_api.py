"""Deployment requests through real NATS: accepted with a revision, or rejected whole
with an error that names the field; the scheduler keeps serving either way."""

from __future__ import annotations

import msgspec
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import Deployment
from corral.natsio.kv import NatsBucket
from tests.integration.scheduler_harness import deployment_json, request, running_scheduler

GOOD = deployment_json("web", 2)


def _with(path: list[str], value: object) -> bytes:
    document = msgspec.json.decode(GOOD)
    target = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return encode(document)


BAD_INPUTS = [
    pytest.param(b"{not json", "", "malformed JSON", id="malformed-json"),
    pytest.param(b"", "", "empty", id="empty"),
    pytest.param(b"[1, 2]", "", "Expected `object`", id="not-an-object"),
    pytest.param(
        _with(["kind"], "Gadget"), "kind", "expected kind 'Deployment'", id="unknown-kind"
    ),
    pytest.param(
        encode({"kind": "Deployment", "metadata": {"name": "web"}}),
        "spec",
        "missing required field `spec`",
        id="missing-field",
    ),
    pytest.param(
        _with(["spec", "replicas"], "three"), "spec.replicas", "Expected `int`", id="wrong-type"
    ),
    pytest.param(_with(["spec", "replicas"], -1), "spec.replicas", ">= 0", id="negative-replicas"),
    pytest.param(
        _with(["metadata", "name"], "Web_App"), "metadata.name", "not a DNS label", id="bad-name"
    ),
    pytest.param(
        _with(["spec", "template", "image"], "UPPER/Case::x"),
        "spec.template.image",
        "not a valid image reference",
        id="bad-image",
    ),
    pytest.param(
        _with(["spec", "surprise"], 1), "spec.surprise", "unknown field", id="unknown-field"
    ),
    pytest.param(
        _with(["metadata", "labels"], {"x": "y" * 70_000}),
        "",
        "larger than the limit",
        id="oversized",
    ),
    pytest.param(
        _with(["spec", "template", "resources"], {"requests": {"cpu": "fast"}}),
        "spec.template.resources.requests.cpu",
        "not a CPU quantity",
        id="bad-quantity",
    ),
]


@pytest.mark.parametrize(("payload", "field", "message"), BAD_INPUTS)
async def test_bad_input_is_rejected_whole_and_names_the_field(
    nats_url: str, buckets: dict[str, NatsBucket], payload: bytes, field: str, message: str
) -> None:
    async with running_scheduler(nats_url) as ctx:
        reply = await request(ctx.nc, "deployment", "apply", payload)
        assert not reply.ok
        assert message in reply.error
        assert reply.field == field
        assert await buckets[names.DEPLOYMENTS_BUCKET].get("default.web") is None
        # still serving
        assert (await request(ctx.nc, "deployment", "apply", GOOD)).ok


async def test_apply_is_idempotent_and_bumps_generation_on_change(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_scheduler(nats_url) as ctx:
        first = await request(ctx.nc, "deployment", "apply", GOOD)
        same = await request(ctx.nc, "deployment", "apply", GOOD)
        assert first.ok and same.ok and same.unchanged
        assert same.revision == first.revision and same.generation == 1
        changed = await request(ctx.nc, "deployment", "apply", deployment_json("web", 5))
        assert changed.ok and not changed.unchanged and changed.generation == 2
        entry = await buckets[names.DEPLOYMENTS_BUCKET].get("default.web")
        assert entry is not None and entry.value is not None
        stored = decode(entry.value, Deployment)
        assert stored.spec.replicas == 5 and stored.metadata.uid


async def test_scale_and_delete(nats_url: str, buckets: dict[str, NatsBucket]) -> None:
    async with running_scheduler(nats_url) as ctx:
        assert (await request(ctx.nc, "deployment", "apply", GOOD)).ok
        scaled = await request(
            ctx.nc, "deployment", "scale", encode({"name": "web", "replicas": 7})
        )
        assert scaled.ok and scaled.generation == 2
        negative = await request(
            ctx.nc, "deployment", "scale", encode({"name": "web", "replicas": -2})
        )
        assert not negative.ok and negative.field == "replicas"
        missing = await request(
            ctx.nc, "deployment", "scale", encode({"name": "nope", "replicas": 1})
        )
        assert not missing.ok and "not found" in missing.error
        deleted = await request(ctx.nc, "deployment", "delete", encode({"name": "web"}))
        assert deleted.ok
        assert await buckets[names.DEPLOYMENTS_BUCKET].get("default.web") is None
        again = await request(ctx.nc, "deployment", "delete", encode({"name": "web"}))
        assert not again.ok and "not found" in again.error


async def test_unknown_verb_gets_a_clear_error(nats_url: str) -> None:
    async with running_scheduler(nats_url) as ctx:
        reply = await request(ctx.nc, "deployment", "explode", GOOD)
        assert not reply.ok and "unknown verb 'explode'" in reply.error


async def test_an_unreadable_stored_deployment_can_be_replaced_but_not_scaled(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    stored = buckets[names.DEPLOYMENTS_BUCKET]
    await stored.put(
        "web", b'{"kind": "Deployment", "metadata": {"generation": 4}, "futureField": 1}'
    )
    async with running_scheduler(nats_url) as ctx:
        scaled = await request(
            ctx.nc, "deployment", "scale", encode({"name": "web", "replicas": 3})
        )
        assert not scaled.ok and "cannot be read" in scaled.error
        replaced = await request(ctx.nc, "deployment", "apply", GOOD)
        assert replaced.ok and replaced.generation == 5
        entry = await stored.get("default.web")  # moved to its key with the namespace
        assert entry is not None and entry.value is not None
        assert decode(entry.value, Deployment).spec.replicas == 2
