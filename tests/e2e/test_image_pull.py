"""The node agent pulls an image it lacks, from a real registry (Debian's
docker-registry on 127.0.0.1, started by the test), and runs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.e2e.conftest import AgentFactory
from tests.e2e.test_deployment_lifecycle import corral, running_containers
from tests.integration.scheduler_harness import running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def registry(tmp_path: Path, docker_engine: str) -> Iterator[str]:
    """A registry on 127.0.0.1 (Docker trusts loopback registries over plain HTTP)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        reason = "docker-registry is not installed (scripts/ensure-docker installs it)"
        if os.environ.get("CORRAL_REQUIRE_DOCKER"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'blobs'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _docker(*args: str) -> None:
    subprocess.run(["docker", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def image_only_in_registry(registry: str, test_image: str) -> Iterator[str]:
    """The test image pushed to the registry under a new name, and absent from the engine."""
    image = f"{registry}/corral-test/pulled-{uuid.uuid4().hex[:8]}:1"
    _docker("tag", test_image, image)
    _docker("push", image)
    _docker("rmi", image)
    try:
        yield image
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, timeout=60)


async def test_a_missing_image_is_pulled_then_run(
    nats_url: str, node_name: str, image_only_in_registry: str, agent_running: AgentFactory
) -> None:
    image = image_only_in_registry
    async with running_scheduler(nats_url), agent_running():
        await corral(
            nats_url,
            "create",
            "deployment",
            "pulled",
            f"--image={image}",
            "--replicas=2",
            "--",
            "sleep",
            "3600",
        )
        await eventually(
            lambda: running_containers(node_name, "pulled"), lambda ids: len(ids) == 2, within=60
        )
        events = await corral(nats_url, "events", "--for", "deployment/pulled")
        assert "Pulled" in events.stdout
        inspected = await anyio.run_process(["docker", "image", "inspect", image], check=False)
        assert inspected.returncode == 0  # the agent pulled it
        await corral(nats_url, "delete", "deployment", "pulled")
        await eventually(
            lambda: running_containers(node_name, "pulled"), lambda ids: ids == [], within=60
        )
