"""The control plane at scale, on a hollow cluster: many nodes, many replicas.

    .venv/bin/python bench/bench_scale.py                       # small: 200 nodes, 5,000 replicas
    .venv/bin/python bench/bench_scale.py --nodes 5000 --replicas 100000 --deployments 100

Starts, on free loopback ports: a nats-server (JetStream, monitoring on), the
scheduler, netmgr and volmgr (as `corral up` runs them: one process each), a hollow
cluster of --nodes nodes (`python -m corral_node_agent.hollow_cluster`: the real node
agent on in-memory engines, containers Running --ready-after seconds after their start;
one process per 500 nodes, at most one per core, or --simulator-processes) and two
hollow clusters of one node each, the victim and the midburst node. Then:

1. applies --deployments Deployments (--replicas in all) by raw NATS requests and
   measures placements committed per second (the scheduler's placed count) and the
   time until all are Running (its ready count); when half are placed it kills the
   midburst node (SIGKILL) and measures until nothing is placed on it any more: a
   node lost while the scheduler is busy placing;
2. meanwhile and afterwards sends `apply` requests of a probe Deployment (0
   replicas, a new label each time: a real write) one after another: latency p50/p99
   while placing and while steady;
3. reads the scheduler's per-key reconcile cost from its /metrics while steady;
4. measures NATS messages and bytes per second while steady, from nats-server's
   /varz (and per node);
5. kills the victim (SIGKILL: a node lost) and measures until its replicas run
   elsewhere;
5b. pauses nats-server (SIGSTOP) for --outage seconds, longer than an agent waits
   before it counts itself cut off, so every agent is Isolated at once, then resumes
   it (SIGCONT): the time until every node is ready and every replica Running again,
   the JetStream API requests and consumers that recovery cost, and the replicas
   placed meanwhile (none should move: the scheduler's view was stale too);
6. reads each process's resident memory and CPU (percent of one core, per phase);
7. while placing: how often the simulator's event loop ran over 0.5 s late (its
   corral_event_loop_late_seconds) and the fewest nodes the scheduler had ready: a
   simulator that fell behind makes its nodes look cut off, and such a run measures
   the simulator; and how long the simulator's reconcile passes waited for their turn
   (its nodes take turns, --simulator-passes at once: corral_hollow_pass_wait_seconds);
8. last, what nats-server's memory is made of, read from its profiling port (go_memory:
   its heap, block buffers and goroutine stacks), then again after forced collections:
   what is live.

It prints a table with the anchors and saves it (--out, default
bench/results/scale-<nodes>x<replicas>.md). No assertion: numbers only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

import anyio
from bench_deploy import free_port_block  # the same free-port search as the deploy bench
from go_memory import FREEING_COLLECTIONS, describe, read_go_memory
from js_api_requests import ApiRequestCounter, per_second
from local_nats import LocalNats, exit_on_sigterm, sigterm_held
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api as js_api
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from corral.client.local.nats_server import (
    jetstream_answers,
    nats_server_command,
    nats_server_env,
)
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Reply
from corral.contract.specs import (
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
    ResourceList,
    Resources,
)
from corral.contract.state import DeploymentStatus
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.natsio.bus import connect
from corral.natsio.kv import (
    Bucket,
    Mirror,
    NatsBucket,
    WatchIncomplete,
    bucket_stream,
    is_echo_key,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IMAGE = "corral-test/busybox:1"
# A simulator loop this late delays its nodes' heartbeats by half of one (1 s apart): its
# nodes start to look cut off, and the run measures the simulator (bench/README.md).
SIMULATOR_LATE_SECONDS = 0.5


class NotConverged(RuntimeError):
    """The run did not converge: its table still says why (main saves it, exits 1)."""


CAP_SYS_NICE = 23  # linux/capability.h: the capability to raise a priority


def _may_raise_priority(nice: int) -> bool:
    """Whether this process may give a process `nice` more than its own niceness (a
    negative --simulator-nice): CAP_SYS_NICE among its effective capabilities, or a
    RLIMIT_NICE that allows it."""
    target = os.getpriority(os.PRIO_PROCESS, 0) + nice
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    if soft == resource.RLIM_INFINITY or 20 - soft <= target:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _is_not_converged(error: BaseException) -> bool:
    """`error` is NotConverged, alone or as the only error of (nested) task groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return isinstance(error, NotConverged)


# One simulator process per this many nodes by default: at 1,000 nodes in one process its
# loop ran over 0.5 s late in 7-14 of 35-53 samples while placing and as few as 11 nodes
# stayed ready; in two, 4-12 of 122-143 and at least 769 (bench/README.md).
NODES_PER_SIMULATOR = 500
# The hollow nodes stand for machines of their own, yet share the cores: with
# --simulator-nice they yield them to the control plane (nice 10: about a tenth of a
# core against a process at 0 when both want it), which shows what the control plane
# does with the cores to itself. Not by default: at 2,001 nodes a simulator that yields
# starves, its nodes look lost and their replicas are placed again and again
# (bench/README.md, "The simulator at a lower priority"). A negative value (root only)
# gives the simulator the cores first, as machines of their own would have them: the
# control plane is measured on what is left (bench/README.md, "A prompt lane; the
# simulator first; 5,001 nodes and 100,000 replicas").
DEFAULT_SIMULATOR_NICE = 0
PROBE = "probe"
MIDBURST = "midburst"  # the one-node cluster lost halfway through placing


