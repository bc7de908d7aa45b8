"""The whole path on real parts: the `corral` CLI (a subprocess) publishes on a real
nats-server, the scheduler places, the node agent runs containers on the real Docker
engine; Docker itself is asked what runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from corral.contract import names
from tests.e2e.conftest import AgentFactory
from tests.integration.scheduler_harness import running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker
CORRAL = str(Path(sys.executable).parent / "corral")


async def corral(nats_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [CORRAL, "--nats", nats_url, *args], capture_output=True, text=True, timeout=60
        )
    )
    if check and done.returncode != 0:
        raise AssertionError(f"corral {' '.join(args)} failed: {done.stderr}")
    return done


async def running_containers(node: str, deployment: str) -> list[str]:
    done = await anyio.run_process(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label={names.LABEL_NODE}={node}",
            "--filter",
            f"label={names.LABEL_DEPLOYMENT}={deployment}",
            "--filter",
            "status=running",
        ]
    )
    return done.stdout.decode().split()


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


def counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the metrics")


async def get_json(nats_url: str, *args: str) -> Any:
    return json.loads((await corral(nats_url, "get", *args, "-o", "json")).stdout)


async def test_create_scale_heal_and_delete_a_deployment(
    nats_url: str, node_name: str, test_image: str, agent_running: AgentFactory
) -> None:
    async with running_scheduler(nats_url), agent_running() as agent:
        starts_before = counter(await scrape(agent.http_port or 0), "corral_container_starts_total")
        created = await corral(
            nats_url,
            "create",
            "deployment",
            "web",
            f"--image={test_image}",
            "--replicas=3",
            "--limits",
            "memory=64Mi",
            "--",
            "sleep",
            "3600",
        )
        assert "web" in created.stdout
        await eventually(
            lambda: running_containers(node_name, "web"), lambda ids: len(ids) == 3, within=60
        )
        table = (await corral(nats_url, "get", "deployments")).stdout
        await eventually(
            lambda: corral(nats_url, "get", "deployments"), lambda d: "3/3" in d.stdout, within=30
        )
        assert "web" in table

        nodes = await get_json(nats_url, "nodes")
        assert node_name in json.dumps(nodes)

        await corral(nats_url, "scale", "deployment", "web", "--replicas=5")
        await eventually(
            lambda: running_containers(node_name, "web"), lambda ids: len(ids) == 5, within=60
        )
        await corral(nats_url, "scale", "deployment", "web", "--replicas=2")
        survivors = await eventually(
            lambda: running_containers(node_name, "web"), lambda ids: len(ids) == 2, within=60
        )

        # a container removed behind corral's back is replaced
        await anyio.run_process(["docker", "rm", "-f", survivors[0]])
        await eventually(
            lambda: running_containers(node_name, "web"),
            lambda ids: len(ids) == 2 and survivors[0] not in ids,
            within=30,
        )

        replicas = (await corral(nats_url, "get", "replicas")).stdout
        assert replicas.count("Running") == 2

        # the agent's own account of it, as Prometheus scrapes it
        metrics = await scrape(agent.http_port or 0)
        # (counters are per process: earlier tests' starts are in them, hence the difference)
        assert counter(metrics, "corral_container_starts_total") - starts_before >= 6  # 3+2+1
        for name in (
            "corral_container_restarts_total",
            "corral_replicas_running",
            "corral_image_pulls_total",
            "corral_agent_reconcile_seconds_bucket",
        ):
            assert name in metrics

        await corral(nats_url, "delete", "deployment", "web")
        await eventually(
            lambda: running_containers(node_name, "web"), lambda ids: ids == [], within=60
        )


async def test_an_image_that_cannot_be_pulled_shows_as_the_replica_state(
    nats_url: str, node_name: str, test_image: str, agent_running: AgentFactory
) -> None:
    # 127.0.0.1:1 refuses at once: a registry that cannot be reached, on loopback only
    async with running_scheduler(nats_url), agent_running():
        await corral(nats_url, "create", "deployment", "ghost", "--image=127.0.0.1:1/ghost:1")
        await eventually(
            lambda: corral(nats_url, "get", "replicas"),
            lambda done: "ImagePullBackOff" in done.stdout,
            within=60,
        )
        # the agent keeps serving: a good deployment beside it runs
        await corral(
            nats_url, "create", "deployment", "fine", f"--image={test_image}", "--", "sleep", "3600"
        )
        await eventually(
            lambda: running_containers(node_name, "fine"), lambda ids: len(ids) == 1, within=60
        )
        await corral(nats_url, "delete", "deployment", "ghost")
        await corral(nats_url, "delete", "deployment", "fine")
        await eventually(
            lambda: running_containers(node_name, "fine"), lambda ids: ids == [], within=60
        )


async def test_bad_input_from_the_cli_changes_nothing(
    nats_url: str, node_name: str, test_image: str, agent_running: AgentFactory
) -> None:
    async with running_scheduler(nats_url), agent_running():
        bad = await corral(
            nats_url, "create", "deployment", "Bad_Name", f"--image={test_image}", check=False
        )
        assert bad.returncode != 0 and "DNS label" in bad.stderr
        negative = await corral(
            nats_url,
            "create",
            "deployment",
            "neg",
            f"--image={test_image}",
            "--replicas=-1",
            check=False,
        )
        assert negative.returncode != 0 and "replicas" in negative.stderr
        assert (await get_json(nats_url, "deployments"))["items"] == []
