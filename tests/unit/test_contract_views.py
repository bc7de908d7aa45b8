"""The views of stored records (corral.contract.views) read what the full records do:
decoded from a full record's JSON, every field a view holds equals the record's, and what
the services call on them (key, is_ready, replica_labels, claim_names, replica_networks)
gives the same answers. Property-based over the Deployment seed of the payload properties
(tests/unit/test_payload_properties.py): every template corral accepts."""

from __future__ import annotations

import functools
import inspect
import json
import operator
import types
import typing
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from corral.contract import views
from corral.contract.codec import InvalidPayload, decode, decode_payload, encode
from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    claim_names,
    replica_labels,
    replica_networks,
)
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.contract.views import (
    ClaimsPlacement,
    EndpointsPlacement,
    EndpointsStatus,
    NetworksDeployment,
    SchedulingStatus,
)
from tests.unit.test_payload_properties import (
    QUICK,
    SEEDS,
    dns_label,
    label_key,
    label_name,
    mutated,
)

VIEWS = [
    kind
    for _, kind in inspect.getmembers(views, inspect.isclass)
    if issubclass(kind, msgspec.Struct) and kind.__module__ == views.__name__
]

texts = st.text(max_size=12)
statuses = st.builds(
    ReplicaStatus,
    replica=texts,
    deployment=texts,
    node=texts,
    namespace=texts,
    state=st.sampled_from(ReplicaState),
    template_hash=texts,
    container_id=texts,
    exit_code=st.none() | st.integers(-1, 255),
    restarts=st.integers(0, 100),
    message=texts,
    started_at=st.none() | st.floats(0, 2e9),
    updated_at=st.floats(0, 2e9),
    ips=st.dictionaries(texts, texts, max_size=3),
    image_ports=st.lists(texts, max_size=2),
    ready=st.none() | st.booleans(),
    probes=st.dictionaries(st.sampled_from(["readiness", "liveness", "startup"]), texts),
    last_probe_failure=texts,
    restart_times=st.lists(st.floats(0, 2e9), max_size=3),
)


@st.composite
def templates_varied(draw: st.DrawFn) -> Deployment:
    """The seed Deployment with other labels, ports, networks and volumes."""
    document = json.loads(json.dumps(SEEDS[Deployment]))
    template = document["spec"]["template"]
    for probe_or_mount in ("readinessProbe", "livenessProbe", "startupProbe", "volumeMounts"):
        del template[probe_or_mount]  # they name ports and volumes of the seed
    template["labels"] = draw(st.dictionaries(label_key, st.just("") | label_name, max_size=4))
    numbers = draw(st.lists(st.integers(1, 65535), unique=True, max_size=3))
    port_names = draw(st.lists(st.from_regex(r"[a-z]{1,15}", fullmatch=True), unique=True))
    template["ports"] = [
        {"containerPort": number, **({"name": port_names[i]} if i < len(port_names) else {})}
        for i, number in enumerate(numbers)
    ]
    template["networks"] = draw(st.lists(dns_label, unique=True, max_size=3))
    claims = draw(st.lists(dns_label, max_size=3))  # a claim named twice is one claim
    template["volumes"] = [
        {"name": f"v{i}", "persistentVolumeClaim": {"claimName": claim}}
        for i, claim in enumerate(claims)
    ] + draw(st.lists(st.just({"name": "scratch", "emptyDir": {}}), max_size=1))
    return decode_payload(encode(document), Deployment)


def assert_same(view: Any, full: Any, where: str) -> None:
    """Every field of `view` (and of the views it holds) equals the full record's."""
    for name in view.__struct_fields__:
        mine, theirs = getattr(view, name), getattr(full, name)
        if type(mine).__module__ == views.__name__:
            assert_same(mine, theirs, f"{where}.{name}")
        else:
            assert mine == theirs, f"{where}.{name}: {mine!r} != {theirs!r}"


def check_placement(placement: Placement) -> None:
    raw = encode(placement)
    for kind in (EndpointsPlacement, ClaimsPlacement):
        view = decode(raw, kind)
        assert_same(view, placement, kind.__name__)
        assert view.key == placement.key
    endpoints = decode(raw, EndpointsPlacement)
    assert replica_labels(endpoints.deployment, endpoints.template) == replica_labels(
        placement.deployment, placement.template
    )
    assert claim_names(decode(raw, ClaimsPlacement).template) == claim_names(placement.template)


def placed(deployment: Deployment, created_at: float = 0.0) -> Placement:
    template = deployment.spec.template
    return Placement(
        replica=f"{deployment.metadata.name}-00001",
        deployment=deployment.metadata.name,
        node="n1",
        namespace=deployment.metadata.namespace,
        template=template,
        template_hash=template.template_hash(),
        generation=deployment.metadata.generation,
        created_at=created_at,
    )


def check_deployment(deployment: Deployment) -> None:
    view = decode(encode(deployment), NetworksDeployment)
    assert_same(view, deployment, "NetworksDeployment")
    assert replica_networks(view.spec.template) == replica_networks(deployment.spec.template)


def test_the_views_read_the_seed_deployments_template_as_the_full_records_do() -> None:
    deployment = decode_payload(encode(SEEDS[Deployment]), Deployment)
    assert deployment.spec.template.ports and claim_names(deployment.spec.template)
    check_placement(placed(deployment, created_at=12.5))
    check_deployment(deployment)


