"""A hollow cluster: many hollow nodes in one process, as Kubernetes' kubemark does.

    python -m corral_node_agent.hollow_cluster --nodes 1000 [--nats URL] [--pool 100]
        [--name-prefix hollow-] [--first 1] [--cpu 4 --memory 8Gi --pods 110]
        [--label KEY=VALUE] [--ready-after 0] [--remove-after 0] [--pull-seconds 0]
        [--state-dir DIR] [--report-seconds 10] [--passes-parallel 8]

Each hollow node is the real node agent (`NodeAgent`, every task of it: the guard,
the heartbeat, the echo, the placements watch, the passes, the operator decisions
on corral.node.<node>.*) on an engine of its own (`HollowRuntime`: containers in
memory that run `--ready-after` seconds after their start, and go `--remove-after`
seconds after their removal). What it does to the control plane is what a real
node does: it registers its Node record and heartbeats, watches its own
placements, writes its replicas' statuses and events. Only the NATS connections
are shared: one per `--pool` nodes.

The process reports its own CPU and resident memory every `--report-seconds` and
at exit, one line each on stdout, so that a benchmark can put the simulator's
cost beside the control plane's:

    hollow-cluster t=10.9s nodes=200 starting=0 started=200 failed=0 stopped=0
        active=200 running=0 cpu=3.5% cpu_total=1.07s rss=70.1MiB peak_rss=69.9MiB
        passes=1148 waiting=0 wait_mean=1.1ms

(one line in fact; `cpu` over the last period, as a share of one core; `passes`,
`waiting` and `wait_mean`: the nodes' reconcile passes, which take turns, at most
`--passes-parallel` at once, those that remove every replica aside: pass_gate.py).
SIGINT/SIGTERM stop every node as a stopped agent stops (its Node record
released), then the process exits; each node's state dir lives under
`--state-dir` (kept) or a temporary folder (removed at exit). Where a hollow node
differs from an agent process, why, and what it costs per node: the node agent's
README, "A hollow cluster".
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import gc
import logging
import math
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS

from corral.contract import names, time_budget
from corral.contract.quantity import cpu_millis, memory_bytes
from corral.natsio.bus import (
    JS_API_TIMEOUT_SECONDS,
    EventPublisher,
    StoreSettings,
    connect,
    ensure_streams,
    open_buckets,
    open_cluster,
)
from corral.natsio.config import resolve_nats_url
from corral.natsio.gc_policy import (
    GcPolicy,
    keep_collecting,
    log_long_pauses,
    report_long_pauses,
)
from corral.natsio.http_endpoint import serve_http
from corral.natsio.kv import NatsBucket
from corral.natsio.loop_lateness import measure_loop_lateness
from corral.natsio.service import SETUP_TIMEOUT_SECONDS, base_parser
from corral.natsio.sharded import node_placements_bucket
from corral_node_agent.agent import PLACEMENTS_WATCHES, AgentSettings, NodeAgent, NodeNameTaken
from corral_node_agent.cut_off_clock import LastAckFile
from corral_node_agent.heartbeat_link import NatsHeartbeats
from corral_node_agent.hollow_runtime import (
    HOLLOW_DEFAULT_CPU_MILLIS,
    HOLLOW_DEFAULT_MEMORY_BYTES,
    HollowRuntime,
)
from corral_node_agent.logs import LogService
from corral_node_agent.main import serve_node_decisions
from corral_node_agent.membership import PlacementShardsChanged
from corral_node_agent.networks_mode import NetworksMode
from corral_node_agent.pass_gate import PassGate
from corral_node_agent.runtime import ContainerState
from corral_node_agent.safety import Budget, Mode
from corral_node_agent.settings import agent_id_from_args, dns_label, parse_labels

log = logging.getLogger(__name__)

SERVICE = "hollow-cluster"
DEFAULT_POOL = 100  # hollow nodes per NATS connection
DEFAULT_START_PARALLEL = 100  # nodes starting at once
# Reconcile passes at once among a process's nodes (PassGate): enough that a pass
# waiting on NATS does not hold the others up, few enough that a burst of placements
# for every node cannot make the event loop late for their heartbeats.
DEFAULT_PASSES_PARALLEL = 8


class NodeState(enum.StrEnum):
    STARTING = "starting"
    STARTED = "started"  # its agent reported started (decided: see NodeAgent.run)
    FAILED = "failed"  # its agent refused to start (its name is taken) or crashed
    STOPPED = "stopped"


@dataclass(frozen=True)
class ClusterSettings:
    nodes: int
    nats_url: str | list[str] = "nats://127.0.0.1:4222"
    pool: int = DEFAULT_POOL
    name_prefix: str = "hollow-"
    first: int = 1  # the first node's number: hollow-1, hollow-2 ...
    labels: dict[str, str] = field(default_factory=dict)
    cpu_millis: int = HOLLOW_DEFAULT_CPU_MILLIS
    memory_bytes: int = HOLLOW_DEFAULT_MEMORY_BYTES
    pods: int = 110
    ready_after: float = 0.0  # a started container runs after this
    remove_after: float = 0.0  # a removed container is gone after this
    pull_seconds: float = 0.0
    heartbeat_seconds: float = time_budget.HEARTBEAT_SECONDS
    resync_seconds: float = 10.0
    max_parallel: int = 8
    passes_parallel: int = DEFAULT_PASSES_PARALLEL  # 0: no gate (every pass at once)
    state_dir: Path | None = None  # None: a temporary folder, removed at exit
    start_parallel: int = DEFAULT_START_PARALLEL
    report_seconds: float = 10.0  # 0: report only at start and at exit
    # Images whose containers exit at once with this code on every start (a crash loop
    # for the automatic rollback's tests and benchmark: HollowRuntime.exit_on_start).
    exit_on_start: dict[str, int] = field(default_factory=dict)
    placements_watch: str = PLACEMENTS_WATCHES[0]  # as the node agent's --placements-watch

    def __post_init__(self) -> None:
        for name in ("nodes", "pool", "start_parallel", "pods", "max_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in (
            "ready_after",
            "remove_after",
            "pull_seconds",
            "report_seconds",
            "passes_parallel",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.first < 0:
            raise ValueError(f"first must not be negative, not {self.first}")
        if dns_label(self.name_prefix + "0") != self.name_prefix + "0":
            raise ValueError(
                f"name_prefix {self.name_prefix!r}: node names must be DNS labels "
                "(lower-case letters, digits and '-')"
            )
        if len(self.node_name(self.first + self.nodes - 1)) > 63:
            raise ValueError(f"name_prefix {self.name_prefix!r} makes names over 63 characters")

    def node_name(self, number: int) -> str:
        return f"{self.name_prefix}{number}"

    def node_names(self) -> list[str]:
        return [self.node_name(n) for n in range(self.first, self.first + self.nodes)]


@dataclass
class Pool:
    """One NATS connection and what the nodes on it write through."""

    nc: NATS
    buckets: dict[str, NatsBucket]
    events: EventPublisher


@dataclass
class HollowNode:
    name: str
    pool: Pool
    runtime: HollowRuntime
    agent: NodeAgent
    state: NodeState = NodeState.STARTING
    error: str = ""
    scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    counted: bool = False  # in HollowCluster's count of nodes started or failed


@dataclass(frozen=True)
class Usage:
    """This process's CPU time (user + system, seconds) and resident memory (MiB)."""

    cpu_seconds: float
    rss_mib: float
    peak_rss_mib: float

    @classmethod
    def now(cls) -> Usage:
        own = resource.getrusage(resource.RUSAGE_SELF)
        rss = 0.0
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        except OSError:
            pass
        return cls(own.ru_utime + own.ru_stime, rss, own.ru_maxrss / 1024)


