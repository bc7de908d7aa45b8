"""The published JSON Schemas (docs/schema/) agree with the decoder: on a generated corpus
(valid payloads and mutations of them), whatever corral.contract.codec.decode_payload
accepts, the schema accepts too (Draft 2020-12, formats not checked). For the requests
without rules across fields, the reverse holds as well; for a Deployment, the schema may
accept what only the rules in code refuse (docs/api.md, "Rules the schemas cannot
carry"). And every pattern in the schemas reads alike in Python's `re` (msgspec, Python
validators) and ECMA-262 (JSON Schema's dialect, checked with Node.js when it is there).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.events import REASON_CONFLICT, Event, Reply
from corral.contract.logs import LogAck, LogChunk, LogPiece, LogRequest
from corral.contract.network_state import (
    EndpointAddress,
    EndpointPort,
    Endpoints,
    NetworkSlice,
    NetworkStatus,
    NodeNetwork,
    ReplicaDrain,
)
from corral.contract.schema import PUBLIC_PAYLOADS
from corral.contract.specs import (
    ContainerTemplate,
    DeleteRequest,
    Deployment,
    NodeDecision,
    NodeReleaseRequest,
    ScaleRequest,
)
from corral.contract.state import (
    AutoRollbackRecord,
    DeploymentCondition,
    DeploymentHistory,
    DeploymentRevision,
    DeploymentStatus,
    Node,
    NodeCapacity,
    OrphanReplica,
    Placement,
    ReplicaState,
    ReplicaStatus,
)
from corral.contract.volume_specs import VolumeReleaseRequest
from corral.contract.volume_state import ClaimStatus, NodeVolumes, VolumeAttachment, VolumeStatus
from tests.unit.test_payload_properties import (
    QUICK,
    SEEDS,
    dns_label,
    edit_once,
    json_values,
    mutated,
    valid_deployments,
    weird_text,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"
SCHEMAS = {
    name: json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    for name in PUBLIC_PAYLOADS
}
# format_checker=None: formats are annotations only, as the decoder checks none.
VALIDATORS = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}
NAMES = {kind: name for name, kind in PUBLIC_PAYLOADS.items()}

RECORD_SEEDS: dict[type[msgspec.Struct], msgspec.Struct] = {
    Reply: Reply(
        ok=False,
        kind="Deployment",
        name="web",
        revision=3,
        generation=2,
        unchanged=True,
        error="`resourceVersion` 2 is stale",
        field="metadata.resourceVersion",
        message="kept",
        reason=REASON_CONFLICT,
    ),
    Event: Event(
        time=1.5,
        type="Warning",
        reason="BackOff",
        object_kind="Deployment",
        object_name="web",
        message="restarting",
        source="node-agent/node-1",
    ),
    Node: Node(
        name="node-1",
        labels={"zone": "a"},
        capacity=NodeCapacity(cpu_millis=4000, memory_bytes=2**33, pods=110),
        message="ok",
        agent_started_at=1.0,
        heartbeat_at=2.0,
        version="0.1.0",
        agent_id="a1",
        engine_id="e1",
        mode="Fast",
        foreign_containers=1,
        orphans=[OrphanReplica(deployment="web", replica="web-1", template_hash="abc")],
        failing_removals=1,
    ),
    Placement: Placement(
        replica="web-1",
        deployment="web",
        node="node-1",
        template=msgspec.convert(SEEDS[Deployment]["spec"]["template"], ContainerTemplate),
        template_hash="abc",
        generation=2,
        cpu_millis=100,
        memory_bytes=2**26,
        created_at=1.0,
    ),
    ReplicaStatus: ReplicaStatus(
        replica="web-1",
        deployment="web",
        node="node-1",
        state=ReplicaState.EXITED,
        template_hash="abc",
        container_id="c1",
        exit_code=1,
        restarts=2,
        message="exited",
        started_at=1.0,
        updated_at=2.0,
        ready=False,
        probes={"readiness": "HTTP GET /healthz: status 503", "liveness": "ok"},
        last_probe_failure="readiness: HTTP GET /healthz: status 503",
        restart_times=[1.0, 1.5],
    ),
    DeploymentStatus: DeploymentStatus(
        name="web",
        observed_generation=2,
        replicas=3,
        placed=3,
        ready=2,
        updated=3,
        pending=0,
        available=2,
        revision=4,
        conditions=[
            DeploymentCondition(
                type="Progressing",
                status="False",
                reason="ProgressDeadlineExceeded",
                message="web has timed out progressing",
                last_update_time=1.0,
                last_transition_time=2.0,
            )
        ],
        auto_rollback=AutoRollbackRecord(
            from_revision=4, to_revision=3, reason="CrashLoop", message="restarted 3 times", at=3.0
        ),
    ),
    DeploymentHistory: DeploymentHistory(
        name="web",
        revisions=[
            DeploymentRevision(
                revision=2,
                template_hash="abc",
                template=msgspec.convert(SEEDS[Deployment]["spec"]["template"], ContainerTemplate),
                change_cause="corral set image deployment/web busybox:2",
                created_at=1.0,
                available_at=2.0,
            )
        ],
    ),
    NetworkStatus: NetworkStatus(
        name="default", subnet="10.128.0.0/16", slice_prefix=24, extra_members=["10.129.0.2"]
    ),
    NetworkSlice: NetworkSlice(
        network="default", node="node-1", subnet="10.128.1.0/24", gateway="10.128.1.1"
    ),
    Endpoints: Endpoints(
        service="web",
        cluster_ip="10.96.0.10",
        network="default",
        ports=[EndpointPort(port=80, target_port=8080, name="http")],
        addresses=[EndpointAddress(ip="10.128.1.2", replica="web-abc", node="node-1")],
    ),
    NodeNetwork: NodeNetwork(
        node="node-1", address="172.17.0.1", used_ranges=["172.17.0.0/16"], ready=True
    ),
    ReplicaDrain: ReplicaDrain(
        node="node-1", replica="web-1", endpoints_revision=7, in_force_at=1.0, nodes=2
    ),
    VolumeStatus: VolumeStatus(
        name="pv-1", phase="Bound", claim="default.web-data", node="node-1", size_bytes=2**20
    ),
    ClaimStatus: ClaimStatus(
        name="web-data", phase="Bound", volume="pv-1", access_modes=["ReadWriteOnce"]
    ),
    NodeVolumes: NodeVolumes(node="node-1", ready=True, loop_devices=True, capacity_bytes=2**30),
    VolumeAttachment: VolumeAttachment(
        volume="pv-1", node="node-1", claim="default.web-data", ready=True, docker_volume="v"
    ),
    LogChunk: LogChunk(
        seq=0,
        node="node-1",
        pieces=[LogPiece(text="hello\n"), LogPiece(text="oops\n", stream="stderr")],
        control="_INBOX.abc",
        end=True,
        error="replica web-1 has no container on node node-1",
        field="replica",
    ),
}
DOCUMENTS: dict[type[msgspec.Struct], Any] = {
    **SEEDS,
    **{kind: msgspec.json.decode(encode(seed)) for kind, seed in RECORD_SEEDS.items()},
}
# Requests with no rule across fields: the schema says all the decoder checks.
SIMPLE = [
    ScaleRequest,
    DeleteRequest,
    NodeReleaseRequest,
    NodeDecision,
    VolumeReleaseRequest,
    LogRequest,
    LogAck,
]
# Where a Deployment the schema accepts may still be refused by the rules in code.
# (volumes and their mounts: exactly one source, names defined once and mounted by name,
# absolute unique mount paths; docs/volumes.md, "Bad input"; a rolling update's bounds
# not both zero, maxUnavailable at most 100%, rollingUpdate only with type RollingUpdate)
CODE_ONLY_RULES = re.compile(
    r"^spec\.(template\.(resources|volumes|volumeMounts|livenessProbe|readinessProbe|startupProbe)"
    r"|strategy\.rollingUpdate|autoRollback"
    # replicas at most 1 with replacement Never (a container: docs/containers.md)
    r"|replicas)(\.|\[|$)"
    # progressDeadlineSeconds must exceed minReadySeconds: a rule across two fields of spec
    r"|^spec$"
)


def test_every_public_payload_has_a_committed_schema_and_a_seed() -> None:
    assert set(DOCUMENTS) == set(PUBLIC_PAYLOADS.values())
    for name, schema in SCHEMAS.items():
        Draft202012Validator.check_schema(schema)
        kind = PUBLIC_PAYLOADS[name]
        raw = json.dumps(DOCUMENTS[kind]).encode()
        assert accepted_by_decoder(raw, kind), f"the {name} seed is valid"
        assert schema_errors(raw, name) == [], f"the {name} seed fits its schema"


def accepted_by_decoder(raw: bytes, kind: type[msgspec.Struct]) -> bool:
    try:
        decode_payload(raw, kind)
    except InvalidPayload:
        return False
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_HUGE = 10**4000


def _integer(text: str) -> int:
    """Python's int() refuses more than 4300 digits: past 4000, one as large as any bound."""
    if len(text.lstrip("-")) <= 4000:
        return int(text)
    return -_HUGE if text.startswith("-") else _HUGE


