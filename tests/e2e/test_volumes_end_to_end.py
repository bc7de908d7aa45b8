"""The whole of issue 9 through every real piece: the scheduler, volmgr's cluster part,
volmgr's node part beside each node agent (the local Docker engine, and a second dockerd
for the last test), real loop devices, and the CLI as a user types it.

- a claim of the default class is provisioned on the node its first replica is placed
  on; the data written through it survives the container's removal, a rolling update,
  and the pieces stopping and starting again (as `corral down` / `corral up`: the node
  part unmounts, keeping the image, and mounts it again); a write past its size fails
  inside the container with "No space left on device";
- deleting the claim while a replica uses it leaves it Terminating; once the Deployment
  is gone it goes, and its volume's data (class `local`: Delete) with it;
- a Retain volume is Released with its data when its claim goes, and deleting it keeps
  the data on the node (the node part's --delete-data removes it);
- a ReadWriteOncePod claim's update never runs two containers;
- a claim bound to a volume on the second engine's node pulls its replica there.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.natsio.kv import NatsBucket
from tests.agents import running_agent
from tests.e2e.conftest import AgentFactory
from tests.e2e.test_deployment_lifecycle import corral
from tests.e2e.test_netmgr_node import second_host
from tests.e2e.test_volmgr_node import Guard, remove_all, running_node_part, unchanged_host
from tests.integration.scheduler_harness import running_scheduler
from tests.integration.volmgr_harness import running_volmgr
from tests.waiting import eventually

pytestmark = pytest.mark.docker

__all__ = ["second_host", "unchanged_host"]  # fixtures, used by name

WRITER = "hostname >> /data/log; exec sleep 3600"


def sh(*argv: str, check: bool = True, engine: str | None = None) -> str:
    env = (
        None if engine is None else {"DOCKER_HOST": engine, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    )
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr}")
    return done.stdout + done.stderr


async def run(*argv: str, check: bool = True, engine: str | None = None) -> str:
    """A command in a thread: the agent and the node part share this test's event loop."""
    return await anyio.to_thread.run_sync(lambda: sh(*argv, check=check, engine=engine))


async def ok(nats_url: str, *args: str) -> str:
    return (await corral(nats_url, *args)).stdout


def running_ids(deployment: str, engine: str | None = None) -> list[str]:
    out = sh(
        "docker", "ps", "-q", "--filter", "status=running",
        "--filter", f"label={names.LABEL_DEPLOYMENT}={deployment}", engine=engine,
    )  # fmt: skip
    return out.split()


async def one_running(deployment: str, engine: str | None = None, but: str = "") -> str:
    """The id of the one running container of `deployment` (not `but`)."""
    found = await eventually(
        lambda: anyio.to_thread.run_sync(lambda: running_ids(deployment, engine)),
        lambda ids: len(ids) == 1 and ids[0] != but,
        within=90,
    )
    return str(found[0])


def deployment_yaml(name: str, claim: str, image: str, *, env: str = "1") -> str:
    return f"""apiVersion: corral/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  template:
    image: {image}
    command: [sh, -c, "{WRITER}"]
    env: {{ROUND: "{env}"}}
    volumes:
      - name: data
        persistentVolumeClaim: {{claimName: {claim}}}
    volumeMounts:
      - {{name: data, mountPath: /data}}
"""


async def apply(nats_url: str, folder: Path, text: str) -> str:
    path = folder / f"{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(text, encoding="utf-8")
    return await ok(nats_url, "apply", "-f", str(path))


async def claim_line(nats_url: str, claim: str) -> str:
    lines = (await ok(nats_url, "get", "pvc")).splitlines()
    return next((line for line in lines if line.split()[:1] == [claim]), "")


@asynccontextmanager
async def node_pieces(
    nats_url: str, node: str, folder: Path, agent: AgentFactory
) -> AsyncIterator[None]:
    async with running_node_part(nats_url, node, folder), agent():
        yield


