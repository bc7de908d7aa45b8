"""The committing step: write a Plan with compare-and-set and report what was committed.

Every write of a plan is sent at once, pipelined on the connection (kv.write_many), and
each stays conditional: a placement is created only if its key is new; a stop deletes
a placement only at the revision the plan was decided on; a status is written on the
revision it was read at. A plan commits in part as a matter of course: what conflicts
is counted and its Deployment named in `Committed.retry`, to be decided again from
fresher state (Nomad's plan applier commits in part, too). Each committed write is
applied to the local mirrors at once (Outcome.entry), so the next decision never
works on a view that lacks this plan's own writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import anyio

from corral.contract.codec import encode
from corral.contract.state import DeploymentStatus, Placement
from corral.natsio.kv import Create, Delete, Mirror, Outcome, Update, Write, write_many
from corral.natsio.sharded import ShardedMirror
from corral_scheduler.decide import Plan, Stop

log = logging.getLogger(__name__)


@dataclass
class Committed:
    placed: list[Placement] = field(default_factory=list)
    stopped: list[Stop] = field(default_factory=list)
    conflicts: int = 0
    # Writes that failed otherwise (the connection, a timeout): retried with back-off.
    errors: list[Exception] = field(default_factory=list)
    # The Deployments (keys) with a write that did not commit: decide them again.
    retry: set[str] = field(default_factory=set)


class PlanApplier:
    def __init__(
        self,
        placements: Mirror[Placement] | ShardedMirror[Placement],
        statuses: Mirror[DeploymentStatus],
    ) -> None:
        self.placements = placements
        self.statuses = statuses

    async def commit(self, plan: Plan) -> Committed:
        committed = Committed()
        placement_writes: list[Write] = [Delete(stop.key, stop.revision) for stop in plan.stop]
        placement_owners = [stop.deployment for stop in plan.stop]
        for placement in plan.place:
            placement_writes.append(Create(placement.key, encode(placement)))
            placement_owners.append(placement.deployment_key)
        status_writes: list[Write] = []
        for status, revision in plan.statuses:
            raw = encode(status)
            status_writes.append(
                Create(status.key, raw) if revision is None else Update(status.key, raw, revision)
            )
        status_writes += [Delete(key, revision) for key, revision in plan.forget_statuses]
        status_owners = [write.key for write in status_writes]

        results: dict[str, list[Outcome]] = {}

        async def send(
            which: str, mirror: Mirror[Any] | ShardedMirror[Any], writes: list[Write]
        ) -> None:
            if writes:
                results[which] = await write_many(mirror.bucket, writes)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, "placements", self.placements, placement_writes)
            tg.start_soon(send, "statuses", self.statuses, status_writes)

        stops = len(plan.stop)
        for index, outcome in enumerate(results.get("placements", [])):
            # A new placement is held as the object written (through the mirror's
            # sharing), not decoded again: its template is not validated again.
            placed = plan.place[index - stops] if index >= stops else None
            if self._settle(self.placements, outcome, placement_owners[index], committed, placed):
                if placed is None:
                    committed.stopped.append(plan.stop[index])
                else:
                    committed.placed.append(placed)
        for index, outcome in enumerate(results.get("statuses", [])):
            self._settle(self.statuses, outcome, status_owners[index], committed)
        return committed

    @staticmethod
    def _settle(
        mirror: Mirror[Any] | ShardedMirror[Any],
        outcome: Outcome,
        owner: str,
        committed: Committed,
        value: Any = None,
    ) -> bool:
        entry = outcome.entry
        if entry is not None:
            mirror.apply(entry, value=value)
            return True
        committed.retry.add(owner)
        if outcome.conflict:
            committed.conflicts += 1
        else:
            assert outcome.error is not None
            committed.errors.append(outcome.error)
            log.warning(
                "could not write %s/%s: %s", mirror.bucket.name, outcome.write.key, outcome.error
            )
        return False