def schema_errors(raw: bytes, name: str) -> list[str] | None:
    """What the schema refuses in `raw`; None when `raw` is no JSON document."""
    try:
        document = json.loads(raw, parse_constant=_no_constant, parse_int=_integer)
    except (ValueError, RecursionError):
        return None
    errors = VALIDATORS[name].iter_errors(document)
    return [f"{error.json_path}: {error.message[:200]}" for error in errors]


def check_agreement(raw: bytes, kind: type[msgspec.Struct]) -> None:
    """Accepted by the decoder -> valid for the schema; for the simple requests the reverse."""
    name = NAMES[kind]
    decoded = accepted_by_decoder(raw, kind)
    errors = schema_errors(raw, name)
    if decoded and errors is None:
        # Not JSON to Python: bytes that are not UTF-8, which msgspec skips unread in an
        # unknown field of a record. A request forbids unknown fields, so never there.
        assert kind not in SEEDS, raw[:300]
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        return
    if decoded:
        assert errors == [], f"the decoder accepts a {name} its schema refuses: {raw[:300]!r}"
        return
    if errors != []:
        return
    # The schema accepts what the decoder refused.
    if kind in SIMPLE:
        raise AssertionError(f"the {name} schema accepts what the decoder refuses: {raw[:300]!r}")
    if name == "Deployment":
        try:
            decode_payload(raw, kind)
        except InvalidPayload as error:
            assert CODE_ONLY_RULES.match(error.field), (error.message, raw[:300])


