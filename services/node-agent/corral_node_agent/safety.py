"""The node agent's safety rules as one pure state machine (docs/safety.md).

`decide_mode(observation, budget)` says what the agent may do to its containers
now; `permissions(mode)` spells it out. Nothing here touches NATS or the engine,
and the clock comes in as `now` (the agent's monotonic clock: no rule compares
two hosts' clocks).

    STARTING ---identity recognised + an acknowledged write---> SYNCING
    SYNCING ---placements watch delivered a current snapshot---> ACTIVE
    ACTIVE/SYNCING ---no acknowledged write for `isolated_after`---> ISOLATED
    ISOLATED ---still none after F (`stop_after`)---> STOPPING (removes its replicas)
    ISOLATED ---a write acknowledged again---> SYNCING (the watch proven, or a new one)
    STOPPING ---a write acknowledged again---> SYNCING (a new watch)
    any ---the store is not the one this node belongs to---> HELD (until an operator decides)
    any ---another agent on this engine took the node over---> HANDED_OVER
    any ---another agent on another engine took the node over---> RETIRED (removes its copies)

The order of the checks is the order of precedence: an agent that is held keeps
everything running even when cut off (nobody else will run those replicas), and a
displaced agent never acts on placements again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from corral.contract import time_budget


class Mode(enum.StrEnum):
    STARTING = "Starting"  # the node's store not read yet: touch nothing
    HELD = "Held"  # the store is not the one this node belongs to: touch nothing
    SYNCING = "Syncing"  # placements being read afresh: touch nothing until current
    ACTIVE = "Active"  # placements current: make the containers match them
    ISOLATED = "Isolated"  # no acknowledged write for a while: keep running, start nothing
    STOPPING = "Stopping"  # cut off past F: remove this node's replicas
    HANDED_OVER = "HandedOver"  # another agent on this engine runs the node: touch nothing
    RETIRED = "Retired"  # another agent on another engine runs the node: remove our copies


class Identity(enum.StrEnum):
    UNKNOWN = "Unknown"  # not read yet (or only timeouts so far)
    RECOGNISED = "Recognised"  # the store's cluster id is the one recorded on this node
    MISMATCH = "Mismatch"  # the store carries another cluster id than the one recorded
    LOST = "Lost"  # the store answers, but has no cluster identity (wiped, or not made yet)
    UNREADABLE = "Unreadable"  # the stored identity, or the local record, cannot be read


class Displacement(enum.StrEnum):
    NONE = "None"
    SAME_ENGINE = "SameEngine"
    OTHER_ENGINE = "OtherEngine"


@dataclass(frozen=True, slots=True)
class Budget:
    isolated_after: float = time_budget.ISOLATED_AFTER_SECONDS  # I: before R (time_budget)
    stop_after: float = time_budget.CUT_OFF_STOP_SECONDS  # F


@dataclass(frozen=True, slots=True)
class Observation:
    now: float  # monotonic seconds
    started_at: float  # when this agent process started (monotonic)
    last_ack: float | None  # the last write NATS acknowledged (monotonic); None: none yet
    identity: Identity
    # A watch delivered its snapshot, or a kept watch was proven current, since the
    # last isolation.
    placements_current: bool
    displacement: Displacement = Displacement.NONE


@dataclass(frozen=True, slots=True)
class Permissions:
    create: bool = False  # create and start containers of placed replicas
    remove_unplaced: bool = False  # remove this node's containers that are not placed here
    remove_all: bool = False  # remove every container of this node and cluster


_PERMISSIONS = {
    Mode.ACTIVE: Permissions(create=True, remove_unplaced=True),
    Mode.STOPPING: Permissions(remove_all=True),
    Mode.RETIRED: Permissions(remove_all=True),
}
_HOLDING = (Identity.MISMATCH, Identity.LOST, Identity.UNREADABLE)


def decide_mode(seen: Observation, budget: Budget = Budget()) -> Mode:
    if seen.displacement == Displacement.SAME_ENGINE:
        return Mode.HANDED_OVER
    if seen.displacement == Displacement.OTHER_ENGINE:
        return Mode.RETIRED
    if seen.identity in _HOLDING:
        return Mode.HELD
    # Cut off counts from the last acknowledged write, or from the start when there
    # was none: a restarted agent that cannot reach NATS still stops its replicas at F.
    silent = seen.now - (seen.last_ack if seen.last_ack is not None else seen.started_at)
    if silent > budget.stop_after:
        return Mode.STOPPING
    if seen.last_ack is None or seen.identity == Identity.UNKNOWN:
        return Mode.STARTING
    if silent > budget.isolated_after:
        return Mode.ISOLATED
    if not seen.placements_current:
        return Mode.SYNCING
    return Mode.ACTIVE


def permissions(mode: Mode) -> Permissions:
    return _PERMISSIONS.get(mode, Permissions())


def needs_new_watch(mode: Mode) -> bool:
    """In these modes the placements watch belongs to a store that is not this node's,
    or to an agent that no longer runs the node, or it has been cut off for F (long
    enough for old delete markers to matter): it is dropped, and read afresh to go on."""
    return mode in (Mode.STOPPING, Mode.HELD, Mode.HANDED_OVER, Mode.RETIRED)


def doubts_placements(mode: Mode) -> bool:
    """In this mode (cut off, not yet for F) the placements watch may miss changes: it
    runs on, but the placements are not current until it is proven to have missed
    nothing since (NodeAgent._confirm_kept_watch), or read afresh."""
    return mode == Mode.ISOLATED