class HollowCluster:
    """Runs `settings.nodes` hollow nodes until cancelled; `run` reports started once
    every node has started (or failed to: see `nodes[...].state`)."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.nodes: dict[str, HollowNode] = {}
        self.pools: list[Pool] = []
        self.placement_shards = 1  # the cluster's, once connected (_connect)
        self.started_in: float | None = None  # seconds from run() to every node started
        self._began = time.monotonic()
        self._pending = settings.nodes
        self._all_started = anyio.Event()
        self._last_usage = (self._began, Usage.now())
        self.pass_gate = PassGate(settings.passes_parallel) if settings.passes_parallel else None

    # Running.

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        settings = self.settings
        self._began = time.monotonic()
        self._last_usage = (self._began, Usage.now())
        temporary = settings.state_dir is None
        root = Path(tempfile.mkdtemp(prefix="corral-hollow-")) if temporary else settings.state_dir
        assert root is not None
        try:
            await self._connect()
            async with anyio.create_task_group() as tg:
                limiter = anyio.CapacityLimiter(settings.start_parallel)
                for index, name in enumerate(settings.node_names()):
                    node = self._make_node(name, self.pools[index // settings.pool], root)
                    self.nodes[name] = node
                    tg.start_soon(self._run_node, node, limiter)
                await self._all_started.wait()
                self.started_in = time.monotonic() - self._began
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                for pool in self.pools:
                    try:
                        await pool.nc.close()
                    except Exception:
                        log.debug("closing a NATS connection failed", exc_info=True)
            if temporary:
                shutil.rmtree(root, ignore_errors=True)

    async def _connect(self) -> None:
        """One connection per pool. The first one prepares the store as every service
        does (a store that lost a bucket is refused: StateStoreLost); the others only
        open the buckets."""
        count = -(-self.settings.nodes // self.settings.pool)
        for index in range(count):
            nc = await connect(self.settings.nats_url, name=f"corral-{SERVICE}-{index}")
            try:
                if index == 0:
                    setup = nc.jetstream(timeout=SETUP_TIMEOUT_SECONDS)
                    store = StoreSettings.from_env()
                    made: list[str] = []
                    opened = await open_buckets(setup, store, made=made)
                    await ensure_streams(setup, store)
                    js = nc.jetstream(timeout=JS_API_TIMEOUT_SECONDS)
                    buckets, cluster = await open_cluster(js, store, made=made, opened=opened)
                    self.placement_shards = cluster.placement_shards
                else:  # the first pool's buckets, through this connection: no request
                    js = nc.jetstream(timeout=JS_API_TIMEOUT_SECONDS)
                    buckets = {
                        name: bucket.through(js) for name, bucket in self.pools[0].buckets.items()
                    }
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await nc.close()
                raise
            self.pools.append(Pool(nc, buckets, EventPublisher(nc, source="node-agent")))

    def _make_node(self, name: str, pool: Pool, root: Path) -> HollowNode:
        settings = self.settings
        state_dir = root / name
        # A given --state-dir keeps each node's agent id, so a restarted simulator
        # recognises its own Node records; a temporary one is new each run anyway.
        kept = settings.state_dir is not None
        agent_settings = AgentSettings(
            node_name=name,
            labels=dict(settings.labels),
            cpu_millis=settings.cpu_millis,
            memory_bytes=settings.memory_bytes,
            pods=settings.pods,
            heartbeat_seconds=settings.heartbeat_seconds,
            resync_seconds=settings.resync_seconds,
            max_parallel=settings.max_parallel,
            state_dir=state_dir,
            # Hollow engines have every network: replicas report addresses on theirs
            # (hollow_runtime.hollow_ip), for netmgr's endpoints at scale.
            networks=NetworksMode.ON,
            placements_watch=settings.placements_watch,
        )
        if settings.heartbeat_seconds > time_budget.HEARTBEAT_SECONDS:
            # Slower heartbeats (a cheaper run): the agent's own limits keep counting in
            # heartbeats (3 without an acknowledged write: isolated; the echo late by 5),
            # or each late write would isolate the node. F stays as it is.
            agent_settings = dataclasses.replace(
                agent_settings,
                budget=Budget(isolated_after=3 * settings.heartbeat_seconds),
                stale_watch_after=5 * settings.heartbeat_seconds,
            )
        if kept:
            agent_id = agent_id_from_args(argparse.Namespace(agent_id=None), state_dir)
            agent_settings = dataclasses.replace(agent_settings, agent_id=agent_id)
        runtime = HollowRuntime(
            cpu_millis=settings.cpu_millis,
            memory_bytes=settings.memory_bytes,
            engine_id=f"hollow-{name}",  # as the single hollow agent's (main.build_runtime)
            pull_seconds=settings.pull_seconds,
            start_seconds=settings.ready_after,
            remove_seconds=settings.remove_after,
            record_operations=False,
            exit_on_start=dict(settings.exit_on_start),
        )
        agent = NodeAgent(
            agent_settings,
            runtime,
            placements=node_placements_bucket(pool.buckets, self.placement_shards, name),
            placement_shards=self.placement_shards,
            nodes=pool.buckets[names.NODES_BUCKET],
            statuses=pool.buckets[names.REPLICA_STATUS_BUCKET],
            cluster=pool.buckets[names.CLUSTER_BUCKET],
            events=pool.events,
            # Watched only once a replica with volumes lands on the node (VolumeBook).
            attachments=pool.buckets[names.VOLUME_ATTACHMENTS_BUCKET],
            claim_statuses=pool.buckets[names.CLAIM_STATUS_BUCKET],
            drains=pool.buckets[names.REPLICA_DRAINS_BUCKET],
            # Heartbeats on core NATS as an agent process sends them (its own reply
            # subscription: a link matches acks by its beats' sequence numbers), so its
            # record is written only on change, not every beat.
            heartbeats=NatsHeartbeats(pool.nc),
            # The process's cores are shared: passes take turns (pass_gate.py).
            pass_gate=self.pass_gate,
        )
        # The one part of the agent a hollow node leaves out: noting every acknowledged
        # write in its state dir (cut_off_clock), so that a restarted agent counts its
        # time cut off on. A hollow engine's containers die with this process, so there
        # is nothing for a restart to stop; and at 5,000 nodes the notes would be 5,000
        # file replacements a second (README, "A hollow cluster").
        agent.last_ack_file = LastAckFile(None)
        return HollowNode(name, pool, runtime, agent)

    async def _run_node(self, node: HollowNode, limiter: anyio.CapacityLimiter) -> None:
        """One node, as `corral-node-agent --runtime hollow` runs it (main.run)."""
        try:
            with anyio.CancelScope() as scope:
                node.scope = scope
                async with anyio.create_task_group() as tg:
                    async with limiter:
                        # Its cut-off clock runs from its own start: a node that waited
                        # its turn was never cut off.
                        node.agent.started_at = time.monotonic()
                        await tg.start(
                            serve_node_decisions, node.pool.nc, node.name, node.agent.decide
                        )
                        await tg.start(
                            LogService(node.pool.nc, node.name, node.runtime, node.agent).serve
                        )
                        await tg.start(node.agent.run)
                    node.state = NodeState.STARTED
                    self._started(node)
        except* NodeNameTaken as taken:
            node.state, node.error = NodeState.FAILED, str(taken.exceptions[0])
            log.error("hollow node %s refused to start: %s", node.name, node.error)
        except* PlacementShardsChanged:
            # Every node of the process reads the old shards: the process ends (exit 1),
            # to be started again on the cluster's.
            node.state = NodeState.FAILED
            raise
        except* Exception as failed:
            node.state, node.error = NodeState.FAILED, repr(failed.exceptions[0])
            log.error("hollow node %s failed: %s", node.name, node.error)
        finally:
            if node.state in (NodeState.STARTING, NodeState.STARTED):
                node.state = NodeState.STOPPED
            self._started(node)
            node.done.set()

    def _started(self, node: HollowNode) -> None:
        """Count a node once, when it started or failed to."""
        if node.counted:
            return
        node.counted = True
        self._pending -= 1
        if self._pending == 0:
            self._all_started.set()

    async def stop_node(self, name: str) -> None:
        """Stop one hollow node as its agent stops on SIGTERM: its Node record is
        released, its containers stay in its engine (as a stopped agent leaves its
        containers running), so the scheduler replaces them once the node is lost."""
        node = self.nodes[name]
        if node.scope is not None:
            node.scope.cancel()
        await node.done.wait()
        node.state = NodeState.STOPPED

    # Reporting.

    def counts(self) -> dict[str, int]:
        """Nodes by NodeState, and `active`: those whose agent is in the Active mode."""
        found = {state.value: 0 for state in NodeState}
        found["active"] = 0
        for node in self.nodes.values():
            found[node.state.value] += 1
            if node.state == NodeState.STARTED and node.agent.mode == Mode.ACTIVE:
                found["active"] += 1
        return found

    def running_replicas(self) -> int:
        """Running containers on the nodes that run (not on stopped or failed ones)."""
        return sum(
            1
            for node in self.nodes.values()
            if node.state == NodeState.STARTED
            for container in node.runtime.containers.values()
            if container.state == ContainerState.RUNNING
        )

    def report(self) -> str:
        """One line: nodes by state, running replicas, CPU since the last report and
        in all, resident memory now and at its peak."""
        now, usage = time.monotonic(), Usage.now()
        since, before = self._last_usage
        self._last_usage = (now, usage)
        share = (usage.cpu_seconds - before.cpu_seconds) / max(now - since, 1e-9)
        counts = self.counts()
        return (
            f"{SERVICE} t={now - self._began:.1f}s nodes={len(self.nodes)} "
            + " ".join(f"{state}={count}" for state, count in counts.items())
            + f" running={self.running_replicas()} cpu={100 * share:.1f}%"
            f" cpu_total={usage.cpu_seconds:.2f}s rss={usage.rss_mib:.1f}MiB"
            f" peak_rss={usage.peak_rss_mib:.1f}MiB" + self._gate_report()
        )

    def _gate_report(self) -> str:
        gate = self.pass_gate
        if gate is None:
            return ""
        mean = 1000 * gate.waited_seconds / gate.passes if gate.passes else 0.0
        return f" passes={gate.passes} waiting={gate.waiting} wait_mean={mean:.1f}ms"

    def healthy(self) -> tuple[bool, str]:
        counts = self.counts()
        connected = sum(1 for pool in self.pools if pool.nc.is_connected)
        ok = connected == len(self.pools) and counts["active"] == len(self.nodes)
        detail = f"nats={connected}/{len(self.pools)} " + " ".join(
            f"{state}={count}" for state, count in counts.items()
        )
        return ok, detail


# The command.


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(SERVICE, -1)
    parser.description = "Many hollow nodes (node agents on in-memory engines) in one process."
    parser.set_defaults(log_level="WARNING")
    parser.add_argument("--nodes", type=int, required=True, help="how many hollow nodes")
    parser.add_argument("--pool", type=int, default=DEFAULT_POOL, help="nodes per NATS connection")
    parser.add_argument("--name-prefix", default="hollow-", help="node names: <prefix><number>")
    parser.add_argument("--first", type=int, default=1, help="the first node's number")
    parser.add_argument(
        "--label", action="append", metavar="KEY=VALUE", help="a label of every node (repeatable)"
    )
    parser.add_argument("--cpu", default="4", help="CPU capacity of each node, e.g. 4 or 1500m")
    parser.add_argument("--memory", default="8Gi", help="memory capacity of each node")
    parser.add_argument("--pods", type=int, default=110, help="most replicas on each node")
    parser.add_argument(
        "--ready-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a started container runs this long after its start (the start takes it)",
    )
    parser.add_argument(
        "--remove-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a removed container is gone this long after its removal began",
    )
    parser.add_argument(
        "--pull-seconds", type=float, default=0.0, help="how long an image pull takes"
    )
    parser.add_argument(
        "--state-dir",
        help="each node's state dir is <state-dir>/<node>, kept (default: a temporary "
        "folder, removed at exit)",
    )
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=time_budget.HEARTBEAT_SECONDS,
        help="each node's heartbeat (slower ones scale the agent's isolation and echo "
        "limits with it)",
    )
    parser.add_argument("--resync-seconds", type=float, default=10.0)
    parser.add_argument("--max-parallel", type=int, default=8, help="container operations at once")
    parser.add_argument(
        "--passes-parallel",
        type=int,
        default=DEFAULT_PASSES_PARALLEL,
        help="reconcile passes at once among all the process's nodes, in turn (0: no "
        "limit; a burst for every node then makes the event loop late for their "
        "heartbeats)",
    )
    parser.add_argument(
        "--start-parallel",
        type=int,
        default=DEFAULT_START_PARALLEL,
        help="nodes starting at once",
    )
    parser.add_argument(
        "--report-seconds",
        type=float,
        default=10.0,
        help="print CPU and memory this often (0: only at start and exit)",
    )
    parser.add_argument(
        "--placements-watch",
        choices=PLACEMENTS_WATCHES,
        default=PLACEMENTS_WATCHES[0],
        help="how each node follows its placements once read (the node agent's flag)",
    )
    parser.add_argument(
        "--python-gc",
        action="store_true",
        help="leave the collections to Python once the nodes run (no young "
        "collection and freeze once a second; corral.natsio.gc_policy): for comparisons",
    )
    parser.add_argument(
        "--exit-on-start",
        action="append",
        metavar="IMAGE=CODE",
        help="containers of IMAGE exit at once with CODE on every start (repeatable)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> ClusterSettings:
    return ClusterSettings(
        nodes=args.nodes,
        nats_url=resolve_nats_url(args.nats),
        pool=args.pool,
        name_prefix=args.name_prefix,
        first=args.first,
        labels=parse_labels(args.label),
        cpu_millis=cpu_millis(args.cpu),
        memory_bytes=memory_bytes(args.memory),
        pods=args.pods,
        ready_after=args.ready_after,
        remove_after=args.remove_after,
        pull_seconds=args.pull_seconds,
        heartbeat_seconds=args.heartbeat_seconds,
        resync_seconds=args.resync_seconds,
        max_parallel=args.max_parallel,
        passes_parallel=args.passes_parallel,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        start_parallel=args.start_parallel,
        report_seconds=args.report_seconds,
        exit_on_start=_exit_codes(args.exit_on_start),
        placements_watch=args.placements_watch,
    )


def _exit_codes(pairs: list[str] | None) -> dict[str, int]:
    """`--exit-on-start IMAGE=CODE` pairs; an error naming the flag when malformed."""
    codes: dict[str, int] = {}
    for pair in pairs or []:
        image, sep, code = pair.rpartition("=")
        if not sep or not image or not code.lstrip("-").isdigit():
            raise SystemExit(f"--exit-on-start {pair!r}: expected IMAGE=CODE, e.g. app:2=1")
        codes[image] = int(code)
    return codes


def _say(line: str) -> None:
    print(line, flush=True)


# The collector's thresholds while the nodes start (CPython's are 700, 10, 10):
# thousands of agents make a large heap at once, and at the defaults a full collection,
# which scans all of it, ran every second or two and took 0.4-0.9 s at 1,000 nodes: a
# stall longer than a heartbeat, which isolated hundreds of nodes at once (README, "A
# hollow cluster"). Once they run, corral.natsio.gc_policy takes over.
GC_THRESHOLDS = (50_000, 20, 100)


def collections_policy(args: argparse.Namespace) -> GcPolicy | None:
    """What the nodes make once they run (placements, statuses: 50,000 replicas in a
    process of 2,500 nodes) is frozen too, once a second: the longest collection while
    placing was 0.29 s with it, 0.81 s left to Python (bench/README.md, "5,002 nodes and
    100,000 replicas converge here"). Never a full collection: it would unfreeze the
    nodes' whole state and scan it at once (about a second at 2,500 nodes); cyclic
    garbage among frozen objects waits for the process's exit. None: `--python-gc`."""
    return None if args.python_gc else GcPolicy(full_seconds=math.inf)


async def serve(settings: ClusterSettings, args: argparse.Namespace) -> None:
    """Run the cluster until SIGINT/SIGTERM, reporting; a last report at exit."""
    gc.set_threshold(*GC_THRESHOLDS)
    log_long_pauses()
    cluster = HollowCluster(settings)
    try:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

                async def until_signal() -> None:
                    async for received in signals:
                        log.warning("received %s, stopping", signal.Signals(received).name)
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(until_signal)
                tg.start_soon(measure_loop_lateness)  # a simulator behind shows here
                await tg.start(cluster.run)
                gc.freeze()  # what every node made at start is never scanned again
                tg.start_soon(keep_collecting, collections_policy(args))
                counts = cluster.counts()
                _say(
                    f"{SERVICE}: {counts['active']} of {len(cluster.nodes)} nodes active "
                    f"in {cluster.started_in:.1f}s ({len(cluster.pools)} NATS connections)"
                )
                _say(cluster.report())
                if args.metrics_port is not None and args.metrics_port >= 0:
                    port = await tg.start(
                        serve_http, args.metrics_host, args.metrics_port, cluster.healthy
                    )
                    _say(f"{SERVICE}: /metrics and /healthz on {args.metrics_host}:{port}")
                while True:
                    if cluster.settings.report_seconds:
                        await anyio.sleep(cluster.settings.report_seconds)
                        _say(cluster.report())
                    else:
                        await anyio.sleep_forever()
    finally:
        report_long_pauses()  # those of the last second
        _say(cluster.report() + " (exit)")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {SERVICE} %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        anyio.run(serve, settings, args)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseExceptionGroup as group:
        changed, rest = group.split(PlacementShardsChanged)
        if changed is None or rest is not None:
            raise
        leaf: BaseException = changed
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        log.critical("%s stops: %s", SERVICE, leaf)
        sys.exit(1)


if __name__ == "__main__":
    main()