@st.composite
def mutated_document(draw: st.DrawFn, kind: type[msgspec.Struct]) -> bytes:
    """A few edits of a valid document: a field dropped, added, replaced or renamed."""
    document = json.loads(json.dumps(DOCUMENTS[kind]))
    hostile: list[bytes] = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not edit_once(draw, document, hostile):
            break
    raw = json.dumps(document, ensure_ascii=draw(st.booleans())).encode()
    return re.sub(rb'"@@raw(\d+)@@"', lambda match: hostile[int(match[1])], raw)


@settings(QUICK, max_examples=400)
@given(data=st.data(), kind=st.sampled_from(list(DOCUMENTS)))
def test_what_the_decoder_accepts_its_schema_accepts(
    data: st.DataObject, kind: type[msgspec.Struct]
) -> None:
    check_agreement(data.draw(mutated_document(kind)), kind)


counters = st.integers(min_value=0, max_value=2**63 - 1)
valid_requests = st.one_of(
    st.fixed_dictionaries(
        {"name": dns_label, "replicas": st.integers(min_value=0, max_value=10_000)},
        optional={"resourceVersion": counters},
    ).map(lambda document: (ScaleRequest, document)),
    st.fixed_dictionaries({"name": dns_label}, optional={"resourceVersion": counters}).map(
        lambda document: (DeleteRequest, document)
    ),
    st.fixed_dictionaries({"name": dns_label}, optional={"force": st.booleans()}).map(
        lambda document: (NodeReleaseRequest, document)
    ),
    st.fixed_dictionaries(
        {"node": dns_label}, optional={"clusterId": st.from_regex(r"[0-9a-f]{16}", fullmatch=True)}
    ).map(lambda document: (NodeDecision, document)),
)


