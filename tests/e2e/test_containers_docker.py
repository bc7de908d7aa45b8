"""Rancher's containers on the local Docker engine (docs/containers.md): the `corral` CLI
(a subprocess), a real nats-server, the scheduler and the node agent on Docker.
`corral create container web --port 8080 -- httpd ...` runs; a container with
--restart Never that exits stays Exited (while an Always one beside it is restarted),
and an OnFailure one that exits 0 shows Completed."""

from __future__ import annotations

import json

import anyio
import pytest

from corral.contract import names
from tests.e2e.conftest import AgentFactory
from tests.e2e.test_deployment_lifecycle import corral, running_containers
from tests.integration.scheduler_harness import running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker


async def shown(nats_url: str, name: str) -> dict[str, object]:
    done = await corral(nats_url, "get", "container", name, "-o", "json")
    found: dict[str, object] = json.loads(done.stdout)
    return found


async def started_at(node: str, deployment: str) -> list[str]:
    done = await anyio.run_process(
        [
            "docker", "ps", "-aq",
            "--filter", f"label={names.LABEL_NODE}={node}",
            "--filter", f"label={names.LABEL_DEPLOYMENT}={deployment}",
        ]
    )  # fmt: skip
    ids = done.stdout.decode().split()
    if not ids:
        return []
    inspected = await anyio.run_process(
        ["docker", "inspect", "--format", "{{.State.Status}} {{.State.StartedAt}}", *ids]
    )
    return inspected.stdout.decode().split("\n")[:-1]


async def test_containers_run_and_exit_as_their_restart_policy_says(
    nats_url: str, node_name: str, test_image: str, agent_running: AgentFactory
) -> None:
    async with running_scheduler(nats_url), agent_running():
        await corral(
            nats_url, "create", "container", "web", f"--image={test_image}", "--port", "8080",
            "--", "httpd", "-f", "-p", "8080",
        )  # fmt: skip
        await corral(
            nats_url, "create", "container", "once", f"--image={test_image}",
            "--restart", "Never", "--", "sh", "-c", "exit 3",
        )  # fmt: skip
        await corral(
            nats_url, "create", "container", "loop", f"--image={test_image}",
            "--", "sh", "-c", "exit 3",
        )  # fmt: skip
        await corral(
            nats_url, "create", "container", "done", f"--image={test_image}",
            "--restart", "OnFailure", "--", "true",
        )  # fmt: skip

        await eventually(lambda: running_containers(node_name, "web"), lambda ids: len(ids) == 1)
        web = await eventually(lambda: shown(nats_url, "web"), lambda s: s["status"] == "Running")
        assert web["node"] == node_name and web["restartPolicy"] == "Always"
        listening = await anyio.run_process(
            ["docker", "exec", (await running_containers(node_name, "web"))[0], "netstat", "-ltn"]
        )
        assert ":8080 " in listening.stdout.decode()

        once = await eventually(
            lambda: shown(nats_url, "once"), lambda s: s["status"] == "Exited(3)", within=30
        )
        first = await started_at(node_name, "once")
        assert len(first) == 1 and first[0].startswith("exited ")
        # The Always one beside it, exiting alike, is restarted (at once, then after 1 s):
        # by then the agent would have restarted `once` too, were it not for Never.
        await eventually(
            lambda: shown(nats_url, "loop"), lambda s: int(str(s["restarts"])) >= 2, within=30
        )
        once = await shown(nats_url, "once")
        assert (once["status"], once["restarts"]) == ("Exited(3)", 0)
        assert "restartPolicy Never" in str(once["message"])
        assert await started_at(node_name, "once") == first  # never started again

        done = await eventually(
            lambda: shown(nats_url, "done"), lambda s: s["status"] == "Completed", within=30
        )
        assert done["restarts"] == 0

        for name in ("web", "once", "loop", "done"):
            await corral(nats_url, "delete", "container", name)
        listed = await corral(nats_url, "get", "containers")
        assert listed.stdout.strip() == "No containers."
        # (their containers stop gracefully, then go; the node_name fixture removes any left)
