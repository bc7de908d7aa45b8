"""The scheduler's answer to `corral node release NODE` (corral.api.node.release).

A release is an operator's word that a node is gone for good. It is refused while
the node is alive: its record changed within R (NODE_LOST_SECONDS) on the
scheduler's own clock, or the scheduler cannot tell (its view of NATS is not
fresh, or it has not watched for R yet). It is refused too while the node has
replicas that must never run twice ("AfterStop" Deployments, and containers: "Never",
docs/containers.md) and has been silent for less than R'
(NODE_LOST_AFTER_STOP_SECONDS): an agent that is only cut off runs them until it
stops them itself (at F + 2 STOP), so a replacement now would be a second copy;
`force` (`--force`) is the operator's word that the node's containers are gone.
Otherwise:

    1. the node's record is deleted (compare-and-set on the revision judged on),
    2. a NodeRelease is stored at corral_leases["released.<node>"] (the scheduler
       owns it), so the node's replicas are replaced at once, "AfterStop" ones
       included, even by a scheduler that restarts meanwhile,
    3. a "Released" event is told about the node.

The release ends by itself: once the node has neither record nor placements the
key is deleted, and a record written again under that name (an agent coming back
starts afresh: nothing is placed on it, so it removes what it ran) ends it too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import msgspec

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.events import (
    REASON_BUSY,
    REASON_CONFLICT,
    REASON_INVALID,
    REASON_NOT_FOUND,
    Reply,
)
from corral.contract.specs import NodeReleaseRequest
from corral.contract.time_budget import (
    CUT_OFF_STOP_SECONDS,
    NODE_LOST_AFTER_STOP_SECONDS,
    NODE_LOST_SECONDS,
    STOP_SECONDS,
)
from corral.natsio.bus import EventPublisher, SpecHandler
from corral.natsio.kv import Conflict, Entry

if TYPE_CHECKING:
    from corral_scheduler.control_loop import ControlLoop

KIND: Final = "Node"
RELEASE_PREFIX: Final = "released."


class NodeRelease(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An operator released this node (stored by the scheduler in corral_leases)."""

    node: str
    # The nodes bucket's revision of the record deleted by the release (0: none was
    # there): a record of a newer revision means the node came back.
    node_revision: int = 0
    released_at: float = 0.0  # wall clock, for people


def release_key(node: str) -> str:
    return f"{RELEASE_PREFIX}{node}"


class NodeAPI:
    def __init__(self, loop: ControlLoop, events: EventPublisher | None) -> None:
        self.loop = loop
        self.events = events

    def handlers(self) -> dict[str, SpecHandler]:
        return {"release": self.release}

    async def release(self, raw: bytes) -> Reply:
        try:
            request = decode_payload(raw, NodeReleaseRequest)
        except InvalidPayload as error:
            return Reply(
                ok=False, kind=KIND, reason=REASON_INVALID, error=error.message, field=error.field
            )
        name = request.name
        loop = self.loop
        now = loop.monotonic()
        loop.update_feed(now)
        known = name in loop.nodes.items or name in loop.nodes.unreadable
        placed = name in loop.deployments_by_node  # an index: never a scan of placements
        if not known and not placed and release_key(name) not in loop.releases.items:
            return _refused(
                name, f"node {name!r} not found: no record and no replicas", REASON_NOT_FOUND
            )
        silence = loop.silence(name, now)
        if silence is None:
            return _refused(
                name,
                f"cannot release node {name!r} now: the scheduler's view of NATS is not "
                "current, so it cannot tell whether the node is alive; try again",
                REASON_BUSY,
            )
        if silence <= NODE_LOST_SECONDS:
            return _refused(
                name,
                f"node {name!r} is alive: the scheduler heard from it {max(silence, 0):.1f} s "
                f"ago (a node is released only after {NODE_LOST_SECONDS:g} s of silence); "
                "stop its node agent first",
                REASON_CONFLICT,
            )
        if not request.force and silence < NODE_LOST_AFTER_STOP_SECONDS:
            after_stop = self._after_stop_deployments(name)
            if after_stop:
                return _refused(
                    name, _may_still_run(name, after_stop, silence), REASON_CONFLICT, field="force"
                )
        marker = 0
        if known:
            judged = loop.nodes.revision(name)
            entry = await loop.nodes.bucket.get(name)
            if entry is not None and entry.value is not None:
                if judged is not None and entry.revision != judged:
                    return _refused(name, _WROTE_JUST_NOW.format(name=name), REASON_CONFLICT)
                try:
                    marker = await loop.nodes.bucket.delete(name, revision=entry.revision)
                except Conflict:
                    return _refused(name, _WROTE_JUST_NOW.format(name=name), REASON_CONFLICT)
                loop.nodes.apply(Entry(name, None, marker))
        record = NodeRelease(node=name, node_revision=marker, released_at=loop.wall_clock())
        raw_record = encode(record)
        revision = await loop.releases.bucket.put(release_key(name), raw_record)
        loop.releases.apply(Entry(release_key(name), raw_record, revision))
        loop.wake()
        usage = loop.usage.get(name)
        count = 0 if usage is None else usage.pods
        message = (
            f"its {count} replica(s) are placed elsewhere now and its record is deleted; "
            "an agent that comes back under this name starts afresh"
        )
        if self.events is not None:
            await self.events.emit(
                "node",
                name,
                "Released",
                f"node {name} released by an operator{' (forced)' * request.force}: {message}",
            )
        return Reply(ok=True, kind=KIND, name=name, revision=revision, message=message)

    def _after_stop_deployments(self, node: str) -> list[str]:
        """The Deployments with replicas placed on `node` that must never run twice:
        "AfterStop" ones, containers ("Never": a release is what moves them), and those
        whose stored spec cannot be read (they may be)."""
        deployments = self.loop.deployments
        found = set()
        for key in self.loop.deployments_by_node.get(node):
            deployment = deployments.get(key)
            if key in deployments.unreadable or (
                deployment is not None and deployment.spec.replacement in ("AfterStop", "Never")
            ):
                found.add(names.split_object_key(key)[1])
        return sorted(found)


def _may_still_run(name: str, deployments: list[str], silence: float) -> str:
    wait = math.ceil(NODE_LOST_AFTER_STOP_SECONDS - silence)
    gone_by = CUT_OFF_STOP_SECONDS + 2 * STOP_SECONDS
    return (
        f"node {name!r} has replicas that must never run twice (AfterStop Deployments or "
        f"containers: {', '.join(deployments)}) that may still run: if its agent is only "
        f"cut off, it removes them itself by {gone_by:g} s of silence, and they are replaced after "
        f"{NODE_LOST_AFTER_STOP_SECONDS:g} s. It has been silent {max(silence, 0):.1f} s: "
        f"wait {wait} s more, or release it with force (corral node release {name} "
        "--force) if you know the node's containers are gone"
    )


_WROTE_JUST_NOW: Final = "node {name!r} wrote its record just now: it is alive"


def _refused(name: str, error: str, reason: str, *, field: str = "name") -> Reply:
    return Reply(ok=False, kind=KIND, name=name, reason=reason, error=error, field=field)
