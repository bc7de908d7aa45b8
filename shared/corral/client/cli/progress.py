"""Following a Deployment's rollout live: `corral rollout status` and any command that
waits for a rollout (one home for it).

    async def follow_rollout(
        client: CorralClient,
        name: str,
        namespace: str | None = None,  # None: the client's (-n)
        timeout: float | None = None,
        *,
        out: TextIO | rich.console.Console | None = None,
    ) -> RolloutOutcome

`namespace`: None is the client's own (`client.namespace`: the CLI's -n,
$CORRAL_NAMESPACE, else "default"). It reads the Deployment's generation, then watches
(a KV watch, no polling) its record in corral_deployment_status until the rollout is

- complete: `observedGeneration >= generation`, every desired replica updated and
  available, no old one left (`RolloutOutcome.result == COMPLETE`, `.ok`);
- failed: the Progressing condition says `ProgressDeadlineExceeded`
  (`DEADLINE_EXCEEDED`) or `RolledBack`, or `status.autoRollback` changed after the start
  (`ROLLED_BACK`);
- or `timeout` seconds passed (`TIMED_OUT`; None or 0: no limit).

`RolloutOutcome.message` is the last line to show (kubectl's words: `deployment "x"
successfully rolled out`, `deployment "x" exceeded its progress deadline`); the caller
decides where it goes and the exit code. CorralError when the Deployment does not exist.

Where `out` (default stdout) is a terminal, a live rich display: bars for updated,
ready and available replicas out of the desired ones, and the Progressing condition's
reason and message. Elsewhere (a pipe, a log) plain lines, one each time the state
changes, as kubectl's (`Waiting for deployment "x" rollout to finish: 1 of 3 updated
replicas are available...`). The conditions and the automatic rollback are described in
docs/rollouts.md."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TextIO

import anyio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from corral.client.api import CorralClient, CorralError
from corral.contract import names
from corral.contract.specs import Deployment
from corral.contract.state import (
    CONDITION_PROGRESSING,
    REASON_PROGRESS_DEADLINE_EXCEEDED,
    REASON_ROLLED_BACK,
    AutoRollbackRecord,
    DeploymentStatus,
)

COMPLETE = "Complete"
DEADLINE_EXCEEDED = REASON_PROGRESS_DEADLINE_EXCEEDED
ROLLED_BACK = REASON_ROLLED_BACK
TIMED_OUT = "TimedOut"

UNOBSERVED = "Waiting for deployment spec update to be observed..."


@dataclass(frozen=True)
class RolloutOutcome:
    """How following a rollout ended: `result` (COMPLETE, DEADLINE_EXCEEDED,
    ROLLED_BACK or TIMED_OUT), the line to show, and the last status seen."""

    result: str
    message: str
    status: DeploymentStatus | None = None

    @property
    def ok(self) -> bool:
        return self.result == COMPLETE


@dataclass(frozen=True)
class Step:
    """One status judged: `waiting` (kubectl's line) while the rollout goes on, else the
    outcome (`result` and `message`)."""

    waiting: str = ""
    result: str = ""
    message: str = ""


def status_line(name: str, generation: int, status: DeploymentStatus | None) -> str | None:
    """kubectl's `rollout status` line for one status of Deployment `name` (its spec at
    `generation`), or None when the rollout is complete: every desired replica updated
    and available, and no old one left."""
    if status is None or status.observed_generation < generation:
        return UNOBSERVED
    prefix = f'Waiting for deployment "{name}" rollout to finish: '
    replicas = status.replicas
    if status.updated < replicas:
        return f"{prefix}{status.updated} out of {replicas} new replicas have been updated..."
    if status.placed > status.updated or status.updated > replicas:
        old = max(status.placed - status.updated, status.updated - replicas)
        return f"{prefix}{old} old replicas are pending termination..."
    if status.available < status.updated:
        return f"{prefix}{status.available} of {status.updated} updated replicas are available..."
    return None


def rollback_message(name: str, record: AutoRollbackRecord, *, after_deadline: bool = False) -> str:
    why = record.reason + (f": {record.message}" if record.message else "")
    missed = " exceeded its progress deadline and" if after_deadline else ""
    return (
        f'deployment "{name}"{missed} was rolled back automatically from revision '
        f"{record.from_revision} to revision {record.to_revision} ({why})"
    )


def judge(
    name: str,
    generation: int,
    status: DeploymentStatus | None,
    rollback_at_start: AutoRollbackRecord | None,
) -> Step:
    """Where the rollout of Deployment `name` (at `generation`) stands in `status`, the
    automatic rollback record then being `rollback_at_start` when following began."""
    if status is not None and status.observed_generation >= generation:
        record = status.auto_rollback
        progressing = status.condition(CONDITION_PROGRESSING)
        if record is not None and record != rollback_at_start:
            return Step(result=ROLLED_BACK, message=rollback_message(name, record))
        if progressing is not None and progressing.reason == REASON_PROGRESS_DEADLINE_EXCEEDED:
            return Step(
                result=DEADLINE_EXCEEDED,
                message=f'deployment "{name}" exceeded its progress deadline',
            )
        if progressing is not None and progressing.reason == REASON_ROLLED_BACK:
            if progressing.status == "False":
                if record is not None:
                    return Step(result=ROLLED_BACK, message=rollback_message(name, record))
                why = f": {progressing.message}" if progressing.message else ""
                return Step(
                    result=ROLLED_BACK,
                    message=f'deployment "{name}" was rolled back automatically{why}',
                )
    line = status_line(name, generation, status)
    if line is None:
        return Step(result=COMPLETE, message=f'deployment "{name}" successfully rolled out')
    return Step(waiting=line)


def progress_view(name: str, status: DeploymentStatus | None, waiting: str) -> RenderableType:
    """The live display of one status: a bar each for updated, ready and available
    replicas out of the desired ones, and the Progressing condition."""
    title = Text(f"deployment/{name}", style="bold")
    if status is not None and status.revision:
        title.append(f"  revision {status.revision}", style="dim")
    desired = status.replicas if status is not None else 0
    bars = Table.grid(padding=(0, 1))
    bars.add_column(justify="right")
    bars.add_column(width=30)
    bars.add_column()
    for label, count in (
        ("updated", 0 if status is None else status.updated),
        ("ready", 0 if status is None else status.ready),
        ("available", 0 if status is None else status.available),
    ):
        bar = ProgressBar(total=max(desired, 1), completed=min(count, max(desired, 1)), width=30)
        bars.add_row(label, bar, f"{count}/{desired}")
    parts: list[RenderableType] = [title, bars]
    progressing = None if status is None else status.condition(CONDITION_PROGRESSING)
    if progressing is not None:
        line = Text("Progressing: ")
        line.append(f"{progressing.status} {progressing.reason}", style="bold")
        if progressing.message:
            line.append(f": {progressing.message}")
        parts.append(line)
    if waiting:
        parts.append(Text(waiting, style="dim"))
    return Group(*parts)


def console_for(out: TextIO | Console | None) -> Console:
    if isinstance(out, Console):
        return out
    return Console(file=out if out is not None else sys.stdout)


def _print(console: Console, line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


async def follow_rollout(
    client: CorralClient,
    name: str,
    namespace: str | None = None,  # None: the client's
    timeout: float | None = None,  # noqa: ASYNC109 (the command's --timeout, passed on)
    *,
    out: TextIO | Console | None = None,
) -> RolloutOutcome:
    """Follow Deployment `name`'s rollout until it completes, fails or `timeout` seconds
    pass (None or 0: no limit), showing it on `out` (see the module docstring)."""
    namespace = client.scope(namespace)
    deployment = await client.deployment(name, namespace)
    if deployment is None:
        raise CorralError(f"deployment {name!r} not found in namespace {namespace!r}")
    generation = deployment.metadata.generation
    console = console_for(out)
    live = console.is_terminal
    key = names.object_key(namespace, name)
    last: DeploymentStatus | None = None
    outcome: RolloutOutcome | None = None
    printed = ""
    first = True
    rollback_at_start: AutoRollbackRecord | None = None
    display = (
        Live(
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            transient=False,
        )
        if live
        else None
    )
    with anyio.move_on_after(timeout or math.inf):
        if display is not None:
            display.start()
        try:
            async for status in client.follow_record(
                names.DEPLOYMENT_STATUS_BUCKET, DeploymentStatus, key
            ):
                if first:
                    rollback_at_start = None if status is None else status.auto_rollback
                    first = False
                last = status
                step = judge(name, generation, status, rollback_at_start)
                if display is not None:
                    display.update(progress_view(name, status, step.waiting), refresh=True)
                elif step.waiting and step.waiting != printed:
                    _print(console, step.waiting)
                    printed = step.waiting
                if step.result:
                    outcome = RolloutOutcome(step.result, step.message, status)
                    break
        finally:
            if display is not None:
                display.stop()
    if outcome is not None and outcome.result == DEADLINE_EXCEEDED and _rolls_back(deployment):
        outcome = await _rollback_after_deadline(client, name, key, outcome, rollback_at_start)
    if outcome is None:
        waited = f" ({timeout:g} s)" if timeout else ""
        outcome = RolloutOutcome(
            TIMED_OUT,
            f'timed out waiting for deployment "{name}" rollout to finish{waited}',
            last,
        )
    if outcome.ok:
        _print(console, outcome.message)
    return outcome


# How long a missed deadline waits for the automatic rollback it triggers (the
# scheduler decides both in the same reconcile; this covers its writes and the watch).
ROLLBACK_WAIT_SECONDS = 10.0


def _rolls_back(deployment: Deployment) -> bool:
    rule = deployment.spec.auto_rollback
    return rule is not None and rule.on_progress_deadline and not deployment.spec.paused


async def _rollback_after_deadline(
    client: CorralClient,
    name: str,
    key: str,
    missed: RolloutOutcome,
    rollback_at_start: AutoRollbackRecord | None,
) -> RolloutOutcome:
    """The deadline passed on a Deployment with autoRollback: say the rollback that
    follows when it comes within ROLLBACK_WAIT_SECONDS, else the missed deadline."""
    with anyio.move_on_after(ROLLBACK_WAIT_SECONDS):
        async for status in client.follow_record(
            names.DEPLOYMENT_STATUS_BUCKET, DeploymentStatus, key
        ):
            record = None if status is None else status.auto_rollback
            if record is not None and record != rollback_at_start:
                message = rollback_message(name, record, after_deadline=True)
                return RolloutOutcome(ROLLED_BACK, message, status)
    return missed
