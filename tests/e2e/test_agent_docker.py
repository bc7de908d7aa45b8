"""The node agent against a real Docker engine; the test plays the scheduler."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import ContainerTemplate, ResourceList, Resources
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.natsio.cluster import read_cluster_identity
from corral.natsio.kv import NatsBucket
from tests.e2e.conftest import AgentFactory

pytestmark = pytest.mark.docker

SLEEP = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def unique(prefix: str) -> str:
    """A replica name of this test alone: web-3f9a1c."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _pass_count() -> float:
    """Reconcile passes run by the agents of this process (the histogram's count)."""
    return float(REGISTRY.get_sample_value("corral_agent_reconcile_seconds_count") or 0.0)


async def passes_after(count: int = 2, within: float = 20.0) -> None:
    """Wait until `count` more passes completed: all but the first began after now."""
    target = _pass_count() + count
    await eventually(lambda: _pass_count() >= target, within=within)


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def containers_of(node: str) -> list[dict[str, Any]]:
    ids = docker("ps", "-aq", "--filter", f"label={names.LABEL_NODE}={node}").split()
    if not ids:
        return []
    # Some may be removed between the listing and the inspection: those are left out.
    done = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=60)
    found: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return found


def running_ids(node: str) -> dict[str, str]:
    """replica -> container id, for running containers of the node."""
    return {
        c["Config"]["Labels"][names.LABEL_REPLICA]: c["Id"]
        for c in containers_of(node)
        if c["State"]["Running"]
    }


