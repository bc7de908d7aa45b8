"""netmgr's cluster part as controllers (corral.natsio.controller; docs/networking.md):

- the network controller (key: a network's name) keeps one NetworkSlice per network
  and node (corral_network_slices, `<network>.<node>`; a node whose record is deleted
  loses its slices) and the network's NetworkStatus (its range, and the extra members:
  the IPs on their other networks of replicas that are on it). A deleted network loses
  its slices, then its status. A node joining or leaving, or a node's used ranges
  changing (a slice overlapping one is named in NetworkStatus.message), enqueues every
  network; a replica status whose IPs change enqueues the networks it is on.
- the endpoints controller (key: a Service's key) keeps each Service's Endpoints
  (corral_netmgr.endpoints), written only when they change. A placement, a replica
  status or a node's readiness changing enqueues only the Services of the replica's
  namespace whose selector matches its labels (indexes by namespace and by node).
- the drain controller (key: a replica's placement key; corral_netmgr.drains) writes a
  ReplicaDrain once a replica going away has left every live node part's rules.

The mirrors are also what the APIs decide on (corral_netmgr.spec_api); `lock` is the
one their decisions hold. Every key is enqueued again every RESYNC_SECONDS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskStatus

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.network_specs import Network, Service
from corral.contract.network_state import (
    Endpoints,
    NetworkSlice,
    NetworkStatus,
    NodeNetwork,
    ReplicaDrain,
)
from corral.contract.sharing import ENDPOINTS_TEMPLATES, intern_replica_names
from corral.contract.state import Node
from corral.contract.views import EndpointsPlacement, EndpointsStatus, NetworksDeployment
from corral.natsio.cluster_service import MirroredLoop, MirrorSet, without_stamp, write_into
from corral.natsio.controller import ChangeFeed, Controller, Index, Result
from corral.natsio.kv import Create, Delete, Mirror, Update, Write
from corral.natsio.sharded import ShardedMirror, shard_buckets
from corral_netmgr import metrics
from corral_netmgr.allocator import assign_slices, gateway, parse_ranges, slice_conflicts
from corral_netmgr.drains import DrainController, EndpointsMirror
from corral_netmgr.endpoints import Candidate, compute_endpoints, placement_labels, selects

log = logging.getLogger(__name__)

RESYNC_SECONDS: Final = 30.0
# A key whose writes conflicted (the state moved meanwhile) is reconciled again this soon.
CONFLICT_RETRY_SECONDS: Final = 0.05
# How often the `default` network's presence and the gauges are looked at.
TICK_SECONDS: Final = 5.0
# The `default` network's range is picked once a node part has reported the ranges its
# host already uses (NodeNetwork.usedRanges), or after this long without any: a range
# picked before would not know another cluster's networks on the same engine.
DEFAULT_NETWORK_WAIT: Final = 10.0
HOSTS_POLL_SECONDS: Final = 0.1


def slice_key(network: str, node: str) -> str:
    """The key of a node's slice of a network (NetworkSlice.key)."""
    return f"{network}.{node}"


@dataclass
class Mirrors(MirrorSet):
    """Every bucket the cluster part reads, kept current by watches: the records of
    other services as views holding only what it reads (corral.contract.views)."""

    networks: Mirror[Network]
    network_status: Mirror[NetworkStatus]
    slices: Mirror[NetworkSlice]
    services: Mirror[Service]
    endpoints: EndpointsMirror
    deployments: Mirror[NetworksDeployment]
    nodes: Mirror[Node]
    node_network: Mirror[NodeNetwork]
    placements: ShardedMirror[EndpointsPlacement]
    replica_statuses: Mirror[EndpointsStatus]
    drains: Mirror[ReplicaDrain]

    @classmethod
    def of(cls, buckets: dict[str, Any], placement_shards: int = 1) -> Mirrors:
        return cls(
            networks=Mirror(buckets[names.NETWORKS_BUCKET], Network),
            network_status=Mirror(buckets[names.NETWORK_STATUS_BUCKET], NetworkStatus),
            slices=Mirror(buckets[names.NETWORK_SLICES_BUCKET], NetworkSlice),
            services=Mirror(buckets[names.SERVICES_BUCKET], Service),
            endpoints=EndpointsMirror(buckets[names.ENDPOINTS_BUCKET], Endpoints),
            deployments=Mirror(buckets[names.DEPLOYMENTS_BUCKET], NetworksDeployment),
            nodes=Mirror(buckets[names.NODES_BUCKET], Node),
            node_network=Mirror(buckets[names.NODE_NETWORK_BUCKET], NodeNetwork),
            # Held shared: one template per Deployment revision, one copy of each name
            # (corral.contract.sharing).
            placements=ShardedMirror(
                shard_buckets(buckets, placement_shards),
                EndpointsPlacement,
                share=ENDPOINTS_TEMPLATES.share,
            ),
            replica_statuses=Mirror(
                buckets[names.REPLICA_STATUS_BUCKET], EndpointsStatus, share=intern_replica_names
            ),
            drains=Mirror(buckets[names.REPLICA_DRAINS_BUCKET], ReplicaDrain),
        )


