"""Following a rollout (corral.client.cli.progress, issue 10): complete only when every
replica is updated and available, failed on a missed progress deadline or an automatic
rollback, plain kubectl lines off a terminal, a live rich display on one, and
`corral rollout status`'s exit codes and words."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import anyio
import msgspec
import pytest
from click.testing import CliRunner
from rich.console import Console

from corral.client.api import CorralClient, CorralError
from corral.client.cli import rollout_commands
from corral.client.cli.main import cli
from corral.client.cli.progress import (
    COMPLETE,
    DEADLINE_EXCEEDED,
    ROLLED_BACK,
    TIMED_OUT,
    RolloutOutcome,
    follow_rollout,
    judge,
)
from corral.contract.specs import Deployment
from corral.contract.state import (
    CONDITION_PROGRESSING,
    REASON_PROGRESS_DEADLINE_EXCEEDED,
    REASON_REPLICAS_UPDATED,
    REASON_ROLLED_BACK,
    AutoRollbackRecord,
    DeploymentCondition,
    DeploymentStatus,
)


def deployment(generation: int = 2) -> Deployment:
    return msgspec.convert(
        {
            "kind": "Deployment",
            "metadata": {"name": "x", "generation": generation},
            "spec": {"replicas": 3, "template": {"image": "busybox:1"}},
        },
        Deployment,
    )


def status(**fields: Any) -> DeploymentStatus:
    fields.setdefault("observed_generation", 2)
    fields.setdefault("replicas", 3)
    return DeploymentStatus(name="x", **fields)


def progressing(reason: str, state: str = "True", message: str = "") -> DeploymentCondition:
    return DeploymentCondition(
        type=CONDITION_PROGRESSING, status=state, reason=reason, message=message
    )


DONE = status(placed=3, updated=3, ready=3, available=3)
ROLLBACK = AutoRollbackRecord(
    from_revision=4, to_revision=3, reason="CrashLoop", message="replica web-1 restarted 3 times"
)


class FakeClient:
    """The two reads follow_rollout makes: the Deployment and its status record's values
    (then, unless `hang` is False, nothing more: the watch stays open)."""

    def __init__(
        self, statuses: Sequence[DeploymentStatus | None], found: bool = True, hang: bool = True
    ) -> None:
        self.statuses = statuses
        self.found = found
        self.hang = hang

    namespace = "default"

    def scope(self, namespace: str | None) -> str:
        return self.namespace if namespace is None else namespace

    async def deployment(self, name: str, namespace: str | None = None) -> Deployment | None:
        return deployment() if self.found and self.scope(namespace) == "default" else None

    async def follow_record(
        self, bucket: str, kind: type[Any], key: str
    ) -> AsyncIterator[DeploymentStatus | None]:
        assert bucket == "corral_deployment_status" and key == "default.x"
        for value in self.statuses:
            yield value
        if self.hang:
            await anyio.sleep_forever()


def follow(
    statuses: Sequence[DeploymentStatus | None], console: Console, timeout: float | None = None
) -> RolloutOutcome:
    client = cast(CorralClient, FakeClient(statuses))

    async def run() -> RolloutOutcome:
        return await follow_rollout(client, "x", timeout=timeout, out=console)

    return anyio.run(run)


def plain() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=200)


def text_of(console: Console) -> str:
    return cast(io.StringIO, console.file).getvalue()


def test_ready_replicas_not_yet_available_keep_the_rollout_going() -> None:
    step = judge("x", 2, status(placed=3, updated=3, ready=3, available=1), None)
    assert step.result == "" and step.waiting == (
        'Waiting for deployment "x" rollout to finish: 1 of 3 updated replicas are available...'
    )
    assert judge("x", 2, DONE, None).result == COMPLETE


def test_a_missed_progress_deadline_fails_only_once_the_generation_is_observed() -> None:
    late = status(conditions=[progressing(REASON_PROGRESS_DEADLINE_EXCEEDED, "False")])
    step = judge("x", 2, late, None)
    assert step.result == DEADLINE_EXCEEDED
    assert step.message == 'deployment "x" exceeded its progress deadline'
    older = msgspec.structs.replace(late, observed_generation=1)
    assert judge("x", 2, older, None).result == ""


def test_a_rollback_record_new_since_the_start_fails_and_an_old_one_does_not() -> None:
    rolled = msgspec.structs.replace(DONE, auto_rollback=ROLLBACK)
    step = judge("x", 2, rolled, None)
    assert step.result == ROLLED_BACK
    assert "from revision 4 to revision 3" in step.message and "CrashLoop" in step.message
    assert "restarted 3 times" in step.message
    assert judge("x", 2, rolled, ROLLBACK).result == COMPLETE  # rolled back before: done since
    going_back = status(
        placed=3,
        updated=1,
        auto_rollback=ROLLBACK,
        conditions=[progressing(REASON_ROLLED_BACK, "False")],
    )
    assert judge("x", 2, going_back, ROLLBACK).result == ROLLED_BACK


def test_plain_output_prints_a_line_only_when_it_changes_and_no_escape_codes() -> None:
    console = plain()
    half = status(placed=3, updated=3, ready=3, available=1)
    outcome = follow([None, half, half, DONE], console)
    assert outcome.ok and outcome.status == DONE
    assert text_of(console).splitlines() == [
        "Waiting for deployment spec update to be observed...",
        'Waiting for deployment "x" rollout to finish: 1 of 3 updated replicas are available...',
        'deployment "x" successfully rolled out',
    ]


def test_a_terminal_gets_live_bars_with_the_progressing_reason() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    going = status(
        placed=3,
        updated=2,
        ready=2,
        available=1,
        revision=5,
        conditions=[progressing(REASON_REPLICAS_UPDATED, message="web is progressing")],
    )
    outcome = follow([going, DONE], console)
    shown = text_of(console)
    assert outcome.ok
    assert "\x1b[" in shown  # drawn live, not printed line by line
    assert "revision 5" in shown and "ReplicaSetUpdated" in shown
    assert "web is progressing" in shown
    for label, count in (("updated", "2/3"), ("ready", "2/3"), ("available", "1/3")):
        assert label in shown and count in shown
    assert "Waiting for deployment" in shown  # kubectl's line, under the bars
    assert 'deployment "x" successfully rolled out' in shown


def test_following_stops_at_the_timeout_with_the_last_status() -> None:
    half = status(placed=3, updated=1)
    outcome = follow([half], plain(), timeout=0.2)
    assert outcome.result == TIMED_OUT and outcome.status == half
    assert "timed out" in outcome.message


def test_a_missing_deployment_is_an_error() -> None:
    client = cast(CorralClient, FakeClient([], found=False))
    with pytest.raises(CorralError, match="not found"):
        anyio.run(lambda: follow_rollout(client, "x", out=plain()))
    there = cast(CorralClient, FakeClient([DONE]))
    with pytest.raises(CorralError, match="deployment 'x' not found in namespace 'team-a'"):
        anyio.run(lambda: follow_rollout(there, "x", "team-a", out=plain()))


@pytest.mark.parametrize(
    ("statuses", "code", "words"),
    [
        ([DONE], 0, 'deployment "x" successfully rolled out'),
        (
            [status(conditions=[progressing(REASON_PROGRESS_DEADLINE_EXCEEDED, "False")])],
            1,
            'error: deployment "x" exceeded its progress deadline',
        ),
        (
            [status(placed=3, updated=1), msgspec.structs.replace(DONE, auto_rollback=ROLLBACK)],
            1,
            "rolled back automatically from revision 4 to revision 3",
        ),
    ],
)
def test_rollout_status_exits_1_on_a_missed_deadline_or_a_rollback(
    monkeypatch: pytest.MonkeyPatch,
    statuses: list[DeploymentStatus],
    code: int,
    words: str,
) -> None:
    def run(settings: object, command: Any) -> object:
        return anyio.run(command, cast(CorralClient, FakeClient(statuses)))

    monkeypatch.setattr(rollout_commands, "run_with_client", run)
    result = CliRunner().invoke(cli, ["rollout", "status", "deployment/x"])
    assert result.exit_code == code, result.output
    assert words in result.output
