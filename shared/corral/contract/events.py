"""Messages that are not specs: replies to requests, and events.

Every state transition worth telling is an Event on corral.events.<kind>.<name>,
kept in the CORRAL_EVENTS stream (`corral events`, `corral describe`).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

# What a caller branches on: Reply.code, derived from `ok` and `reason` (docs/api.md,
# "Reply codes"); the wire keeps `ok` and `reason` as they are.
ReplyCode = Literal["ok", "invalid", "not_found", "conflict", "unavailable", "internal"]


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """The answer to a request on corral.api.<kind>.<verb>."""

    ok: bool
    kind: str = ""
    name: str = ""
    revision: int = 0  # the KV revision the owner stored
    generation: int = 0
    unchanged: bool = False  # the stored spec was already this one
    error: str = ""
    field: str = ""  # the offending field, as a dotted path, when one is known
    message: str = ""  # what was done, in words, when a success needs telling
    # Why, in one word, when there is more to tell than ok (the REASON_* values below);
    # a reason in RETRYABLE_REASONS means the same request may succeed later.
    reason: str = ""

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE_REASONS

    @property
    def code(self) -> ReplyCode:
        """The outcome, typed: "ok" when ok (Superseded included); for a refusal, its
        reason's code; "internal" when the reason is missing or unknown."""
        if self.ok:
            return "ok"
        return REASON_CODES.get(self.reason, "internal")


# Reply.reason values.
REASON_INVALID = "Invalid"  # the payload is wrong (`field` names where)
REASON_NOT_FOUND = "NotFound"
REASON_CONFLICT = "Conflict"  # a precondition (resourceVersion) did not hold
REASON_SUPERSEDED = "Superseded"  # a durable spec older than what is stored: skipped (ok)
REASON_BUSY = "Busy"  # the object kept changing under compare-and-set, or the owner's
# view is not ready yet (it cannot tell now): the same request may succeed in a moment
REASON_STORE_FULL = "StoreFull"  # a stream or bucket reached its size limit
REASON_INTERNAL = "InternalError"  # the owner failed (NATS away, a bug): not the payload
RETRYABLE_REASONS = frozenset({REASON_BUSY, REASON_STORE_FULL, REASON_INTERNAL})
# A refusal's reason -> its code (Reply.code).
REASON_CODES: Final[dict[str, ReplyCode]] = {
    REASON_INVALID: "invalid",
    REASON_NOT_FOUND: "not_found",
    REASON_CONFLICT: "conflict",
    REASON_BUSY: "unavailable",
    REASON_STORE_FULL: "unavailable",
    REASON_INTERNAL: "internal",
}


class Event(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    time: float
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str  # CamelCase, e.g. ScalingReplicaSet, Scheduled, Started, BackOff
    object_kind: str
    object_name: str
    message: str
    source: str  # the service (and node) that saw it
    object_namespace: str = ""  # a namespaced object's; "" for a node


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A node agent's proof of life on corral.heartbeat.<node>, every heartbeat (core
    NATS, never stored; docs/time-budget.md). `seq` counts up by one per beat of one
    agent process: a judge that sees it jump for many nodes at once lost messages."""

    node: str
    agent_id: str
    engine_id: str = ""
    seq: int = 0
    ready: bool = False
    mode: str = ""


class HeartbeatAck(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A judge's (scheduler's) answer to a Heartbeat: it heard it. `record_agent_id`
    and `record_revision` are the node's stored record as this judge sees it;
    `record_agent_live` says this judge also hears that agent heartbeat (a successor
    that took the node over, not a stale record). `judges` is how many schedulers this
    judge knows alive (itself included): an agent counts itself heard only when that
    many answered.

    `placements_revision` is the newest revision of the node's placements (its keys in
    corral_placements, or in its node's shard of them; deletions included) this judge
    has seen or written: the agent's placements watch must deliver it soon, or the
    watch has stalled (docs/safety.md, "Placements must be current"). -1: this judge
    does not say (an older scheduler), and the agent proves its watch current with an
    echo instead.
    """

    judge: str
    record_agent_id: str = ""
    record_revision: int = 0
    record_engine_id: str = ""
    record_agent_live: bool = False
    judges: int = 1
    placements_revision: int = -1
