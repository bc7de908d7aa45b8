"""Property-based: every payload a client can send, valid, mutated or random, is either
accepted (and then holds only what corral can use: bounded, printable labels, no NUL)
or refused with InvalidPayload naming a field (or the whole payload); never another
exception."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.logs import LogAck, LogRequest
from corral.contract.network_specs import Network, Service
from corral.contract.quantity import format_cpu, format_memory
from corral.contract.specs import (
    DeleteRequest,
    Deployment,
    NodeDecision,
    NodeReleaseRequest,
    ScaleRequest,
)
from corral.contract.volume_specs import (
    PersistentVolume,
    PersistentVolumeClaim,
    StorageClass,
    VolumeReleaseRequest,
)

# The bounds, stated here independently of the code under test.
MAX_CPU_MILLIS = 1024 * 1000
MAX_MEMORY_BYTES = 2**50
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY = re.compile(rf"({_SUBDOMAIN}/)?{_NAME}")
LABEL_VALUE = re.compile(rf"({_NAME})?")

# Deterministic (a seed from each test's name), no example database on disk, and small.
QUICK = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SEEDS: dict[type[msgspec.Struct], dict[str, Any]] = {
    Deployment: {
        "apiVersion": "corral/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "team-a",
            "labels": {"app": "web", "example.com/tier": "front"},
            "resourceVersion": 3,
        },
        "spec": {
            "replicas": 2,
            "replacement": "Fast",
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"},
            },
            "minReadySeconds": 5,
            "paused": False,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": 120,
            "autoRollback": {
                "onProgressDeadline": True,
                "onCrashLoop": False,
                "crashLoopRestarts": 4,
                "crashLoopWindowSeconds": 60,
            },
            "template": {
                "image": "registry.local:5000/team/web:1.2@sha256:" + "a" * 64,
                "restartedAt": "2026-11-29T05:30:00.000000Z",
                "terminationGracePeriodSeconds": 10,
                "stopSignal": "SIGQUIT",
                "nodeSelector": {"disk": "ssd"},
                "restartPolicy": "OnFailure",
                "command": ["httpd", "-f"],
                "args": ["-p", "8080"],
                "env": {"GREETING": "hello", "_X1": ""},
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": 1, "memory": 134217728},
                },
                "labels": {"app": "web"},
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "networks": ["default", "back-end"],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                ],
                "readinessProbe": {
                    "httpGet": {"port": "http", "path": "/healthz"},
                    "periodSeconds": 2,
                    "failureThreshold": 2,
                },
                "livenessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 5},
                "startupProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 30},
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data", "subPath": "site"},
                    {"name": "scratch", "mountPath": "/tmp/scratch", "readOnly": False},
                ],
            },
        },
    },
    PersistentVolume: {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "pv-1", "labels": {"tier": "fast"}},
        "spec": {
            "capacity": {"storage": "100Mi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "manual",
            "node": "node-1",
            "hostPath": {"path": "/srv/data", "type": "DirectoryOrCreate"},
        },
    },
    PersistentVolumeClaim: {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "web-data", "namespace": "team-a"},
        "spec": {
            "resources": {"requests": {"storage": "50Mi"}},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual",
            "selector": {"matchLabels": {"tier": "fast"}},
        },
    },
    StorageClass: {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": "shared",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "false"},
        },
        "provisioner": "corral.io/docker-volume",
        "parameters": {"driver": "local", "type": "tmpfs", "device": "tmpfs"},
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    },
    VolumeReleaseRequest: {"name": "pv-1", "node": "node-1"},
    Network: {
        "apiVersion": "corral/v1",
        "kind": "Network",
        "metadata": {"name": "back-end", "labels": {"team": "a"}},
        "spec": {"subnet": "10.50.0.0/16", "slicePrefix": 24},
    },
    Service: {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "team-a", "createOnly": True},
        "spec": {
            "type": "NodePort",
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
            ],
            "network": "default",
        },
    },
    ScaleRequest: {"name": "web", "replicas": 3, "namespace": "team-a"},
    DeleteRequest: {"name": "web", "namespace": "team-a"},
    NodeReleaseRequest: {"name": "node-1"},
    NodeDecision: {"node": "node-1", "clusterId": "0123456789abcdef"},
    LogRequest: {
        "replica": "web-7f9c2",
        "namespace": "team-a",
        "containerId": "8fb38e910acb",
        "follow": True,
        "tail": 10,
        "since": 1764400000.5,
        "timestamps": True,
    },
    LogAck: {"seq": 7, "stop": False},
}
KINDS = list(SEEDS)

# Raw JSON put where a value goes: what a hostile or broken client might send.
HOSTILE = [
    b"9" * 5000,  # a 5000-digit number
    b"-" + b"9" * 400,
    b"1e999",
    b"123456789012345678901234567890.5e300",
    b"[" * 3000 + b"]" * 3000,  # deep nesting
    b'{"a":' * 1000 + b"1" + b"}" * 1000,
    b'"\\ud800"',  # a lone surrogate
    b'"\xff\xfe"',  # not UTF-8
    b'"a\\u0000b"',
    b'"\\u001b[2J\\u001b[31m"',
    b'"web\\n"',
    b'"' + b"x" * 5000 + b'"',
    b"true",
    b"null",
    b"{}",
    b"[]",
]
_RAW = re.compile(rb'"@@raw(\d+)@@"')
WHOLE_PAYLOAD = re.compile(r"^(malformed JSON: |payload is )")


def is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(msgspec.json.decode(raw), dict)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return False


def wire_names(kind: type[msgspec.Struct]) -> set[str]:
    names = {field.encode_name for field in msgspec.structs.fields(kind)}
    tag_field = kind.__struct_config__.tag_field
    return names | ({tag_field} if tag_field else set())


def check_usable(value: msgspec.Struct) -> None:
    """An accepted payload re-encodes (msgspec and the json module, as aiodocker does),
    round-trips, and every value downstream code formats is bounded and printable."""
    raw = encode(value)
    assert decode_payload(raw, type(value)) == value
    json.dumps(msgspec.to_builtins(value))
    if not isinstance(value, Deployment):
        return
    for key, label in value.metadata.labels.items():
        assert LABEL_KEY.fullmatch(key) and LABEL_VALUE.fullmatch(label), (key, label)
        assert len(key.partition("/")[0]) <= 253 or "/" not in key
    assert len(value.metadata.labels) <= 64
    template = value.spec.template
    assert template.image.isascii() and template.image.isprintable()
    for item in [*(template.command or []), *(template.args or []), *template.env.values()]:
        assert "\x00" not in item
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) for name in template.env)
    for resources in (template.resources.requests, template.resources.limits):
        assert 0 <= resources.cpu_millis <= MAX_CPU_MILLIS
        assert 0 <= resources.memory_bytes <= MAX_MEMORY_BYTES
        format_cpu(resources.cpu_millis), format_memory(resources.memory_bytes)
    template.template_hash()


def check_outcome(raw: bytes, kind: type[msgspec.Struct]) -> bool:
    """Accepted and usable, or refused naming a field or the whole payload. True if accepted."""
    try:
        value = decode_payload(raw, kind)
    except InvalidPayload as error:
        assert error.message.isprintable() and error.field.isprintable(), error
        assert len(error.message) <= 1024 and len(error.field) <= 256
        if error.field:
            assert f"at `{error.field}`" in error.message, error.message
            head = re.split(r"[.\[]", error.field, maxsplit=1)[0]
            assert head in wire_names(kind) or "unknown field" in error.message, error.message
        else:  # about the payload as a whole: not JSON, too large, or not an object
            assert WHOLE_PAYLOAD.match(error.message) or not is_json_object(raw), error.message
        return False
    assert isinstance(value, kind)
    check_usable(value)
    return True


# --- mutations of a valid payload -------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
weird_text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from("\x00\x1b\n\r\t\u202e\u2028/.-_"),
    min_size=0,
    max_size=70,
)


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside the document (not the document itself)."""
    found: list[tuple[Any, ...]] = []
    if isinstance(document, dict | list):
        items = document.items() if isinstance(document, dict) else enumerate(document)
        for key, child in items:
            found.append((*prefix, key))
            found += paths(child, (*prefix, key))
    return found