@settings(QUICK, max_examples=150)
@given(request=valid_requests, data=st.data())
def test_simple_requests_valid_or_one_value_off_agree_both_ways(
    request: tuple[type[msgspec.Struct], dict[str, Any]], data: st.DataObject
) -> None:
    kind, document = request
    raw = json.dumps(document).encode()
    assert accepted_by_decoder(raw, kind) and schema_errors(raw, NAMES[kind]) == []
    field = data.draw(st.sampled_from(sorted(document)))
    document[field] = data.draw(weird_text | json_values | st.integers(-(2**64), 2**64))
    check_agreement(json.dumps(document).encode(), kind)


@settings(QUICK, max_examples=150)
@given(data=st.data(), kind=st.sampled_from(list(SEEDS)))
def test_the_payload_properties_corpus_agrees_with_the_schemas(
    data: st.DataObject, kind: type[msgspec.Struct]
) -> None:
    check_agreement(data.draw(mutated(kind)), kind)


@settings(QUICK, max_examples=100)
@given(document=valid_deployments)
def test_valid_deployments_fit_the_deployment_schema(document: dict[str, Any]) -> None:
    raw = json.dumps(document).encode()
    assert schema_errors(raw, "Deployment") == []
    check_agreement(raw, Deployment)


def test_the_deployment_schema_leaves_the_rules_across_fields_to_the_code() -> None:
    """What docs/api.md lists as checked in code only: the schema accepts it, the
    decoder refuses it naming the field."""
    for resources, field in [
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}, "spec.template.resources"),
        ({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}, "spec.template.resources"),
        ({"limits": {"memory": "1Mi"}}, "spec.template.resources.limits.memory"),
        ({"requests": {"cpu": "2000"}}, "spec.template.resources.requests.cpu"),
        ({"requests": {"memory": "2Ei"}}, "spec.template.resources.requests.memory"),
    ]:
        document = json.loads(json.dumps(SEEDS[Deployment]))
        document["spec"]["template"]["resources"] = resources
        raw = json.dumps(document).encode()
        assert schema_errors(raw, "Deployment") == [], resources
        with pytest.raises(InvalidPayload) as refused:
            decode_payload(raw, Deployment)
        assert refused.value.field.startswith(field), refused.value.message


# --- the patterns read alike in Python and ECMA-262 ------------------------------------


