"""Which cluster this node belongs to, and an operator's decisions about others'
containers on it (docs/safety.md).

`Membership.check()` compares the store's cluster identity with the node's local
record (corral_node_agent.local_record) and says what the safety state machine
needs: recognised, mismatch, lost or unreadable, with the reason in words. The
first identity a node ever reads becomes its own. `decide()` answers
`corral node adopt|reset NODE`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.events import (
    REASON_BUSY,
    REASON_CONFLICT,
    REASON_INTERNAL,
    REASON_INVALID,
    Reply,
)
from corral.contract.specs import NodeDecision
from corral.contract.state import Cluster
from corral.natsio.cluster import UnreadableIdentity, read_cluster_identity
from corral.natsio.kv import Bucket
from corral.natsio.service import RefusedToStart
from corral_node_agent.local_record import LocalRecord, LocalRecordFile, UnreadableLocalRecord
from corral_node_agent.safety import Identity

log = logging.getLogger(__name__)

LOST_READS = 3
LOST_READ_SPACING = 0.5

# Removes the containers of one cluster on this node: (removed, failures in words).
RemoveCluster = Callable[[str], Awaitable[tuple[int, list[str]]]]


def store_missing(error: Exception) -> bool:
    """The store answered that the bucket is not there (wiped), as opposed to a
    timeout or a lost connection, which say nothing about the store."""
    return isinstance(error, NotFoundError | NoRespondersError)


class PlacementShardsChanged(RefusedToStart):
    """The cluster in the store keeps its placements in another number of shards than
    the agent was started for (a store made anew with another number, accepted by
    `corral node adopt` or `reset`, or first met without a local record): the process
    says so in one line and exits 1, its containers left running; a supervisor starts
    it again on the cluster's shards."""


