"""Two nodes on real engines: the default one and a second dockerd. Replicas spread
over both; when the second node dies (its agent and its engine), its replicas are
placed again on the first within the grace period."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from tests.agents import running_agent
from tests.e2e.conftest import AgentFactory
from tests.e2e.second_engine import second_engine
from tests.e2e.test_deployment_lifecycle import corral
from tests.integration.scheduler_harness import running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker


@pytest.fixture
def second_host(test_image: str) -> Iterator[str]:
    # a short path: the engine's unix socket path must stay under ~100 bytes
    root = Path(tempfile.mkdtemp(prefix="corral-n2-", dir="/tmp"))
    with second_engine(root, test_image) as host:
        yield host


async def running(docker_host: str | None, deployment: str) -> list[str]:
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    done = await anyio.run_process(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            "status=running",
            "--filter",
            f"label={names.LABEL_DEPLOYMENT}={deployment}",
        ],
        env=env,
    )
    return done.stdout.decode().split()


async def test_replicas_spread_over_two_engines_and_leave_a_dead_node(
    nats_url: str, node_name: str, test_image: str, second_host: str, agent_running: AgentFactory
) -> None:
    second_node = f"e2e-n2-{uuid.uuid4().hex[:8]}"
    async with running_scheduler(nats_url), agent_running():
        flags = ("--docker-host", second_host, "--heartbeat-seconds", "0.5")
        async with running_agent(nats_url, second_node, *flags):
            await corral(
                nats_url,
                "create",
                "deployment",
                "spread",
                f"--image={test_image}",
                "--replicas=4",
                "--",
                "sleep",
                "3600",
            )
            await eventually(lambda: running(None, "spread"), lambda ids: len(ids) == 2, within=60)
            await eventually(
                lambda: running(second_host, "spread"), lambda ids: len(ids) == 2, within=60
            )
        # the second node dies: its agent stops, and its engine's containers with it
        await anyio.run_process(
            ["docker", "rm", "-f", *await running(second_host, "spread")],
            env={**os.environ, "DOCKER_HOST": second_host},
        )
        await eventually(lambda: running(None, "spread"), lambda ids: len(ids) == 4, within=60)
        nodes = (await corral(nats_url, "get", "nodes")).stdout
        assert second_node in nodes and "NotReady" in nodes
        await corral(nats_url, "delete", "deployment", "spread")
        await eventually(lambda: running(None, "spread"), lambda ids: ids == [], within=60)
