"""`corral rollout status` through a real nats-server (issue 10), the status record
written by the test into corral_deployment_status as the scheduler would: a completed
rollout exits 0, a missed progress deadline exits 1 with kubectl's words, an automatic
rollback (already under way, or happening while following) exits 1 saying from which
revision to which and why. No scheduler runs: only the record decides."""

from __future__ import annotations

import anyio
from click.testing import CliRunner, Result

from corral.client.cli.main import cli
from corral.contract import names
from corral.contract.codec import encode
from corral.contract.state import (
    CONDITION_PROGRESSING,
    REASON_NEW_REPLICAS_AVAILABLE,
    REASON_PROGRESS_DEADLINE_EXCEEDED,
    REASON_REPLICAS_UPDATED,
    REASON_ROLLED_BACK,
    AutoRollbackRecord,
    DeploymentCondition,
    DeploymentStatus,
)
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from tests.waiting import eventually

KEY = names.object_key("default", "web")
DEPLOYMENT = encode(
    {
        "apiVersion": "corral/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "generation": 3},
        "spec": {"replicas": 2, "template": {"image": "busybox:1"}},
    }
)
ROLLBACK = AutoRollbackRecord(
    from_revision=3,
    to_revision=2,
    reason="CrashLoop",
    message="replica web-7 restarted 3 times within 300s",
    at=1_800_000_000.0,
)


def progressing(reason: str, state: str) -> list[DeploymentCondition]:
    return [DeploymentCondition(type=CONDITION_PROGRESSING, status=state, reason=reason)]


def record(**fields: object) -> bytes:
    base: dict[str, object] = {"observed_generation": 3, "replicas": 2, "revision": 3}
    return encode(DeploymentStatus(name="web", **{**base, **fields}))  # type: ignore[arg-type]


async def corral(url: str, *args: str) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, *args])

    return await anyio.to_thread.run_sync(invoke)


async def stored(buckets: dict[str, NatsBucket], status: bytes) -> None:
    await buckets[names.DEPLOYMENTS_BUCKET].put(KEY, DEPLOYMENT)
    await buckets[names.DEPLOYMENT_STATUS_BUCKET].put(KEY, status)


async def rollout_status(url: str, within: str) -> Result:
    return await corral(url, "rollout", "status", "deployment/web", "--timeout", within)


async def following_until(nats_url: str, buckets: dict[str, NatsBucket], then: bytes) -> Result:
    """`rollout status` followed over the record stored; once it watches (and has not
    ended), the record becomes `then`: the command's result."""
    assert await _consumers(nats_url) == 0
    results: list[Result] = []
    async with anyio.create_task_group() as tg:

        async def follow() -> None:
            results.append(await rollout_status(nats_url, "20s"))

        tg.start_soon(follow)
        await eventually(lambda: _consumers(nats_url), lambda count: count > 0)
        assert not results, "it ended before the record changed"
        await buckets[names.DEPLOYMENT_STATUS_BUCKET].put(KEY, then)
    (result,) = results
    return result


async def test_a_completed_rollout_exits_0_once_every_replica_is_available(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await stored(buckets, record(placed=2, ready=2, updated=2, available=1))
    # ready is not available: still following until the record says so
    done = record(
        placed=2,
        ready=2,
        updated=2,
        available=2,
        conditions=progressing(REASON_NEW_REPLICAS_AVAILABLE, "True"),
    )
    result = await following_until(nats_url, buckets, done)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        'Waiting for deployment "web" rollout to finish: 1 of 2 updated replicas are available...',
        'deployment "web" successfully rolled out',
    ]


async def test_ready_but_not_yet_available_replicas_wait_for_available(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await stored(buckets, record(placed=2, ready=2, updated=2, available=1))
    result = await rollout_status(nats_url, "1s")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        'Waiting for deployment "web" rollout to finish: 1 of 2 updated replicas are available...',
        'error: timed out waiting for deployment "web" rollout to finish (1 s)',
    ]


async def test_a_missed_progress_deadline_exits_1_with_kubectls_words(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    late = record(
        placed=3,
        ready=2,
        updated=1,
        conditions=progressing(REASON_PROGRESS_DEADLINE_EXCEEDED, "False"),
    )
    await stored(buckets, late)
    result = await rollout_status(nats_url, "10s")
    assert result.exit_code == 1, result.output
    assert result.output.endswith('error: deployment "web" exceeded its progress deadline\n')


async def test_a_rollback_under_way_exits_1_naming_the_revisions_and_why(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    going_back = record(
        placed=2,
        ready=2,
        updated=0,
        revision=4,
        auto_rollback=ROLLBACK,
        conditions=progressing(REASON_ROLLED_BACK, "False"),
    )
    await stored(buckets, going_back)
    result = await rollout_status(nats_url, "10s")
    assert result.exit_code == 1, result.output
    assert (
        'error: deployment "web" was rolled back automatically from revision 3 to revision 2 '
        "(CrashLoop: replica web-7 restarted 3 times within 300s)"
    ) in result.output


async def test_a_rollback_while_following_exits_1(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await stored(
        buckets,
        record(
            placed=3, ready=2, updated=1, conditions=progressing(REASON_REPLICAS_UPDATED, "True")
        ),
    )
    # the rollback lands while the command watches (the record keeps Progressing True,
    # so only autoRollback says it)
    rolled_back = record(
        placed=2,
        ready=2,
        updated=2,
        available=2,
        auto_rollback=ROLLBACK,
        conditions=progressing(REASON_NEW_REPLICAS_AVAILABLE, "True"),
    )
    result = await following_until(nats_url, buckets, rolled_back)
    assert result.exit_code == 1, result.output
    assert "from revision 3 to revision 2" in result.output
    assert "successfully rolled out" not in result.output


async def _consumers(nats_url: str) -> int:
    """How many consumers (watches) the status bucket's stream has now."""
    nc = await connect(nats_url, name="test-consumers")
    try:
        info = await nc.jetstream().stream_info(f"KV_{names.DEPLOYMENT_STATUS_BUCKET}")
    finally:
        await nc.close()
    return info.state.consumer_count


async def test_a_missed_deadline_with_auto_rollback_waits_to_say_the_rollback_that_follows(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    """The scheduler marks the deadline missed, then rolls back in the same reconcile:
    the command says both, not only the deadline (an operator wants to know the old
    template is back)."""
    guarded = encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "generation": 3},
            "spec": {
                "replicas": 2,
                "autoRollback": {"onCrashLoop": False},
                "template": {"image": "busybox:1"},
            },
        }
    )
    late = record(
        placed=3,
        ready=2,
        updated=1,
        conditions=progressing(REASON_PROGRESS_DEADLINE_EXCEEDED, "False"),
    )
    await buckets[names.DEPLOYMENTS_BUCKET].put(KEY, guarded)
    await buckets[names.DEPLOYMENT_STATUS_BUCKET].put(KEY, late)
    deadline = AutoRollbackRecord(
        from_revision=3, to_revision=2, reason=REASON_PROGRESS_DEADLINE_EXCEEDED, at=1.0
    )
    rolled = record(
        placed=3,
        ready=2,
        updated=0,
        revision=4,
        auto_rollback=deadline,
        conditions=progressing(REASON_ROLLED_BACK, "False"),
    )
    result = await following_until(nats_url, buckets, rolled)
    assert result.exit_code == 1, result.output
    assert (
        'error: deployment "web" exceeded its progress deadline and was rolled back '
        "automatically from revision 3 to revision 2 (ProgressDeadlineExceeded)"
    ) in result.output
