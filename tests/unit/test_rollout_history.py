"""Revisions of a Deployment (issue 10): the scheduler's history record (trimmed to
revisionHistoryLimit, an earlier template moving to a new number), what `rollout undo`
goes back to, refusals naming the field, and `rollout status`'s lines."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from corral.client.api import CorralError
from corral.client.cli.main import cli
from corral.client.cli.progress import status_line
from corral.client.cli.rollout_commands import (
    history_table,
    parse_timeout,
    revision_text,
    undo_target,
)
from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.specs import CHANGE_CAUSE_ANNOTATION, ContainerTemplate, Deployment
from corral.contract.state import DeploymentHistory, DeploymentStatus
from corral.natsio.kv import MemoryBucket
from corral_scheduler.history import MAX_RECORD_BYTES, HistoryRecorder, capped, recorded


def deployment(version: str, cause: str = "", **spec: Any) -> Deployment:
    annotations = {CHANGE_CAUSE_ANNOTATION: cause} if cause else {}
    return msgspec.convert(
        {
            "kind": "Deployment",
            "metadata": {"name": "web", "annotations": annotations},
            "spec": {"template": {"image": f"busybox:{version}"}, **spec},
        },
        Deployment,
    )


def play(*versions: str, limit: int = 10) -> DeploymentHistory:
    history: DeploymentHistory | None = None
    for index, version in enumerate(versions):
        changed = recorded(
            history, deployment(version, f"to {version}", revisionHistoryLimit=limit), index
        )
        history = changed or history
    assert history is not None
    return history


def test_each_new_template_gets_the_next_number_and_its_cause() -> None:
    history = play("1", "2", "3")
    assert [(r.revision, r.change_cause) for r in history.revisions] == [
        (1, "to 1"),
        (2, "to 2"),
        (3, "to 3"),
    ]
    assert history.revisions[-1].template.image == "busybox:3"
    assert recorded(history, deployment("3"), 9.0) is None  # the same template: nothing


def test_the_history_keeps_the_limit_of_old_templates_besides_the_current() -> None:
    history = play(*(str(v) for v in range(1, 8)), limit=3)
    assert [r.revision for r in history.revisions] == [4, 5, 6, 7]
    only = play("1", "2", "3", limit=0)
    assert [r.revision for r in only.revisions] == [3]
    # a lower limit trims at once, with no template change
    lowered = recorded(history, deployment("7", revisionHistoryLimit=1), 9.0)
    assert lowered is not None and [r.revision for r in lowered.revisions] == [6, 7]


def test_an_earlier_template_moves_to_a_new_number_as_kubernetes_does() -> None:
    history = play("1", "2", "1")
    assert [(r.revision, r.template.image) for r in history.revisions] == [
        (2, "busybox:2"),
        (3, "busybox:1"),
    ]


def test_undo_goes_to_the_previous_revision_or_the_one_named() -> None:
    history = play("1", "2", "3")
    current = history.revisions[-1].template_hash
    assert undo_target(history, current, 0).revision == 2
    assert undo_target(history, current, 1).template.image == "busybox:1"
    with pytest.raises(CorralError, match="--to-revision 99: deployment 'web' has no such"):
        undo_target(history, current, 99)
    with pytest.raises(CorralError, match="no previous revision"):
        undo_target(play("1"), play("1").revisions[0].template_hash, 0)


def test_history_table_and_one_revision() -> None:
    history = play("1", "2")
    first = msgspec.structs.replace(history.revisions[0], available_at=1_700_000_000.0)
    history = msgspec.structs.replace(history, revisions=[first, history.revisions[1]])
    assert history_table(history).splitlines() == [
        "REVISION   AVAILABLE   CHANGE-CAUSE",
        "1          yes         to 1",
        "2          no          to 2",
    ]
    text = revision_text(history, 2)
    assert "revision #2" in text and "image: busybox:2" in text
    assert "Available:     no (never fully available)" in text
    assert "Available:     2023-11-14 22:13:20 UTC" in revision_text(history, 1)
    with pytest.raises(CorralError, match="--revision 5"):
        revision_text(history, 5)


async def test_the_recorder_writes_once_per_template_and_forgets_a_deleted_one() -> None:
    bucket = MemoryBucket("corral_deployment_history")
    recorder = HistoryRecorder(bucket, lambda: 5.0)
    await recorder.record("default.web", deployment("1", "first"))
    await recorder.record("default.web", deployment("1", "first"))
    await recorder.record("default.web", deployment("2", "second"))
    entry = await bucket.get("default.web")
    assert entry is not None and entry.value
    history = msgspec.json.decode(entry.value, type=DeploymentHistory)
    assert [(r.revision, r.change_cause, r.created_at) for r in history.revisions] == [
        (1, "first", 5.0),
        (2, "second", 5.0),
    ]
    await recorder.forget("default.web")
    gone = await bucket.get("default.web")
    assert gone is None or not gone.value


def test_a_history_limit_below_zero_is_refused_naming_the_field() -> None:
    raw = encode(
        {
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"revisionHistoryLimit": -1, "template": {"image": "busybox:1"}},
        }
    )
    with pytest.raises(InvalidPayload) as error:
        decode_payload(raw, Deployment)
    assert error.value.field == "spec.revisionHistoryLimit"


def test_restarted_at_leaves_the_hash_of_a_template_without_it_unchanged() -> None:
    template = ContainerTemplate(image="busybox:1")
    assert b"restartedAt" not in encode(template)
    assert template.template_hash() == ContainerTemplate(image="busybox:1").template_hash()
    restarted = msgspec.structs.replace(template, restarted_at="2026-11-29T05:00:00Z")
    assert restarted.template_hash() != template.template_hash()


def status(**counts: Any) -> DeploymentStatus:
    return DeploymentStatus(name="x", observed_generation=2, **counts)


@pytest.mark.parametrize(
    ("value", "line"),
    [
        (None, "Waiting for deployment spec update to be observed..."),
        (
            status(replicas=3, placed=3, updated=1, ready=3),
            'Waiting for deployment "x" rollout to finish: 1 out of 3 new replicas have been '
            "updated...",
        ),
        (
            status(replicas=3, placed=4, updated=3, ready=3),
            'Waiting for deployment "x" rollout to finish: 1 old replicas are pending '
            "termination...",
        ),
        (
            status(replicas=3, placed=3, updated=3, ready=3, available=1),
            'Waiting for deployment "x" rollout to finish: 1 of 3 updated replicas are '
            "available...",
        ),
        (status(replicas=3, placed=3, updated=3, ready=3, available=3), None),
    ],
)
def test_status_lines_are_kubectls(value: DeploymentStatus | None, line: str | None) -> None:
    assert status_line("x", 2, value) == line


def test_an_unobserved_generation_waits() -> None:
    done = status(replicas=3, placed=3, updated=3, ready=3, available=3)
    assert status_line("x", 3, done) == "Waiting for deployment spec update to be observed..."


def test_timeouts_parse_like_kubectls_and_bad_ones_name_the_option() -> None:
    assert parse_timeout("90") == 90 and parse_timeout("2m") == 120
    assert parse_timeout("1m30s") == 90 and parse_timeout("0s") == 0
    result = CliRunner().invoke(cli, ["rollout", "status", "deployment/x", "--timeout", "soon"])
    assert result.exit_code == 2 and "--timeout" in result.output


def test_set_image_refuses_a_bad_image_and_another_container_naming_them() -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["set", "image", "deployment/web", "web=Bad Image"])
    assert bad.exit_code == 2 and "invalid image 'Bad Image'" in bad.output
    other = runner.invoke(cli, ["set", "image", "deployment/web", "db=busybox:2"])
    assert other.exit_code == 2 and "container 'db' not found" in other.output
    kind = runner.invoke(cli, ["set", "image", "service/web", "busybox:2"])
    assert kind.exit_code == 2 and "deployments" in kind.output


async def test_a_history_of_huge_templates_is_trimmed_under_the_cap_keeping_the_current() -> None:
    bucket = MemoryBucket("corral_deployment_history")
    recorder = HistoryRecorder(bucket, lambda: 5.0)
    big = {f"V{i}": "x" * 30_000 for i in range(2)}  # ~60 KB a revision; 100: ~6 MB
    for version in range(20):
        huge = msgspec.structs.replace(
            deployment(str(version), revisionHistoryLimit=100).spec.template, env=big
        )
        base = deployment(str(version), revisionHistoryLimit=100)
        spec = msgspec.structs.replace(base.spec, template=huge)
        await recorder.record("default.web", msgspec.structs.replace(base, spec=spec))
    entry = await bucket.get("default.web")
    assert entry is not None and entry.value
    assert len(entry.value) <= MAX_RECORD_BYTES
    history = msgspec.json.decode(entry.value, type=DeploymentHistory)
    assert 1 < len(history.revisions) < 20
    assert history.revisions[-1].template.image == "busybox:19"  # the current one stays
    assert [r.revision for r in history.revisions] == list(range(21 - len(history.revisions), 21))


def test_the_cap_never_drops_the_current_revision() -> None:
    history = play("1", "2", "3")
    assert capped(history, max_bytes=1).revisions == history.revisions[-1:]
    assert capped(history) is history  # small: unchanged
