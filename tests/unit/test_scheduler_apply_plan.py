"""The plan applier on in-memory buckets: every write of a plan goes out pipelined and
conditional, a plan commits in part, and what conflicts is named to be decided again."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import ContainerTemplate
from corral.contract.state import DeploymentStatus, Placement
from corral.natsio.kv import MemoryBucket, Mirror
from corral_scheduler.apply_plan import PlanApplier
from corral_scheduler.decide import Plan, Stop


def placement(replica: str, node: str = "a", deployment: str = "web") -> Placement:
    return Placement(
        replica=replica,
        deployment=deployment,
        node=node,
        template=ContainerTemplate(image="app:1"),
        template_hash="h",
        generation=1,
    )


def applier() -> tuple[PlanApplier, MemoryBucket, MemoryBucket]:
    placements = MemoryBucket(names.PLACEMENTS_BUCKET)
    statuses = MemoryBucket(names.DEPLOYMENT_STATUS_BUCKET)
    return (
        PlanApplier(Mirror(placements, Placement), Mirror(statuses, DeploymentStatus)),
        placements,
        statuses,
    )


async def test_a_conflict_on_one_placement_does_not_lose_the_others() -> None:
    plan_applier, placements, _ = applier()
    taken = placement("web-2", deployment="web")
    await placements.create(taken.key, encode(placement("web-2", deployment="other")))
    wanted = [placement("web-1"), taken, placement("web-3", node="b")]
    committed = await plan_applier.commit(Plan(place=wanted))
    assert [p.replica for p in committed.placed] == ["web-1", "web-3"]
    assert committed.conflicts == 1 and not committed.errors
    assert committed.retry == {"default.web"}
    mirror = plan_applier.placements
    assert sorted(mirror.items) == sorted([wanted[0].key, wanted[2].key])  # applied at once
    for kept in (wanted[0], wanted[2]):
        assert await placements.get(kept.key) is not None
    stored = await placements.get(taken.key)
    assert stored is not None and stored.revision == 1  # theirs, untouched


async def test_a_stop_on_a_stale_revision_conflicts_while_the_rest_of_the_plan_commits() -> None:
    plan_applier, placements, statuses = applier()
    old = placement("web-1")
    moved = placement("web-2")
    old_revision = await placements.create(old.key, encode(old))
    moved_revision = await placements.create(moved.key, encode(moved))
    await placements.update(moved.key, encode(moved), moved_revision)  # someone wrote since
    status = DeploymentStatus(name="web", replicas=1)
    plan = Plan(
        stop=[
            Stop(old.key, old_revision, "default.web", "scaled down"),
            Stop(moved.key, moved_revision, "default.web", "scaled down"),
        ],
        place=[placement("web-3")],
        statuses=[(status, None)],
    )
    committed = await plan_applier.commit(plan)
    assert [stop.key for stop in committed.stopped] == [old.key]
    assert [p.replica for p in committed.placed] == ["web-3"]
    # Held as written, behind the stops of the same plan: not decoded again.
    assert plan_applier.placements.get(plan.place[0].key) is plan.place[0]
    assert committed.conflicts == 1 and committed.retry == {"default.web"}
    assert await placements.get(old.key) is None
    assert await placements.get(moved.key) is not None
    assert await statuses.get(status.key) is not None
    assert plan_applier.statuses.get(status.key) == status