def make_placement(
    node: str,
    replica: str,
    image: str,
    *,
    resources: Resources | None = None,
    env: dict[str, str] | None = None,
) -> Placement:
    template = ContainerTemplate(
        image=image,
        command=SLEEP[:2],
        args=SLEEP[2:],
        env=env or {},
        resources=resources or Resources(),
    )
    return Placement(
        replica=replica,
        deployment="web",
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


async def place(buckets: dict[str, NatsBucket], placement: Placement) -> None:
    key = placement.key
    await buckets[names.PLACEMENTS_BUCKET].put(key, encode(placement))


async def cluster_id(buckets: dict[str, NatsBucket]) -> str:
    """The id of the test's cluster (made when the first service joined it)."""
    identity = await read_cluster_identity(buckets[names.CLUSTER_BUCKET])
    assert identity is not None
    return identity.id


async def status_of(
    buckets: dict[str, NatsBucket], node: str, replica: str
) -> ReplicaStatus | None:
    entry = await buckets[names.REPLICA_STATUS_BUCKET].get(
        names.placement_key(node, "default", replica)
    )
    return None if entry is None else decode(entry.value or b"", ReplicaStatus)


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await anyio.sleep(0.1)


def state_is(
    buckets: dict[str, NatsBucket], node: str, replica: str, state: ReplicaState
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        status = await status_of(buckets, node, replica)
        return status is not None and status.state == state

    return check


async def test_runs_placements_with_labels_and_limits(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    resources = Resources(limits=ResourceList(cpu="250m", memory="64Mi"))
    web = unique("web")
    placement = make_placement(
        node_name, web, test_image, resources=resources, env={"GREETING": "hi"}
    )
    async with agent_running():
        await place(buckets, placement)
        await eventually(state_is(buckets, node_name, web, ReplicaState.RUNNING))
        (container,) = containers_of(node_name)
        cluster = await cluster_id(buckets)
        assert container["Name"] == f"/corral_{node_name}_{web}_{cluster}"
        labels = container["Config"]["Labels"]
        assert labels[names.LABEL_MANAGED] == "true"
        assert labels[names.LABEL_CLUSTER] == cluster
        assert labels[names.LABEL_NODE] == node_name
        assert labels[names.LABEL_DEPLOYMENT] == "web"
        assert labels[names.LABEL_REPLICA] == web
        assert labels[names.LABEL_TEMPLATE_HASH] == placement.template_hash
        host = container["HostConfig"]
        assert (host["CpuQuota"], host["CpuPeriod"]) == (25_000, 100_000)  # 250m
        assert host["Memory"] == 64 * 2**20
        assert host["RestartPolicy"]["Name"] in ("no", "")
        assert container["Config"]["Entrypoint"] == SLEEP[:2]
        assert "GREETING=hi" in container["Config"]["Env"]
        status = await status_of(buckets, node_name, web)
        assert status is not None and status.container_id == container["Id"]
        assert status.started_at is not None


async def test_a_cpu_limit_above_the_hosts_cpus_runs_as_a_cap(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    """A limit is a cap, not a reservation: 64 cores on a smaller host runs (as a pod's
    does under the kubelet); Docker would refuse it as NanoCpus ("Range of CPUs is from
    0.01 to 2.00")."""
    wide = unique("wide")
    limits = Resources(limits=ResourceList(cpu="64"))
    async with agent_running():
        await place(buckets, make_placement(node_name, wide, test_image, resources=limits))
        await eventually(state_is(buckets, node_name, wide, ReplicaState.RUNNING))
        (container,) = containers_of(node_name)
        assert container["HostConfig"]["CpuQuota"] == 64 * 100_000


async def test_killed_is_restarted_and_removed_is_recreated(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    web = unique("web")
    async with agent_running():
        await place(buckets, make_placement(node_name, web, test_image))
        await eventually(lambda: web in running_ids(node_name))
        first = running_ids(node_name)[web]

        docker("kill", first)
        # The agent saw it exit and started it again (its restart count grew); engine
        # events wake the agent well before its 10 s resync.
        await eventually(lambda: _restarts_at_least(buckets, node_name, web, 1), within=5)
        await eventually(lambda: running_ids(node_name).get(web) == first, within=5)

        docker("rm", "-f", first)
        await eventually(lambda: running_ids(node_name).get(web) not in (None, first), within=5)
        assert len(containers_of(node_name)) == 1


async def _restarts_at_least(
    buckets: dict[str, NatsBucket], node: str, replica: str, restarts: int
) -> bool:
    status = await status_of(buckets, node, replica)
    return status is not None and status.restarts >= restarts


async def test_restart_adopts_its_own_and_removes_what_is_no_longer_placed(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    web_a, web_b = unique("web"), unique("web")
    for replica in (web_a, web_b):
        await place(buckets, make_placement(node_name, replica, test_image))
    async with agent_running():
        await eventually(lambda: len(running_ids(node_name)) == 2)
    before = running_ids(node_name)
    assert set(before) == {web_a, web_b}  # the agent's stop leaves them running

    # While no agent runs: a container of this cluster and node, of a replica placed
    # nowhere, appears (not running: a running one would stop gracefully, on its own
    # task, test_graceful_stops.py); and one of another cluster, with the same node name.
    def labelled(name: str, cluster: str, verb: tuple[str, ...] = ("run", "-d")) -> str:
        return docker(
            *verb, "--name", name,
            "--label", f"{names.LABEL_MANAGED}=true",
            "--label", f"{names.LABEL_CLUSTER}={cluster}",
            "--label", f"{names.LABEL_NODE}={node_name}",
            "--label", f"{names.LABEL_REPLICA}=gone-x1",
            "--label", f"{names.LABEL_DEPLOYMENT}=web",
            test_image, "sleep", "3600",
        ).strip()  # fmt: skip

    unplaced = labelled(f"corral-unplaced-{node_name}", await cluster_id(buckets), ("create",))
    foreign = labelled(f"corral-foreign-{node_name}", "0123456789abcdef")

    async with agent_running("--resync-seconds", "0.2"):
        # Fencing comes first: the unplaced one is gone once the agent reports started.
        ids = {c["Id"] for c in containers_of(node_name)}
        assert unplaced not in ids and foreign in ids
        # Two more complete passes (the second began after this point): a wrong
        # agent would have created its duplicates by now.
        await passes_after(2)
        after = running_ids(node_name)
        assert after == {**before, "gone-x1": foreign}  # the other cluster's is untouched
        assert len(containers_of(node_name)) == 3


async def test_deleted_placement_removes_its_container(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    web_a, web_b = unique("web"), unique("web")
    async with agent_running("--drain-timeout", "0"):  # no netmgr here to write the drain
        await place(buckets, make_placement(node_name, web_a, test_image))
        await place(buckets, make_placement(node_name, web_b, test_image))
        await eventually(lambda: len(running_ids(node_name)) == 2)
        await buckets[names.PLACEMENTS_BUCKET].delete(
            names.placement_key(node_name, "default", web_b)
        )
        await eventually(lambda: set(running_ids(node_name)) == {web_a})
        await eventually(lambda: len(containers_of(node_name)) == 1)

        async def status_gone() -> bool:
            return await status_of(buckets, node_name, web_b) is None

        await eventually(status_gone)


async def test_missing_image_is_image_pull_backoff(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    missing = "127.0.0.1:1/corral-missing/nothing:1"  # a registry nobody serves
    bad, web = unique("bad"), unique("web")
    async with agent_running():
        await place(buckets, make_placement(node_name, bad, missing))
        await eventually(state_is(buckets, node_name, bad, ReplicaState.IMAGE_PULL_BACKOFF))
        status = await status_of(buckets, node_name, bad)
        assert status is not None and status.message
        # The agent lives on and runs what it can.
        await place(buckets, make_placement(node_name, web, test_image))
        await eventually(state_is(buckets, node_name, web, ReplicaState.RUNNING))
        assert bad not in running_ids(node_name)


async def test_a_container_of_another_cluster_holding_the_name_is_never_removed(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    web = unique("web")
    async with agent_running():
        cluster = await cluster_id(buckets)
        holder = docker(
            "create", "--name", f"corral_{node_name}_{web}_{cluster}",
            "--label", f"{names.LABEL_MANAGED}=true",
            "--label", f"{names.LABEL_CLUSTER}=0123456789abcdef",
            "--label", f"{names.LABEL_NODE}={node_name}-elsewhere",
            test_image, "sleep", "3600",
        ).strip()  # fmt: skip
        try:
            await place(buckets, make_placement(node_name, web, test_image))
            await eventually(state_is(buckets, node_name, web, ReplicaState.FAILED))
            status = await status_of(buckets, node_name, web)
            assert status is not None and "held by container" in status.message
            assert holder in docker("ps", "-aq", "--no-trunc").split()
        finally:
            docker("rm", "-f", holder)
