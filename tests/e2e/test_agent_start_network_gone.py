"""Docker lets a network go while only stopped containers are on it; such a container
can never start again. The Docker runtime says so (StartNetworkGone), so the agent
makes a new container instead of retrying the start forever (the agent's side:
tests/unit/test_agent_loop.py)."""

from __future__ import annotations

import uuid

import aiodocker
import pytest

from corral_node_agent.docker_runtime import DockerRuntime
from corral_node_agent.runtime import StartNetworkGone

pytestmark = pytest.mark.docker


async def test_starting_a_container_whose_network_was_removed_says_so(
    docker_engine: str, test_image: str
) -> None:
    name = f"e2e-netgone-{uuid.uuid4().hex[:8]}"
    labels = {"io.corral.test": name}
    docker = aiodocker.Docker()
    runtime = DockerRuntime()
    container = None
    try:
        network = await docker.networks.create({"Name": name, "Labels": labels})
        container = await docker.containers.create(
            {
                "Image": test_image,
                "Cmd": ["sleep", "300"],
                "Labels": labels,
                "HostConfig": {"NetworkMode": name},
            },
            name=name,
        )
        await network.delete()  # allowed: the container never ran
        with pytest.raises(StartNetworkGone, match=r"network \S+ not found"):
            await runtime.start_container(container.id)
    finally:
        try:
            if container is not None:
                await container.delete(force=True)
            try:  # when the test failed before it removed the network
                await (await docker.networks.get(name)).delete()
            except aiodocker.DockerError:
                pass
        finally:
            await runtime.close()
            await docker.close()