# --- processes ------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    cpu_marks: dict[str, float] = field(default_factory=dict)

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def nice(self) -> int | None:
        """Its main thread's niceness as the kernel has it (None once it has exited)."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return int(fields[16])

    def cpu_between(self, start: str, end: str) -> float:
        """CPU seconds spent between two marks (mark_cpu); 0 for a mark not taken."""
        return self.cpu_marks.get(end, 0.0) - self.cpu_marks.get(start, 0.0)

    def rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0


class Cluster:
    """The processes of one run; stopped (all of them) on exit."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        shards: int = args.simulator_processes
        base = free_port_block(6 + shards)
        self.nats_port, self.monitor_port = base, base + 1
        self.profile_port = base + 5 + shards  # nats-server's pprof (go_memory), loopback
        self.metrics_ports = {"scheduler": base + 2, "netmgr": base + 3, "volmgr": base + 4}
        # The simulator's processes: one by default, named as before.
        self.simulators = (
            ["hollow-cluster"] if shards == 1 else [f"hollow-cluster-{i}" for i in range(shards)]
        )
        for index, name in enumerate(self.simulators):
            self.metrics_ports[name] = base + 5 + index
        self.url = f"nats://127.0.0.1:{self.nats_port}"
        self.procs: dict[str, Proc] = {}

    def start(
        self, name: str, command: list[str], env: dict[str, str] | None = None, nice: int = 0
    ) -> Proc:
        log = open(self.workdir / f"{name}.log", "wb")  # kept open for the process
        with sigterm_held():  # started, then registered, before a SIGTERM ends the run
            popen = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
            proc = Proc(name, popen)
            self.procs[name] = proc  # first: stopped with the rest whatever follows
        if nice:
            # Set from here rather than in the child (no preexec_fn beside threads): the
            # child runs its first milliseconds of imports at this process's priority.
            # Its main thread's: the threads it starts later inherit it.
            os.setpriority(os.PRIO_PROCESS, popen.pid, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        return proc

    async def start_control_plane(self) -> None:
        store = self.workdir / "nats"
        command = nats_server_command("127.0.0.1", self.nats_port, store)
        # As `corral up` runs it (its GOGC): the memory measured is what users get.
        self.start(
            "nats-server",
            [*command, "-m", str(self.monitor_port), "--profile", str(self.profile_port)],
            nats_server_env(),
        )
        if await until(lambda: jetstream_answers(self.url), 30, every=0.2) is None:
            raise RuntimeError("nats-server did not answer within 30 s")
        for service, module in (
            ("scheduler", "corral_scheduler"),
            ("netmgr", "corral_netmgr"),
            ("volmgr", "corral_volmgr"),
        ):
            port = str(self.metrics_ports[service])
            command = [sys.executable, "-m", module, "--nats", self.url, "--metrics-port", port]
            if service == "scheduler" and self.args.decide_in:
                command += ["--decide-in", self.args.decide_in]
            if service == "scheduler" and self.args.answer_in:
                command += ["--answer-in", self.args.answer_in]
            if service == "scheduler" and self.args.python_gc:
                command += ["--python-gc"]
            self.start(service, command)

    def start_hollow(self, name: str, nodes: int, prefix: str) -> Proc:
        args = self.args
        return self.start(
            name,
            [
                sys.executable,
                "-m",
                "corral_node_agent.hollow_cluster",
                "--nats",
                self.url,
                "--nodes",
                str(nodes),
                "--name-prefix",
                prefix,
                "--pods",
                str(args.pods),
                "--ready-after",
                str(args.ready_after),
                "--report-seconds",
                "0",
                *(
                    ["--passes-parallel", str(args.simulator_passes)]
                    if args.simulator_passes is not None
                    else []
                ),
                "--placements-watch",
                args.placements_watch,
                *(["--pool", str(args.simulator_pool)] if args.simulator_pool else []),
                *(["--python-gc"] if args.simulator_python_gc else []),
                # its nodes' state in this run's folder, removed with it: the victim is
                # killed, so a temporary folder of its own would be left behind
                "--state-dir",
                str(self.workdir / f"hollow-{name}"),
                "--metrics-port",
                str(self.metrics_ports.get(name, -1)),  # the victim's: none
            ],
            nice=args.simulator_nice,
        )

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def mark_cpu(self, phase: str) -> None:
        for proc in self.procs.values():
            proc.cpu_marks[phase] = proc.cpu_seconds()

    def simulator_lateness(self) -> dict[float, float]:
        """The simulator's loop-lateness histogram, summed over its processes."""
        return self.simulator_histogram("corral_event_loop_late_seconds")

    def simulator_pass_waits(self) -> dict[float, float]:
        """How long the simulator's passes waited for their turn (PassGate), summed
        over its processes (empty from a simulator without the gate)."""
        return self.simulator_histogram("corral_hollow_pass_wait_seconds")

    def simulator_histogram(self, metric: str) -> dict[float, float]:
        summed: dict[float, float] = {}
        for name in self.simulators:
            for bound, count in histogram_buckets(self.metrics(name), metric).items():
                summed[bound] = summed.get(bound, 0.0) + count
        return summed

    def simulator_isolations(self) -> float:
        """How often the simulator's agents entered Isolated, summed over its processes
        (0 from an agent without the counter)."""
        return self.simulator_mode_entries("Isolated")

    def simulator_watches(self) -> dict[str, float]:
        """How the simulator's agents' placements became current, by `how` (new, kept_by_
        acks, kept_by_echo), summed over its processes."""
        summed: dict[str, float] = {}
        for name in self.simulators:
            for sample in samples(self.metrics(name)):
                if sample.name == "corral_placement_watches_total":
                    how = sample.labels.get("how", "")
                    summed[how] = summed.get(how, 0.0) + sample.value
        return summed

    def simulator_mode_entries(self, mode: str) -> float:
        """How often the simulator's agents entered `mode`, summed over its processes."""
        return sum(
            sample.value
            for name in self.simulators
            for sample in samples(self.metrics(name))
            if sample.name == "corral_agent_mode_entries_total"
            and sample.labels.get("mode") == mode
        )

    def varz(self) -> dict[str, int]:
        return LocalNats(self.url, self.monitor_port).varz()

    def jetstream(self) -> dict[str, int]:
        return LocalNats(self.url, self.monitor_port).jetstream()

    def stream_writes(self) -> dict[str, int]:
        return LocalNats(self.url, self.monitor_port).stream_writes()

    def metrics(self, service: str) -> str:
        port = self.metrics_ports[service]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            text: str = response.read().decode()
        return text


# --- reading the cluster ---------------------------------------------------------------


async def bound(nc: NATS, name: str) -> NatsBucket:
    """The bucket `name`, once the scheduler has made it (within 60 s)."""
    js = nc.jetstream()
    for _ in range(240):
        try:
            stream = (await js.stream_info(bucket_stream(name))).config
            return NatsBucket(await js.key_value(name), name, stream=stream)
        except Exception:
            await anyio.sleep(0.25)
    raise RuntimeError(f"no bucket {name} after 60 s: did the scheduler start?")


async def count_keys(bucket: NatsBucket, prefix: str = ">") -> int:
    """The keys of `prefix` now: read at once where the bucket can (no consumer made),
    with a one-shot watch otherwise."""
    snapshot = await bucket.snapshot(prefix)
    if snapshot is not None:
        entries = snapshot.entries
    else:
        entries = []
        async for entry in bucket.watch(prefix):
            if entry is None:
                break
            entries.append(entry)
    return sum(1 for e in entries if e.value is not None and not is_echo_key(e.key))


async def totals(statuses: Bucket | StatusTotals) -> tuple[int, int]:
    """(placed, ready) over every Deployment, as the scheduler's statuses say: read with
    a one-shot watch of the bucket, or from a kept one (StatusTotals)."""
    if isinstance(statuses, StatusTotals):
        return await statuses.read()
    found: list[DeploymentStatus] = []
    async for entry in statuses.watch():
        if entry is None:
            break
        if entry.value is not None and not is_echo_key(entry.key):
            found.append(decode(entry.value, DeploymentStatus))
    return _summed(found)


def _summed(statuses: Iterable[DeploymentStatus]) -> tuple[int, int]:
    placed = ready = 0
    for status in statuses:
        if status.name != PROBE:
            placed += status.placed
            ready += status.ready
    return placed, ready


class StatusTotals:
    """The Deployments' statuses from one watch kept for the run, each read caught up
    with the bucket as of when it is asked (the watch has delivered the stream's last
    sequence, read from the stream's info). A one-shot watch per read, every 0.1 s
    while placing, was a consumer made and deleted ten times a second by the benchmark
    itself, and each deletion makes an overloaded nats-server look through every API
    request waiting (bench/README.md, "Why 5,001 nodes collapse here")."""

    def __init__(self, nc: NATS, bucket: NatsBucket) -> None:
        self._js = nc.jetstream()
        self.view: Mirror[DeploymentStatus] = Mirror(bucket, DeploymentStatus)

    async def read(self) -> tuple[int, int]:
        info = await self._js.stream_info(bucket_stream(self.view.bucket.name))
        last = int(info.state.last_seq or 0)
        for _ in range(250):  # 5 s
            if self.view.current and self.view.delivered >= last:
                return _summed(status for status, _revision in self.view.items.values())
            await anyio.sleep(0.02)
        raise NatsTimeoutError  # not caught up: not yet (`until`)


async def until(
    check: Callable[[], Awaitable[bool]], limit: float, every: float = 0.25
) -> float | None:
    """Seconds until check() holds, or None after `limit`. A check whose NATS request
    times out (a loaded machine: a watch's consumer not made, or its info not read,
    within 5 s) counts as not yet."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if await check():
                return time.monotonic() - started
        except (NatsTimeoutError, WatchIncomplete):
            print("  (a check timed out; again)", flush=True)
        await anyio.sleep(every)
    return None


def samples(text: str) -> Iterator[Sample]:
    """The samples of a Prometheus text exposition (prometheus_client's own parser; a
    cut-off text raises ValueError)."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def histogram_mean(text: str, metric: str) -> tuple[float, float]:
    """(sum, count) of a histogram in a Prometheus text exposition."""
    total = count = 0.0
    for sample in samples(text):
        if sample.name == f"{metric}_sum":
            total += sample.value
        elif sample.name == f"{metric}_count":
            count += sample.value
    return total, count


def histogram_buckets(
    text: str, metric: str, labels: Mapping[str, str] | None = None
) -> dict[float, float]:
    """The cumulative bucket counts of a histogram, by upper bound (+Inf as inf), summed
    over its series that carry `labels` (all of them when None)."""
    buckets: dict[float, float] = {}
    for sample in samples(text):
        if sample.name != f"{metric}_bucket":
            continue
        if labels and any(sample.labels.get(k) != v for k, v in labels.items()):
            continue
        bound = float(sample.labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile of the observations between two readings of a histogram's buckets,
    interpolated within its bucket as Prometheus' histogram_quantile does (nan: none)."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bound: that bound, as Prometheus
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def late_samples(before: dict[float, float], after: dict[float, float], over: float) -> str:
    """Of the loop-lateness samples taken between two readings: how many were later than
    `over`, and the bucket bound the latest one stayed under."""
    counts = {bound: after.get(bound, 0.0) - before.get(bound, 0.0) for bound in after}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return "no samples"
    if over not in counts:
        raise ValueError(f"{over} s is not a bucket bound of the lateness histogram")
    late = total - counts[over]
    worst = min(bound for bound, count in counts.items() if count >= total)
    return f"{late:.0f} of {total:.0f} samples (the latest ≤ {worst:g} s)"


def pass_waits(before: dict[float, float], after: dict[float, float]) -> str:
    """The simulator's pass waits between two readings: p50 / p99 and how many."""
    passes = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if not passes:
        return "no passes gated"
    p50, p99 = (bucket_quantile(before, after, q) * 1000 for q in (0.5, 0.99))
    return f"{p50:.1f} / {p99:.1f} ms ({passes:,.0f} passes)"


TIMELINE_EVERY_SECONDS = 0.5


@dataclass
class Timeline:
    """The scheduler's counts from the first apply until all replicas run, sampled from
    its /metrics every TIMELINE_EVERY_SECONDS, with the store's longest write meanwhile
    (the probe's): saved beside the table (a CSV) for bench/plot_scale.py. A collapse
    shows what came first: the store stalling, the scheduler's view going stale, or
    the nodes."""

    # seconds since the first apply, placements made, replicas ready, nodes ready, the
    # scheduler's view fresh (1/0), the store's longest write since the last sample (ms;
    # None, an empty cell: no write made meanwhile)
    rows: list[tuple[float, int, int, int, int, float | None]] = field(default_factory=list)

    HEADER: ClassVar[str] = (
        "seconds,placements_made,replicas_ready,nodes_ready,view_fresh,store_write_ms"
    )

    def add(
        self,
        seconds: float,
        metrics_text: str,
        store_write: Callable[[], float | None] = lambda: None,
    ) -> None:
        """One sample from the scheduler's /metrics text (none when a count is missing);
        `store_write` is asked only for a sample taken, so a longest write is never lost
        with an unread one."""
        counts = scheduler_counts(metrics_text)
        if counts is not None:
            fresh = scheduler_view_fresh(metrics_text)
            longest = store_write()
            ms = None if longest is None else round(longest * 1e3, 1)
            self.rows.append((round(seconds, 2), *counts, fresh, ms))

    def fewest_nodes_ready(self, until: float, of: int) -> str:
        seen = [row[3] for row in self.rows if row[0] <= until]
        return f"{min(seen):,} of {of:,} ({len(seen)} samples)" if seen else "no samples"

    def write_csv(self, path: Path) -> None:
        lines = [
            self.HEADER,
            *(",".join("" if v is None else str(v) for v in row) for row in self.rows),
        ]
        path.write_text("\n".join(lines) + "\n")


def scheduler_counts(metrics_text: str) -> tuple[int, int, int] | None:
    """(placements made, replicas ready, nodes ready) from the scheduler's /metrics text;
    None when a count is missing or the text is cut off."""
    placements = nodes_ready = None
    replicas_ready = 0
    try:
        for sample in samples(metrics_text):
            if sample.name == "corral_placements_total":
                placements = int(sample.value)
            elif sample.name == "corral_nodes_ready":
                nodes_ready = int(sample.value)
            elif sample.name == "corral_replicas_ready":
                replicas_ready += int(sample.value)
    except (ValueError, OverflowError):  # a cut-off or odd exposition
        return None
    if placements is None or nodes_ready is None:
        return None
    return placements, replicas_ready, nodes_ready


def scheduler_view_fresh(metrics_text: str) -> int:
    """corral_scheduler_view_fresh from the scheduler's /metrics text (0 when missing)."""
    try:
        for sample in samples(metrics_text):
            if sample.name == "corral_scheduler_view_fresh":
                return int(sample.value)
    except (ValueError, OverflowError):
        pass
    return 0


# --- the requests ----------------------------------------------------------------------


def deployment(name: str, replicas: int, label: str = "") -> Deployment:
    requests = ResourceList(cpu="10m", memory="16Mi")
    return Deployment(
        metadata=ObjectMeta(name=name, labels={"round": label} if label else {}),
        spec=DeploymentSpec(
            replicas=replicas,
            template=ContainerTemplate(image=IMAGE, resources=Resources(requests=requests)),
        ),
    )


APPLY_TIMEOUT = 30.0


async def apply(nc: NATS, spec: Deployment) -> Reply:
    msg = await nc.request(
        names.api_subject("deployment", "apply"), encode(spec), timeout=APPLY_TIMEOUT
    )
    return decode(msg.data, Reply)


ANSWERED_ANCHOR = (
    "its corral_api_request_seconds{kind=deployment,verb=apply}: the probe's applies and, "
    "while placing, the run's Deployments' too; interpolated within its buckets, as "
    "Prometheus' histogram_quantile"
)


async def scheduler_metrics(cluster: Cluster) -> str:
    """The scheduler's /metrics, read on a thread: the probes' latency is measured on this
    loop, and a blocking read here would add to the one in flight."""
    return await anyio.to_thread.run_sync(cluster.metrics, "scheduler")


def scheduler_applies(cluster: Cluster) -> dict[float, float] | None:
    """The scheduler's histogram of the apply requests it answered, as it reads now (None:
    /metrics did not answer). Blocking: called on a thread, the probes' latency being
    measured on this loop."""
    labels = {"kind": "deployment", "verb": "apply"}
    try:
        text = cluster.metrics("scheduler")
    except (OSError, http.client.HTTPException):
        return None
    return histogram_buckets(text, "corral_api_request_seconds", labels)


def answered(before: dict[float, float] | None, after: dict[float, float] | None) -> str:
    if before is None or after is None:
        return "not read (the scheduler's /metrics did not answer)"
    if after.get(float("inf"), 0.0) < before.get(float("inf"), 0.0):
        before = {}  # the counts began again (a restart): all of them are since
    count = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    p50, p99 = (bucket_quantile(before, after, q) * 1000 for q in (0.5, 0.99))
    return f"{p50:.1f} / {p99:.1f} ms ({count:.0f} answers)"


STORE_PROBE_ANCHOR = (
    "a KV put of the probe's record from this client after each apply, in series (one "
    "write more per probe): one of apply's steps (a request, a read of the stored spec, "
    "a conditional write, the reply)"
)
API_KINDS_ANCHOR = (
    "every request on $JS.API.> as this client's subscription saw it (direct gets and "
    "requests the server dropped included; bench/js_api_requests.py), per second, most first"
)
# The bench's own bucket, made as corral makes its buckets (file storage, history 5):
# the store's write round trip beside apply's, under the same load.
STORE_PROBE_BUCKET = "corral_bench_probe"


async def store_probe_bucket(nc: NATS) -> NatsBucket:
    js = nc.jetstream()
    kv = await js.create_key_value(
        bucket=STORE_PROBE_BUCKET, history=5, storage=js_api.StorageType.FILE
    )
    return NatsBucket(kv, STORE_PROBE_BUCKET)


@dataclass
class Probe:
    """apply requests one after another, until stopped, each followed by a raw write of
    a record of the same size to the store (`store`): latencies in seconds."""

    nc: NATS
    store: NatsBucket
    latencies: list[float] = field(default_factory=list)
    store_latencies: list[float] = field(default_factory=list)
    round: int = 0
    # Probes refused (e.g. "internal error: nats: timeout" when the machine is loaded):
    # counted, their latency kept; a refusal other than an internal error stops the run.
    failed: list[str] = field(default_factory=list)
    store_failed: list[str] = field(default_factory=list)  # the store writes', apart
    # The longest store write since `longest_write` was last asked (one still under way
    # counts for as long as it has taken so far): the timeline's store_write_ms.
    _longest_write: float | None = None
    _writing_since: float | None = None

    async def run(self, every: float) -> None:
        while True:
            self.round += 1
            spec = deployment(PROBE, 0, f"r{self.round}")
            started = time.perf_counter()
            try:
                reply = await apply(self.nc, spec)
            except NatsTimeoutError:
                reply = Reply(ok=False, error=f"internal error: no answer within {APPLY_TIMEOUT} s")
            except NoRespondersError:  # the scheduler's requests thread reconnecting
                reply = Reply(ok=False, error="internal error: no responders (none subscribed)")
            self.latencies.append(time.perf_counter() - started)
            if not reply.ok:
                if "internal error" not in (reply.error or ""):
                    raise RuntimeError(f"probe apply refused: {reply.error}")
                self.failed.append(reply.error or "")
                print(f"  probe {self.round} failed: {reply.error}", flush=True)
            started = self._writing_since = time.perf_counter()
            try:
                await self.store.put(PROBE, encode(spec))
            except NatsError as error:  # a timeout, or JetStream's refusal: counted apart
                self.store_failed.append(f"{type(error).__name__}: {error}")
            finally:
                self._writing_since = None
            took = time.perf_counter() - started
            self.store_latencies.append(took)
            self._longest_write = max(self._longest_write or 0.0, took)
            await anyio.sleep(every)

    def longest_write(self) -> float | None:
        """The longest store write since the last call (seconds); None when none was
        made or under way meanwhile (an apply that hangs holds the next write back: no
        write is no news of the store)."""
        longest, self._longest_write = self._longest_write, None
        if self._writing_since is not None:
            longest = max(longest or 0.0, time.perf_counter() - self._writing_since)
        return longest

    def take(self) -> tuple[list[float], list[float]]:
        """The apply latencies and the store's write latencies since the last take."""
        taken, self.latencies = self.latencies, []
        stored, self.store_latencies = self.store_latencies, []
        return taken, stored

    def take_failed(self) -> tuple[str, str]:
        """ ", N failed" for the applies and for the store writes since the last take."""
        taken, self.failed = self.failed, []
        stored, self.store_failed = self.store_failed, []
        return _failed(taken), _failed(stored)


def _failed(failures: list[str]) -> str:
    return f", {len(failures)} failed" if failures else ""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- one run ---------------------------------------------------------------------------


@dataclass
class Results:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    timeline: Timeline = field(default_factory=Timeline)

    def add(self, what: str, value: str, anchor: str = "") -> None:
        self.rows.append((what, value, anchor))
        print(f"  {what}: {value}", flush=True)

    def table(self, title: str) -> str:
        lines = [f"## {title}", "", "| measure | corral | goal / anchor |", "|---|---|---|"]
        lines += [f"| {what} | {value} | {anchor} |" for what, value, anchor in self.rows]
        return "\n".join(lines) + "\n"


async def measure(cluster: Cluster, args: argparse.Namespace, results: Results) -> None:
    await cluster.start_control_plane()
    # Its own connection: the copies of every API request do not queue before the probes'.
    api_nc = await connect(cluster.url, name="bench-scale-api-requests")
    api_requests = ApiRequestCounter()
    await api_requests.start(api_nc)
    api_requests.take()  # the control plane's own start is not the nodes'
    nodes: int = args.nodes
    shards = len(cluster.simulators)
    for index, name in enumerate(cluster.simulators):
        share = nodes // shards + (1 if index < nodes % shards else 0)
        cluster.start_hollow(name, share, "hollow-" if shards == 1 else f"hollow-{index}-")
    victim = cluster.start_hollow("victim", 1, "victim-")
    # A second one-node cluster, killed when half the replicas are placed (a node lost
    # while placing): is its Deployments' replacement held back until the burst is placed?
    midburst = cluster.start_hollow(MIDBURST, 1, f"{MIDBURST}-")
    nc = await connect(cluster.url, name="bench-scale")
    try:
        async with anyio.create_task_group() as watching:
            node_bucket = await bound(nc, names.NODES_BUCKET)
            statuses = StatusTotals(nc, await bound(nc, names.DEPLOYMENT_STATUS_BUCKET))
            await watching.start(statuses.view.run)
            # The victim's shard of the placements: what is placed on it is counted there.
            placements = await bound(
                nc, names.placements_bucket_of("victim-1", args.placement_shards)
            )
            started = time.monotonic()

            async def all_nodes() -> bool:
                return await count_keys(node_bucket) >= nodes + 2

            joined = await until(all_nodes, args.timeout, every=1.0)
            if joined is None:
                raise RuntimeError(f"the {nodes + 2} hollow nodes did not register")
            results.add("nodes registered", f"{nodes + 2} in {time.monotonic() - started:.1f} s")

            async def simulators_serve() -> bool:
                """Each simulator process serves its /metrics once all its nodes started,
                which can come after their records are written (read here before placing)."""
                for name in cluster.simulators:
                    try:
                        await anyio.to_thread.run_sync(cluster.metrics, name)
                    except (OSError, http.client.HTTPException):
                        return False
                return True

            if await until(simulators_serve, args.timeout, every=0.5) is None:
                raise RuntimeError("the simulator's processes did not serve their /metrics")
            started_nodes = api_requests.take()
            results.add(
                "JetStream API requests per node started, by kind",
                per_second(started_nodes, nodes + 2, unit=" per node"),
                "from the hollow processes' start to all their nodes started, divided by the "
                "nodes: what a node's start asks of the API (a cluster restarting at once asks "
                "it of every node together)",
            )
            await anyio.sleep(args.settle)  # every node heard from: schedulable
            cluster.mark_cpu("placing")
            marked_placing = time.monotonic()
            api_requests.take()
            writes_before = await anyio.to_thread.run_sync(cluster.stream_writes)
            varz_placing = await anyio.to_thread.run_sync(cluster.varz)

            probe = Probe(nc, await store_probe_bucket(nc))
            per: int = args.replicas // args.deployments
            want: int = per * args.deployments
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe.run, args.probe_every)
                worker_before = histogram_mean(
                    await scheduler_metrics(cluster), "corral_controller_reconcile_seconds"
                )[0]
                late_before = await anyio.to_thread.run_sync(cluster.simulator_lateness)
                answered_before = await anyio.to_thread.run_sync(scheduler_applies, cluster)
                isolated_before = await anyio.to_thread.run_sync(cluster.simulator_isolations)
                waits_before = await anyio.to_thread.run_sync(cluster.simulator_pass_waits)
                began = time.monotonic()
                sampling = anyio.CancelScope()

                async def sample_timeline() -> None:
                    with sampling:
                        while True:  # read on a thread: the probes' latency is measured here
                            try:
                                text = await anyio.to_thread.run_sync(cluster.metrics, "scheduler")
                            except (OSError, http.client.HTTPException):  # busy: a sample less
                                text = ""
                            results.timeline.add(
                                time.monotonic() - began, text, probe.longest_write
                            )
                            await anyio.sleep(TIMELINE_EVERY_SECONDS)

                tg.start_soon(sample_timeline)
                # (replicas it held, when it was killed, seconds until none was placed on it)
                lost_while_placing: list[tuple[int, float, float | None]] = []
                midburst_told = anyio.Event()  # its row is known (or will not be)

                async def lose_one_while_placing() -> None:
                    try:
                        await lose_midburst()
                    finally:
                        midburst_told.set()

                async def lose_midburst() -> None:
                    async def half_placed() -> bool:
                        return (await totals(statuses))[0] >= want // 2

                    if await until(half_placed, args.timeout, every=0.1) is None:
                        return  # no row: the run does not converge either
                    node = f"{MIDBURST}-1"
                    found: list[NatsBucket] = []  # its shard of the placements, once bound
                    held = 0

                    async def count_held() -> bool:
                        nonlocal held
                        if not found:
                            shard = names.placements_bucket_of(node, args.placement_shards)
                            found.append(await bound(nc, shard))
                        held = await count_keys(found[0], names.placement_prefix(node))
                        return True

                    # Read again when a read times out under load (until's rule), for at most
                    # 30 s: the node is killed whatever it held.
                    await until(count_held, 30)
                    midburst.popen.kill()
                    midburst.popen.wait()
                    lost_at = time.monotonic()

                    before = held

                    async def gone() -> bool:
                        await count_held()
                        return held == 0

                    moved = await until(gone, args.timeout)
                    lost_while_placing.append((before, lost_at, moved))

                tg.start_soon(lose_one_while_placing)
                # The Deployments arrive as a burst from several clients (--apply-parallel
                # requests in flight), not one after another: what the scheduler can place,
                # not how fast one client can ask.
                submitting = anyio.CapacityLimiter(args.apply_parallel)

                async def submit(index: int) -> None:
                    async with submitting:
                        reply = await apply(nc, deployment(f"app-{index}", per))
                    if not reply.ok:
                        raise RuntimeError(f"apply app-{index} refused: {reply.error}")

                async with anyio.create_task_group() as applying:
                    for index in range(args.deployments):
                        applying.start_soon(submit, index)
                last: tuple[int, int] = (0, 0)

                async def reached(placed_or_ready: int) -> bool:
                    nonlocal last
                    last = await totals(statuses)
                    return last[placed_or_ready] >= want

                placed = await until(partial(reached, 0), args.timeout, every=0.1)
                placed_in = None if placed is None else time.monotonic() - began
                api_placing = per_second(api_requests.take(), time.monotonic() - marked_placing)
                reconciled = histogram_mean(
                    await scheduler_metrics(cluster), "corral_controller_reconcile_seconds"
                )
                worker_busy = reconciled[0] - worker_before
                (busy, busy_stored), (busy_failed, busy_store_failed) = (
                    probe.take(),
                    probe.take_failed(),
                )
                answered_placed = await anyio.to_thread.run_sync(scheduler_applies, cluster)
                late_while_placing = late_samples(
                    late_before,
                    await anyio.to_thread.run_sync(cluster.simulator_lateness),
                    SIMULATOR_LATE_SECONDS,
                )

                ready = await until(partial(reached, 1), args.timeout, every=0.25)
                running_in = None if ready is None else time.monotonic() - began
                isolated_running = await anyio.to_thread.run_sync(cluster.simulator_isolations)
                waits_running = await anyio.to_thread.run_sync(cluster.simulator_pass_waits)
                sampling.cancel()
                cluster.mark_cpu("steady")
                writes_after = await anyio.to_thread.run_sync(cluster.stream_writes)
                varz_placed = await anyio.to_thread.run_sync(cluster.varz)
                if placed_in is None or running_in is None:
                    # What tells why, in the table too (the timeline is saved beside it).
                    results.add(
                        f"NOT CONVERGED (placed, then ready, each within {args.timeout:g} s)",
                        f"Deployments' statuses: {last[0]:,} placed, {last[1]:,} ready of {want:,}",
                    )
                    results.add(
                        f"simulator's event loop late over {SIMULATOR_LATE_SECONDS:g} s "
                        "while placing",
                        late_while_placing,
                    )
                    results.add(
                        "agents isolated (entries to Isolated), first apply to the end",
                        f"{isolated_running - isolated_before:,.0f}",
                    )
                    results.add(
                        "nodes ready, fewest (the scheduler's count)",
                        results.timeline.fewest_nodes_ready(float("inf"), nodes + 2),
                    )
                    spent = time.monotonic() - marked_placing
                    cpu = ", ".join(
                        f"{name} {proc.cpu_between('placing', 'steady') / spent:.0%}"
                        for name, proc in cluster.procs.items()
                    )
                    results.add("CPU, share of a core, from just before the first apply", cpu)
                    raise NotConverged(f"not converged in {args.timeout} s: placed/ready {last}")
                rate = want / placed_in
                results.add(
                    "placements committed per second",
                    f"{rate:,.0f}/s ({want:,} in {placed_in:.1f} s)",
                    "goal ≥ 5,000/s; kube-scheduler_perf 810 pods/s at 5,000 nodes; "
                    "Nomad C1M 3,750/s",
                )
                results.add(
                    "scheduler's worker busy while placing (reconciling / wall time)",
                    f"{worker_busy / placed_in * 100:.0f}%",
                )
                results.add(
                    f"time to all {want:,} Running (from the first apply)", f"{running_in:.1f} s"
                )
                with anyio.move_on_after(args.timeout):
                    await midburst_told.wait()
                for held, lost_at, moved in lost_while_placing:
                    placing_on = max(0.0, began + placed_in - lost_at)
                    if held == 0:
                        told = "not measured: it held no replica when it was killed"
                    elif moved is None:
                        told = "not within the timeout"
                    else:
                        told = f"{moved:.1f} s"
                    results.add(
                        f"one node lost halfway through placing ({held} replicas): placed "
                        "elsewhere after",
                        told + f" (placing went on for {placing_on:.1f} s after the loss)",
                        "its Deployments decided ahead of the burst, not after it "
                        f"(goal ≤ 5 s; R = {NODE_LOST_SECONDS:g} s of silence is the "
                        "budget's share)",
                    )
                results.add(
                    f"simulator's event loop late over {SIMULATOR_LATE_SECONDS:g} s while placing",
                    late_while_placing,
                    "a simulator behind sends heartbeats late: nodes look cut off",
                )
                results.add(
                    "simulator's passes: wait for their turn p50 / p99, first apply to all Running",
                    pass_waits(waits_before, waits_running),
                    "a simulator process's nodes take turns at their reconcile passes "
                    "(--simulator-passes at once): a burst of placements waits, their heartbeats "
                    "do not",
                )
                results.add(
                    "agents isolated (entries to Isolated), first apply to all Running",
                    f"{isolated_running - isolated_before:,.0f}",
                    "an agent not proven heard for 3 heartbeats isolates: starts nothing",
                )
                results.add(
                    "nodes ready, fewest while placing (the scheduler's count; one of them lost "
                    "on purpose halfway)",
                    results.timeline.fewest_nodes_ready(placed_in, nodes + 2),
                )
                results.add(
                    "apply p50 / p99 while placing",
                    f"{percentile(busy, 0.5) * 1000:.1f} / {percentile(busy, 0.99) * 1000:.1f} ms"
                    f" ({len(busy)} requests{busy_failed})",
                    "goal p99 ≤ 20 ms; Kubernetes SLO p99 ≤ 1 s",
                )
                results.add(
                    "the scheduler's own answer to apply, p50 / p99 while placing",
                    answered(answered_before, answered_placed),
                    ANSWERED_ANCHOR,
                )
                results.add(
                    "the store's own write p50 / p99 while placing",
                    f"{percentile(busy_stored, 0.5) * 1000:.1f} / "
                    f"{percentile(busy_stored, 0.99) * 1000:.1f} ms"
                    f" ({len(busy_stored)} writes{busy_store_failed})",
                    STORE_PROBE_ANCHOR,
                )

                # steady state: probes go on; the control plane does nothing else
                reconcile_before = histogram_mean(
                    await scheduler_metrics(cluster), "corral_controller_reconcile_seconds"
                )
                varz_before = await anyio.to_thread.run_sync(cluster.varz)
                varz_at = time.monotonic()
                api_before = (await anyio.to_thread.run_sync(cluster.jetstream))["api_requests"]
                api_requests.take()
                isolated_steady = await anyio.to_thread.run_sync(cluster.simulator_isolations)
                await anyio.sleep(args.steady)
                isolated_steady_end = await anyio.to_thread.run_sync(cluster.simulator_isolations)
                varz_after = await anyio.to_thread.run_sync(cluster.varz)
                varz_end = time.monotonic()
                api_after = (await anyio.to_thread.run_sync(cluster.jetstream))["api_requests"]
                api_steady = per_second(api_requests.take(), time.monotonic() - varz_at)
                reconcile_after = histogram_mean(
                    await scheduler_metrics(cluster), "corral_controller_reconcile_seconds"
                )
                cluster.mark_cpu("steady-end")
                (steady, steady_stored), (steady_failed, steady_store_failed) = (
                    probe.take(),
                    probe.take_failed(),
                )
                answered_steady = await anyio.to_thread.run_sync(scheduler_applies, cluster)
                tg.cancel_scope.cancel()
            results.add(
                "apply p50 / p99 while steady",
                f"{percentile(steady, 0.5) * 1000:.1f} / {percentile(steady, 0.99) * 1000:.1f} ms"
                f" ({len(steady)} requests{steady_failed})",
                "goal p99 ≤ 20 ms",
            )
            results.add(
                "the scheduler's own answer to apply, p50 / p99 while steady",
                answered(answered_placed, answered_steady),
                ANSWERED_ANCHOR,
            )
            results.add(
                "the store's own write p50 / p99 while steady",
                f"{percentile(steady_stored, 0.5) * 1000:.1f} / "
                f"{percentile(steady_stored, 0.99) * 1000:.1f} ms"
                f" ({len(steady_stored)} writes{steady_store_failed})",
                STORE_PROBE_ANCHOR,
            )
            spent = reconcile_after[0] - reconcile_before[0]
            count = reconcile_after[1] - reconcile_before[1]
            results.add(
                "reconcile cost per change (steady)",
                f"{spent / count * 1000:.2f} ms mean over {count:.0f} reconciles"
                if count
                else "no reconcile while steady",
                "goal ≤ 20 ms",
            )
            seconds = varz_end - varz_at
            per_node = nodes + 1
            for key, label in (("in_msgs", "messages in"), ("out_msgs", "messages out")):
                value = (varz_after[key] - varz_before[key]) / seconds
                results.add(
                    f"NATS {label} per second (steady)",
                    f"{value:,.0f}/s ({value / per_node:.1f} per node)",
                )
            for key, label in (("in_bytes", "bytes in"), ("out_bytes", "bytes out")):
                value = (varz_after[key] - varz_before[key]) / seconds
                results.add(
                    f"NATS {label} per second (steady)",
                    f"{value / 1024:,.0f} KiB/s ({value / per_node:,.0f} B per node)",
                )
            value = (api_after - api_before) / seconds
            results.add(
                "JetStream API requests per second (steady)",
                f"{value:,.0f}/s ({value / per_node:.2f} per node)",
                "nats-server's own count (/jsz api.total): direct gets are not in it",
            )
            results.add(
                "JetStream API requests by kind, first apply to all placed",
                api_placing,
                API_KINDS_ANCHOR,
            )
            results.add("JetStream API requests by kind (steady)", api_steady, API_KINDS_ANCHOR)
            results.add(
                "agents isolated (entries to Isolated), steady",
                f"{isolated_steady_end - isolated_steady:,.0f}",
            )

            # one node lost
            on_victim = await count_keys(placements, names.placement_prefix("victim-1"))
            victim.popen.kill()
            victim.popen.wait()

            async def replaced() -> bool:
                if await count_keys(placements, names.placement_prefix("victim-1")):
                    return False
                return (await totals(statuses))[1] >= want

            back = await until(replaced, 120, every=0.25)
            results.add(
                f"one node lost ({on_victim} replicas): running elsewhere after",
                "not within 120 s" if back is None else f"{back:.1f} s",
                f"goal ≤ 5 s (R = {NODE_LOST_SECONDS:g} s of silence is the budget's own share)",
            )
            if args.outage > 0:
                await every_node_cut_off(
                    cluster, args.outage, nodes, want, statuses.view.bucket, results
                )
            for name, proc in cluster.procs.items():
                if name in ("victim", MIDBURST):
                    continue
                if proc.popen.poll() is not None:
                    log = (cluster.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                    print(f"--- {name} exited early ({proc.popen.returncode}):\n{log}", flush=True)
                    results.add(f"{name}", f"EXITED during the run (code {proc.popen.returncode})")
                    continue
                converging = running_in or 0.0
                placing = proc.cpu_between("placing", "steady")
                steady_cpu = proc.cpu_between("steady", "steady-end")
                results.add(
                    f"{name}: resident memory, CPU placing / steady",
                    f"{proc.rss_mib():.0f} MiB, {placing / max(converging, 1e-9) * 100:.0f}%"
                    f" / {steady_cpu / max(args.steady, 1e-9) * 100:.0f}% of a core"
                    + (f", nice {nice}" if (nice := proc.nice()) else ""),
                    "control plane + nats goal ≤ 400 MiB in all; "
                    "k0s 2.3 GB at 100 nodes / 10,000 pods"
                    if name == "nats-server"
                    else "",
                )
            control_plane = [
                proc
                for name, proc in cluster.procs.items()
                if name in ("scheduler", "netmgr", "volmgr", "nats-server")
            ]
            # CPU spent from the first apply to all Running, per replica: what the machine's
            # share of the simulator does not blur (it is not counted here).
            spent = sum(proc.cpu_between("placing", "steady") for proc in control_plane)
            results.add(
                "control plane + nats-server CPU per replica, first apply to all Running",
                f"{spent / max(want, 1) * 1000:.2f} ms "
                f"({spent:.1f} s of CPU for {want:,} replicas)",
                "at 5,000/s two cores allow 0.4 ms",
            )
            results.add(
                "NATS messages in / out per replica, first apply to all Running",
                " / ".join(
                    f"{(varz_placed[key] - varz_placing[key]) / max(want, 1):.1f}"
                    for key in ("in_msgs", "out_msgs")
                ),
                "what nats-server handles for each replica placed (probes and heartbeats too)",
            )
            results.add(
                "stream writes per replica, first apply to all Running",
                per_replica_writes(writes_before, writes_after, want),
                "each stream's messages written meanwhile (KV_ names the buckets)",
            )
            plane = sum(proc.rss_mib() for proc in control_plane)
            results.add(
                "control plane + nats-server resident memory", f"{plane:.0f} MiB", "≤ 400 MiB"
            )
            if "nats-server" in cluster.procs:  # last: it forces collections
                await nats_server_memory(
                    cluster.procs["nats-server"], cluster.profile_port, results
                )
            watching.cancel_scope.cancel()  # the kept watch
    finally:
        await nc.close()
        await api_nc.close()


def per_replica_writes(before: dict[str, int], after: dict[str, int], replicas: int) -> str:
    """The streams written to between two readings, most first, per replica; the
    placements' shards as one (with their number)."""
    grown: dict[str, int] = {}
    shards = 0
    for name in after:
        shown_as = name
        if re.fullmatch(rf"KV_{names.PLACEMENTS_BUCKET}(_[0-9]+)?", name):
            shards += 1
            shown_as = f"KV_{names.PLACEMENTS_BUCKET}"
        grown[shown_as] = grown.get(shown_as, 0) + after[name] - before.get(name, 0)
    if shards > 1:
        grown[f"KV_{names.PLACEMENTS_BUCKET} ({shards} shards)"] = grown.pop(
            f"KV_{names.PLACEMENTS_BUCKET}"
        )
    shown = [
        f"{name} {count / max(replicas, 1):.2f}"
        for name, count in sorted(grown.items(), key=lambda item: (-item[1], item[0]))
        if count > 0
    ]
    return ", ".join(shown) or "none"


def nodes_ready_and_placed(cluster: Cluster) -> tuple[int, int]:
    """(nodes ready, placements made so far) from the scheduler's /metrics; (-1, -1)
    when they cannot be read."""
    try:
        counts = scheduler_counts(cluster.metrics("scheduler"))
    except (OSError, http.client.HTTPException):
        return (-1, -1)
    if counts is None:
        return (-1, -1)
    placements, _, ready = counts
    return (ready, placements)


async def settled_rss(proc: Proc, limit: float = 30.0) -> float:
    """The process's resident memory once it has stopped falling for 3 s (Go returns
    freed pages to the system in the background), or as it is after `limit`."""
    lowest, since = proc.rss_mib(), time.monotonic()
    started = since
    while time.monotonic() - since < 3.0 and time.monotonic() - started < limit:
        await anyio.sleep(0.5)
        if (now := proc.rss_mib()) < lowest - 1.0:
            lowest, since = now, time.monotonic()
    return min(lowest, proc.rss_mib())


async def nats_server_memory(proc: Proc, profile_port: int, results: Results) -> None:
    """What nats-server's memory is made of at the end of the run, as Go counts it
    (go_memory); then, once forced collections have freed all that Go can free and the
    freed pages have gone back to the system, its resident memory, and the heap right
    after more forced collections: the live part. Last, since it forces collections;
    a failure here costs these two rows, never the run's table."""
    resident = proc.rss_mib()
    try:
        now = await anyio.to_thread.run_sync(read_go_memory, profile_port)
        await anyio.to_thread.run_sync(partial(read_go_memory, profile_port, collect=True))
        settled = await settled_rss(proc)
        live = await anyio.to_thread.run_sync(partial(read_go_memory, profile_port, collect=True))
    except Exception as error:  # an HTTP or parsing failure alike
        results.add("nats-server's memory as Go counts it", f"not read ({error!r})")
        return
    results.add(
        "nats-server's memory as Go counts it, at the end",
        f"resident {resident:.0f} MiB: {describe(now)}",
        "read from its profiling port (--profile, loopback); block buffers: the file "
        "store's caches of message blocks (256 KiB-8 MiB each), estimated from the heap "
        "profile's samples as of Go's last collection (a lower bound, up to sampling error)",
    )
    results.add(
        "nats-server after forced collections (live)",
        f"resident {settled:.0f} MiB: {describe(live)}",
        f"{FREEING_COLLECTIONS} collections (pprof gc=1), the pages returned (resident), "
        f"and {FREEING_COLLECTIONS} more (heap): what no collection frees. Left to itself, "
        "Go keeps up to half the live heap again (GOGC=50)",
    )


async def every_node_cut_off(
    cluster: Cluster,
    outage: float,
    nodes: int,
    want: int,
    statuses: Bucket,
    results: Results,
) -> None:
    """nats-server paused for `outage` seconds: every agent counts itself cut off
    (Isolated) at once; then the recovery (the statuses read afresh each time, by a
    one-shot watch: a watch kept through the pause may be behind)."""
    server = cluster.procs["nats-server"].popen
    before = await anyio.to_thread.run_sync(cluster.jetstream)
    placed_before = (await anyio.to_thread.run_sync(nodes_ready_and_placed, cluster))[1]
    isolated_before = await anyio.to_thread.run_sync(cluster.simulator_isolations)
    stopping_before = await anyio.to_thread.run_sync(cluster.simulator_mode_entries, "Stopping")
    late_before = await anyio.to_thread.run_sync(cluster.simulator_lateness)
    watches_before = await anyio.to_thread.run_sync(cluster.simulator_watches)
    writes_before = await anyio.to_thread.run_sync(cluster.stream_writes)
    server.send_signal(signal.SIGSTOP)
    try:
        await anyio.sleep(outage)
    finally:
        server.send_signal(signal.SIGCONT)
    resumed = time.monotonic()

    nodes_back: float | None = None
    fewest = nodes

    async def recovered() -> bool:
        nonlocal nodes_back, fewest
        ready_nodes = (await anyio.to_thread.run_sync(nodes_ready_and_placed, cluster))[0]
        if ready_nodes >= 0:
            fewest = min(fewest, ready_nodes)
        if ready_nodes >= nodes and nodes_back is None:
            nodes_back = time.monotonic() - resumed
        return nodes_back is not None and (await totals(statuses))[1] >= want

    back = await until(recovered, 120, every=0.25)
    after = await anyio.to_thread.run_sync(cluster.jetstream)
    placed_after = (await anyio.to_thread.run_sync(nodes_ready_and_placed, cluster))[1]
    # A simulator still saturated may not answer, or cut its exposition short: that
    # value reads "?", the others and the run's table stay.
    readable = (OSError, http.client.HTTPException, ValueError)

    async def read(value: Callable[[], Awaitable[str]]) -> str:
        try:
            return await value()
        except readable:
            return "?"

    async def isolated_read() -> str:
        entries = await anyio.to_thread.run_sync(cluster.simulator_isolations)
        return f"{entries - isolated_before:,.0f}"

    async def stopping_read() -> str:
        entries = await anyio.to_thread.run_sync(cluster.simulator_mode_entries, "Stopping")
        return f"{entries - stopping_before:,.0f}"

    async def late_read() -> str:
        lateness = await anyio.to_thread.run_sync(cluster.simulator_lateness)
        return late_samples(late_before, lateness, SIMULATOR_LATE_SECONDS)

    async def watches_read() -> str:
        after = await anyio.to_thread.run_sync(cluster.simulator_watches)
        since = {how: after[how] - watches_before.get(how, 0.0) for how in sorted(after)}
        counts = [f"{how} {count:,.0f}" for how, count in since.items()]
        return ", ".join(counts) or "none"

    async def writes_read() -> str:
        written = await anyio.to_thread.run_sync(cluster.stream_writes)
        return per_replica_writes(writes_before, written, nodes)

    isolated = await read(isolated_read)
    stopping = await read(stopping_read)
    late = await read(late_read)
    watches = await read(watches_read)
    writes = await read(writes_read)
    results.add(
        f"nats-server paused {outage:g} s (every agent cut off): all nodes ready and "
        "replicas Running again after",
        "not within 120 s" if back is None else f"{time.monotonic() - resumed:.1f} s",
        "from the resume",
    )
    results.add(
        "  all nodes ready again after (fewest ready seen)",
        "not within 120 s" if nodes_back is None else f"{nodes_back:.1f} s ({fewest:,})",
        "the scheduler's count",
    )
    results.add(
        "  that recovery: JetStream API requests / errors, consumers after",
        f"{after['api_requests'] - before['api_requests']:,} / "
        f"{after['api_errors'] - before['api_errors']:,}, "
        f"{after['consumers']:,} (were {before['consumers']:,})",
        "a new placements watch and statuses read per agent would be 2 per node",
    )
    results.add(
        "  agents isolated (entries to Isolated), from the pause to all back",
        isolated,
        "each simulated agent once: every one was cut off",
    )
    results.add(
        "  how the agents' placements became current again, from the pause on",
        watches,
        "new: a watch read afresh (a consumer, the statuses read); kept_by_acks / "
        "kept_by_echo: the watch kept through the isolation, proven",
    )
    results.add(
        "  stream writes per node, from the pause on",
        writes,
        "what the agents (and the scheduler) wrote on the way back: KV_corral_nodes are "
        "record writes, the placements' shards echoes",
    )
    results.add(
        "  simulator's event loop late over 0.5 s, from the pause on",
        late,
        "a simulator behind (its own work on the way back) would isolate its nodes again",
    )
    results.add(
        "  agents that stopped their replicas (entries to Stopping), from the pause on",
        stopping,
        "none should: an agent stops its replicas only when not heard for F (20 s)",
    )
    results.add(
        "  replicas placed anew meanwhile",
        f"{placed_after - placed_before:,}" if min(placed_before, placed_after) >= 0 else "?",
        "none should move: the scheduler's own view was stale too",
    )


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=5000)
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--pods", type=int, default=110, help="pod slots per node")
    parser.add_argument("--ready-after", type=float, default=0.5)
    parser.add_argument("--probe-every", type=float, default=0.05, help="seconds between probes")
    parser.add_argument("--steady", type=float, default=15.0, help="seconds of steady state")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--decide-in",
        choices=["loop", "thread"],
        help="the scheduler's --decide-in (default: the scheduler's own default)",
    )
    parser.add_argument(
        "--apply-parallel",
        type=int,
        default=16,
        help="the Deployments' apply requests in flight at once (default 16)",
    )
    parser.add_argument(
        "--answer-in",
        choices=["loop", "thread"],
        help="the scheduler's --answer-in (default: the scheduler's own default)",
    )
    parser.add_argument(
        "--python-gc", action="store_true", help="the scheduler's --python-gc (comparisons)"
    )
    parser.add_argument(
        "--simulator-processes",
        type=int,
        help="hollow-cluster processes sharing the nodes (default: one per "
        f"{NODES_PER_SIMULATOR} nodes, at most one per core): one process is one core at "
        "most, and a simulator that falls behind makes its nodes look cut off",
    )
    parser.add_argument(
        "--simulator-nice",
        type=int,
        default=DEFAULT_SIMULATOR_NICE,
        help="the simulator's processes run this much nicer than the control plane "
        f"(default {DEFAULT_SIMULATOR_NICE}: the same priority): the control plane gets "
        "the cores first; too nice and they starve (their nodes look lost). Negative "
        "(root only, -20 to -1): the simulator gets them first, as hollow nodes on "
        "machines of their own would, and the control plane is measured on what is left",
    )
    parser.add_argument(
        "--simulator-passes",
        type=int,
        help="reconcile passes at once in each simulator process, its nodes in turn "
        "(the hollow cluster's --passes-parallel; default: its own default)",
    )
    parser.add_argument(
        "--simulator-python-gc",
        action="store_true",
        help="the hollow clusters' --python-gc: Python's own collections once their "
        "nodes run (comparisons)",
    )
    parser.add_argument(
        "--simulator-pool",
        type=int,
        help="hollow nodes per NATS connection (the hollow cluster's --pool; 1: a "
        "connection per node, as real agents have; default: its own default)",
    )
    parser.add_argument(
        "--placements-watch",
        choices=("consumer", "reads"),
        default="consumer",
        help="how the hollow nodes follow their placements (the node agent's flag)",
    )
    parser.add_argument(
        "--placement-shards",
        type=int,
        default=1,
        help="buckets the cluster's placements are split into, by node "
        "(CORRAL_PLACEMENT_SHARDS; default 1: the one bucket)",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=5.0,
        help="seconds nats-server is paused after the node-loss phase (0: skip): every "
        "agent cut off at once, then the recovery",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--keep-logs",
        type=Path,
        help="copy every process's log (scheduler, hollow clusters, nats-server...) here "
        "at the end: why a run went as it did",
    )
    args = parser.parse_args()
    if args.replicas < args.deployments:
        parser.error("--replicas must be at least --deployments")
    if args.simulator_processes is None:
        wanted = -(-args.nodes // NODES_PER_SIMULATOR)
        args.simulator_processes = max(1, min(wanted, len(os.sched_getaffinity(0))))
    if not 1 <= args.simulator_processes <= args.nodes:
        parser.error("--simulator-processes must be between 1 and --nodes")
    if not -20 <= args.simulator_nice <= 19:
        parser.error("--simulator-nice must be between -20 and 19")
    if args.simulator_nice < 0 and not _may_raise_priority(args.simulator_nice):
        parser.error(
            f"--simulator-nice {args.simulator_nice} raises the simulator's priority, "
            "which only root (CAP_SYS_NICE) or a RLIMIT_NICE allowing it may do"
        )
    if args.simulator_passes is not None and args.simulator_passes < 0:
        parser.error("--simulator-passes must not be negative (0: every pass at once)")
    try:
        names.check_placement_shards(args.placement_shards)
    except ValueError as error:
        parser.error(f"--placement-shards: {error}")
    # Every process of the run makes the cluster with these shards (whichever is first).
    os.environ["CORRAL_PLACEMENT_SHARDS"] = str(args.placement_shards)
    simulator = (
        f"the simulator in {args.simulator_processes} processes"
        if args.simulator_processes > 1
        else "the simulator in 1 process"
    )
    title = (
        f"{args.nodes + 2:,} hollow nodes, {args.replicas:,} replicas in "
        f"{args.deployments} Deployments ({os.cpu_count()} cores"
        + (f", {simulator}" if args.simulator_processes > 1 or args.simulator_nice else "")
        + (f" at nice {args.simulator_nice}" if args.simulator_nice else "")
        + ")"
    )
    if args.decide_in:
        title += f", decide in {args.decide_in}"
    if args.answer_in:
        title += f", answer in {args.answer_in}"
    if args.python_gc:
        title += ", Python's default GC"
    if args.simulator_python_gc:
        title += ", the simulator on Python's default GC"
    if args.simulator_passes is not None:
        title += f", simulator passes {args.simulator_passes or 'all'} at once"
    if args.placement_shards > 1:
        title += f", placements in {args.placement_shards} shards"
    if args.placements_watch != "consumer":
        title += f", each node's placements followed by {args.placements_watch}"
    print(title, flush=True)
    results = Results()
    mode = (
        (f"-{args.decide_in}" if args.decide_in else "")
        + (f"-answer-{args.answer_in}" if args.answer_in else "")
        + ("-pygc" if args.python_gc else "")
    )
    out = args.out or (
        Path(__file__).parent / "results" / f"scale-{args.nodes}x{args.replicas}{mode}.md"
    )
    if out.suffix == ".csv":
        parser.error("--out names the table (.md); its timeline goes beside it as .csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    timeline = out.with_suffix(".csv")
    failed = False
    with tempfile.TemporaryDirectory(prefix="corral-scale-") as work:
        cluster = Cluster(args, Path(work))
        try:
            anyio.run(measure, cluster, args, results)
        except BaseException as error:
            if not _is_not_converged(error):
                raise
            failed = True  # the table says why: saved and printed below
        finally:
            try:
                results.timeline.write_csv(timeline)  # a failed run's too: it tells why
            finally:
                cluster.stop()  # whatever failed: no process of the run outlives it
                if args.keep_logs is not None:
                    try:
                        args.keep_logs.mkdir(parents=True, exist_ok=True)
                        for log in Path(work).glob("*.log"):
                            shutil.copy(log, args.keep_logs / log.name)
                    except OSError as error:  # the table matters more than the logs
                        print(f"  the logs were not kept: {error}", file=sys.stderr)
            if any(
                p.popen.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL)
                for p in cluster.procs.values()
            ):
                for name in cluster.procs:
                    tail = (Path(work) / f"{name}.log").read_text(errors="replace")[-2000:]
                    print(f"--- {name}.log (tail)\n{tail}", file=sys.stderr)
    table = results.table(title)
    out.write_text(table)
    print()
    print(table)
    print(f"saved {out} and {timeline.name} (bench/plot_scale.py draws it)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
