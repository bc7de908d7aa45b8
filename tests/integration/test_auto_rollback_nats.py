"""Progress deadlines and the automatic rollback through a real nats-server: the scheduler
in-process and two hollow nodes (corral_node_agent.hollow_cluster, the real node agent on
in-memory engines) whose engines make every container of BAD_IMAGE exit at once
(`exit_on_start`), so its replicas crash-loop with the agent's own restart back-off
(docs/rollouts.md, "Progress deadline and conditions", "Automatic rollback"):

- a template that never gets placed misses a 2 s progress deadline: Progressing False
  ProgressDeadlineExceeded, and a Warning event;
- with autoRollback, a crash-looping new image is rolled back: the spec holds the old
  template again (its change cause saying why), status.autoRollback is set, the old
  replicas are all available again, a RolledBack event; the time it took is printed;
- without autoRollback nothing is rolled back;
- with no revision that was ever fully available nothing is rolled back (an event says so);
- a user's apply landing under the rollback's compare-and-set wins.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from corral.client.api import CorralClient
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Event
from corral.contract.specs import CHANGE_CAUSE_ANNOTATION, Deployment
from corral.contract.state import (
    CONDITION_PROGRESSING,
    REASON_NEW_REPLICAS_AVAILABLE,
    REASON_PROGRESS_DEADLINE_EXCEEDED,
    DeploymentHistory,
    DeploymentStatus,
    ReplicaStatus,
)
from corral.natsio.kv import NatsBucket, is_echo_key
from corral.natsio.service import ServiceContext
from corral_node_agent.hollow_cluster import ClusterSettings, HollowCluster
from corral_scheduler import metrics
from corral_scheduler.deployment_api import DeploymentAPI
from tests.integration.scheduler_harness import request, running_scheduler
from tests.waiting import eventually

GOOD_IMAGE = "corral-test/app:1"
BAD_IMAGE = "corral-test/app:crash"
CRASH_LOOP = {"crashLoopRestarts": 2, "crashLoopWindowSeconds": 60}
KEY = "default.web"


def manifest(image: str, replicas: int = 2, **spec: Any) -> bytes:
    return encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "template": {"image": image}, **spec},
        }
    )


@asynccontextmanager
async def cluster(nats_url: str) -> AsyncIterator[ServiceContext]:
    hollow = HollowCluster(
        ClusterSettings(
            nodes=2,
            nats_url=nats_url,
            heartbeat_seconds=0.5,
            report_seconds=0,
            exit_on_start={BAD_IMAGE: 1},
        )
    )
    async with running_scheduler(nats_url) as scheduler, anyio.create_task_group() as tg:
        with anyio.fail_after(20):
            await tg.start(hollow.run)
        try:
            yield scheduler
        finally:
            tg.cancel_scope.cancel()


async def apply(scheduler: ServiceContext, raw: bytes) -> None:
    reply = await request(scheduler.nc, "deployment", "apply", raw)
    assert reply.ok, reply.error


async def status_of(buckets: dict[str, NatsBucket]) -> DeploymentStatus | None:
    entry = await buckets[names.DEPLOYMENT_STATUS_BUCKET].get(KEY)
    return None if entry is None or entry.value is None else decode(entry.value, DeploymentStatus)


async def spec_of(buckets: dict[str, NatsBucket]) -> Deployment:
    entry = await buckets[names.DEPLOYMENTS_BUCKET].get(KEY)
    assert entry is not None and entry.value is not None
    return decode(entry.value, Deployment)


async def history_of(buckets: dict[str, NatsBucket]) -> DeploymentHistory | None:
    entry = await buckets[names.DEPLOYMENT_HISTORY_BUCKET].get(KEY)
    return None if entry is None or entry.value is None else decode(entry.value, DeploymentHistory)


async def replica_statuses(buckets: dict[str, NatsBucket]) -> list[ReplicaStatus]:
    found = []
    async for entry in buckets[names.REPLICA_STATUS_BUCKET].watch():
        if entry is None:  # caught up
            break
        if entry.value and not is_echo_key(entry.key):
            found.append(decode(entry.value, ReplicaStatus))
    return found


async def events_of(nats_url: str) -> list[Event]:
    client = await CorralClient.connect(nats_url)
    async with client:
        return await client.events("deployment", "web")


def complete_at(revision: int) -> Any:
    def accept(status: DeploymentStatus | None) -> bool:
        if status is None or status.revision != revision:
            return False
        found = status.condition(CONDITION_PROGRESSING)
        return (
            found is not None
            and found.reason == REASON_NEW_REPLICAS_AVAILABLE
            and status.available == status.replicas == status.updated
        )

    return accept


async def first_rollout(
    scheduler: ServiceContext, buckets: dict[str, NatsBucket], **spec: Any
) -> None:
    """Revision 1 of the good image, rolled out and recorded as fully available."""
    await apply(scheduler, manifest(GOOD_IMAGE, **spec))
    await eventually(lambda: status_of(buckets), complete_at(1), within=15)
    await eventually(
        lambda: history_of(buckets),
        lambda h: h is not None and h.revisions[-1].available_at > 0,
    )


async def test_a_template_that_is_never_placed_misses_its_progress_deadline(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler:
        await first_rollout(scheduler, buckets, progressDeadlineSeconds=2)
        huge = encode(
            {
                "apiVersion": "corral/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "progressDeadlineSeconds": 2,
                    "template": {
                        "image": GOOD_IMAGE,
                        "resources": {"requests": {"cpu": "64"}},
                    },
                },
            }
        )
        await apply(scheduler, huge)
        started = time.monotonic()

        def exceeded(status: DeploymentStatus | None) -> bool:
            found = None if status is None else status.condition(CONDITION_PROGRESSING)
            return (
                found is not None
                and (found.status, found.reason) == ("False", REASON_PROGRESS_DEADLINE_EXCEEDED)
                and status is not None
                and status.revision == 2
            )

        await eventually(lambda: status_of(buckets), exceeded, within=10)
        took = time.monotonic() - started
        assert 1.5 < took < 6  # at the deadline (2 s after the rollout began), not a resync
        events = await eventually(
            lambda: events_of(nats_url),
            lambda found: any(e.reason == REASON_PROGRESS_DEADLINE_EXCEEDED for e in found),
        )
        warned = [e for e in events if e.reason == REASON_PROGRESS_DEADLINE_EXCEEDED]
        assert warned[0].type == "Warning"
        assert (await spec_of(buckets)).spec.template.resources.requests.cpu_millis == 64_000


async def test_a_crash_looping_new_image_is_rolled_back_to_the_last_available_template(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler:
        await first_rollout(scheduler, buckets, autoRollback=CRASH_LOOP)
        good = (await spec_of(buckets)).spec.template
        before = next(iter(metrics.ROLLBACK_SECONDS.collect()))
        count_before = _sample(before, "_count")
        await apply(scheduler, manifest(BAD_IMAGE, autoRollback=CRASH_LOOP))
        started = time.monotonic()
        # Revision 2 crash-loops; the old template comes back as revision 3 and rolls out.
        status = await eventually(lambda: status_of(buckets), complete_at(3), within=25)
        took = time.monotonic() - started
        spec = await spec_of(buckets)
        assert spec.spec.template == good
        assert spec.metadata.annotations[CHANGE_CAUSE_ANNOTATION].startswith(
            "automatic rollback from revision 2: replica web-"
        )
        record = status.auto_rollback
        assert record is not None
        assert (record.from_revision, record.to_revision, record.reason) == (2, 3, "CrashLoop")
        statuses = await eventually(
            lambda: replica_statuses(buckets),
            lambda found: len(found) == 2 and all(s.is_ready for s in found),
        )
        assert {s.template_hash for s in statuses} == {good.template_hash()}
        events = await eventually(
            lambda: events_of(nats_url),
            lambda found: any(e.reason == "RolledBack" for e in found),
        )
        assert [e.type for e in events if e.reason == "RolledBack"] == ["Warning"]
        history = await history_of(buckets)
        assert history is not None and [r.revision for r in history.revisions] == [2, 3]
        after = next(iter(metrics.ROLLBACK_SECONDS.collect()))
        assert _sample(after, "_count") == count_before + 1
        print(f"\ncrash-looping revision applied -> rollback complete: {took:.2f} s")


def _sample(metric: Any, suffix: str) -> float:
    return float(sum(s.value for s in metric.samples if s.name.endswith(suffix)))


async def test_without_auto_rollback_a_crash_loop_is_left_alone(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler:
        await first_rollout(scheduler, buckets)
        await apply(scheduler, manifest(BAD_IMAGE))
        await eventually(
            lambda: replica_statuses(buckets),
            lambda found: any(s.restarts >= 3 for s in found),
            within=15,
        )
        await eventually(
            lambda: history_of(buckets), lambda h: h is not None and len(h.revisions) == 2
        )
        spec = await spec_of(buckets)
        assert spec.spec.template.image == BAD_IMAGE
        status = await status_of(buckets)
        assert status is not None and status.auto_rollback is None and status.revision == 2
        assert not [e for e in await events_of(nats_url) if e.reason == "RolledBack"]


async def test_with_no_revision_ever_fully_available_nothing_is_rolled_back(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler:
        # The first rollout is of the crashing image: revision 1, never fully available.
        await apply(scheduler, manifest(BAD_IMAGE, autoRollback=CRASH_LOOP))
        events = await eventually(
            lambda: events_of(nats_url),
            lambda found: any(e.reason == "NotRolledBack" for e in found),
            within=15,
        )
        skipped = [e for e in events if e.reason == "NotRolledBack"]
        assert skipped[0].type == "Warning"
        assert "no revision was fully available" in skipped[0].message
        assert (await spec_of(buckets)).spec.template.image == BAD_IMAGE
        status = await status_of(buckets)
        assert status is not None and status.auto_rollback is None
        assert not [e for e in events if e.reason == "RolledBack"]


async def test_a_user_apply_racing_the_rollback_wins(
    nats_url: str, buckets: dict[str, NatsBucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    raced: list[int] = []
    update = DeploymentAPI.update

    async def racing_update(self: DeploymentAPI, key: str, raw: bytes, revision: int) -> int:
        cause = decode(raw, Deployment).metadata.annotations.get(CHANGE_CAUSE_ANNOTATION, "")
        if cause.startswith("automatic rollback") and not raced:
            # The user applies another image just before the rollback's write lands.
            raced.append(revision)
            await apply(user, manifest("corral-test/app:3", autoRollback=CRASH_LOOP))
        return await update(self, key, raw, revision)

    monkeypatch.setattr(DeploymentAPI, "update", racing_update)
    async with cluster(nats_url) as user:
        await first_rollout(user, buckets, autoRollback=CRASH_LOOP)
        await apply(user, manifest(BAD_IMAGE, autoRollback=CRASH_LOOP))

        async def attempts() -> int:
            return len(raced)

        await eventually(attempts, bool, within=20)
        # The user's revision (3) rolls out, and stays.
        await eventually(lambda: status_of(buckets), complete_at(3), within=15)
        spec = await spec_of(buckets)
        assert spec.spec.template.image == "corral-test/app:3"
        assert CHANGE_CAUSE_ANNOTATION not in spec.metadata.annotations
        status = await status_of(buckets)
        assert status is not None and status.auto_rollback is None
        assert not [e for e in await events_of(nats_url) if e.reason == "RolledBack"]