async def test_a_claims_data_outlives_containers_updates_and_a_restart_and_its_size_holds(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    test_image: str,
    agent_running: AgentFactory,
    unchanged_host: Guard,
    tmp_path: Path,
) -> None:
    folder = unchanged_host.folder
    async with running_scheduler(nats_url), running_volmgr(nats_url) as volmgr:
        unchanged_host.cluster = volmgr.cluster.id
        async with node_pieces(nats_url, node_name, folder, agent_running):
            await ok(nats_url, "create", "pvc", "data", "--size=20Mi")
            pending = await claim_line(nats_url, "data")
            assert "Pending" in pending and "WaitForFirstConsumer" in pending, pending
            await apply(nats_url, tmp_path, deployment_yaml("app", "data", test_image))
            first = await one_running("app")
            bound = await eventually(
                lambda: claim_line(nats_url, "data"), lambda line: "Bound" in line, within=30
            )
            volume = bound.split()[2]
            assert volume.startswith("pvc-"), bound
            described = await ok(nats_url, "describe", "pv", volume)
            assert node_name in described, described

            # the size is enforced by the filesystem
            full = await run(
                "docker", "exec", first, "dd", "if=/dev/zero", "of=/data/big", "bs=1M",
                "count=40", check=False,
            )  # fmt: skip
            assert "No space left on device" in full, full
            await run("docker", "exec", first, "rm", "/data/big")

            # the container goes: its replacement reads what it wrote
            await run("docker", "rm", "-f", first)
            second = await one_running("app", but=first)
            log = await run("docker", "exec", second, "cat", "/data/log")
            assert len(log.split()) == 2, log

            # a rolling update: the new template's replica reads it too
            await apply(nats_url, tmp_path, deployment_yaml("app", "data", test_image, env="2"))
            third = await one_running("app", but=second)
            log = await eventually(
                lambda: run("docker", "exec", third, "cat", "/data/log", check=False),
                lambda text: len(text.split()) == 3,
                within=30,
            )

        # as `corral down`: the pieces stop, the containers go, the node part unmounts
        # (keeping the image file); then they all start again
        await run("docker", "rm", "-f", *running_ids("app"))
        said = await remove_all(nats_url, node_name, folder)
        assert not [line for line in sh("mount").splitlines() if str(folder) in line], said
        images = list(folder.rglob("*.img"))
        assert len(images) == 1, images
        async with node_pieces(nats_url, node_name, folder, agent_running):
            fourth = await one_running("app")
            log = await eventually(
                lambda: run("docker", "exec", fourth, "cat", "/data/log", check=False),
                lambda text: len(text.split()) == 4,
                within=60,
            )

            # in-use protection, then reclaim by the class's Delete policy
            said = await ok(nats_url, "delete", "pvc", "data")
            assert "Terminating" in said, said
            assert "Terminating" in await claim_line(nats_url, "data")
            await ok(nats_url, "delete", "deployment", "app")
            await eventually(
                lambda: claim_line(nats_url, "data"), lambda line: line == "", within=60
            )
            await eventually(
                lambda: anyio.to_thread.run_sync(lambda: list(folder.rglob("*.img"))),
                lambda found: found == [],
                within=60,
            )
        await remove_all(nats_url, node_name, folder)


