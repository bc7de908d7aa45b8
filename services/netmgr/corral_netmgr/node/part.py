"""The node part's controller (docs/networking.md): watches feed mirrors, changes
enqueue one of a few keys, each reconciled level-triggered and idempotently.

    networks  this node's Docker networks = its NetworkSlices (watched `*.<node>`), and
              hairpin mode on their bridges' ports
    rules     the packet filter = networks' ranges + every Endpoints record
    routes    host-gw routes = other hosts' nodes' slices via their addresses
    dns       the DNS server's addresses = this node's slices' gateways
    record    NodeNetwork[node]: address, host id, used ranges, endpoints revision, ready

Every key is reconciled again every `resync_seconds` (Docker rewrites its chains when
it restarts: the jumps are re-asserted then), and after a Docker network event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus
from prometheus_client import Counter, Gauge, Histogram

from corral.contract import names
from corral.contract.backoff import Backoff
from corral.contract.codec import encode
from corral.contract.network_state import Endpoints, NetworkSlice, NetworkStatus, NodeNetwork
from corral.natsio.controller import ChangeFeed, Controller, Result
from corral.natsio.kv import Bucket, Entry, Mirror, write_record
from corral_netmgr.node import host, routes
from corral_netmgr.node.docker_networks import DockerNetworks, NetworkInUse, subnets, wanted
from corral_netmgr.node.iptables import Iptables
from corral_netmgr.node.rules import Desired, NetworkRange, chains_in, render, udp_targets

T = TypeVar("T")
log = logging.getLogger(__name__)

NETWORKS: Final = "networks"
RULES: Final = "rules"
ROUTES: Final = "routes"
DNS: Final = "dns"
RECORD: Final = "record"
KEYS: Final = (NETWORKS, RULES, ROUTES, DNS, RECORD)
RETRY_SECONDS: Final = 5.0  # a Docker network in use, a route or a bind that failed
# The record is written at once when the endpoints revision in force moves on, but at
# most once per this long for that alone: a burst of endpoints changes is a few writes,
# never one per change, and the cluster part's drains (docs/rollouts.md, "Graceful
# stops") wait at most this long for the write.
RECORD_REVISION_SECONDS: Final = 0.1

RULES_APPLIED = Counter(
    "corral_netmgr_node_rules_applied_total",
    "Packet-filter rule sets written (iptables-restore) by the node part",
    ["node"],
)
APPLY_SECONDS = Histogram(
    "corral_netmgr_node_rules_apply_seconds",
    "Time to render and write the node's packet-filter rules and check its jumps",
    ["node"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ENDPOINTS_REVISION = Gauge(
    "corral_netmgr_node_endpoints_revision",
    "The corral_endpoints revision whose changes are all in the rules in force",
    ["node"],
)


class RevisionMirror(Mirror[T]):
    """A Mirror that knows the newest revision its watch delivered (`position`): every
    change of the bucket at or below it is in `items`, or superseded there."""

    position: int = 0

    def apply(self, entry: Entry, *, from_watch: bool = False, value: T | None = None) -> None:
        if from_watch:
            self.position = max(self.position, entry.revision)
        super().apply(entry, from_watch=from_watch, value=value)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    node: str
    cluster_id: str
    node_address: str = ""  # empty: the default route's source address
    host_id: str = ""
    resync_seconds: float = 30.0
    dns_port: int = 53

    @property
    def prefix(self) -> str:
        return names.chain_prefix(self.cluster_id, self.node)


def same_record(a: NodeNetwork, b: NodeNetwork) -> bool:
    return msgspec.structs.replace(a, updated_at=0.0) == msgspec.structs.replace(b, updated_at=0.0)


class NodePart:
    def __init__(
        self,
        buckets: Mapping[str, Bucket],
        settings: NodeSettings,
        docker: DockerNetworks,
        iptables: Iptables,
        *,
        dns: Any = None,
        on_endpoints: Callable[[str, Endpoints | None], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.monotonic = monotonic
        self._record_written_at: float | None = None  # on `monotonic`
        self.docker = docker
        self.iptables = iptables
        self.dns = dns
        self.clock = clock
        node = settings.node
        self.node_bucket = buckets[names.NODE_NETWORK_BUCKET]
        slices = buckets[names.NETWORK_SLICES_BUCKET]
        self.own_slices = Mirror(slices, NetworkSlice, prefix=f"*.{node}")
        self.all_slices = Mirror(slices, NetworkSlice)
        self.statuses = Mirror(buckets[names.NETWORK_STATUS_BUCKET], NetworkStatus)
        self.endpoints: RevisionMirror[Endpoints] = RevisionMirror(
            buckets[names.ENDPOINTS_BUCKET], Endpoints
        )
        self.node_networks = Mirror(self.node_bucket, NodeNetwork)
        self.mirrors: list[Mirror[Any]] = [
            self.own_slices,
            self.all_slices,
            self.statuses,
            self.endpoints,
            self.node_networks,
        ]
        self.controller = Controller(
            f"netmgr-node-{node}",
            self.reconcile,
            resync_seconds=settings.resync_seconds,
            resync_keys=lambda: KEYS,
        )
        self.controller.watch(ChangeFeed(self.own_slices), lambda k, o, n: (NETWORKS, DNS))
        all_slice_changes = ChangeFeed(self.all_slices)
        self.controller.watch(all_slice_changes, lambda k, o, n: (ROUTES, RECORD))
        # a slice of another node of this host: its bridge's range is corral's, not used
        all_slice_changes.subscribe(lambda k, o, n: self.forget_facts())
        self.controller.watch(ChangeFeed(self.statuses), lambda k, o, n: (RULES, ROUTES))
        endpoint_changes = ChangeFeed(self.endpoints)
        self.controller.watch(endpoint_changes, lambda k, o, n: (RULES,))
        if on_endpoints is not None:
            callback = on_endpoints
            endpoint_changes.subscribe(lambda key, old, new: callback(key, new))
        self.controller.watch(
            ChangeFeed(self.node_networks),
            lambda key, old, new: (ROUTES,) if key != node else (),
        )
        self.endpoints_revision = 0
        self.done: set[str] = set()  # keys reconciled successfully at least once
        self.problems: dict[str, str] = {}  # key -> what is wrong now
        self._udp: dict[str, tuple[str, tuple[int, ...], frozenset[str]]] = {}
        # This node's address and used ranges, read at most once a resync (the record is
        # reconciled after every other key: an endpoints change must not cost `ip` calls).
        self._facts: tuple[str, list[str], list[str]] = ("", [], [])
        self._facts_at: float | None = None
        self._rules_applied = RULES_APPLIED.labels(node)
        self._apply_seconds = APPLY_SECONDS.labels(node)
        self._revision_gauge = ENDPOINTS_REVISION.labels(node)

    # --- running -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for mirror in self.mirrors:
                await tg.start(mirror.run)
            self.controller.enqueue_all(KEYS)
            await tg.start(self.controller.run)
            tg.start_soon(self._follow_docker)
            task_status.started()

    async def _follow_docker(self) -> None:
        """Docker network events (and a new event stream: the engine may have restarted
        and rewritten its chains) enqueue the networks, the rules and the record."""
        delays = Backoff(first=0.5, most=10.0)
        events = self.docker.docker.events
        while True:
            subscriber = events.subscribe(create_task=False)  # type: ignore[no-untyped-call]
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._stream_events)
                self.controller.enqueue_all((NETWORKS, RULES, DNS, RECORD))
                while True:
                    event = await subscriber.get()
                    if event is None:
                        break
                    delays.reset()
                    self.forget_facts()  # a foreign network may have come or gone
                    self.controller.enqueue_all((NETWORKS, RULES, DNS, RECORD))
                tg.cancel_scope.cancel()
            await anyio.sleep(delays.next())

    async def _stream_events(self) -> None:
        try:
            await self.docker.docker.events.run(filters={"type": ["network"]})
        except Exception as error:  # its end is told to the subscriber
            log.warning("Docker's event stream failed: %s", error)

    # --- reconciling ---------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        step = {
            NETWORKS: self.reconcile_networks,
            RULES: self.reconcile_rules,
            ROUTES: self.reconcile_routes,
            DNS: self.reconcile_dns,
            RECORD: self.reconcile_record,
        }.get(key)
        if step is None:
            return None
        try:
            problem = await step()
        except Exception as error:
            self._problem(key, f"{type(error).__name__}: {error}")
            raise
        self._problem(key, problem)
        if key != RECORD:
            self.done.add(key)
            self.controller.enqueue(RECORD)
        return Result(requeue_after=RETRY_SECONDS) if problem else None

    def _problem(self, key: str, problem: str) -> None:
        before = self.problems.get(key, "")
        if problem == before:
            return
        if problem:
            self.problems[key] = problem
            log.warning("%s: %s", key, problem)
        else:
            self.problems.pop(key, None)
            log.info("%s: fine again", key)
        if key != RECORD:
            self.controller.enqueue(RECORD)

    async def reconcile_networks(self) -> str:
        cluster_id, node = self.settings.cluster_id, self.settings.node
        wanted_networks = {
            w.name: w
            for w in (wanted(s, cluster_id) for s in self.own_slices.values() if s.node == node)
        }
        errors: list[str] = []
        for want in wanted_networks.values():
            try:
                await self.docker.ensure(want)
            except Exception as error:
                errors.append(str(error))
                continue
            # every container's port on the bridge (the events of each connect bring
            # this key back): see host.set_hairpin
            await anyio.to_thread.run_sync(host.set_hairpin, want.bridge)
        for name in sorted(await self.docker.list_ours()):
            if name in wanted_networks:
                continue
            try:
                await self.docker.remove(name)
            except NetworkInUse as error:
                errors.append(str(error))
        self.controller.enqueue(DNS)
        return "; ".join(errors)

    async def reconcile_rules(self) -> str:
        current = self.endpoints.current
        position = self.endpoints.position
        endpoints = tuple(self.endpoints.values())
        networks = tuple(
            NetworkRange(status.name, status.subnet, tuple(status.extra_members))
            for status in self.statuses.values()
        )
        started = time.monotonic()
        saved = await self.iptables.save()
        rendered = render(Desired(self.settings.prefix, networks, endpoints), chains_in(saved))
        await self.iptables.apply(rendered.tables, saved)
        self._apply_seconds.observe(time.monotonic() - started)
        self._rules_applied.inc()
        await self._forget_udp_flows(endpoints)
        if current and position > self.endpoints_revision:
            self.endpoints_revision = position
            self._revision_gauge.set(position)
        return "; ".join(rendered.problems)

    async def _forget_udp_flows(self, endpoints: tuple[Endpoints, ...]) -> None:
        now = {e.key: t for e in endpoints if (t := udp_targets(e)) is not None}
        for key, before in self._udp.items():
            after = now.get(key)
            if after is None or after[0] != before[0] or after[2] != before[2]:
                # node-port flows only to the endpoints that went (as kube-proxy does)
                kept = after[2] if after is not None and after[0] == before[0] else frozenset()
                await self.iptables.forget_flows(before[0], before[1], before[2] - kept)
        self._udp = now

    async def reconcile_routes(self) -> str:
        node_networks = {key: value for key, (value, _) in self.node_networks.items.items()}
        wanted_routes, waiting = routes.desired_routes(
            self.all_slices.values(), node_networks, self.settings.node, self.settings.host_id
        )
        for reason in waiting:
            log.debug("no route yet: %s", reason)
        ranges = [status.subnet for status in self.statuses.values()]
        plan = routes.plan(await routes.read_current(), wanted_routes, ranges)
        errors = await routes.apply_plan(plan) if not plan.empty else []
        return "; ".join(errors)

    async def reconcile_dns(self) -> str:
        if self.dns is None:
            return ""
        node = self.settings.node
        addresses = sorted(
            {
                (s.gateway, self.settings.dns_port)
                for s in self.own_slices.values()
                if s.node == node
            }
        )
        try:
            await self.dns.set_addresses(addresses)
        except OSError as error:  # dns.BindError: the bridge is not there yet, or taken
            return f"DNS: {error}"
        return ""

    async def host_facts(self) -> tuple[str, list[str]]:
        """This node's address and the ranges its host uses that are not corral's."""
        links = await host.ip_json("addr")
        table = await host.ip_json("route", "show", "table", "main")
        address = self.settings.node_address or host.default_address(table, links)
        cluster_id = self.settings.cluster_id
        corral_devices = {
            names.bridge_name(s.network, s.node, cluster_id) for s in self.all_slices.values()
        }
        docker_subnets = [
            subnet
            for network in await self.docker.list_all()
            if self.docker.not_ours(network)
            for subnet in subnets(network)
        ]
        return address, host.used_ranges(table, links, docker_subnets, corral_devices)

    async def listening_ports(self) -> list[str]:
        """The ports a process on this host listens on (never given as node ports)."""
        return await anyio.to_thread.run_sync(host.listening_ports)

    def forget_facts(self) -> None:
        self._facts_at = None

    async def facts(self) -> tuple[str, list[str], list[str]]:
        """host_facts and the listening ports, read again when older than half a resync,
        after a Docker event or a slice's change."""
        now = time.monotonic()
        if self._facts_at is None or now - self._facts_at >= self.settings.resync_seconds / 2:
            address, used = await self.host_facts()
            self._facts = (address, used, await self.listening_ports())
            self._facts_at = now
        return self._facts

    async def reconcile_record(self) -> str:
        node = self.settings.node
        address, used, listening = await self.facts()
        problems = [f"{key}: {text}" for key, text in sorted(self.problems.items()) if text]
        if not address:
            problems.append("no address: no default route, and no --node-address")
        pending = [key for key in (NETWORKS, RULES, ROUTES) if key not in self.done]
        message = "; ".join(problems) or (f"starting ({', '.join(pending)})" if pending else "")
        record = NodeNetwork(
            node=node,
            address=address,
            host_id=self.settings.host_id,
            used_ranges=used,
            listening_ports=listening,
            endpoints_revision=self.endpoints_revision,
            ready=not problems and not pending,
            message=message,
        )
        old = self.node_networks.get(node)
        if old is not None and same_record(old, record):
            return ""
        now = self.monotonic()
        if (
            old is not None
            and self._record_written_at is not None
            and same_record(
                old, msgspec.structs.replace(record, endpoints_revision=old.endpoints_revision)
            )
        ):
            wait = self._record_written_at + RECORD_REVISION_SECONDS - now
            if wait > 0:  # only the revision moved on, and the last write is that recent
                self.controller.enqueue_after(RECORD, wait)
                return ""
        record = msgspec.structs.replace(record, updated_at=self.clock())
        revision = await write_record(
            self.node_bucket, node, record, self.node_networks.revision(node)
        )
        self.node_networks.apply(Entry(node, encode(record), revision))
        self._record_written_at = now
        return ""

    # --- removing everything (`corral down`) ----------------------------------------------

    async def remove_all(self) -> list[str]:
        """Remove this node's jumps and chains, its routes (of protocol 182 inside the
        cluster's ranges) and its Docker networks no container uses; what could not be
        removed. A network containers still use (replicas left running, as a plain
        `corral down` leaves them) stays, and is said, not counted as a failure."""
        errors: list[str] = []
        try:
            await self.iptables.remove_all()
        except host.CommandFailed as error:
            errors.append(str(error))
        async with anyio.create_task_group() as tg:
            await tg.start(self.statuses.run)
            tg.cancel_scope.cancel()
        ranges = [status.subnet for status in self.statuses.values()]
        plan = routes.plan(await routes.read_current(), {}, ranges)
        errors += await routes.apply_plan(plan)
        for name in sorted(await self.docker.list_ours()):
            try:
                await self.docker.remove(name)
            except NetworkInUse as in_use:
                log.info("%s", in_use)
            except Exception as error:
                errors.append(str(error))
        return errors
