"""The node agent as a service (hollow runtime) against a real NATS with JetStream."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import ContainerTemplate
from corral.contract.state import Node, Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket
from corral.natsio.service import run_service
from corral_node_agent.main import build_parser, run

NODE = "hollow-it-1"


def agent_args(nats_url: str, state_dir: Path) -> argparse.Namespace:
    return build_parser().parse_args(
        [
            "--nats",
            nats_url,
            "--state-dir",
            str(state_dir),
            "--metrics-port",
            "0",
            "--runtime",
            "hollow",
            "--node-name",
            NODE,
            "--label",
            "zone=a",
            "--cpu",
            "2",
            "--memory",
            "4Gi",
            "--heartbeat-seconds",
            "0.2",
        ]
    )


def placement(replica: str) -> Placement:
    template = ContainerTemplate(image="example/app:1", args=["sleep", "3600"])
    return Placement(
        replica=replica,
        deployment="web",
        node=NODE,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await anyio.sleep(0.05)


async def test_hollow_agent_over_nats(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    nodes = buckets[names.NODES_BUCKET]
    placements = buckets[names.PLACEMENTS_BUCKET]
    statuses = buckets[names.REPLICA_STATUS_BUCKET]

    async def node() -> Node | None:
        entry = await nodes.get(NODE)
        return None if entry is None else decode(entry.value or b"", Node)

    async def status(replica: str) -> ReplicaStatus | None:
        entry = await statuses.get(names.placement_key(NODE, "default", replica))
        return None if entry is None else decode(entry.value or b"", ReplicaStatus)

    async def state_is(replica: str, state: ReplicaState) -> bool:
        found = await status(replica)
        return found is not None and found.state == state

    async with anyio.create_task_group() as tg:
        await tg.start(run_service, "node-agent", run, agent_args(nats_url, tmp_path))

        # Registered, with the flags' capacity and labels, and heartbeating.
        await eventually(lambda: _ready(node))
        registered = await node()
        assert registered is not None
        assert registered.capacity.cpu_millis == 2000
        assert registered.capacity.memory_bytes == 4 * 2**30
        assert registered.labels == {"zone": "a"}
        assert registered.runtime == "hollow"
        first_beat = registered.heartbeat_at

        async def beat_again() -> bool:
            found = await node()
            return found is not None and found.heartbeat_at > first_beat

        await eventually(beat_again)

        # Placements written straight into the bucket run and report Running.
        for replica in ("web-a1", "web-b2"):
            p = placement(replica)
            await placements.put(names.placement_key(NODE, "default", replica), encode(p))
        await eventually(lambda: state_is("web-a1", ReplicaState.RUNNING))
        await eventually(lambda: state_is("web-b2", ReplicaState.RUNNING))
        running = await status("web-a1")
        assert running is not None and running.container_id and running.started_at

        # A placement deleted: the replica goes, and so does its status.
        await placements.delete(names.placement_key(NODE, "default", "web-b2"))

        async def status_gone() -> bool:
            return await status("web-b2") is None

        await eventually(status_gone)
        assert await state_is("web-a1", ReplicaState.RUNNING)
        tg.cancel_scope.cancel()


async def _ready(node: Callable[[], Awaitable[Node | None]]) -> bool:
    found = await node()
    return found is not None and found.ready


async def test_a_second_agent_of_the_same_name_refuses_to_start(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    nodes = buckets[names.NODES_BUCKET]

    async def registered() -> bool:
        return await _ready(lambda: _node(nodes))

    async with anyio.create_task_group() as tg:
        await tg.start(run_service, "node-agent", run, agent_args(nats_url, tmp_path))
        await eventually(registered)
        command = [
            str(Path(sys.executable).parent / "corral-node-agent"),
            *("--nats", nats_url, "--metrics-port", "0", "--runtime", "hollow"),
            *("--node-name", NODE, "--state-dir", str(tmp_path / "second")),
        ]
        done = await anyio.run_process(command, check=False)
        stderr = done.stderr.decode()
        assert done.returncode == 1
        assert f"node {NODE!r} is already run by another node agent" in stderr
        assert "--node-name" in stderr
        assert "Traceback" not in stderr, stderr  # one line saying why, not a crash
        first = await _node(nodes)
        assert first is not None and first.ready  # the first agent's record is untouched
        tg.cancel_scope.cancel()


async def _node(nodes: NatsBucket) -> Node | None:
    entry = await nodes.get(NODE)
    return None if entry is None else decode(entry.value or b"", Node)


async def test_an_agent_whose_state_dir_cannot_be_written_refuses_at_once_and_says_why(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    command = [
        str(Path(sys.executable).parent / "corral-node-agent"),
        *("--nats", "nats://127.0.0.1:1", "--runtime", "hollow"),
        *("--state-dir", str(blocker / "state"), "--metrics-port", "-1"),
    ]
    with anyio.fail_after(15):  # at once: not after NATS' connect timeout
        done = await anyio.run_process(command, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 1
    assert "refuses to start: cannot write the state dir" in stderr and "Traceback" not in stderr
