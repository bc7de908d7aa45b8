"""The node agent's id: given by --agent-id or $CORRAL_AGENT_ID (a supervisor keeps it
across restarts), so a restarted agent recognises its own Node record, while a
different agent of the same name is still refused."""

from __future__ import annotations

import time

import anyio
import pytest

from corral.contract.codec import decode, encode
from corral.contract.state import Node, NodeCapacity
from corral.natsio.kv import MemoryBucket
from corral_node_agent.main import build_parser
from corral_node_agent.node_record import NodeNameTaken, NodeRecord
from corral_node_agent.settings import ENV_AGENT_ID, agent_id_from_args

NODE = "node-a"


def node(agent_id: str, heartbeat_at: float = 0.0, engine_id: str = "") -> Node:
    return Node(
        name=NODE,
        capacity=NodeCapacity(cpu_millis=1000, memory_bytes=2**30),
        agent_id=agent_id,
        heartbeat_at=heartbeat_at,
        engine_id=engine_id,
    )


async def test_a_restarted_agent_with_the_same_id_takes_its_own_fresh_record() -> None:
    bucket = MemoryBucket("nodes")
    await bucket.put(NODE, encode(node("kept-id", heartbeat_at=time.time() - 1)))
    record = NodeRecord(bucket, node("kept-id"))
    await record.write()  # claims, then writes: no NodeNameTaken
    entry = await bucket.get(NODE)
    assert entry is not None and entry.value is not None
    stored = decode(entry.value, Node)
    assert stored.agent_id == "kept-id"
    assert record.last_acked is not None and record.displaced_by is None


async def test_a_different_agent_whose_record_keeps_changing_is_still_refused() -> None:
    bucket = MemoryBucket("nodes")
    await bucket.put(NODE, encode(node("the-other", heartbeat_at=time.time() - 1)))
    record = NodeRecord(bucket, node("kept-id"), alive_window=0.5)

    async def heartbeats() -> None:
        while True:
            await anyio.sleep(0.05)
            await bucket.put(NODE, encode(node("the-other")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeats)
        with pytest.raises(NodeNameTaken, match="the-other"):
            await record.claim()
        tg.cancel_scope.cancel()


async def test_a_record_that_does_not_change_is_taken_over_whatever_its_clock_says() -> None:
    bucket = MemoryBucket("nodes")
    await bucket.put(NODE, encode(node("the-other", heartbeat_at=time.time() + 3600)))
    record = NodeRecord(bucket, node("kept-id"), alive_window=0.3, takeover_window=0.3)
    await record.claim()
    await record.write()
    entry = await bucket.get(NODE)
    assert entry is not None and entry.value is not None
    assert decode(entry.value, Node).agent_id == "kept-id"


def test_agent_id_comes_from_the_flag_then_the_environment_then_chance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    monkeypatch.setenv(ENV_AGENT_ID, "from-env")
    assert agent_id_from_args(parser.parse_args(["--agent-id", "from-flag"])) == "from-flag"
    assert agent_id_from_args(parser.parse_args([])) == "from-env"
    monkeypatch.delenv(ENV_AGENT_ID)
    first = agent_id_from_args(parser.parse_args([]))
    second = agent_id_from_args(parser.parse_args([]))
    assert first and second and first != second


async def test_the_same_agent_id_on_another_engine_is_another_agent() -> None:
    bucket = MemoryBucket("nodes")
    theirs = encode(node("kept-id", engine_id="engine-b"))
    await bucket.put(NODE, theirs)
    record = NodeRecord(
        bucket, node("kept-id", engine_id="engine-a"), alive_window=0.3, takeover_window=0.3
    )

    async def heartbeats() -> None:
        while True:
            await anyio.sleep(0.05)
            await bucket.put(NODE, theirs)

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeats)
        with pytest.raises(NodeNameTaken):
            await record.claim()
        tg.cancel_scope.cancel()


async def test_a_record_of_another_engine_is_taken_over_only_past_the_longer_window() -> None:
    bucket = MemoryBucket("nodes")
    await bucket.put(NODE, encode(node("other", engine_id="engine-b")))
    record = NodeRecord(
        bucket, node("mine", engine_id="engine-a"), alive_window=0.05, takeover_window=0.6
    )
    started = time.monotonic()
    await record.claim()
    assert time.monotonic() - started >= 0.6  # R' there, not the same-engine window