def container_at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        document = document[part]
    return document


def edit_once(draw: st.DrawFn, document: Any, raws: list[bytes]) -> bool:
    """One random edit of a JSON document in place: a field dropped, added, replaced,
    renamed, or made hostile bytes (kept in `raws`, put in by _RAW after encoding).
    False when the document has nothing left to edit."""
    where = paths(document)
    if not where:
        return False
    path = draw(st.sampled_from(where))
    parent, last = container_at(document, path), path[-1]
    operation = draw(st.sampled_from(["drop", "insert", "replace", "hostile", "text", "key"]))
    if operation == "drop":
        del parent[last]
    elif operation == "insert" and isinstance(parent, dict):
        parent[draw(weird_text)] = draw(json_values)
    elif operation == "insert":
        parent.insert(last, draw(json_values))
    elif operation == "replace":
        parent[last] = draw(json_values)
    elif operation == "hostile":
        raws.append(draw(st.sampled_from(HOSTILE)))
        parent[last] = f"@@raw{len(raws) - 1}@@"
    elif operation == "text":
        parent[last] = draw(weird_text)
    elif isinstance(parent, dict):  # "key": a new key for the same value
        parent[draw(weird_text)] = parent.pop(last)
    return True


@st.composite
def mutated(draw: st.DrawFn, kind: type[msgspec.Struct]) -> bytes:
    document = json.loads(json.dumps(SEEDS[kind]))
    raws: list[bytes] = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not edit_once(draw, document, raws):
            break
    raw = json.dumps(document, ensure_ascii=draw(st.booleans())).encode()
    raw = _RAW.sub(lambda match: raws[int(match[1])], raw)
    cut = draw(st.sampled_from(["none", "none", "none", "truncate", "byte"]))
    if cut == "truncate":
        raw = raw[: draw(st.integers(min_value=0, max_value=len(raw)))]
    elif cut == "byte":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=3)) + raw[at:]
    return raw


