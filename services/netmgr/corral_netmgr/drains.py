"""The drain controller (docs/rollouts.md, "Graceful stops", step 2): a replica going
away (its status Terminating, or its placement gone while its status remains) gets a
ReplicaDrain in corral_replica_drains[<node>.<namespace>.<replica>] once every live
node part's rules no longer send it new connections; the record is deleted when the
replica's status goes.

E, the corral_endpoints revision the node parts must have applied: the newest revision
at which a record listing the replica was rewritten without it (or deleted), as this
process saw it happen (its own write or its watch: EndpointsMirror.dropped). A replica
whose status appeared while this process was watching and that was never listed has
E = 0. Otherwise (the drop happened before this process started: a restart, a lease
takeover) E is the newest corral_endpoints revision the watch delivered: never lower
than the true one, so never a drain too early. While any record still lists the
replica, nothing is written.

A live node part: it has a NodeNetwork record and its node's record in corral_nodes
says ready (netmgr does not judge heartbeats; the scheduler removes a lost node's
placements, and an agent waits for no drain longer than its drain timeout). Whatever
NodeNetwork.ready says: a node part with a problem (ready False) still has its last
rules in force, which may still send connections to the replica, so it is waited for
too. The drain is written once every live node part reports
NodeNetwork.endpointsRevision >= E (one whose record cannot be read never confirms);
`nodes` says how many confirmed.

Per replica (key: its placement key); everything is recomputed from the mirrors, so a
restart or a takeover only makes E conservative. Nothing is written while the
endpoints or node-network watch is not current.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from corral.contract.codec import encode
from corral.contract.names import placement_key
from corral.contract.network_state import Endpoints, NodeNetwork, ReplicaDrain
from corral.contract.state import Node, ReplicaState
from corral.contract.views import EndpointsPlacement, EndpointsStatus
from corral.natsio.controller import ChangeFeed, Controller, Result
from corral.natsio.kv import Create, Delete, Entry, Mirror, Write
from corral.natsio.sharded import ShardedMirror
from corral_netmgr import metrics

log = logging.getLogger(__name__)

# A watch not current (its replay not complete, or broken): look again this soon.
NOT_CURRENT_RETRY_SECONDS: Final = 0.5
CONFLICT_RETRY_SECONDS: Final = 0.05


def listed(endpoints: Endpoints | None) -> set[str]:
    """The placement keys of the replicas a record lists."""
    if endpoints is None:
        return set()
    return {placement_key(a.node, endpoints.namespace, a.replica) for a in endpoints.addresses}


class EndpointsMirror(Mirror[Endpoints]):
    """The corral_endpoints Mirror, which also knows per replica the records listing it
    (`listed_in`), the newest revision at which one was rewritten without it or deleted
    (`dropped`: from this process's own writes and its watch), and the newest revision
    its watch delivered (`position`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listed_in: dict[str, set[str]] = {}
        self.dropped: dict[str, int] = {}
        self.position = 0

    def apply(
        self, entry: Entry, *, from_watch: bool = False, value: Endpoints | None = None
    ) -> None:
        before = listed(self.get(entry.key))
        super().apply(entry, from_watch=from_watch, value=value)
        if from_watch:
            self.position = max(self.position, entry.revision)
        after = listed(self.get(entry.key))
        # A deletion the watch's replay made up (gone meanwhile) has an old revision: the
        # watch's position is at least the true one.
        revision = max(entry.revision, self.position) if from_watch else entry.revision
        for replica in before - after:
            self.dropped[replica] = max(self.dropped.get(replica, 0), revision)
            keys = self.listed_in.get(replica)
            if keys is not None:
                keys.discard(entry.key)
                if not keys:
                    del self.listed_in[replica]
        for replica in after - before:
            self.listed_in.setdefault(replica, set()).add(entry.key)

    def forget(self, replica: str) -> None:
        """The replica's status is gone: nothing more to drain."""
        self.dropped.pop(replica, None)


def going_away(status: EndpointsStatus, placement: EndpointsPlacement | None) -> bool:
    return status.state == ReplicaState.TERMINATING or placement is None


class DrainController:
    def __init__(
        self,
        *,
        statuses: Mirror[EndpointsStatus],
        placements: ShardedMirror[EndpointsPlacement],
        endpoints: EndpointsMirror,
        node_network: Mirror[NodeNetwork],
        nodes: Mirror[Node],
        drains: Mirror[ReplicaDrain],
        write: Callable[[Mirror[Any], list[Write]], Any],
        resync_seconds: float,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.statuses = statuses
        self.placements = placements
        self.endpoints = endpoints
        self.node_network = node_network
        self.nodes = nodes
        self.drains = drains
        self._write = write
        self.wall_clock = wall_clock
        self.clock = clock
        # Replicas whose status appeared while both watches were current (never listed
        # before this process saw it: E = 0 if no record has listed it since).
        self.born_watched: set[str] = set()
        # Replicas going away, when this process first saw it (for the metric).
        self.going_since: dict[str, float] = {}
        # Replicas waiting for a node part: a NodeNetwork or Node change enqueues them.
        self.waiting: set[str] = set()
        self.controller = Controller(
            "netmgr-drains",
            self.reconcile,
            resync_seconds=resync_seconds,
            resync_keys=lambda: set(statuses.items) | set(drains.items),
        )
        c = self.controller
        status_changes = ChangeFeed(statuses)
        status_changes.subscribe(self._status_seen)
        c.watch(status_changes, self._status_changed)
        c.watch(ChangeFeed(placements), lambda key, old, new: (key,) if new is None else ())
        c.watch(ChangeFeed(drains))
        c.watch(ChangeFeed(endpoints), self._replicas_dropped)
        c.watch(ChangeFeed(node_network), lambda key, old, new: list(self.waiting))
        c.watch(ChangeFeed(nodes), self._node_readiness)

    def keys(self) -> set[str]:
        return set(self.statuses.items) | set(self.drains.items)

    # --- what enqueues what ------------------------------------------------------------

    def _status_seen(
        self, key: str, old: EndpointsStatus | None, new: EndpointsStatus | None
    ) -> None:
        if old is None and new is not None and self.statuses.current and self.endpoints.current:
            self.born_watched.add(key)

    def _status_changed(
        self, key: str, old: EndpointsStatus | None, new: EndpointsStatus | None
    ) -> Iterable[str]:
        if old is not None and new is not None and old.state == new.state:
            return ()
        return (key,)

    def _replicas_dropped(
        self, key: str, old: Endpoints | None, new: Endpoints | None
    ) -> Iterable[str]:
        return listed(old) - listed(new)

    def _node_readiness(self, key: str, old: Node | None, new: Node | None) -> Iterable[str]:
        before = old is not None and old.ready
        after = new is not None and new.ready
        return () if before == after else list(self.waiting)

    # --- deciding ------------------------------------------------------------------------

    def target_revision(self, key: str) -> int:
        """E: the endpoints revision every live node part must have applied."""
        dropped = self.endpoints.dropped.get(key)
        if dropped is not None:
            return dropped
        if key in self.born_watched:
            return 0
        return self.endpoints.position  # dropped before this process watched: the newest

    def live_node_parts(self) -> dict[str, NodeNetwork | None]:
        """The node parts a drain waits for: every one with a NodeNetwork record whose
        Node is ready, whatever NodeNetwork.ready says (a node part with a problem keeps
        its last rules in force). None: its record cannot be read (never confirms)."""
        live: dict[str, NodeNetwork | None] = {}
        for name in set(self.node_network.items) | self.node_network.unreadable:
            node = self.nodes.get(name)
            if node is not None and node.ready:
                live[name] = self.node_network.get(name)
        return live

    async def reconcile(self, key: str) -> Result | None:
        started = time.perf_counter()
        try:
            return await self._reconcile(key)
        finally:
            metrics.RECONCILE_SECONDS.labels("drains").observe(time.perf_counter() - started)

    async def _reconcile(self, key: str) -> Result | None:
        if key in self.statuses.unreadable or key in self.placements.unreadable:
            return None  # never act on a guess
        status = self.statuses.get(key)
        stored = self.drains.items.get(key)
        if status is None:
            self._forget(key)
            if stored is not None and not await self._write(self.drains, [Delete(key, stored[1])]):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
            return None
        if not going_away(status, self.placements.get(key)):
            self.waiting.discard(key)
            return None
        self.going_since.setdefault(key, self.clock())
        if stored is not None or key in self.drains.unreadable:
            self.waiting.discard(key)
            return None  # drained already (it never goes back)
        if not (self.endpoints.current and self.node_network.current and self.nodes.current):
            return Result(requeue_after=NOT_CURRENT_RETRY_SECONDS)
        if key in self.endpoints.listed_in:
            self.waiting.discard(key)
            return None  # the endpoints controller drops it; that change enqueues it
        revision = self.target_revision(key)
        live = self.live_node_parts()
        if any(record is None or record.endpoints_revision < revision for record in live.values()):
            self.waiting.add(key)
            return None
        self.waiting.discard(key)
        drain = ReplicaDrain(
            node=status.node,
            replica=status.replica,
            namespace=status.namespace,
            endpoints_revision=revision,
            in_force_at=self.wall_clock(),
            nodes=len(live),
        )
        if not await self._write(self.drains, [Create(key, encode(drain))]):
            return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        metrics.DRAINS_WRITTEN.inc()
        metrics.DRAIN_SECONDS.observe(self.clock() - self.going_since[key])
        log.debug("drained %s (endpoints revision %d, %d node parts)", key, revision, len(live))
        return None

    def _forget(self, key: str) -> None:
        self.waiting.discard(key)
        self.going_since.pop(key, None)
        self.born_watched.discard(key)
        self.endpoints.forget(key)
