"""`corral node release|adopt|reset` through a real nats-server: release answered by an
in-process scheduler, adopt and reset by a small fake node agent on corral.node.*."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from corral.client.api import CorralClient
from corral.client.cli.main import cli
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Reply
from corral.contract.specs import NodeDecision
from corral.contract.state import Node, NodeCapacity, OrphanReplica
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.natsio.bus import connect, flush_subscriptions
from corral.natsio.kv import NatsBucket, echo_key, write_record
from tests.integration.scheduler_harness import (
    eventually,
    heartbeat,
    placements,
    register_node,
    request,
    running_scheduler,
)
from tests.waiting import current


async def corral(url: str, *args: str) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, "--timeout", "2", *args])

    return await anyio.to_thread.run_sync(invoke)


# --- release ------------------------------------------------------------------------------


@pytest.mark.parametrize("replacement", ["AfterStop", "Never"])  # Never: a container
async def test_release_is_refused_while_the_node_is_alive_and_replaces_at_once_after(
    nats_url: str, buckets: dict[str, NatsBucket], replacement: str
) -> None:
    nodes = buckets[names.NODES_BUCKET]
    never_twice = encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 1,
                "replacement": replacement,
                "template": {"image": "corral-test/busybox:1"},
            },
        }
    )
    async with running_scheduler(nats_url) as ctx, anyio.create_task_group() as tg:
        await register_node(nodes, "doomed")  # once: then it falls silent
        assert (await request(ctx.nc, "deployment", "apply", never_twice)).ok
        await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]),
            lambda p: [x.node for x in p.values()] == ["doomed"],
        )
        tg.start_soon(heartbeat, nodes, "spare", {})
        # alive (its record changed within R): refused, nothing changes
        refused = await corral(nats_url, "node", "release", "doomed")
        assert refused.exit_code == 1
        assert "node 'doomed' is alive" in refused.stderr
        assert await nodes.get("doomed") is not None

        # silent past R: an AfterStop replica is not moved (a Fast one would be)...
        await anyio.sleep(NODE_LOST_SECONDS + 1.5)
        still = await placements(buckets[names.PLACEMENTS_BUCKET])
        assert [p.node for p in still.values()] == ["doomed"]
        # ...and its release is refused: the replica may still run until R'...
        early = await corral(nats_url, "node", "release", "doomed")
        assert early.exit_code == 1
        assert "node 'doomed' has replicas that must never run twice" in early.stderr
        assert "(AfterStop Deployments or containers: db)" in early.stderr
        assert "wait " in early.stderr and "corral node release doomed --force" in early.stderr
        assert await nodes.get("doomed") is not None
        # ...but it is replaced at once when the operator knows the containers are gone
        released = await corral(nats_url, "node", "release", "doomed", "--force")
        assert released.exit_code == 0, released.output
        assert released.stdout.strip().startswith("node/doomed released")
        await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]),
            lambda p: [x.node for x in p.values()] == ["spare"],
            within=5,
        )
        assert await nodes.get("doomed") is None
        async with await CorralClient.connect(nats_url) as client:
            events = await client.events("node", "doomed")
        assert [e.reason for e in events] == ["Released"]
        tg.cancel_scope.cancel()


async def test_release_of_an_unknown_node_and_of_a_bad_name_are_clear_errors(
    nats_url: str,
) -> None:
    async with running_scheduler(nats_url):
        unknown = await corral(nats_url, "node", "release", "ghost")
        assert unknown.exit_code == 1 and "node 'ghost' not found" in unknown.stderr
        bad = await corral(nats_url, "node", "release", "Bad_Name")
        assert bad.exit_code != 0 and "DNS label" in bad.output


async def test_release_without_a_scheduler_says_so(nats_url: str) -> None:
    result = await corral(nats_url, "node", "release", "n1")
    assert result.exit_code == 1
    assert "no scheduler answered on corral.api.node.release" in result.stderr


# --- adopt and reset: requests to the node's agent -----------------------------------------


@asynccontextmanager
async def fake_agent(
    nats_url: str, node: str, answer: Reply | None
) -> AsyncIterator[list[tuple[str, NodeDecision]]]:
    """Answers corral.node.<node>.* with `answer` (None: never answers); yields what it got."""
    nc: NATS = await connect(nats_url, name="fake-agent")
    got: list[tuple[str, NodeDecision]] = []
    subscription = await nc.subscribe(f"{names.NODE_PREFIX}.{node}.*")

    async def serve() -> None:
        async for msg in subscription.messages:
            got.append((msg.subject, decode(msg.data, NodeDecision)))
            if answer is not None:
                await msg.respond(encode(answer))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await flush_subscriptions(nc)
            yield got
            tg.cancel_scope.cancel()
    finally:
        await nc.close()


async def test_adopt_and_reset_are_sent_to_the_nodes_agent_and_its_answer_printed(
    nats_url: str,
) -> None:
    answer = Reply(ok=True, kind="Node", name="n1", message="containers of cluster x are kept")
    async with fake_agent(nats_url, "n1", answer) as got:
        adopted = await corral(nats_url, "node", "adopt", "n1", "--cluster-id", "0123456789abcdef")
        assert adopted.exit_code == 0, adopted.output
        assert adopted.stdout.strip() == "node/n1 adopted: containers of cluster x are kept"
        reset = await corral(nats_url, "node", "reset", "n1")
        assert reset.exit_code == 0, reset.output
        assert reset.stdout.strip().startswith("node/n1 reset")
    assert got == [
        (names.node_subject("n1", "adopt"), NodeDecision(node="n1", cluster_id="0123456789abcdef")),
        (names.node_subject("n1", "reset"), NodeDecision(node="n1")),
    ]


async def test_an_agents_refusal_is_an_error_with_its_words(nats_url: str) -> None:
    refusal = Reply(ok=False, kind="Node", name="n1", error="node n1 is not held: nothing to adopt")
    async with fake_agent(nats_url, "n1", refusal):
        result = await corral(nats_url, "node", "adopt", "n1")
    assert result.exit_code == 1
    assert "node n1 is not held: nothing to adopt" in result.stderr


async def test_no_agent_and_a_silent_agent_are_clear_errors(nats_url: str) -> None:
    nobody = await corral(nats_url, "node", "reset", "n2")
    assert nobody.exit_code == 1
    assert "no node agent answers for node 'n2' on corral.node.n2.reset" in nobody.stderr
    async with fake_agent(nats_url, "n2", None):
        silent = await corral(nats_url, "node", "adopt", "n2")
    assert silent.exit_code == 1
    assert "did not answer on corral.node.n2.adopt within 2 s" in silent.stderr


async def test_a_bad_cluster_id_never_leaves_the_machine(nats_url: str) -> None:
    async with fake_agent(nats_url, "n1", Reply(ok=True)) as got:
        result = await corral(nats_url, "node", "adopt", "n1", "--cluster-id", "xyz")
    assert result.exit_code != 0 and "clusterId" in result.output
    assert got == []


# --- how a node is shown ------------------------------------------------------------------


async def test_get_and_describe_show_a_nodes_mode_foreign_containers_and_orphans(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    nodes = buckets[names.NODES_BUCKET]
    held = Node(
        name="n1",
        capacity=NodeCapacity(cpu_millis=2000, memory_bytes=2**32),
        heartbeat_at=time.time(),
        mode="Held",
        engine_id="ENGINE-1",
        foreign_containers=2,
        orphans=[OrphanReplica(deployment="web", replica="web-abcde", template_hash="1234567890")],
        failing_removals=1,
    )
    await write_record(nodes, "n1", held, None)
    await nodes.put(echo_key("scheduler-1"), encode(1.0))  # never shown as a node
    listed = await corral(nats_url, "get", "nodes")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == ["n1", "Ready,Held"]
    described = await corral(nats_url, "describe", "node", "n1")
    assert described.exit_code == 0, described.output
    text = described.stdout
    assert "Mode:" in text and "Held" in text and "ENGINE-1" in text
    assert "2 container(s) of another cluster on this engine (left alone)" in text
    assert "1 container(s) could not be removed" in text
    assert "web-abcde" in text and "1234567890" in text


async def test_an_agent_that_subscribes_after_the_request_is_asked_again_and_answers(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent starting, reconnecting, or on a cluster's server that has not told the
    client's server of its subscription yet: the request finds no responders at first,
    and is sent again until the timeout rather than failing at once."""
    no_responders = threading.Event()
    original = NATS.request

    async def spied(self: NATS, subject: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, subject, *args, **kwargs)
        except NoRespondersError:
            no_responders.set()
            raise

    monkeypatch.setattr(NATS, "request", spied)
    answer = Reply(ok=True, kind="Node", name="n4", message="reset")
    async with anyio.create_task_group() as tg:
        results: list[Result] = []

        async def run() -> None:
            results.append(await corral(nats_url, "node", "reset", "n4"))

        tg.start_soon(run)
        await eventually(lambda: current(no_responders.is_set() or bool(results)), bool)
        assert not results, results[0].output  # it gave up at the first "no responders"
        async with fake_agent(nats_url, "n4", answer) as got:
            await eventually(lambda: current(bool(results)), bool)
    assert results[0].exit_code == 0, results[0].output
    assert results[0].stdout.strip() == "node/n4 reset: reset"
    assert got == [(names.node_subject("n4", "reset"), NodeDecision(node="n4"))]