def label_pair(namespace: str, key: str, value: str) -> str:
    return f"{namespace}/{key}={value}"


class ClusterLoop(MirroredLoop[Mirrors]):
    def __init__(
        self,
        buckets: dict[str, Any],
        *,
        resync_seconds: float = RESYNC_SECONDS,
        wall_clock: Any = time.time,
        placement_shards: int = 1,
        default_network_wait: float = DEFAULT_NETWORK_WAIT,
    ) -> None:
        self.mirrors = m = Mirrors.of(buckets, placement_shards)
        self.wall_clock = wall_clock
        self.default_network_wait = default_network_wait
        self.lock = anyio.Lock()  # held by every API decision (corral_netmgr.spec_api)
        self.network_controller = Controller(
            "netmgr-network",
            self.reconcile_network,
            resync_seconds=resync_seconds,
            resync_keys=self._network_keys,
        )
        self.endpoints_controller = Controller(
            "netmgr-endpoints",
            self.reconcile_endpoints,
            resync_seconds=resync_seconds,
            resync_keys=self._service_keys,
        )
        self.drains = DrainController(
            statuses=m.replica_statuses,
            placements=m.placements,
            endpoints=m.endpoints,
            node_network=m.node_network,
            nodes=m.nodes,
            drains=m.drains,
            write=self._write,
            resync_seconds=resync_seconds,
            wall_clock=wall_clock,
        )
        self.drain_controller = self.drains.controller
        networks = self.network_controller
        endpoints = self.endpoints_controller
        # Feeds, indexes, and what enqueues which keys.
        slice_changes = ChangeFeed(m.slices)
        self.slices_by_network = Index(slice_changes, by=lambda key, s: (s.network,))
        status_changes = ChangeFeed(m.replica_statuses)
        self.multi_network_replicas = Index(
            status_changes, by=lambda key, s: tuple(s.ips) if len(s.ips) > 1 else ()
        )
        placement_changes = ChangeFeed(m.placements)
        # "<namespace>/<label>=<value>" -> the placements with it: a Service's candidates
        # are those under the rarest pair of its selector, not its whole namespace.
        self.placements_by_label = Index(
            placement_changes,
            by=lambda key, p: [
                label_pair(p.namespace, k, v) for k, v in placement_labels(p).items()
            ],
        )
        self.placements_by_node = Index(placement_changes, by=lambda key, p: (p.node,))
        service_changes = ChangeFeed(m.services)
        self.services_by_namespace = Index(
            service_changes, by=lambda key, s: (s.metadata.namespace,)
        )
        node_changes = ChangeFeed(m.nodes)
        networks.watch(ChangeFeed(m.networks))
        networks.watch(slice_changes, lambda key, old, new: {s.network for s in (old, new) if s})
        networks.watch(ChangeFeed(m.network_status))
        networks.watch(node_changes, self._node_joined_or_left)
        networks.watch(status_changes, self._networks_of_replica)
        networks.watch(ChangeFeed(m.node_network), self._used_ranges_changed)
        endpoints.watch(service_changes)
        endpoints.watch(ChangeFeed(m.endpoints), lambda key, old, new: () if new else (key,))
        endpoints.watch(placement_changes, self._services_of_placement)
        endpoints.watch(status_changes, self._services_of_status)
        endpoints.watch(node_changes, self._services_on_node)

    # --- what enqueues what ------------------------------------------------------------

    def _network_keys(self) -> set[str]:
        m = self.mirrors
        return (
            set(m.networks.items)
            | set(m.network_status.items)
            | set(self.slices_by_network.values())
        )

    def _service_keys(self) -> set[str]:
        m = self.mirrors
        return set(m.services.items) | set(m.endpoints.items)

    def _node_joined_or_left(self, key: str, old: Node | None, new: Node | None) -> Iterable[str]:
        if (old is None) == (new is None):
            return ()
        return list(self.mirrors.networks.items)

    def _used_ranges_changed(
        self, key: str, old: NodeNetwork | None, new: NodeNetwork | None
    ) -> Iterable[str]:
        before = [] if old is None else old.used_ranges
        after = [] if new is None else new.used_ranges
        return () if before == after else list(self.mirrors.networks.items)

    def _networks_of_replica(
        self, key: str, old: EndpointsStatus | None, new: EndpointsStatus | None
    ) -> Iterable[str]:
        before = {} if old is None else old.ips
        after = {} if new is None else new.ips
        if before == after or (len(before) < 2 and len(after) < 2):
            return ()
        return set(before) | set(after)

    def _matching_services(self, placement: EndpointsPlacement) -> set[str]:
        labels = placement_labels(placement)
        found = set()
        for key in self.services_by_namespace.get(placement.namespace):
            service = self.mirrors.services.get(key)
            if service is not None and selects(service.spec.selector, labels):
                found.add(key)
        return found

    def _services_of_placement(
        self, key: str, old: EndpointsPlacement | None, new: EndpointsPlacement | None
    ) -> Iterable[str]:
        found: set[str] = set()
        for placement in (old, new):
            if placement is not None:
                found |= self._matching_services(placement)
        return found

    def _services_of_status(
        self, key: str, old: EndpointsStatus | None, new: EndpointsStatus | None
    ) -> Iterable[str]:
        if (
            old is not None
            and new is not None
            and (old.is_ready, old.ips) == (new.is_ready, new.ips)
        ):
            return ()  # serving as before (state or probe results changed only)
        placement = self.mirrors.placements.get(key)
        return () if placement is None else self._matching_services(placement)

    def _services_on_node(self, key: str, old: Node | None, new: Node | None) -> Iterable[str]:
        before = old is not None and old.ready
        after = new is not None and new.ready
        if before == after:
            return ()
        found: set[str] = set()
        for placement_key in self.placements_by_node.get(key):
            placement = self.mirrors.placements.get(placement_key)
            if placement is not None:
                found |= self._matching_services(placement)
        return found

    # --- running -------------------------------------------------------------------------

    async def run_controllers(
        self,
        ensure_default: Any,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the controllers, make the `default` network when missing (`ensure_default`,
        the Network API's) once a node has said which ranges its host uses, and a tick
        (the default network, the gauges)."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.network_controller.run)
            await tg.start(self.endpoints_controller.run)
            await tg.start(self.drain_controller.run)
            self.network_controller.enqueue_all(self._network_keys())
            self.endpoints_controller.enqueue_all(self._service_keys())
            self.drain_controller.enqueue_all(self.drains.keys())
            task_status.started()
            await self._hosts_known()
            await self._ensure_default(ensure_default)
            while True:
                await anyio.sleep(TICK_SECONDS)
                await self._ensure_default(ensure_default)
                self.update_gauges()

    async def _hosts_known(self) -> None:
        """Until a node part reports its host's used ranges (or the wait is over)."""
        polls = int(self.default_network_wait / HOSTS_POLL_SECONDS)
        for _ in range(polls):
            if self.mirrors.node_network.items:
                return
            await anyio.sleep(HOSTS_POLL_SECONDS)

    async def _ensure_default(self, ensure_default: Any) -> None:
        try:
            reply = await ensure_default()
        except Exception:
            log.exception("could not make the default network; trying again")
            return
        if reply is not None and not reply.ok:
            log.warning("could not make the default network: %s", reply.error)
        elif reply is not None:
            log.info("made the default network")

    def update_gauges(self) -> None:
        m = self.mirrors
        metrics.NETWORKS.set(len(m.networks.items))
        metrics.SERVICES.set(len(m.services.items))
        metrics.SLICES.set(len(m.slices.items))
        metrics.ENDPOINTS.set(sum(len(e.addresses) for e in m.endpoints.values()))

    async def _write(self, mirror: Mirror[Any], writes: Sequence[Write]) -> bool:
        """Send `writes`, apply what committed to `mirror`; True when all did."""
        return await write_into(mirror, writes, replace_unreadable=True)

    # --- the network controller ------------------------------------------------------------

    def extra_members(self, network: str) -> list[str]:
        found: set[str] = set()
        for key in self.multi_network_replicas.get(network):
            status = self.mirrors.replica_statuses.get(key)
            if status is None:
                continue
            found |= {ip for name, ip in status.ips.items() if name != network and ip}
        return sorted(found)

    async def reconcile_network(self, name: str) -> Result | None:
        started = time.perf_counter()
        try:
            return await self._reconcile_network(name)
        finally:
            metrics.RECONCILE_SECONDS.labels("network").observe(time.perf_counter() - started)

    async def _reconcile_network(self, name: str) -> Result | None:
        m = self.mirrors
        if name in m.networks.unreadable:
            return None  # never act on a guess
        network = m.networks.get(name)
        slices = {
            key: m.slices.items[key]
            for key in self.slices_by_network.get(name)
            if key in m.slices.items
        }
        if network is None:
            gone = [Delete(key, revision) for key, (_, revision) in slices.items()]
            if not await self._write(m.slices, gone):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
            status = m.network_status.items.get(name)
            if status is not None and not await self._write(
                m.network_status, [Delete(name, status[1])]
            ):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
            return None
        if not network.spec.subnet:
            log.warning("network %s has no range stored; leaving it alone", name)
            return None
        subnet = IPv4Network(network.spec.subnet)
        prefix = network.spec.slice_prefix
        nodes = set(m.nodes.items) | m.nodes.unreadable
        existing = {s.node: s.subnet for s, _ in slices.values()}
        result = assign_slices(subnet, prefix, nodes, existing)
        writes: list[Write] = []
        wanted_keys = set()
        for node, range_ in result.assigned.items():
            wanted = NetworkSlice(
                network=name, node=node, subnet=str(range_), gateway=str(gateway(range_))
            )
            key = slice_key(name, node)
            wanted_keys.add(key)
            current = m.slices.items.get(key)
            if current is None:
                writes.append(Create(key, encode(wanted)))
            elif current[0] != wanted:
                writes.append(Update(key, encode(wanted), current[1]))
        for key, (_, revision) in slices.items():
            if key not in wanted_keys:
                writes.append(Delete(key, revision))
        all_written = await self._write(m.slices, writes)
        message = ""
        if result.without:
            message = (
                f"no slice left in {subnet} for node(s) {', '.join(result.without)}: "
                f"every /{prefix} is taken"
            )
        # A node that reports later a range its host uses that overlaps a slice (its own,
        # or one it routes to another node): said, never silent (docs/networking.md).
        used = {
            node: parse_ranges(record.used_ranges)
            for node, (record, _) in m.node_network.items.items()
        }
        conflicts = slice_conflicts(result.assigned, used)
        if conflicts:
            message = "; ".join(([message] if message else []) + conflicts)
        wanted_status = NetworkStatus(
            name=name,
            subnet=str(subnet),
            slice_prefix=prefix,
            phase="Ready",
            message=message,
            extra_members=self.extra_members(name),
        )
        stored = m.network_status.items.get(name)
        if stored is None or without_stamp(stored[0]) != wanted_status:
            stamped = msgspec.structs.replace(wanted_status, updated_at=self.wall_clock())
            write: Write = (
                Create(name, encode(stamped))
                if stored is None
                else Update(name, encode(stamped), stored[1])
            )
            all_written = await self._write(m.network_status, [write]) and all_written
        return None if all_written else Result(requeue_after=CONFLICT_RETRY_SECONDS)

    # --- the endpoints controller ------------------------------------------------------------

    def candidates(self, service: Service) -> list[Candidate]:
        """The replicas that may be the Service's endpoints: those under the rarest
        label pair of its selector (compute_endpoints checks the whole selector)."""
        m = self.mirrors
        namespace = service.metadata.namespace
        keys = min(
            (
                self.placements_by_label.get(label_pair(namespace, k, v))
                for k, v in service.spec.selector.items()
            ),
            key=len,
            default=frozenset(),
        )
        found = []
        for key in keys:
            placement = m.placements.get(key)
            if placement is None:
                continue
            found.append(
                Candidate(
                    placement=placement,
                    status=m.replica_statuses.get(key),
                    node=m.nodes.get(placement.node),
                )
            )
        return found

    async def reconcile_endpoints(self, key: str) -> Result | None:
        started = time.perf_counter()
        try:
            return await self._reconcile_endpoints(key)
        finally:
            metrics.RECONCILE_SECONDS.labels("endpoints").observe(time.perf_counter() - started)

    async def _reconcile_endpoints(self, key: str) -> Result | None:
        m = self.mirrors
        if key in m.services.unreadable:
            return None
        service = m.services.get(key)
        stored = m.endpoints.items.get(key)
        if service is None:
            if stored is not None and not await self._write(m.endpoints, [Delete(key, stored[1])]):
                return Result(requeue_after=CONFLICT_RETRY_SECONDS)
            return None
        wanted = compute_endpoints(service, self.candidates(service))
        if stored is not None and without_stamp(stored[0]) == wanted:
            return None
        stamped = msgspec.structs.replace(wanted, updated_at=self.wall_clock())
        write: Write = (
            Create(key, encode(stamped))
            if stored is None
            else Update(key, encode(stamped), stored[1])
        )
        if not await self._write(m.endpoints, [write]):
            return Result(requeue_after=CONFLICT_RETRY_SECONDS)
        return None
