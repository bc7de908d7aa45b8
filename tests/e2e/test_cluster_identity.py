"""Cluster identity on real Docker and real NATS: a second cluster on the same engine
(and the same node name) never touches the first; a lost state store makes the
agent hold everything until an operator adopts the containers into the new state."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from tests.agents import running_agent
from tests.conftest import NatsServer
from tests.e2e.test_deployment_lifecycle import corral
from tests.integration.scheduler_harness import running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker


async def containers_by_cluster(node: str) -> dict[str, set[str]]:
    """Running containers of `node` on the engine: cluster id -> container ids."""
    done = await anyio.run_process(
        [
            "docker",
            "ps",
            "--no-trunc",
            "--filter",
            f"label={names.LABEL_NODE}={node}",
            "--filter",
            "status=running",
            "--format",
            '{{.ID}} {{.Label "' + names.LABEL_CLUSTER + '"}}',
        ]
    )
    found: dict[str, set[str]] = {}
    for line in done.stdout.decode().splitlines():
        container_id, _, cluster = line.partition(" ")
        found.setdefault(cluster, set()).add(container_id)
    return found


async def deaths_since(since: float, node: str) -> list[str]:
    done = await anyio.run_process(
        [
            "docker",
            "events",
            *("--since", f"{since:.3f}", "--until", f"{time.time():.3f}"),
            *("--filter", f"label={names.LABEL_NODE}={node}", "--filter", "event=die"),
            *("--format", "{{.Actor.ID}}"),
        ]
    )
    return done.stdout.decode().split()


async def node_json(nats_url: str, node: str) -> dict[str, object]:
    done = await corral(nats_url, "get", "nodes", "-o", "json")
    document = json.loads(done.stdout)
    items = document["items"] if isinstance(document, dict) else document
    for item in items:
        if item.get("name") == node or item.get("metadata", {}).get("name") == node:
            return dict(item)
    return {}


def first_cluster(found: dict[str, set[str]]) -> str:
    (cluster,) = found
    return cluster


async def test_a_second_cluster_on_the_same_engine_and_node_name_leaves_the_first_alone(
    nats_server: NatsServer, node_name: str, test_image: str, tmp_path: Path
) -> None:
    second = NatsServer(tmp_path / "second-store")
    second.start()
    flags = ("--runtime", "docker")
    try:
        async with (
            running_scheduler(nats_server.url),
            running_agent(nats_server.url, node_name, *flags),
        ):
            await corral(
                nats_server.url, "create", "deployment", "web", f"--image={test_image}",
                "--replicas=3", "--", "sleep", "3600",
            )  # fmt: skip
            found = await eventually(
                lambda: containers_by_cluster(node_name),
                lambda found: sum(len(ids) for ids in found.values()) == 3,
                within=60,
            )
            first = first_cluster(found)
            since = time.time()
            # A second corral, its own store, the same engine and node name, a
            # Deployment of the same name.
            async with running_scheduler(second.url), running_agent(second.url, node_name, *flags):
                await corral(
                    second.url, "create", "deployment", "web", f"--image={test_image}",
                    "--replicas=1", "--", "sleep", "3600",
                )  # fmt: skip
                both = await eventually(
                    lambda: containers_by_cluster(node_name),
                    lambda found: len(found) == 2,
                    within=60,
                )
                # The second agent saw the first cluster's containers, as foreign.
                await eventually(
                    lambda: node_json(second.url, node_name),
                    lambda node: node.get("foreignContainers") == 3,
                    within=30,
                )
                described = (await corral(second.url, "describe", "node", node_name)).stdout
                assert "Foreign" in described and "3" in described
            assert both[first] == found[first]
            assert await deaths_since(since, node_name) == []
    finally:
        second.stop()


async def test_a_lost_store_holds_the_node_until_an_operator_adopts_its_containers(
    nats_server: NatsServer, node_name: str, test_image: str, tmp_path: Path
) -> None:
    flags = ("--runtime", "docker", "--state-dir", str(tmp_path / "agent-state"))
    deploy = (
        "create", "deployment", "web", f"--image={test_image}", "--replicas=2",
        "--", "sleep", "3600",
    )  # fmt: skip
    async with running_agent(nats_server.url, node_name, *flags):
        async with running_scheduler(nats_server.url):
            await corral(nats_server.url, *deploy)
            found = await eventually(
                lambda: containers_by_cluster(node_name),
                lambda found: sum(len(ids) for ids in found.values()) == 2,
                within=60,
            )
        old_cluster = first_cluster(found)
        since = time.time()
        # The store is lost: NATS comes back empty.
        nats_server.stop()
        shutil.rmtree(nats_server.store_dir)
        nats_server.start()
        async with running_scheduler(nats_server.url):  # makes a new store, a new identity
            node = await eventually(
                lambda: node_json(nats_server.url, node_name),
                lambda node: node.get("mode") == "Held",
                within=30,
            )
            assert "corral node adopt" in str(node.get("message"))
            assert await containers_by_cluster(node_name) == found  # nothing touched
            done = await corral(nats_server.url, "node", "adopt", node_name)
            assert old_cluster in done.stdout
            await eventually(
                lambda: node_json(nats_server.url, node_name),
                lambda node: node.get("mode") == "Active" and len(node.get("orphans", [])) == 2,
                within=30,
            )
            # The same Deployment applied again claims the orphans: the same containers.
            await corral(nats_server.url, *deploy)
            await eventually(
                lambda: corral(nats_server.url, "get", "deployments"),
                lambda done: " 2/2 " in done.stdout,
                within=60,
            )
            await eventually(
                lambda: node_json(nats_server.url, node_name),
                lambda node: node.get("orphans", []) == [],
                within=30,
            )
            assert await containers_by_cluster(node_name) == found
            assert await deaths_since(since, node_name) == []
