"""Probes run by the node agent against a real Docker engine (docs/rollouts.md, "Probes"):
httpGet and tcpSocket readiness to the replica's address on the default bridge, and an
exec liveness probe through the engine's exec API restarting the container."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from corral.contract.specs import (
    ContainerPort,
    ContainerTemplate,
    ExecAction,
    HTTPGetAction,
    Probe,
    TCPSocketAction,
)
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket
from corral_node_agent.docker_runtime import DockerRuntime
from corral_node_agent.runtime import ContainerState, ObservedContainer, RuntimeFailure
from tests.e2e.conftest import AgentFactory
from tests.e2e.test_agent_docker import docker, eventually, place, running_ids, status_of, unique

pytestmark = pytest.mark.docker

# Serves /w on 8080 (httpd goes to the background), then sleeps.
SERVE = "mkdir -p /w /tmp && touch /tmp/alive && httpd -p 8080 -h /w && exec sleep 3600"


def probed(node: str, replica: str, image: str, **probes: Probe) -> Placement:
    template = ContainerTemplate(
        image=image,
        command=["sh", "-c"],
        args=[SERVE],
        ports=[ContainerPort(container_port=8080, name="web")],
        **probes,  # type: ignore[arg-type]
    )
    return Placement(
        replica=replica,
        deployment="web",
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


def status_where(
    buckets: dict[str, NatsBucket],
    node: str,
    replica: str,
    accept: Callable[[ReplicaStatus], bool],
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        status = await status_of(buckets, node, replica)
        return status is not None and accept(status)

    return check


async def test_http_get_readiness_follows_the_file(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    web = unique("web")
    readiness = Probe(
        http_get=HTTPGetAction(port="web", path="/ready"), period_seconds=1, failure_threshold=1
    )
    async with agent_running():
        await place(buckets, probed(node_name, web, test_image, readiness_probe=readiness))

        def not_ready(status: ReplicaStatus) -> bool:
            return (
                status.state == ReplicaState.RUNNING
                and status.ready is False
                and "status 404" in status.probes.get("readiness", "")
            )

        await eventually(status_where(buckets, node_name, web, not_ready))
        status = await status_of(buckets, node_name, web)
        assert status is not None and not status.is_ready
        assert status.last_probe_failure.startswith("readiness probe failed: GET http://")

        docker("exec", running_ids(node_name)[web], "touch", "/w/ready")
        await eventually(
            status_where(buckets, node_name, web, lambda s: s.ready is True),
            within=10,
        )
        status = await status_of(buckets, node_name, web)
        assert status is not None and status.is_ready and status.probes == {"readiness": "ok"}


async def test_tcp_socket_readiness(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    web = unique("web")
    readiness = Probe(tcp_socket=TCPSocketAction(port=9090), period_seconds=1)
    async with agent_running():
        await place(buckets, probed(node_name, web, test_image, readiness_probe=readiness))
        await eventually(
            status_where(
                buckets, node_name, web, lambda s: "readiness" in s.probes and s.ready is False
            )
        )
        docker("exec", running_ids(node_name)[web], "httpd", "-p", "9090", "-h", "/w")
        await eventually(
            status_where(buckets, node_name, web, lambda s: s.ready is True),
            within=10,
        )


async def test_exec_liveness_failure_restarts_the_container(
    buckets: dict[str, NatsBucket], agent_running: AgentFactory, node_name: str, test_image: str
) -> None:
    web = unique("web")
    liveness = Probe(
        exec=ExecAction(command=["test", "-f", "/tmp/alive"]),
        period_seconds=1,
        failure_threshold=2,
    )
    async with agent_running():
        await place(buckets, probed(node_name, web, test_image, liveness_probe=liveness))
        await eventually(
            status_where(buckets, node_name, web, lambda s: s.probes.get("liveness") == "ok")
        )
        first = running_ids(node_name)[web]
        status = await status_of(buckets, node_name, web)
        assert status is not None and status.restarts == 0 and status.ready is None

        docker("exec", first, "rm", "/tmp/alive")
        await eventually(
            status_where(buckets, node_name, web, lambda s: s.restarts >= 1),
            within=15,
        )
        status = await status_of(buckets, node_name, web)
        assert status is not None
        assert status.last_probe_failure == (
            "liveness probe failed: exec test -f /tmp/alive: exit code 1"
        )
        # The same container, started again (its command makes the file again).
        await eventually(
            status_where(
                buckets,
                node_name,
                web,
                lambda s: s.state == ReplicaState.RUNNING and s.probes.get("liveness") == "ok",
            ),
            within=15,
        )
        assert running_ids(node_name)[web] == first


async def test_engine_errors_are_unknown_not_failures() -> None:
    """An exec the engine cannot create (no such container), or a replica with no
    address yet, is the agent's trouble: RuntimeFailure (unknown), never failure text."""
    runtime = DockerRuntime()
    try:
        with pytest.raises(RuntimeFailure, match="exec true"):
            await runtime.exec_probe(unique("no-such-container"), ["true"], 5.0, "liveness")
        with pytest.raises(RuntimeFailure, match="no address yet"):
            await runtime.network_probe(
                ObservedContainer("x", "x", "x", "web", "h", ContainerState.RUNNING),
                "",
                80,
                None,
                1.0,
                "liveness",
            )
    finally:
        await runtime.close()
