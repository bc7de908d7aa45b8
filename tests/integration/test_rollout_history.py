"""Revisions through a real nats-server, the scheduler and two hollow node agents:
`corral set image` and `rollout undo` record revisions with their causes, undo to a
revision that does not exist changes nothing, `rollout status` exits 0 once an update is
done and 1 on --timeout while a replica cannot be placed, and `rollout restart`
replaces every replica."""

from __future__ import annotations

from typing import Any

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.state import DeploymentHistory, Placement
from corral.natsio.kv import NatsBucket
from tests.integration.scheduler_harness import request
from tests.integration.test_scheduler_rollout_settings import (
    IMAGE,
    cluster,
    corral,
    current,
    generation_observed,
)
from tests.waiting import eventually

KEY = names.object_key("default", "web")


def manifest(replicas: int, **template: Any) -> bytes:
    return encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "template": {"image": IMAGE, **template}},
        }
    )


async def history(buckets: dict[str, NatsBucket]) -> DeploymentHistory | None:
    entry = await buckets[names.DEPLOYMENT_HISTORY_BUCKET].get(KEY)
    return None if entry is None or not entry.value else decode(entry.value, DeploymentHistory)


async def stored_bytes(buckets: dict[str, NatsBucket]) -> tuple[bytes, int]:
    entry = await buckets[names.DEPLOYMENTS_BUCKET].get(KEY)
    assert entry is not None and entry.value
    return entry.value, entry.revision


async def placed(buckets: dict[str, NatsBucket]) -> dict[str, Placement]:
    found: dict[str, Placement] = {}
    async for entry in buckets[names.PLACEMENTS_BUCKET].watch():
        if entry is None:
            break
        if entry.value and "_echo" not in entry.key:
            found[entry.key] = decode(entry.value, Placement)
    return found


def all_running(image: str, replicas: int) -> Any:
    async def probe(buckets: dict[str, NatsBucket]) -> bool:
        moment = await current(buckets)
        found = await placed(buckets)
        return (
            len(found) == replicas
            and {p.template.image for p in found.values()} == {image}
            and moment.ready == replicas
        )

    return probe


def revisions_of(count: int) -> Any:
    return lambda h: h is not None and len(h.revisions) == count


async def test_set_image_undo_and_a_missing_revision(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler:
        assert (await request(scheduler.nc, "deployment", "apply", manifest(2))).ok
        await eventually(lambda: history(buckets), revisions_of(1))
        first = await corral(nats_url, "rollout", "status", "deployment/web", "--timeout", "20s")
        assert first.exit_code == 0, first.output  # so revision 1 was fully available

        updated = await corral(nats_url, "set", "image", "deployment/web", f"web={IMAGE}-2")
        assert updated.exit_code == 0, updated.output
        assert updated.output == "deployment/web image updated\n"
        found = await eventually(lambda: history(buckets), revisions_of(2))
        assert found is not None
        assert [(r.revision, r.change_cause) for r in found.revisions] == [
            (1, ""),
            (2, f"corral set image deployment/web web={IMAGE}-2"),
        ]
        status = await corral(nats_url, "rollout", "status", "deployment/web", "--timeout", "20s")
        assert status.exit_code == 0, status.output
        assert status.output.endswith('deployment "web" successfully rolled out\n')
        assert {p.template.image for p in (await placed(buckets)).values()} == {f"{IMAGE}-2"}

        listed = await corral(nats_url, "rollout", "history", "deployment/web")
        assert listed.exit_code == 0, listed.output
        assert listed.output.splitlines()[1:] == [
            "REVISION   AVAILABLE   CHANGE-CAUSE",
            "1          yes         <none>",
            f"2          yes         corral set image deployment/web web={IMAGE}-2",
        ]
        one = await corral(nats_url, "rollout", "history", "deployment/web", "--revision", "1")
        assert one.exit_code == 0 and f"image: {IMAGE}\n" in one.output

        # a revision that does not exist: a clear error, nothing stored changes
        before = await stored_bytes(buckets)
        missing = await corral(nats_url, "rollout", "undo", "deployment/web", "--to-revision", "99")
        assert missing.exit_code == 1 and "--to-revision 99" in missing.output
        assert await stored_bytes(buckets) == before

        undone = await corral(nats_url, "rollout", "undo", "deployment/web")
        assert undone.exit_code == 0, undone.output
        assert undone.output == "deployment/web rolled back to revision 1\n"
        found = await eventually(
            lambda: history(buckets), lambda h: h is not None and h.revisions[-1].revision == 3
        )
        assert found is not None
        assert [(r.revision, r.template.image) for r in found.revisions] == [
            (2, f"{IMAGE}-2"),
            (3, IMAGE),
        ]
        assert found.revisions[-1].change_cause == "corral rollout undo deployment/web"
        await eventually(lambda: all_running(IMAGE, 2)(buckets), bool, within=20)


async def test_status_times_out_while_a_replica_cannot_be_placed_and_restart_replaces_all(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler:
        assert (await request(scheduler.nc, "deployment", "apply", manifest(2))).ok
        done = await corral(nats_url, "rollout", "status", "deployment/web", "--timeout", "20s")
        assert done.exit_code == 0, done.output
        first = set(await placed(buckets))

        restarted = await corral(nats_url, "rollout", "restart", "deployment/web")
        assert restarted.exit_code == 0 and restarted.output == "deployment/web restarted\n"
        done = await corral(nats_url, "rollout", "status", "deployment/web", "--timeout", "20s")
        assert done.exit_code == 0, done.output
        after = await placed(buckets)
        assert len(after) == 2 and not first & set(after)  # every replica replaced
        assert all(p.template.restarted_at for p in after.values())
        found = await history(buckets)
        assert found is not None and len(found.revisions) == 2
        assert found.revisions[-1].change_cause == "corral rollout restart deployment/web"

        # three replicas of 1.5 CPU on two nodes of 2 CPU: one is never placed
        big = {"resources": {"requests": {"cpu": "1500m"}}}
        assert (await request(scheduler.nc, "deployment", "apply", manifest(3, **big))).ok
        await eventually(lambda: generation_observed(buckets), bool)
        stuck = await corral(nats_url, "rollout", "status", "deployment/web", "--timeout", "2s")
        assert stuck.exit_code == 1, stuck.output
        assert 'timed out waiting for deployment "web" rollout to finish' in stuck.output
        assert 'Waiting for deployment "web" rollout to finish: ' in stuck.output
