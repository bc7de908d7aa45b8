"""The node agent against a real Docker engine; the test plays the scheduler."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from corral import names
from corral.codec import decode, encode
from corral.kv import NatsBucket
from corral.specs import ContainerTemplate, ResourceList, Resources
from corral.state import Placement, ReplicaState, ReplicaStatus
from tests.e2e.conftest import AgentFactory

pytestmark = pytest.mark.docker

SLEEP = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


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
    key = names.placement_key(placement.node, placement.replica)
    await buckets[names.PLACEMENTS_BUCKET].put(key, encode(placement))


async def status_of(
    buckets: dict[str, NatsBucket], node: str, replica: str
) -> ReplicaStatus | None:
    entry = await buckets[names.REPLICA_STATUS_BUCKET].get(names.placement_key(node, replica))
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
    placement = make_placement(
        node_name, "web-a1", test_image, resources=resources, env={"GREETING": "hi"}
    )
    async with agent_running():
        await place(buckets, placement)
        await eventually(state_is(buckets, node_name, "web-a1", ReplicaState.RUNNING))
        (container,) = containers_of(node_name)
        assert container["Name"] == "/corral-web-a1"
        labels = container["Config"]["Labels"]
        assert labels[names.LABEL_MANAGED] == "true"
        assert labels[names.LABEL_NODE] == node_name
        assert labels[names.LABEL_DEPLOYMENT] == "web"
        assert labels[names.LABEL_REPLICA] == "web-a1"
        assert labels[names.LABEL_TEMPLATE_HASH] == placement.template_hash
        host = container["HostConfig"]
        assert host["NanoCpus"] == 250_000_000
        assert host["Memory"] == 64 * 2**20
        assert host["RestartPolicy"]["Name"] in ("no", "")
        assert container["Config"]["Entrypoint"] == SLEEP[:2]
        assert "GREETING=hi" in container["Config"]["Env"]
        status = await status_of(buckets, node_name, "web-a1")
        assert status is not None and status.container_id == container["Id"]
        assert status.started_at is not None


async def test_killed_is_restarted_and_removed_is_recreated(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    async with agent_running():
        await place(buckets, make_placement(node_name, "web-a1", test_image))
        await eventually(lambda: "web-a1" in running_ids(node_name))
        first = running_ids(node_name)["web-a1"]

        docker("kill", first)
        # Engine events wake the agent: well before its 10 s resync.
        await eventually(lambda: running_ids(node_name).get("web-a1") == first, within=5)
        await eventually(lambda: _restarts_at_least(buckets, node_name, "web-a1", 1), within=5)

        docker("rm", "-f", first)
        await eventually(
            lambda: running_ids(node_name).get("web-a1") not in (None, first), within=5
        )
        assert len(containers_of(node_name)) == 1


async def _restarts_at_least(
    buckets: dict[str, NatsBucket], node: str, replica: str, restarts: int
) -> bool:
    status = await status_of(buckets, node, replica)
    return status is not None and status.restarts >= restarts


async def test_restart_adopts_and_removes_orphans(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    for replica in ("web-a1", "web-b2"):
        await place(buckets, make_placement(node_name, replica, test_image))
    async with agent_running():
        await eventually(lambda: len(running_ids(node_name)) == 2)
    before = running_ids(node_name)
    assert set(before) == {"web-a1", "web-b2"}  # the agent's stop leaves them running

    # While no agent runs: a labelled container of a replica placed nowhere appears.
    orphan = docker(
        "run",
        "-d",
        "--name",
        f"corral-orphan-{node_name}",
        "--label",
        f"{names.LABEL_MANAGED}=true",
        "--label",
        f"{names.LABEL_NODE}={node_name}",
        "--label",
        f"{names.LABEL_REPLICA}=orphan-x1",
        "--label",
        f"{names.LABEL_DEPLOYMENT}=web",
        test_image,
        "sleep",
        "3600",
    ).strip()

    async with agent_running():
        # Fencing comes first: the orphan is gone once the agent reports started.
        ids = {c["Id"] for c in containers_of(node_name)}
        assert orphan not in ids
        await anyio.sleep(1)  # give a wrong agent time to create duplicates
        after = running_ids(node_name)
        assert after == before
        assert len(containers_of(node_name)) == 2


async def test_deleted_placement_removes_its_container(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    async with agent_running():
        await place(buckets, make_placement(node_name, "web-a1", test_image))
        await place(buckets, make_placement(node_name, "web-b2", test_image))
        await eventually(lambda: len(running_ids(node_name)) == 2)
        await buckets[names.PLACEMENTS_BUCKET].delete(names.placement_key(node_name, "web-b2"))
        await eventually(lambda: set(running_ids(node_name)) == {"web-a1"})
        await eventually(lambda: len(containers_of(node_name)) == 1)

        async def status_gone() -> bool:
            return await status_of(buckets, node_name, "web-b2") is None

        await eventually(status_gone)


async def test_missing_image_is_image_pull_backoff(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    missing = "127.0.0.1:1/corral-missing/nothing:1"  # a registry nobody serves
    async with agent_running():
        await place(buckets, make_placement(node_name, "bad-a1", missing))
        await eventually(state_is(buckets, node_name, "bad-a1", ReplicaState.IMAGE_PULL_BACKOFF))
        status = await status_of(buckets, node_name, "bad-a1")
        assert status is not None and status.message
        # The agent lives on and runs what it can.
        await place(buckets, make_placement(node_name, "web-b2", test_image))
        await eventually(state_is(buckets, node_name, "web-b2", ReplicaState.RUNNING))
        assert "bad-a1" not in running_ids(node_name)