async def test_retain_keeps_a_released_volume_and_read_write_once_pod_never_runs_two(
    nats_url: str,
    node_name: str,
    test_image: str,
    agent_running: AgentFactory,
    unchanged_host: Guard,
    tmp_path: Path,
) -> None:
    folder = unchanged_host.folder
    async with running_scheduler(nats_url), running_volmgr(nats_url) as volmgr:
        unchanged_host.cluster = volmgr.cluster.id
        async with node_pieces(nats_url, node_name, folder, agent_running):
            await ok(
                nats_url, "create", "pv", "keep", "--size=10Mi", "--access-mode", "ReadWriteOncePod"
            )
            await ok(
                nats_url, "create", "pvc", "solo", "--size=10Mi",
                "--access-mode", "ReadWriteOncePod",
            )  # fmt: skip
            await eventually(
                lambda: claim_line(nats_url, "solo"),
                lambda line: "Bound" in line and "keep" in line,
                within=30,
            )
            await apply(nats_url, tmp_path, deployment_yaml("solo", "solo", test_image))
            first = await one_running("solo")

            # the update: sample the engine in a thread as fast as it answers
            most = 0
            stop = threading.Event()

            def sample() -> None:
                nonlocal most
                while not stop.is_set():
                    most = max(most, len(running_ids("solo")))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                await apply(
                    nats_url, tmp_path, deployment_yaml("solo", "solo", test_image, env="2")
                )
                second = await one_running("solo", but=first)
            finally:
                stop.set()
                await anyio.to_thread.run_sync(sampler.join)
            assert most == 1, f"{most} containers ran at once during the update"
            log = await run("docker", "exec", second, "cat", "/data/log")
            assert len(log.split()) == 2, log

            # Retain: the claim goes, the volume is Released and keeps its data
            await ok(nats_url, "delete", "deployment", "solo")
            await eventually(
                lambda: anyio.to_thread.run_sync(lambda: running_ids("solo")),
                lambda ids: ids == [],
                within=60,
            )
            await ok(nats_url, "delete", "pvc", "solo")
            released = await eventually(
                lambda: ok(nats_url, "get", "pv"),
                lambda text: any(
                    line.split()[:1] == ["keep"] and "Released" in line
                    for line in text.splitlines()
                ),
                within=60,
            )
            assert released
            kept = [p for p in folder.rglob("log") if p.is_file()]
            assert kept and len(kept[0].read_text().split()) == 2, kept
            # deleting a Retain volume keeps its data on the node (corral down
            # --delete-volumes deletes it)
            said = await ok(nats_url, "delete", "pv", "keep")
            assert "kept" in said, said
            await eventually(
                lambda: ok(nats_url, "get", "pv"), lambda text: "keep" not in text, within=60
            )
            assert [p.name for p in folder.rglob("*.img")] == ["keep.img"]
        said = await remove_all(nats_url, node_name, folder, "--delete-data")
        assert list(folder.rglob("*.img")) == [], said


async def test_a_claim_on_a_volume_of_the_second_node_pulls_its_replica_there(
    nats_url: str,
    node_name: str,
    test_image: str,
    second_host: str,
    agent_running: AgentFactory,
    unchanged_host: Guard,
    tmp_path: Path,
) -> None:
    one, two = node_name, f"{node_name}-b"
    folder = unchanged_host.folder
    folder_two = folder.parent / "corral-volumes-two"
    async with running_scheduler(nats_url), running_volmgr(nats_url) as volmgr:
        unchanged_host.cluster = volmgr.cluster.id
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(node_pieces(nats_url, one, folder, agent_running))
            await stack.enter_async_context(
                running_node_part(nats_url, two, folder_two, "--docker-host", second_host)
            )
            await stack.enter_async_context(
                running_agent(
                    nats_url, two, "--docker-host", second_host, "--heartbeat-seconds", "0.5"
                )
            )
            await ok(nats_url, "create", "pv", "far", "--size=10Mi", "--node", two)
            await ok(nats_url, "create", "pvc", "far", "--size=10Mi", "--volume", "far")
            await apply(nats_url, tmp_path, deployment_yaml("far", "far", test_image))
            there = await one_running("far", engine=second_host)
            log = await run("docker", "exec", there, "cat", "/data/log", engine=second_host)
            assert len(log.split()) == 1, log
            assert running_ids("far") == []  # nothing on node one
            await ok(nats_url, "delete", "deployment", "far")
            await eventually(
                lambda: anyio.to_thread.run_sync(lambda: running_ids("far", second_host)),
                lambda ids: ids == [],
                within=60,
            )
            await ok(nats_url, "delete", "pvc", "far")
            await ok(nats_url, "delete", "pv", "far")
            await eventually(
                lambda: ok(nats_url, "get", "pv"), lambda text: "far" not in text, within=60
            )
            assert [p.name for p in folder_two.rglob("*.img")] == ["far.img"]  # Retain
        await remove_all(nats_url, one, folder)
        await remove_all(nats_url, two, folder_two, "--docker-host", second_host, "--delete-data")
