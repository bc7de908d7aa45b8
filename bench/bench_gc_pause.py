"""How long Python's garbage collector holds the scheduler's event loop, in memory.

    .venv/bin/python bench/bench_gc_pause.py [--replicas 20000]

Decodes --replicas placements and as many replica statuses into dicts of
(record, revision), as the scheduler's mirrors hold them (the statuses as its view of
them), then times: objects the collector tracks per replica, a full collection (what
CPython runs now and then on its own, scanning every tracked object at once), and the
scheduler's tick under corral.natsio.gc_policy (collect the young generations,
freeze the survivors), then a full collection after it.
"""

from __future__ import annotations

import argparse
import gc
import time

from corral.contract.codec import decode, encode
from corral.contract.specs import ContainerTemplate, ResourceList, Resources
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.contract.views import SchedulingStatus
from corral.natsio.gc_policy import GcPolicy


def timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=20_000)
    args = parser.parse_args()
    template = ContainerTemplate(
        image="corral-test/busybox:1",
        resources=Resources(requests=ResourceList(cpu="10m", memory="16Mi")),
    )
    digest = template.template_hash()
    gc.collect()
    before = len(gc.get_objects())
    placements: dict[str, tuple[Placement, int]] = {}
    statuses: dict[str, tuple[SchedulingStatus, int]] = {}
    for index in range(args.replicas):
        placement = Placement(
            replica=f"app-{index % 100}-{index:05d}",
            deployment=f"app-{index % 100}",
            node=f"hollow-{index % 1000}",
            template=template,
            template_hash=digest,
            generation=1,
            cpu_millis=10,
            memory_bytes=16 << 20,
        )
        status = ReplicaStatus(
            replica=placement.replica,
            deployment=placement.deployment,
            node=placement.node,
            state=ReplicaState.RUNNING,
            template_hash=digest,
        )
        placements[placement.key] = (decode(encode(placement), Placement), index)
        statuses[placement.key] = (decode(encode(status), SchedulingStatus), index)
    tracked = (len(gc.get_objects()) - before) / args.replicas
    print(f"{args.replicas:,} placements and replica statuses, as the mirrors hold them")
    print(f"  objects tracked by the collector per replica: {tracked:.1f}")
    fulls = [timed(gc.collect) for _ in range(3)]
    print("  full collection: " + ", ".join(f"{ms:.1f}" for ms in fulls) + " ms")
    policy = GcPolicy()
    try:
        tick = timed(lambda: policy.tick(0.0))
        print(f"  gc_policy tick (young generations, then freeze): {tick:.1f} ms")
        print(f"  full collection after it: {timed(gc.collect):.2f} ms")
    finally:
        gc.unfreeze()
    assert placements and statuses


if __name__ == "__main__":
    main()
