"""End-to-end fixtures: a real Docker engine, the test image, and node agents in-process.

The engine must answer `docker info`; when it does not, scripts/ensure-docker is
tried. Tests are skipped with the reason when there is still no engine, unless
CORRAL_REQUIRE_DOCKER is set (as in CI): then they fail.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from corral.contract import names
from corral.natsio.service import ServiceContext
from tests.agents import running_agent

REPO = Path(__file__).resolve().parents[2]
TEST_IMAGE = os.environ.get("CORRAL_TEST_IMAGE", "corral-test/busybox:1")

AgentFactory = Callable[..., AbstractAsyncContextManager[ServiceContext]]


def _docker_answers() -> tuple[bool, str]:
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    return done.returncode == 0, (done.stderr or done.stdout).strip()


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The engine answers, or the test is skipped (failed when CORRAL_REQUIRE_DOCKER is set)."""
    ok, detail = _docker_answers()
    if not ok:
        try:
            subprocess.run(
                [str(REPO / "scripts" / "ensure-docker")],
                capture_output=True,
                timeout=300,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            detail = f"{detail}; scripts/ensure-docker: {error}"
        ok, detail = _docker_answers()
    if not ok:
        reason = f"no Docker engine: `docker info` fails ({detail})"
        if os.environ.get("CORRAL_REQUIRE_DOCKER"):
            pytest.fail(f"{reason} and CORRAL_REQUIRE_DOCKER is set")
        pytest.skip(reason)
    return detail


@pytest.fixture(scope="session")
def test_image(docker_engine: str) -> str:
    """The registry-free busybox image, built once (scripts/build-test-image)."""
    done = subprocess.run(
        [str(REPO / "scripts" / "build-test-image"), TEST_IMAGE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/build-test-image failed: {done.stderr.strip()}")
    return TEST_IMAGE


def remove_node_containers(node: str) -> None:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={names.LABEL_NODE}={node}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=120)


@pytest.fixture
def node_name(docker_engine: str) -> Iterator[str]:
    """A node name of this test alone; its containers are removed afterwards."""
    node = f"e2e-{uuid.uuid4().hex[:10]}"
    try:
        yield node
    finally:
        remove_node_containers(node)


@pytest.fixture
def agent_running(nats_url: str, node_name: str) -> AgentFactory:
    """`async with agent_running(): ...` runs the node agent of node_name in-process.

    A context manager rather than a fixture, so the agent starts and stops in the
    test's own task; leaving it stops the agent (its containers keep running).
    """

    def running(*extra: str) -> AbstractAsyncContextManager[ServiceContext]:
        flags = ("--runtime", "docker", "--heartbeat-seconds", "0.5", *extra)
        return running_agent(nats_url, node_name, *flags)

    return running
