"""What the mirrors cost per record: full types, full types shared, and views.

netmgr mirrors every Placement and ReplicaStatus, volmgr every Placement, as views that
hold only the fields they read (corral.contract.views), and the scheduler every
ReplicaStatus (SchedulingStatus). The scheduler holds full Placements, passed through
corral.contract.sharing: a placement holds its Deployment revision's one template, and
records hold one copy of each name they repeat (the rows marked "..."; the names as
bench_scale.py's: a Deployment's 200 replicas, 20 to a node). This builds N records of
each as
a hollow cluster's scheduler and agents write them (a template with an image, command,
env, resources, labels, a named port, readiness and liveness probes; statuses Running
with an IP, probe results and restart times), encodes them with corral's encoder, then
for each type that reads them prints:

- the time to decode one record (best of --repeat passes over all N, no tracing);
- the memory one decoded record holds (tracemalloc: what decoding all N into a list
  allocated and kept, over N; the mirror's own dict entry and (value, revision) tuple,
  the same for every type, are not counted);
- the memory N of them hold, and each service's total at N replicas;
- what the keys of two mirrors hold (a replica's placement and status are stored under
  one key), apart or interned as a Mirror holds them.

    .venv/bin/python bench/bench_mirror_memory.py [--records 20000] [--repeat 3] [--thin]

--thin: templates as bench_scale.py applies them (an image and CPU and memory requests).

Pure and in memory (no NATS): numbers only, no assertion.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.contract.codec import decode, encode
from corral.contract.sharing import TemplatePool, intern_replica_names
from corral.contract.specs import (
    ContainerPort,
    ContainerTemplate,
    DeploymentSpec,
    HTTPGetAction,
    ObjectMeta,
    Probe,
    ResourceList,
    Resources,
    TCPSocketAction,
)
from corral.contract.specs import Deployment as DeploymentRecord
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.contract.views import (
    ClaimsPlacement,
    EndpointsPlacement,
    EndpointsStatus,
    NetworksDeployment,
    SchedulingStatus,
)

IMAGE = "registry.local:5000/team/web:1.4.2"
REPLICAS_PER_DEPLOYMENT = 200
REPLICAS_PER_NODE = 20
NOW = 1_780_000_000.0


def template(deployment: str, thin: bool = False) -> ContainerTemplate:
    if thin:  # what bench_scale.py applies
        requests = ResourceList(cpu="10m", memory="16Mi")
        return ContainerTemplate(image=IMAGE, resources=Resources(requests=requests))
    return ContainerTemplate(
        image=IMAGE,
        command=["/bin/web"],
        args=["--listen", ":8080", "--log-format", "json"],
        env={"APP_ENV": "production", "LOG_LEVEL": "info"},
        resources=Resources(
            requests=ResourceList(cpu="10m", memory="16Mi"),
            limits=ResourceList(cpu="500m", memory="256Mi"),
        ),
        labels={"app": deployment, "tier": "front"},
        ports=[ContainerPort(container_port=8080, name="http")],
        readiness_probe=Probe(http_get=HTTPGetAction(port="http", path="/healthz")),
        liveness_probe=Probe(tcp_socket=TCPSocketAction(port=8080), period_seconds=20),
    )


def deployment_name(index: int) -> str:
    return f"web-{index // REPLICAS_PER_DEPLOYMENT:03d}"


def placement(index: int, templates: dict[str, ContainerTemplate]) -> Placement:
    name = deployment_name(index)
    tmpl = templates[name]
    return Placement(
        replica=f"{name}-{index:05d}",
        deployment=name,
        node=f"hollow-{index // REPLICAS_PER_NODE:04d}",
        template=tmpl,
        template_hash=tmpl.template_hash(),
        generation=3,
        cpu_millis=10,
        memory_bytes=16 * 2**20,
        created_at=NOW + index / 1000,
    )


def status(p: Placement, index: int) -> ReplicaStatus:
    ip = f"10.{128 + index // 65536}.{index // 256 % 256}.{index % 256}"
    return ReplicaStatus(
        state=ReplicaState.RUNNING,
        ready=True,
        probes={"readiness": "ok", "liveness": "ok"},
        ips={"default": ip},
        image_ports=["8080/tcp"],
        container_id=f"hollow{index:012d}",
        restarts=1,
        restart_times=[NOW + 5.0],
        started_at=NOW + 6.0,
        updated_at=NOW + 30.0,
        # as the agent writes it: the placement's replica, node, namespace, template
        replica=p.replica,
        deployment=p.deployment,
        node=p.node,
        namespace=p.namespace,
        template_hash=p.template_hash,
    )


def deployment(name: str, tmpl: ContainerTemplate) -> DeploymentRecord:
    return DeploymentRecord(
        metadata=ObjectMeta(name=name, labels={"team": "a"}, generation=3, uid="u-" + name),
        spec=DeploymentSpec(replicas=REPLICAS_PER_DEPLOYMENT, template=tmpl),
    )


@dataclass
class Row:
    record: str
    kind: type[Any]
    reader: str
    # What a mirror passes each decoded record through (corral.contract.sharing): a
    # callable that makes the function, so each pass starts from an empty pool.
    share: Callable[[], Callable[[Any], Any]] | None = None
    micros: float = 0.0
    bytes_each: float = 0.0

    def decoder(self) -> Callable[[bytes], Any]:
        kind = self.kind
        if self.share is None:
            return lambda raw: decode(raw, kind)
        share = self.share()
        return lambda raw: share(decode(raw, kind))


def decode_seconds(raws: list[bytes], row: Row, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        read = row.decoder()
        started = time.perf_counter()
        for raw in raws:
            read(raw)
        best = min(best, time.perf_counter() - started)
    return best


def held_bytes(raws: list[bytes], row: Row) -> int:
    """What decoding every record and keeping it allocates (tracemalloc)."""
    read = row.decoder()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [read(raw) for raw in raws]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # the list itself is not the records' cost
    return after - before - (kept.__sizeof__() if kept else 0)


def keys_bytes(keys: list[str], interned: bool) -> int:
    """What two mirrors' keys hold (a replica's placement and status share their key,
    <node>.<namespace>.<replica>), each arriving as its own string: kept apart, or
    interned as corral.natsio.kv.Mirror holds them (one string, and interning's table)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held: list[list[str]] = [[], []]
        for mirror in held:
            for key in keys:
                fresh = "".join([key])[:-1] + key[-1]  # equal, never the same object
                mirror.append(sys.intern(fresh) if interned else fresh)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before - sum(mirror.__sizeof__() for mirror in held)


def mib(value: float) -> str:
    return f"{value / 2**20:7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--thin",
        action="store_true",
        help="templates as bench_scale.py applies them: an image and requests only",
    )
    args = parser.parse_args()
    n: int = args.records

    names = sorted({deployment_name(i) for i in range(n)})
    templates = {name: template(name, args.thin) for name in names}
    placements = [placement(i, templates) for i in range(n)]
    encoded = {
        "Placement": [encode(p) for p in placements],
        "ReplicaStatus": [encode(status(p, i)) for i, p in enumerate(placements)],
        "Deployment": [encode(deployment(name, templates[name])) for name in names],
    }
    rows = [
        Row("Placement", Placement, "scheduler, node agent (full)"),
        Row("Placement", Placement, "... shared (TEMPLATES.share)", lambda: TemplatePool().share),
        Row("Placement", EndpointsPlacement, "netmgr"),
        Row("Placement", EndpointsPlacement, "... shared", lambda: TemplatePool().share),
        Row("Placement", ClaimsPlacement, "volmgr"),
        Row("Placement", ClaimsPlacement, "... names interned", lambda: intern_replica_names),
        Row("ReplicaStatus", ReplicaStatus, "full"),
        Row("ReplicaStatus", ReplicaStatus, "... names interned", lambda: intern_replica_names),
        Row("ReplicaStatus", SchedulingStatus, "scheduler"),
        Row("ReplicaStatus", SchedulingStatus, "... names interned", lambda: intern_replica_names),
        Row("ReplicaStatus", EndpointsStatus, "netmgr"),
        Row("ReplicaStatus", EndpointsStatus, "... names interned", lambda: intern_replica_names),
        Row("Deployment", DeploymentRecord, "scheduler (full)"),
        Row("Deployment", NetworksDeployment, "netmgr"),
    ]
    for row in rows:
        raws = encoded[row.record]
        row.micros = decode_seconds(raws, row, args.repeat) / len(raws) * 1e6
        row.bytes_each = held_bytes(raws, row) / len(raws)

    sizes = {record: sum(map(len, raws)) / len(raws) for record, raws in encoded.items()}
    print(
        f"{n:,} placements and replica statuses, {len(names)} Deployments "
        f"(JSON: placement {sizes['Placement']:.0f} B, status {sizes['ReplicaStatus']:.0f} B, "
        f"deployment {sizes['Deployment']:.0f} B)"
    )
    print(
        f"{'record':<14} {'decoded as':<19} {'read by':<29} {'µs/decode':>9} "
        f"{'B/record':>9} {'MiB held':>9}"
    )
    for row in rows:
        held = row.bytes_each * len(encoded[row.record])
        print(
            f"{row.record:<14} {row.kind.__name__:<19} {row.reader:<29} {row.micros:9.2f} "
            f"{row.bytes_each:9.0f} {mib(held):>9}"
        )
    by = {(row.record, row.kind, row.share is not None): row for row in rows}
    full = by["Placement", Placement, False].bytes_each
    full += by["ReplicaStatus", ReplicaStatus, False].bytes_each
    shared = by["Placement", Placement, True].bytes_each
    shared_full = shared + by["ReplicaStatus", ReplicaStatus, True].bytes_each
    shared += by["ReplicaStatus", SchedulingStatus, True].bytes_each
    print(
        f"scheduler at {n:,} replicas (placements + statuses): decoded {mib(full * n)} MiB, "
        f"shared {mib(shared_full * n)} MiB, shared with status views {mib(shared * n)} MiB"
    )
    views = {
        shared: by["Placement", EndpointsPlacement, shared].bytes_each
        + by["ReplicaStatus", EndpointsStatus, shared].bytes_each
        for shared in (False, True)
    }
    print(
        f"netmgr at {n:,} replicas (placements + statuses): full {mib(full * n)} MiB, "
        f"views {mib(views[False] * n)} MiB, shared {mib(views[True] * n)} MiB"
    )
    vol_full = by["Placement", Placement, False].bytes_each
    claims = {
        shared: by["Placement", ClaimsPlacement, shared].bytes_each for shared in (False, True)
    }
    print(
        f"volmgr at {n:,} replicas (placements):            full {mib(vol_full * n)} MiB, "
        f"views {mib(claims[False] * n)} MiB, shared {mib(claims[True] * n)} MiB"
    )
    keys = [p.key for p in placements]
    apart, interned = keys_bytes(keys, False), keys_bytes(keys, True)
    print(
        f"keys of two mirrors at {n:,} replicas (placements + statuses, the scheduler's and "
        f"netmgr's): apart {mib(apart)} MiB, interned {mib(interned)} MiB "
        f"({(apart - interned) / n:.0f} B less a replica)"
    )


if __name__ == "__main__":
    main()