def _patterns(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            found.add(node["pattern"])
        for value in node.values():
            found |= _patterns(value)
    elif isinstance(node, list):
        for item in node:
            found |= _patterns(item)
    return found


def _strings(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return set(node).union(*(_strings(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_strings(item) for item in node))
    return set()


# What the dialects are known to read differently: a final newline ($), Unicode digits
# and letters (\d, \w, case folding), surrogates and characters past the BMP, NUL.
TRICKY = [
    "",
    "\n",
    "web\n",
    "web\r",
    "web\u2028",
    "\nweb",
    "web\n\n",
    "a\x00",
    "\u0661\u0662",  # ARABIC-INDIC digits: \d in Python, not in ECMA
    "\u0663m",
    "\uff11" + "00m",
    "100m\n",
    "64Mi\n",
    "1.5Gi",
    "0.5",
    "ab\u00df",
    "\u212a",  # KELVIN SIGN: case-folds to k in Unicode
    "\u0130",
    "\ud800",
    "a\U0001f600b",
    "0123456789abcdef",
    "0123456789ABCDEF",
    "0123456789abcdef\n",
    "a" * 63,
    "a" * 64,
    "a" * 253 + "/b",
    "a" * 254 + "/b",
    "example.com/tier",
    "-a",
    "a-",
    "a__b",
    "a___b",
    "host:5000/a/b:tag@sha256:" + "0" * 64,
]
EDITS = "aZ09-_./:@\n\r\x00 \u0661\u00e9\u212a\u2028\ud800\U0001f600"


def corpus() -> list[str]:
    """Every string of the seeds and the tricky ones, and many one-character edits of them."""
    base = sorted(_strings(list(DOCUMENTS.values())) | set(TRICKY))
    rng = random.Random(6)
    strings = set(base)
    for text in base:
        for _ in range(24):
            at = rng.randint(0, len(text))
            char = rng.choice(EDITS)
            edit = rng.choice(["insert", "replace", "delete", "append"])
            if edit == "insert":
                strings.add(text[:at] + char + text[at:])
            elif edit == "replace":
                strings.add(text[:at] + char + text[at + 1 :])
            elif edit == "delete":
                strings.add(text[:at] + text[at + 1 :])
            else:
                strings.add(text + char)
    return sorted(strings)


ALL_PATTERNS = sorted(set().union(*(_patterns(schema) for schema in SCHEMAS.values())))
_ECMA_MATCH = r"""
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const answer = {};
for (const pattern of input.patterns) {
  const unicode = new RegExp(pattern, "u"), plain = new RegExp(pattern);
  answer[pattern] = [
    input.strings.map((s) => (unicode.test(s) ? "1" : "0")).join(""),
    input.strings.map((s) => (plain.test(s) ? "1" : "0")).join(""),
  ];
}
process.stdout.write(JSON.stringify(answer));
"""


def test_the_schemas_carry_patterns_for_names_images_labels_and_quantities() -> None:
    assert len(ALL_PATTERNS) >= 9
    deployment = json.dumps(SCHEMAS["Deployment"])
    for bound in ('"maxLength": 63', '"maxProperties": 64', '"maximum": 10000'):
        assert bound in deployment


def test_no_pattern_uses_what_python_and_ecma_262_read_differently() -> None:
    for pattern in ALL_PATTERNS:
        # \Z \A (Python only), \d \w \s \b (Unicode in Python), possessive and atomic
        # groups, lookbehind, named groups and inline flags (other syntax or none in ECMA)
        for construct in (r"\Z", r"\A", r"\d", r"\w", r"\s", r"\b", "*+", "++", "?+", "(?>"):
            assert construct not in pattern, (construct, pattern)
        for construct in ("(?<", "(?P", "(?i", "(?m", "(?s", "(?x"):
            assert construct not in pattern, (construct, pattern)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js for ECMA-262 regexes")
def test_every_schema_pattern_matches_alike_in_python_and_ecma_262() -> None:
    strings = corpus()
    node = shutil.which("node")
    assert node is not None
    request = json.dumps({"patterns": ALL_PATTERNS, "strings": strings})
    result = subprocess.run(
        [node, "-e", _ECMA_MATCH], input=request, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    ecma = json.loads(result.stdout)
    for pattern in ALL_PATTERNS:
        python = "".join("1" if re.search(pattern, text) else "0" for text in strings)
        assert "1" in python and "0" in python, f"the corpus does not exercise {pattern}"
        for flags, answer in zip(("u", "none"), ecma[pattern], strict=True):
            differ = [text for text, a, b in zip(strings, python, answer, strict=True) if a != b]
            assert not differ, f"{pattern} (ECMA flags {flags}) reads {differ[:5]!r} otherwise"


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        (LogRequest, b'{"replica": "web-1", "tail": 99999999999999999999}'),
        (LogChunk, b'{"seq": 99999999999999999999}'),
        (LogAck, b'{"seq": 99999999999999999999}'),
        (LogRequest, b'{"replica": "web-1", "since": 1' + b"0" * 400 + b"}"),  # a double's overflow
    ],
)
def test_a_number_beyond_what_the_decoder_holds_is_refused_by_the_schema_too(
    kind: type[msgspec.Struct], raw: bytes
) -> None:
    # The corpus above found a tail of thousands of digits and a since beyond a double,
    # taken by the schemas and refused by the decoder; both now stop at one bound.
    assert not accepted_by_decoder(raw, kind)
    assert schema_errors(raw, NAMES[kind])
