"""What a spec may hold: labels as Kubernetes has them, POSIX env names, values without
NUL, bounded quantities, counts and lengths; every refusal names the field."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from corral.contract.codec import InvalidPayload, decode, decode_payload, encode
from corral.contract.specs import (
    MAX_ARG,
    MAX_ARGS,
    MAX_ENV,
    MAX_LABELS,
    DeleteRequest,
    Deployment,
    NodeDecision,
    NodeReleaseRequest,
    ScaleRequest,
    check_dns_label,
)
from corral.contract.state import Placement


def deployment(
    metadata: dict[str, Any] | None = None, template: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "corral/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", **(metadata or {})},
        "spec": {"replicas": 2, "template": {"image": "nginx:1.27", **(template or {})}},
    }


def resources(**lists: dict[str, Any]) -> dict[str, Any]:
    return {"resources": lists}


def refused(document: dict[str, Any] | bytes, kind: type = Deployment) -> InvalidPayload:
    raw = document if isinstance(document, bytes) else encode(document)
    with pytest.raises(InvalidPayload) as raised:
        decode_payload(raw, kind)
    return raised.value


def MOUNT(path: str) -> dict[str, Any]:
    return {
        "volumes": [{"name": "d", "emptyDir": {}}],
        "volumeMounts": [{"name": "d", "mountPath": path}],
    }


ACCEPTED = [
    pytest.param({"labels": {"app": "web", "tier": ""}}, None, id="plain-labels"),
    pytest.param({"labels": {"example.com/team": "a.b_c-d"}}, None, id="prefixed-label"),
    pytest.param({"labels": {"a" * 253 + "/" + "n" * 63: "v" * 63}}, None, id="longest-label"),
    pytest.param({"labels": {f"k{i}": "v" for i in range(MAX_LABELS)}}, None, id="most-labels"),
    pytest.param({"resourceVersion": 7}, None, id="resource-version"),
    pytest.param(None, {"env": {"_A1": "x\ny", "PATH": ""}}, id="env-newline-value"),
    pytest.param(None, {"command": ["sh"] * MAX_ARGS, "args": ["x" * MAX_ARG]}, id="longest-args"),
    pytest.param(None, resources(limits={"memory": "6Mi", "cpu": "1m"}), id="least-limits"),
    pytest.param(None, resources(limits={"memory": "1Pi", "cpu": 1024}), id="most-limits"),
    pytest.param(None, resources(requests={"memory": 0, "cpu": "0"}), id="zero-requests"),
    pytest.param(None, resources(limits={"memory": 2**50, "cpu": 1024.0}), id="numbers"),
    pytest.param(None, {"image": "localhost/app:1"}, id="localhost-registry"),
    pytest.param(None, {"image": "Registry.Example.com:5000/team/app:1"}, id="registry-case"),
    pytest.param(None, {"command": ["sh", ""], "args": [""]}, id="empty-arguments"),
    pytest.param(None, MOUNT("/data/"), id="mount-path-trailing-slash"),
]


@pytest.mark.parametrize(("metadata", "template"), ACCEPTED)
def test_valid_specs_at_the_bounds_are_accepted(
    metadata: dict[str, Any] | None, template: dict[str, Any] | None
) -> None:
    spec = decode_payload(encode(deployment(metadata, template)), Deployment)
    assert decode(encode(spec), Deployment) == spec


REFUSED = [
    # labels
    ({"labels": {"\x1b[31mred": "x"}}, None, "metadata.labels", r"key '\x1b[31mred'"),
    ({"labels": {"app": "\x1b]0;pwned\x07"}}, None, "metadata.labels", "not a label value"),
    ({"labels": {"app": "web\n"}}, None, "metadata.labels", "not a label value"),
    ({"labels": {"app": "v" * 64}}, None, "metadata.labels", "length <= 63"),
    ({"labels": {"n" * 64: "v"}}, None, "metadata.labels", "not a label key"),
    ({"labels": {"a" * 254 + "/n": "v"}}, None, "metadata.labels", "not a label key"),
    ({"labels": {"Example.com/n": "v"}}, None, "metadata.labels", "not a label key"),
    ({"labels": {"/n": "v"}}, None, "metadata.labels", "not a label key"),
    ({"labels": {"-a": "v"}}, None, "metadata.labels", "not a label key"),
    ({"labels": {"a b": "v"}}, None, "metadata.labels", "not a label key"),
    ({"labels": {"a": "-v"}}, None, "metadata.labels", "not a label value"),
    ({"labels": {f"k{i}": "v" for i in range(65)}}, None, "metadata.labels", "length <= 64"),
    # names: Python's `$` matched before a final newline
    ({"name": "web\n"}, None, "metadata.name", "not a DNS label"),
    ({"resourceVersion": -1}, None, "metadata.resourceVersion", ">= 0"),
    ({"resourceVersion": "7"}, None, "metadata.resourceVersion", "Expected `int`"),
    ({"generation": -1}, None, "metadata.generation", ">= 0"),
    ({"uid": "u\x00"}, None, "metadata.uid", "regex"),
    # env
    (None, {"env": {"A.B": "x"}}, "spec.template.env", "key 'A.B': not a valid environment"),
    (None, {"env": {"A-B": "x"}}, "spec.template.env", "not a valid environment variable name"),
    (None, {"env": {"1A": "x"}}, "spec.template.env", "not a valid environment variable name"),
    (None, {"env": {"A\n": "x"}}, "spec.template.env", "not a valid environment variable name"),
    (None, {"env": {"A": "x\x00y"}}, "spec.template.env", r"value 'x\x00y': contains a NUL"),
    (None, {"env": {"A": "x" * 32769}}, "spec.template.env", "length <= 32768"),
    (None, {"env": {f"V{i}": "" for i in range(MAX_ENV + 1)}}, "spec.template.env", "<= 256"),
    # command and args
    (None, {"command": ["sh"] * (MAX_ARGS + 1)}, "spec.template.command", "length <= 256"),
    (None, {"args": ["ok", "x" * (MAX_ARG + 1)]}, "spec.template.args[1]", "length <= 4096"),
    (None, {"args": ["a\x00b"]}, "spec.template.args[0]", "contains a NUL character"),
    # the image: ASCII only, and no trailing newline
    (None, {"image": "nginx:\u00e9t\u00e9"}, "spec.template.image", "not a valid image"),
    (None, {"image": "nginx\n"}, "spec.template.image", "not a valid image reference"),
]


@pytest.mark.parametrize(("metadata", "template", "field", "message"), REFUSED)
def test_bad_specs_are_refused_with_the_field_named(
    metadata: dict[str, Any] | None, template: dict[str, Any] | None, field: str, message: str
) -> None:
    error = refused(deployment(metadata, template))
    assert error.field == field
    assert f"at `{field}`" in error.message
    assert message in error.message, error.message
    assert error.message.isprintable(), error.message


CPU = "spec.template.resources.{}.cpu"
MEMORY = "spec.template.resources.{}.memory"
QUANTITIES = [
    ({"limits": {"cpu": 1e9}}, CPU.format("limits"), "<= 1024"),
    ({"limits": {"cpu": "1e9"}}, CPU.format("limits"), "not a CPU quantity"),
    ({"limits": {"cpu": "1025"}}, CPU.format("limits"), "0 to 1024 cores"),
    ({"limits": {"cpu": "2000000m"}}, CPU.format("limits"), "0 to 1024 cores"),
    ({"limits": {"cpu": 0}}, CPU.format("limits"), "at least 1m"),
    ({"limits": {"cpu": "0.0001"}}, CPU.format("limits"), "at least 1m"),
    ({"requests": {"cpu": -1}}, CPU.format("requests"), ">= 0"),
    ({"requests": {"cpu": "250m\n"}}, CPU.format("requests"), "not a CPU quantity"),
    ({"limits": {"memory": 1}}, MEMORY.format("limits"), "at least 6Mi (6291456 bytes)"),
    ({"limits": {"memory": "6291455"}}, MEMORY.format("limits"), "less than the least Docker"),
    ({"limits": {"memory": "2Pi"}}, MEMORY.format("limits"), "0 to 1Pi"),
    ({"requests": {"memory": 2**50 + 1}}, MEMORY.format("requests"), "<= 1125899906842624"),
    ({"requests": {"memory": 10**30}}, MEMORY.format("requests"), "<= 1125899906842624"),
    ({"requests": {"memory": "9" * 5000}}, MEMORY.format("requests"), "length <= 32"),
    ({"requests": {"memory": "64Mi", "cpu": True}}, CPU.format("requests"), "got `bool`"),
]


@pytest.mark.parametrize(("lists", "field", "message"), QUANTITIES)
def test_quantities_out_of_bounds_are_refused_with_the_bounds(
    lists: dict[str, Any], field: str, message: str
) -> None:
    error = refused(deployment(template={"resources": lists}))
    assert error.field == field
    assert message in error.message, error.message
    assert f"`{field.rsplit('.', 2)[-2]}" not in error.message.split(": ", 1)[1], "named twice"


def test_a_5000_digit_json_number_is_refused_not_a_crash() -> None:
    raw = encode(deployment(template={"resources": {"limits": {"memory": 1}}}))
    raw = raw.replace(b'"memory":1', b'"memory":' + b"9" * 5000)
    error = refused(raw)
    assert error.field == "spec.template.resources.limits.memory"
    assert "out of range" in error.message


def test_a_stored_record_with_a_huge_quantity_is_unreadable_rather_than_crashing_a_reader() -> None:
    # Written past the API (straight into KV): describe and the agent skip it as unreadable
    # (msgspec.DecodeError), instead of formatting or encoding a 5000-digit integer.
    huge = encode(deployment()).replace(
        b'"image":"nginx:1.27"',
        b'"image":"nginx:1.27","resources":{"limits":{"memory":"' + b"9" * 5000 + b'Mi"}}',
    )
    with pytest.raises(msgspec.DecodeError):
        decode(huge, Deployment)
    template = msgspec.json.decode(huge)["spec"]["template"]
    placement = encode(
        {"replica": "web-a1", "deployment": "web", "node": "n1", "template": template}
    )
    with pytest.raises(msgspec.DecodeError):
        decode(placement, Placement)


def test_an_unknown_field_is_quoted_without_its_control_characters() -> None:
    error = refused(deployment({"\x1b[2J\x1b[31mevil": 1}))
    assert error.field == r"metadata.\x1b[2J\x1b[31mevil"
    assert error.message.isprintable() and error.field.isprintable()
    long = refused(deployment({"x" * 10_000: 1}))
    assert len(long.field) <= 256 and len(long.message) <= 1024


@pytest.mark.parametrize(
    ("raw", "kind", "field", "message"),
    [
        (b'{"name": "web\\n", "replicas": 1}', ScaleRequest, "name", "not a DNS label"),
        (b'{"name": "web", "replicas": 10001}', ScaleRequest, "replicas", "<= 10000"),
        (b'{"name": "Web"}', DeleteRequest, "name", "not a DNS label"),
        (b'{"name": "' + b"n" * 64 + b'"}', NodeReleaseRequest, "name", "length <= 63"),
        (b'{"node": "n1", "clusterId": "0123"}', NodeDecision, "clusterId", "not a cluster id"),
        (b'{"node": "n1\\n"}', NodeDecision, "node", "not a DNS label"),
    ],
)
def test_requests_name_the_bad_field(raw: bytes, kind: type, field: str, message: str) -> None:
    error = refused(raw, kind)
    assert error.field == field and message in error.message, error.message


def test_node_decision_takes_a_cluster_id_or_none() -> None:
    assert decode_payload(b'{"node": "n1"}', NodeDecision).cluster_id == ""
    decision = decode_payload(b'{"node": "n1", "clusterId": "0123456789abcdef"}', NodeDecision)
    assert decision.cluster_id == "0123456789abcdef"


def test_check_dns_label_refuses_a_trailing_newline() -> None:
    check_dns_label("name", "web-1")
    with pytest.raises(ValueError, match="not a DNS label"):
        check_dns_label("name", "web\n")


def test_resource_version_is_camel_case_on_the_wire_and_omitted_when_zero() -> None:
    spec = decode_payload(encode(deployment({"resourceVersion": 12})), Deployment)
    assert spec.metadata.resource_version == 12
    assert b'"resourceVersion":12' in encode(spec)
    plain = decode_payload(encode(deployment()), Deployment)
    assert plain.metadata.resource_version == 0 and b"resourceVersion" not in encode(plain)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"kind": "Deployment", "metadata": {"name": "\xff"}}',
        b'{"kind": "Deployment", "metadata": {"name": "web", "labels": {"a": "-", "\x80": ""}}}',
        b'{"kind": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["not-utf8", "not-utf8-after-a-bad-label", "deep-kind"],
)
def test_what_msgspec_lets_through_is_still_an_invalid_payload(raw: bytes) -> None:
    # msgspec raises UnicodeDecodeError and RecursionError for these; both used to escape
    # decode_payload (the scheduler answered "internal error") and decode (readers of KV).
    error = refused(raw)
    assert error.message.isprintable()
    assert error.field or error.message.startswith("malformed JSON: ")
    if b"labels" not in raw:
        with pytest.raises(msgspec.DecodeError):
            decode(raw, Deployment)


def test_an_unknown_field_with_an_empty_or_multiline_name_is_named() -> None:
    assert refused(b'{"name": "web", "": 1}', DeleteRequest).field == '""'
    assert refused(b'{"name": "web", "a\\nb": 1}', DeleteRequest).field == r"a\nb"
