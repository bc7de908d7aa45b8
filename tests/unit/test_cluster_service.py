"""corral.natsio.cluster_service: what netmgr and volmgr share around their own logic
(the node part's common flags and Docker engine, the cluster loop's mirrors)."""

from __future__ import annotations

import argparse
import types
from dataclasses import dataclass
from typing import Any, cast

import anyio
import pytest

from corral.natsio.cluster_service import (
    MirroredLoop,
    MirrorSet,
    node_name,
    node_resync_seconds,
    open_docker,
    write_into,
)
from corral.natsio.kv import Create, MemoryBucket, Mirror
from corral.natsio.service import RefusedToStart, ServiceContext


def _args(**flags: Any) -> argparse.Namespace:
    return argparse.Namespace(**flags)


def test_node_name_and_resync_are_checked_naming_the_flag() -> None:
    assert node_name(_args(node="n-1")) == "n-1"
    assert node_resync_seconds(_args()) == 30.0
    with pytest.raises(RefusedToStart, match="--node 'N_1' is not a node name"):
        node_name(_args(node="N_1"))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(RefusedToStart, match="--node-resync-seconds"):
            node_resync_seconds(_args(node_resync_seconds=bad))


async def test_a_docker_host_it_cannot_use_refuses_remove_all() -> None:
    ctx = cast(ServiceContext, types.SimpleNamespace(health={}))
    with pytest.raises(RefusedToStart, match="--docker-host 'bogus://x'"):
        await open_docker(ctx, _args(docker_host="bogus://x", remove_all=True))


async def test_a_docker_host_it_cannot_use_leaves_the_node_part_up_and_unhealthy() -> None:
    ctx = cast(ServiceContext, types.SimpleNamespace(health={}))
    async with anyio.create_task_group() as tg:
        await tg.start(_open, ctx, _args(docker_host="bogus://x"))
        assert ctx.health == {"docker": False}
        tg.cancel_scope.cancel()


async def _open(ctx: ServiceContext, args: argparse.Namespace, *, task_status: Any) -> None:
    await open_docker(ctx, args, task_status=task_status)


@dataclass
class _Mirrors(MirrorSet):
    first: Mirror[int]
    second: Mirror[int]


class _Loop(MirroredLoop[_Mirrors]):
    def __init__(self, mirrors: _Mirrors) -> None:
        self.mirrors = mirrors


async def test_a_loop_starts_once_every_mirror_of_its_set_has_replayed() -> None:
    first, second = MemoryBucket("first"), MemoryBucket("second")
    await second.put("k", b"1")
    mirrors = _Mirrors(Mirror(first, int), Mirror(second, int))
    assert mirrors.all() == [mirrors.first, mirrors.second]
    async with anyio.create_task_group() as tg:
        await tg.start(_Loop(mirrors).start_mirrors)
        assert mirrors.first.current and mirrors.second.get("k") == 1
        tg.cancel_scope.cancel()


def test_both_services_keep_their_active_and_reconcile_metric_names() -> None:
    from prometheus_client import REGISTRY, generate_latest

    import corral_netmgr.metrics
    import corral_volmgr.metrics

    corral_netmgr.metrics.RECONCILE_SECONDS.labels("network").observe(0.001)
    corral_volmgr.metrics.RECONCILE_SECONDS.labels("claim").observe(0.001)
    text = generate_latest(REGISTRY).decode()
    for service in ("netmgr", "volmgr"):
        assert f"# HELP corral_{service}_active 1 while this {service} holds the lease" in text
        assert f"corral_{service}_reconcile_seconds_bucket{{controller=" in text
        assert 'le="0.0025"' in text


async def test_writes_reach_the_mirror_and_an_unreadable_record_is_replaced_if_asked() -> None:
    bucket = MemoryBucket("records")
    await bucket.put("bad", b"not json")
    mirror = Mirror(bucket, int)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        assert "bad" in mirror.unreadable
        assert await write_into(mirror, [Create("good", b"1")])
        assert mirror.get("good") == 1
        assert not await write_into(mirror, [Create("bad", b"2")])
        assert await write_into(mirror, [Create("bad", b"2")], replace_unreadable=True)
        assert mirror.get("bad") == 2
        tg.cancel_scope.cancel()