@QUICK
@given(data=st.data(), created_at=st.floats(0, 2e9))
def test_every_accepted_template_reads_alike_in_the_views_and_the_full_records(
    data: st.DataObject, created_at: float
) -> None:
    try:
        deployment = decode_payload(data.draw(mutated(Deployment)), Deployment)
    except InvalidPayload:
        return  # refused: never stored, never mirrored
    check_placement(placed(deployment, created_at))
    check_deployment(deployment)


@QUICK
@given(deployment=templates_varied(), created_at=st.floats(0, 2e9))
def test_templates_of_every_shape_read_alike_in_the_views_and_the_full_records(
    deployment: Deployment, created_at: float
) -> None:
    check_placement(placed(deployment, created_at))
    check_deployment(deployment)


@QUICK
@given(status=statuses)
def test_a_replica_status_reads_alike_in_its_views(status: ReplicaStatus) -> None:
    view = decode(encode(status), EndpointsStatus)
    assert_same(view, status, "EndpointsStatus")
    assert (view.key, view.is_ready) == (status.key, status.is_ready)
    scheduling = decode(encode(status), SchedulingStatus)
    assert_same(scheduling, status, "SchedulingStatus")
    assert (scheduling.key, scheduling.is_ready) == (status.key, status.is_ready)
    for window in (0.0, 1.0, 60.0, 3e9):
        assert scheduling.restarts_within(window) == status.restarts_within(window)


# The record each view reads (and each view a view holds).
RECORD_OF: dict[str, type[msgspec.Struct]] = {
    "EndpointsPlacement": Placement,
    "ClaimsPlacement": Placement,
    "EndpointsStatus": ReplicaStatus,
    "SchedulingStatus": ReplicaStatus,
    "NetworksDeployment": Deployment,
    "NetworksSpec": DeploymentSpec,
    "EndpointsTemplate": ContainerTemplate,
    "ClaimsTemplate": ContainerTemplate,
    "NetworksTemplate": ContainerTemplate,
}


def _unconstrained(kind: Any) -> Any:
    """A type without its constraints (Annotated metadata), at every level: a view
    validates nothing it reads (the records' writers did)."""
    if typing.get_origin(kind) is typing.Annotated:
        return _unconstrained(typing.get_args(kind)[0])
    arguments = typing.get_args(kind)
    if not arguments:
        return kind
    origin = typing.get_origin(kind)
    if origin is types.UnionType or origin is typing.Union:
        return functools.reduce(operator.or_, map(_unconstrained, arguments))
    return origin[tuple(map(_unconstrained, arguments))]


def _default(field: msgspec.structs.FieldInfo) -> object:
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return field.default


def test_every_field_of_a_view_has_the_records_name_type_and_default() -> None:
    """Field by field, not only by decoding: a default (decoded only when the record
    lacks the field) that differs from the record's would read another value."""
    assert set(RECORD_OF) == {kind.__name__ for kind in VIEWS if not kind.__name__.startswith("_")}
    for kind in VIEWS:
        if kind.__name__.startswith("_"):
            continue
        record = {field.name: field for field in msgspec.structs.fields(RECORD_OF[kind.__name__])}
        for field in msgspec.structs.fields(kind):
            theirs = record.get(field.name)
            where = f"{kind.__name__}.{field.name}"
            assert theirs is not None, f"{where}: not a field of the record"
            assert field.encode_name == theirs.encode_name, where
            assert field.required == theirs.required, where
            assert _default(field) == _default(theirs), where
            assert _unconstrained(field.type) == field.type, f"{where}: a constraint"
            if getattr(field.type, "__module__", None) != views.__name__:
                assert _unconstrained(field.type) == _unconstrained(theirs.type), where
            else:  # a view of the record's own field type
                assert RECORD_OF[field.type.__name__] is _unconstrained(theirs.type), where


def test_every_view_is_frozen_untracked_by_the_collector_and_tolerant_of_other_fields() -> None:
    assert len(VIEWS) >= 8
    for kind in VIEWS:
        config = kind.__struct_config__
        assert config.frozen and not config.gc and not config.forbid_unknown_fields, kind


def test_a_view_holds_none_of_what_its_reader_does_not_read() -> None:
    placement = placed(decode_payload(encode(SEEDS[Deployment]), Deployment))
    # netmgr holds the hash only to hold one template per revision (corral.contract.sharing)
    assert "template_hash" not in ClaimsPlacement.__struct_fields__
    for kind in (EndpointsPlacement, ClaimsPlacement):
        template = decode(encode(placement), kind).template
        assert not hasattr(template, "image") and not hasattr(template, "env")
    assert not {"probes", "restart_times", "message"} & set(EndpointsStatus.__struct_fields__)
    # The scheduler: not the container, its addresses, ports, probes or messages.
    unread = {"container_id", "exit_code", "restarts", "message", "ips", "image_ports"}
    unread |= {"probes", "last_probe_failure"}
    assert not unread & set(SchedulingStatus.__struct_fields__)


def test_a_record_missing_a_field_a_view_holds_or_not_json_does_not_decode_as_the_view() -> None:
    for raw in (b"not json", b'{"replica": "a", "node": "n1"}', b"[]"):
        for kind in (
            EndpointsPlacement,
            ClaimsPlacement,
            EndpointsStatus,
            SchedulingStatus,
            NetworksDeployment,
        ):
            try:
                decode(raw, kind)
            except msgspec.DecodeError:
                continue
            raise AssertionError(f"{raw!r} decoded as {kind.__name__}")