@QUICK
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_mutated_payloads_are_accepted_or_refused_naming_a_field(
    data: st.DataObject, kind: type[msgspec.Struct]
) -> None:
    check_outcome(data.draw(mutated(kind)), kind)


@QUICK
@given(
    raw=st.binary(max_size=200)
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.sampled_from(HOSTILE),
    kind=st.sampled_from(KINDS),
)
@example(raw=b" \n\t ", kind=Deployment)
@example(raw=b"x" * 70_000, kind=ScaleRequest)
def test_random_bytes_and_json_are_refused_whole_or_name_a_field(
    raw: bytes, kind: type[msgspec.Struct]
) -> None:
    check_outcome(raw, kind)


def test_every_hostile_value_in_every_place_of_every_payload() -> None:
    """Exhaustive where the generators sample: each HOSTILE value in place of each value."""
    tried = 0
    for kind, seed in SEEDS.items():
        seed_raw = json.dumps(seed).encode()
        assert check_outcome(seed_raw, kind), f"the {kind.__name__} seed is valid"
        for path in paths(seed):
            for hostile in HOSTILE:
                document = json.loads(seed_raw)
                container_at(document, path)[path[-1]] = "@@raw0@@"
                raw = json.dumps(document).encode().replace(b'"@@raw0@@"', hostile)
                check_outcome(raw, kind)
                tried += 1
    assert tried > 500


# --- valid payloads are accepted --------------------------------------------------------

dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
label_name = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
label_prefix = (
    st.lists(dns_label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda prefix: len(prefix) <= 253)
)
label_key = (
    st.builds(lambda prefix, name: f"{prefix}/{name}", label_prefix, label_name) | label_name
)
no_nul_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
MEBI = 2**20


@st.composite
def resource_lists(draw: st.DrawFn) -> dict[str, Any]:
    cpu_limit = draw(st.integers(min_value=1, max_value=MAX_CPU_MILLIS))
    memory_limit = draw(st.integers(min_value=6, max_value=2**30)) * MEBI
    cpu_request = draw(st.integers(min_value=0, max_value=cpu_limit))
    memory_request = draw(st.integers(min_value=0, max_value=memory_limit // MEBI)) * MEBI
    cpu = draw(st.sampled_from([lambda m: f"{m}m", lambda m: m / 1000]))
    memory = draw(st.sampled_from([lambda b: f"{b // MEBI}Mi", lambda b: b]))
    return {
        "requests": {"cpu": cpu(cpu_request), "memory": memory(memory_request)},
        "limits": {"cpu": cpu(cpu_limit), "memory": memory(memory_limit)},
    }


valid_deployments = st.fixed_dictionaries(
    {
        "kind": st.just("Deployment"),
        "metadata": st.fixed_dictionaries(
            {"name": dns_label},
            optional={
                "labels": st.dictionaries(label_key, st.just("") | label_name, max_size=6),
                "resourceVersion": st.integers(min_value=0, max_value=2**63 - 1),
                "createOnly": st.booleans(),
            },
        ),
        "spec": st.fixed_dictionaries(
            {
                "template": st.fixed_dictionaries(
                    {"image": st.sampled_from(["nginx", "nginx:1.27", "a.b:5000/c/d_e:v1.0"])},
                    optional={
                        "command": st.lists(no_nul_text, max_size=4),
                        "args": st.lists(no_nul_text, max_size=4),
                        "env": st.dictionaries(
                            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
                            no_nul_text,
                            max_size=4,
                        ),
                        "resources": resource_lists(),
                    },
                )
            },
            optional={
                "replicas": st.integers(min_value=0, max_value=10_000),
                "replacement": st.sampled_from(["Fast", "AfterStop"]),
            },
        ),
    }
)


@settings(QUICK, max_examples=150)
@given(document=valid_deployments)
def test_valid_deployments_are_accepted_and_usable(document: dict[str, Any]) -> None:
    raw = json.dumps(document).encode()
    assert check_outcome(raw, Deployment), raw[:300]
