"""The hollow cluster's pieces without NATS: its flags and settings, and the hollow
engine's delays (a started container runs only after --ready-after, a removed one
goes after --remove-after)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral_node_agent.hollow_cluster import (
    DEFAULT_PASSES_PARALLEL,
    ClusterSettings,
    HollowCluster,
    build_parser,
    collections_policy,
    settings_from_args,
)
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.runtime import ContainerGone, ContainerSpec, ContainerState

SPEC = ContainerSpec(
    name="corral_n1_web-a1_c1",
    image="app:1",
    labels={names.LABEL_MANAGED: "true", names.LABEL_NODE: "n1", names.LABEL_REPLICA: "web-a1"},
)


async def test_a_hollow_container_runs_only_ready_after_its_start() -> None:
    runtime = HollowRuntime(images={"app:1"}, start_seconds=0.3)
    container_id = await runtime.create_container(SPEC)
    began = time.monotonic()
    await runtime.start_container(container_id)
    assert time.monotonic() - began >= 0.3
    assert runtime.containers[container_id].state == ContainerState.RUNNING


async def test_a_hollow_container_removed_while_starting_never_runs() -> None:
    runtime = HollowRuntime(images={"app:1"}, start_seconds=0.3)
    container_id = await runtime.create_container(SPEC)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.remove_container, container_id)
        with pytest.raises(ContainerGone):
            await runtime.start_container(container_id)
    assert container_id not in runtime.containers


async def test_a_hollow_container_keeps_running_until_its_removal_took_remove_after() -> None:
    runtime = HollowRuntime(images={"app:1"}, remove_seconds=0.3)
    container_id = await runtime.create_container(SPEC)
    await runtime.start_container(container_id)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.remove_container, container_id)
        await anyio.sleep(0.1)
        assert [c.id for c in await runtime.list_containers()] == [container_id]
    assert await runtime.list_containers() == []
    assert runtime.removes == 1


async def test_a_scale_run_keeps_no_list_of_operations() -> None:
    runtime = HollowRuntime(record_operations=False)
    await runtime.pull_image("app:1")
    await runtime.start_container(await runtime.create_container(SPEC))
    assert runtime.pulls == [] and runtime.operations == [] and runtime.creates == 1


def test_flags_become_settings() -> None:
    args = build_parser().parse_args(
        "--nodes 300 --pool 50 --name-prefix h- --first 7 --cpu 1500m --memory 2Gi "
        "--label zone=b --ready-after 0.5 --remove-after 0.25 --state-dir /tmp/x "
        "--nats nats://127.0.0.1:4333".split()
    )
    settings = settings_from_args(args)
    assert (settings.nodes, settings.pool, settings.first) == (300, 50, 7)
    assert (settings.cpu_millis, settings.memory_bytes) == (1500, 2 * 2**30)
    assert settings.labels == {"zone": "b"}
    assert (settings.ready_after, settings.remove_after) == (0.5, 0.25)
    assert settings.state_dir == Path("/tmp/x")
    assert settings.node_names()[:2] == ["h-7", "h-8"] and len(settings.node_names()) == 300
    assert settings.passes_parallel == DEFAULT_PASSES_PARALLEL


def test_the_collections_policy_runs_without_full_collections_unless_python_gc() -> None:
    policy = collections_policy(build_parser().parse_args(["--nodes", "3"]))
    # A full collection would unfreeze every node's state and scan it at once.
    assert policy is not None and policy.full_seconds == math.inf
    assert collections_policy(build_parser().parse_args(["--nodes", "3", "--python-gc"])) is None


def test_the_nodes_of_a_cluster_share_one_pass_gate_unless_told_none() -> None:
    args = build_parser().parse_args(["--nodes", "3", "--passes-parallel", "2"])
    settings = settings_from_args(args)
    assert settings.passes_parallel == 2
    gate = HollowCluster(settings).pass_gate
    assert gate is not None and gate.parallel == 2
    ungated = settings_from_args(
        build_parser().parse_args(["--nodes", "3", "--passes-parallel", "0"])
    )
    assert HollowCluster(ungated).pass_gate is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"nodes": 0}, "nodes"),
        ({"pool": 0}, "pool"),
        ({"ready_after": -1.0}, "ready_after"),
        ({"remove_after": -0.5}, "remove_after"),
        ({"name_prefix": "Hollow_"}, "name_prefix"),
        ({"name_prefix": "h" * 70}, "name_prefix"),
        ({"first": -3}, "first"),
        ({"passes_parallel": -1}, "passes_parallel"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(changes: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"nodes": 10, **changes}
    with pytest.raises(ValueError, match=field):
        ClusterSettings(**values)  # type: ignore[arg-type]


def test_a_bad_capacity_flag_is_refused_naming_it() -> None:
    args = build_parser().parse_args(["--nodes", "3", "--cpu", "lots"])
    with pytest.raises(ValueError, match="lots"):
        settings_from_args(args)
