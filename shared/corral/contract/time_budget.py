"""The written time budget that decides liveness: one home for every number.

Each side measures on its own clock; no rule here compares two hosts' clocks.

    t = 0        an agent's last proof of being heard: a heartbeat every scheduler
                 acknowledged, or a record write NATS acknowledged (then it is cut off)
    t = I        the agent is Isolated: it starts nothing more
    t = R        the scheduler, which no longer hears the node's heartbeats nor sees
                 its record change,
                 judges the node lost and places its replicas elsewhere
                 (default, stateless Deployments: duplicates last at most F - R)
    t = F        the cut-off agent removes its replicas itself
    t = F + 2 STOP  they are gone (listing them and each removal are bounded by STOP,
                 removals run in parallel on slots of their own)
    t = R'       a Deployment that must never run twice ("AfterStop") is only now
                 replaced, unless the node came back first, or an operator
                 released the node (`corral node release NODE`)

    WORST_FAILOVER  <  F      a NATS failover never makes a healthy agent stop work
    R               <  F      replacements come before the old copies go (availability)
    I + ISOLATION_MARGIN  <=  R   an agent starts nothing once it may be judged lost
    F + 2 STOP + MARGIN  <=  R'  "never two copies"

docs/time-budget.md explains each number and how it was measured.
"""

from __future__ import annotations

from typing import Final

# How often an agent heartbeats: a core-NATS request every scheduler acknowledges, or
# a write of its node record when not all of them did. Each proof of being heard
# resets the agent's cut-off clock (docs/time-budget.md, "Liveness").
HEARTBEAT_SECONDS: Final = 1.0

# The longest NATS failover measured on a 3-server cluster (the connected server
# killed while it led the node's bucket: a Raft election, the client on another
# server): a write waited up to 10.5 s (bench/bench_failover.py). What F must exceed.
WORST_FAILOVER_SECONDS: Final = 11.0

# R: a node not heard for this long (no heartbeat, no record change; on the
# scheduler's clock, while its view is fresh) is lost, and its replicas are placed
# elsewhere. The scheduler judges it at that moment (it wakes when a node's silence
# passes R, not on its next tick), so "a node is lost -> its replicas run elsewhere"
# takes R plus a placement and a start: 4 s leaves about a second of the 5 s goal.
NODE_LOST_SECONDS: Final = 4.0

# I: an agent not proven heard (neither a heartbeat every judge acknowledged nor a
# record write NATS acknowledged) for this long is Isolated: it starts nothing, and
# keeps what runs. Not less than 3 heartbeats: an agent whose beats go unacknowledged
# (one judge does not hear it, or a scheduler just died and is still counted) proves
# itself by a record write after the beat's wait for acks (half a heartbeat), so its
# proofs can lie two heartbeats and a write apart without anything being wrong.
ISOLATED_AFTER_SECONDS: Final = 3 * HEARTBEAT_SECONDS

# What I leaves before R: a create or start already under way when the agent became
# Isolated ends, and the record write an unacknowledged agent sends still lands, before
# the scheduler may judge the node lost and place its replicas elsewhere.
ISOLATION_MARGIN_SECONDS: Final = 1.0

# How long an agent waits for its judges' acknowledgements of a beat before it proves
# itself by a record write instead (half a heartbeat), and what a write is allowed.
ACK_WAIT_SECONDS: Final = 0.5 * HEARTBEAT_SECONDS
WRITE_ALLOWANCE_SECONDS: Final = 0.5
# Acks that come after the wait (a judge or the agent's own loop slowed down) still
# prove the beat heard, from its sending, for this long after the wait: the record
# write of that beat goes out all the same (docs/time-budget.md, "Liveness").
LATE_ACKS_SECONDS: Final = 2.0
# The longest two proofs of life of a healthy agent may lie apart as a judge sees them:
# a beat, the wait for acks, a record write (a judge that does not hear its beats sees
# only its writes).
PROOF_GAP_SECONDS: Final = HEARTBEAT_SECONDS + ACK_WAIT_SECONDS + WRITE_ALLOWANCE_SECONDS

# A judge whose echo (written every second into each bucket its judgements read, and
# published on its heartbeat feed) has not come back for this long has a stale view and
# judges no node lost. A watch that stalls just after an echo came back is noticed this
# long after the stall; a live node's last proof before it is at most PROOF_GAP old, so
# its silence passes R only later (the rule below).
ECHO_LATE_SECONDS: Final = 1.9

# F: an agent cut off this long (from its last proof of being heard) removes its replicas.
CUT_OFF_STOP_SECONDS: Final = 20.0

# STOP: the longest listing the containers, or one container removal (a kill), may
# take before the engine counts as down.
STOP_SECONDS: Final = 5.0

MARGIN_SECONDS: Final = 5.0

# A cut-off agent's stops at F are graceful too, but short: the stop signal, then SIGKILL
# after at most this long (whatever the template's terminationGracePeriodSeconds), so
# that a removal still ends within STOP (docs/rollouts.md, "Graceful stops").
FENCED_STOP_GRACE_SECONDS: Final = 2.0

# R': when replicas of a Deployment that must never run twice are replaced.
NODE_LOST_AFTER_STOP_SECONDS: Final = CUT_OFF_STOP_SECONDS + 2 * STOP_SECONDS + MARGIN_SECONDS

# A node that heartbeats but reports its engine down gets nothing new at once, but
# keeps its replicas this long (an engine restart should not reshuffle a cluster).
ENGINE_DOWN_EVICTION_SECONDS: Final = 30.0

# A node record not rewritten for this long on the reader's clock is NotReady
# (`corral get nodes`), and a new agent may take the node's name over.
NODE_STALE_SECONDS: Final = NODE_LOST_SECONDS

# The NATS client pings its server this often and gives up on the connection after
# this many unanswered pings: a dead (half-open) connection is noticed in seconds.
NATS_PING_SECONDS: Final = 2.0
NATS_MAX_OUTSTANDING_PINGS: Final = 2


def check() -> None:
    """The budget's own rules; a test calls this so that no edit can break them."""
    assert WORST_FAILOVER_SECONDS < CUT_OFF_STOP_SECONDS, "a failover would stop healthy agents"
    assert NODE_LOST_SECONDS < CUT_OFF_STOP_SECONDS, "replacements would come after the stop"
    assert NODE_LOST_SECONDS > 3 * HEARTBEAT_SECONDS, "one late heartbeat would lose a node"
    assert ISOLATED_AFTER_SECONDS >= 3 * HEARTBEAT_SECONDS, "a write fallback would isolate"
    assert PROOF_GAP_SECONDS + ECHO_LATE_SECONDS < NODE_LOST_SECONDS, (
        "a stalled watch would be noticed after a live node's silence passed R"
    )
    assert ISOLATED_AFTER_SECONDS + ISOLATION_MARGIN_SECONDS <= NODE_LOST_SECONDS, (
        "an agent could still start replicas after it was judged lost"
    )
    assert (
        CUT_OFF_STOP_SECONDS + 2 * STOP_SECONDS + MARGIN_SECONDS <= NODE_LOST_AFTER_STOP_SECONDS
    ), "a never-two-copies Deployment could run twice"
    assert FENCED_STOP_GRACE_SECONDS + 1.0 <= STOP_SECONDS, "a fenced stop would outlast STOP"
    assert NATS_PING_SECONDS * (NATS_MAX_OUTSTANDING_PINGS + 1) < CUT_OFF_STOP_SECONDS
