"""The committing step: write a Plan with compare-and-set and report what was committed.

A placement is created only if its key is new; a stop deletes a placement only at
the revision the plan was decided on. What conflicts is skipped: the next pass
decides again from fresher state (Nomad's plan applier commits in part, too).
Each committed write is applied to the local mirrors at once, so the next pass
never decides on a view that lacks this pass's own writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio

from corral.contract.codec import encode
from corral.contract.state import DeploymentStatus, Placement
from corral.natsio.kv import Conflict, Entry, Mirror
from corral_scheduler.decide import Plan, Stop

log = logging.getLogger(__name__)
WRITE_CONCURRENCY = 32


@dataclass
class Committed:
    placed: list[Placement] = field(default_factory=list)
    stopped: list[Stop] = field(default_factory=list)
    conflicts: int = 0


class PlanApplier:
    def __init__(
        self,
        placements: Mirror[Placement],
        statuses: Mirror[DeploymentStatus],
    ) -> None:
        self.placements = placements
        self.statuses = statuses
        self._limiter = anyio.CapacityLimiter(WRITE_CONCURRENCY)

    async def commit(self, plan: Plan) -> Committed:
        committed = Committed()
        async with anyio.create_task_group() as tg:
            for stop in plan.stop:
                tg.start_soon(self._stop, stop, committed)
            for placement in plan.place:
                tg.start_soon(self._place, placement, committed)
            for status, revision in plan.statuses:
                tg.start_soon(self._write_status, status, revision, committed)
            for name, revision in plan.forget_statuses:
                tg.start_soon(self._forget_status, name, revision, committed)
        return committed

    async def _place(self, placement: Placement, committed: Committed) -> None:
        key = placement.key
        raw = encode(placement)
        async with self._limiter:
            try:
                revision = await self.placements.bucket.create(key, raw)
            except Conflict:
                committed.conflicts += 1
                return
        self.placements.apply(Entry(key, raw, revision))
        committed.placed.append(placement)

    async def _stop(self, stop: Stop, committed: Committed) -> None:
        async with self._limiter:
            try:
                marker = await self.placements.bucket.delete(stop.key, revision=stop.revision)
            except Conflict:
                committed.conflicts += 1
                return
        self.placements.apply(Entry(stop.key, None, marker))
        committed.stopped.append(stop)

    async def _write_status(
        self, status: DeploymentStatus, revision: int | None, committed: Committed
    ) -> None:
        raw = encode(status)
        async with self._limiter:
            try:
                if revision is None:
                    new_revision = await self.statuses.bucket.create(status.key, raw)
                else:
                    new_revision = await self.statuses.bucket.update(status.key, raw, revision)
            except Conflict:
                committed.conflicts += 1
                return
        self.statuses.apply(Entry(status.key, raw, new_revision))

    async def _forget_status(self, key: str, revision: int, committed: Committed) -> None:
        async with self._limiter:
            try:
                marker = await self.statuses.bucket.delete(key, revision=revision)
            except Conflict:
                committed.conflicts += 1
                return
        self.statuses.apply(Entry(key, None, marker))