class Membership:
    def __init__(
        self, node: str, cluster_bucket: Bucket, local: LocalRecordFile, placement_shards: int = 1
    ) -> None:
        """`placement_shards`: the shards of the placements this agent's bucket is one of;
        a store whose identity has another number keeps this node's placements in another
        bucket, and is not acted on (Unreadable) until the agent is started again."""
        self.node = node
        self.placement_shards = placement_shards
        # Why the store keeps this node's placements in another bucket than the one the
        # agent watches ('' when it does not): the agent then stops (PlacementShardsChanged).
        self.shards_changed = ""
        self.cluster_bucket = cluster_bucket
        self.local = local
        self.identity = Identity.UNKNOWN
        self._verdicts = 0  # changes of `identity`: a replica read spanning one is void
        self.problem = ""  # why the store is not recognised, in words
        self.cluster_id = ""  # the cluster this node belongs to (its local record)
        self.adopted: frozenset[str] = frozenset()
        self.claimed: frozenset[str] = frozenset()
        self.on_change: Callable[[], None] = lambda: None

    def load_local(self) -> None:
        """What the node recorded before, even when the store cannot be reached: a
        cut-off agent stops the replicas of the cluster it belongs to."""
        try:
            record = self.local.load()
        except UnreadableLocalRecord as error:
            self._set(Identity.UNREADABLE, f"the local record is unreadable: {error}")
            return
        if record is not None:
            self._accept(record)

    async def check(self, *, from_leader: bool = False) -> None:
        """Read the store's identity and compare. Raises on timeouts and disconnects
        (nothing was learnt). A store that answers without an identity is believed
        only when it says so LOST_READS times in a row (a clustered KV can answer
        "not found" for a moment).

        The identity is read with a direct get, which any replica may answer, one cut
        off from its leader included (for as long as it is cut off). A replica's answer
        only confirms a verdict that is Recognised already, with this node's own
        cluster; it never lifts Mismatch or Lost (a replica behind a wiped store still
        says the old id, the node's own). Anything else (another verdict, another id,
        none, unreadable) is read from the stream's leader, and so is everything when
        `from_leader` (at start and around a new read of the placements, which the
        agent then acts on)."""
        for attempt in range(LOST_READS):
            if attempt:
                await anyio.sleep(LOST_READ_SPACING)
            lost = await self._check_once(from_leader)
            if not lost:
                return
        self._set(Identity.LOST, lost)

    async def _confirmed_by_replica(self) -> LocalRecord | None:
        """This node's local record when the verdict is Recognised and a replica's answer
        is still the node's own cluster; None otherwise, a failure included (the leader's
        read then decides, as before)."""
        if self.identity != Identity.RECOGNISED:
            return None
        verdicts = self._verdicts
        try:
            stored = await read_cluster_identity(self.cluster_bucket)
            local = self.local.load()
        except Exception:
            return None
        if self._verdicts != verdicts:
            return None  # another check decided meanwhile (a leader's Mismatch, say)
        if stored is None or local is None:
            return None
        if stored.id == local.cluster_id == self.cluster_id and not self._other_shards(stored):
            return local
        return None

    async def _check_once(self, from_leader: bool) -> str:
        """One read; returns why the store seems lost ('' when it is not)."""
        confirmed = None if from_leader else await self._confirmed_by_replica()
        if confirmed is not None:
            self._accept(confirmed)
            self._set(Identity.RECOGNISED, "")
            return ""
        try:
            stored = await read_cluster_identity(self.cluster_bucket, from_leader=True)
        except UnreadableIdentity as error:
            self._set(Identity.UNREADABLE, str(error))
            return ""
        except Exception as error:
            if store_missing(error):
                return f"the state store answers without it: {error}"
            raise
        try:
            local = self.local.load()
        except UnreadableLocalRecord as error:
            self._set(Identity.UNREADABLE, f"the local record is unreadable: {error}")
            return ""
        if stored is None:
            return "the state store has no cluster identity"
        other_shards = self._other_shards(stored)
        if other_shards and (local is None or local.cluster_id == stored.id):
            self.shards_changed = other_shards
            self._set(Identity.UNREADABLE, other_shards)
            return ""
        if local is None:
            first = LocalRecord(node=self.node, cluster_id=stored.id)
            self.local.save(first)
            self._accept(first)
            log.info("node %s belongs to cluster %s from now on", self.node, stored.id)
            self._set(Identity.RECOGNISED, "")
        elif local.cluster_id == stored.id:
            self._accept(local)
            self._set(Identity.RECOGNISED, "")
        else:
            self._set(
                Identity.MISMATCH,
                f"the state store is cluster {stored.id}, but this node belongs to cluster "
                f"{local.cluster_id}: its containers are left alone until an operator runs "
                f"`corral node adopt {self.node}` or `corral node reset {self.node}`",
            )
        return ""

    def _other_shards(self, stored: Cluster) -> str:
        """Why this agent cannot read the placements of `stored` ('' when it can): they
        are in another number of shards than it was started for (a store made anew)."""
        if stored.placement_shards == self.placement_shards:
            return ""
        return (
            f"cluster {stored.id} keeps its placements in {stored.placement_shards} "
            f"shard(s), and this agent was started for {self.placement_shards}: it "
            "leaves its containers alone and stops; started again, it reads the cluster's"
        )

    def _accept(self, record: LocalRecord) -> None:
        changed = (record.cluster_id, frozenset(record.adopted)) != (self.cluster_id, self.adopted)
        self.cluster_id = record.cluster_id
        self.adopted = frozenset(record.adopted)
        self.claimed = frozenset(record.claimed)
        if changed:
            self.on_change()

    def note_claimed(self, claimed: set[str], existing: set[str]) -> None:
        """Containers of adopted clusters that placements claimed are own for good;
        ids of containers that no longer exist are forgotten. Written only on change."""
        wanted = (self.claimed | claimed) & existing
        if wanted == self.claimed:
            return
        record = LocalRecord(
            node=self.node,
            cluster_id=self.cluster_id,
            adopted=sorted(self.adopted),
            claimed=sorted(wanted),
        )
        self.local.save(record)
        self.claimed = frozenset(wanted)

    def _set(self, identity: Identity, problem: str) -> None:
        if (identity, problem) != (self.identity, self.problem) and problem:
            log.error("node %s: %s", self.node, problem)
        if identity != self.identity:
            self._verdicts += 1
        self.identity, self.problem = identity, problem

    async def decide(self, verb: str, raw: bytes, remove_cluster: RemoveCluster) -> Reply:
        """Adopt or reset the containers of another cluster on this node; never raises
        for bad input (a Reply naming what is wrong, and nothing changed)."""
        try:
            decision = decode_payload(raw, NodeDecision)
        except InvalidPayload as error:
            return Reply(
                ok=False, kind="Node", reason=REASON_INVALID, error=error.message, field=error.field
            )
        if decision.node != self.node:
            return self._refuse(
                f"this is the agent of node {self.node!r}, not {decision.node!r}",
                REASON_INVALID,
                field="node",
            )
        if verb not in names.NODE_VERBS:
            return self._refuse(
                f"unknown decision {verb!r}: expected one of {names.NODE_VERBS}", REASON_INVALID
            )
        try:
            stored = await read_cluster_identity(self.cluster_bucket, from_leader=True)
            local = self.local.load()
        except Exception as error:
            return self._refuse(f"cannot read the cluster identities: {error}", REASON_INTERNAL)
        if stored is None:
            return self._refuse(
                "the state store has no cluster identity yet; try again", REASON_BUSY
            )
        recorded = local.cluster_id if local is not None and local.cluster_id != stored.id else ""
        adopted = set(local.adopted if local is not None else ())
        old = decision.cluster_id or recorded
        if not old:
            return self._refuse(
                f"node {self.node} already belongs to the store's cluster {stored.id}: "
                "nothing to adopt or reset",
                REASON_CONFLICT,
            )
        if old == stored.id:
            return self._refuse(
                f"cluster {old} is the store's own cluster: nothing to {verb}",
                REASON_CONFLICT,
                field="clusterId",
            )
        if old not in adopted | {recorded}:
            # Another cluster may share this engine and node name: never touch it.
            return self._refuse(
                f"cluster {old} is neither the cluster node {self.node} belonged to nor one "
                "it adopted: corral never touches another cluster's containers",
                REASON_CONFLICT,
                field="clusterId",
            )
        if verb == "adopt":
            adopted.add(old)
            message = (
                f"containers of cluster {old} on node {self.node} are kept as orphans until a "
                "Deployment of their name and template claims them"
            )
        else:
            removed, failures = await remove_cluster(old)
            if failures:
                return self._refuse(
                    f"removed {removed} containers of cluster {old}; {len(failures)} could not "
                    f"be removed ({'; '.join(failures[:3])}): run reset again",
                    REASON_INTERNAL,
                )
            adopted.discard(old)
            message = f"removed {removed} containers of cluster {old} from node {self.node}"
        kept = sorted(self.claimed) if verb == "adopt" else []
        record = LocalRecord(
            node=self.node, cluster_id=stored.id, adopted=sorted(adopted), claimed=kept
        )
        self.local.save(record)
        self._accept(record)
        other_shards = self._other_shards(stored)
        self.shards_changed = other_shards
        self._set(Identity.UNREADABLE if other_shards else Identity.RECOGNISED, other_shards)
        return Reply(ok=True, kind="Node", name=self.node, message=message)

    def _refuse(self, error: str, reason: str, *, field: str = "") -> Reply:
        return Reply(ok=False, kind="Node", name=self.node, reason=reason, error=error, field=field)
