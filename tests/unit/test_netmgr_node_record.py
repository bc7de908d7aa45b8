"""The node part writes its NodeNetwork record soon after applying a new endpoints
revision (what netmgr's drains wait for: docs/rollouts.md, "Graceful stops"), but at
most once per RECORD_REVISION_SECONDS for that alone."""

from __future__ import annotations

from typing import Any

import pytest

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.network_state import NodeNetwork
from corral.natsio.kv import MemoryBucket
from corral_netmgr.node.part import RECORD, RECORD_REVISION_SECONDS, NodePart, NodeSettings
from tests.unit.test_netmgr_node_part import FakeIptables, feed, udp_dns


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ready_part(monkeypatch: pytest.MonkeyPatch) -> tuple[NodePart, MemoryBucket, Clock]:
    buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    clock = Clock()
    part = NodePart(
        buckets,  # type: ignore[arg-type]
        NodeSettings(node="n1", cluster_id="c0ffee", host_id="host-a"),
        docker=None,  # type: ignore[arg-type]
        iptables=FakeIptables(),  # type: ignore[arg-type]
        monotonic=clock,
    )

    async def host_facts() -> tuple[str, list[str]]:
        return "192.0.2.2", []

    async def listening_ports() -> list[str]:
        return []

    monkeypatch.setattr(part, "host_facts", host_facts)
    monkeypatch.setattr(part, "listening_ports", listening_ports)
    part.done.update({"networks", "rules", "routes"})
    part.endpoints.current = True  # the watch's replay is complete
    return part, buckets[names.NODE_NETWORK_BUCKET], clock


async def stored(bucket: MemoryBucket) -> tuple[NodeNetwork, int]:
    entry = await bucket.get("n1")
    assert entry is not None and entry.value is not None
    return decode(entry.value, NodeNetwork), entry.revision


async def apply_and_record(part: NodePart) -> None:
    """What the controller does: the rules, then the record they enqueue."""
    await part.reconcile_rules()
    await part.reconcile_record()


async def test_a_burst_of_endpoints_changes_is_a_few_record_writes_and_the_last_follows_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    part, bucket, clock = ready_part(monkeypatch)
    await apply_and_record(part)
    _, first = await stored(bucket)
    changes = 50
    step = 1 / 128  # exact in binary: no rounding near the interval's edges
    for index in range(changes):  # 50 changes in 0.39 s, each applied on its own
        clock.now += step
        feed(part, udp_dns(f"10.128.0.{index + 2}"))
        await apply_and_record(part)
    record, last = await stored(bucket)
    writes = last - first
    assert 1 <= writes <= changes * step / RECORD_REVISION_SECONDS + 1  # not one per change
    assert record.endpoints_revision < part.endpoints_revision  # the newest is due soon
    due: Any = part.controller.queue.due_in(RECORD)
    assert due is not None and due <= RECORD_REVISION_SECONDS
    clock.now += RECORD_REVISION_SECONDS
    await part.reconcile_record()  # the delayed key, at its time
    record, _ = await stored(bucket)
    assert record.endpoints_revision == part.endpoints_revision == part.endpoints.position

    # after a quiet time, a new revision is written at once
    clock.now += 1.0
    feed(part, udp_dns("10.128.0.200"))
    await apply_and_record(part)
    record, _ = await stored(bucket)
    assert record.endpoints_revision == part.endpoints.position
    # a change other than the revision is never held back, however recent the last write
    clock.now += 0.01
    part.problems["rules"] = "iptables-restore failed"
    await part.reconcile_record()
    record, _ = await stored(bucket)
    assert not record.ready
