"""`corral logs` through a real nats-server: the agents' log services (corral_node_agent.logs)
on hollow engines of two nodes, the replicas' placements and statuses seeded as the
scheduler and the agents write them. Two replicas on two nodes, --tail, stderr kept
apart, --follow (new lines arrive; a client that stops, or falls silent, ends the
agent's stream), the window (a client that never acknowledges gets no more than it),
a node without an agent named while the others are shown, bad input, and only this
cluster's containers (an engine shared with another cluster; an agent that does not
know its cluster yet serves nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import pytest
from click.testing import Result
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from corral.client.api import CorralClient
from corral.client.cli.logs_commands import Printer, ReplicaRef, show_logs
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.logs import LOG_WINDOW_CHUNKS, LogAck, LogChunk, LogRequest
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket, write_record
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.logs import LogService
from corral_node_agent.runtime import ContainerSpec
from corral_node_agent.safety import Identity
from tests.integration.test_cli_reads import corral
from tests.waiting import current as _value
from tests.waiting import eventually

IMAGE = "corral-test/busybox:1"
CLUSTER = "c0ffee"  # the cluster the agents here belong to


@dataclass
class Membership:
    """What the log service reads of its agent (NodeAgent's properties)."""

    identity: Identity = Identity.RECOGNISED
    cluster_id: str = CLUSTER
    adopted: frozenset[str] = frozenset()


@dataclass
class HollowNode:
    name: str
    runtime: HollowRuntime
    service: LogService
    membership: Membership


@asynccontextmanager
async def log_agents(
    nats_url: str,
    *nodes: str,
    idle_seconds: float = 10.0,
    runtime: HollowRuntime | None = None,
) -> AsyncIterator[dict[str, HollowNode]]:
    """The log service of each node's agent, on its own connection and hollow engine
    (or all on `runtime`, one engine)."""
    running: dict[str, HollowNode] = {}
    connections: list[NATS] = []
    try:
        async with anyio.create_task_group() as tg:
            for node in nodes:
                nc = await connect(nats_url, name=f"agent-{node}")
                connections.append(nc)
                engine = runtime or HollowRuntime(images={IMAGE})
                membership = Membership()
                service = LogService(
                    nc,
                    node,
                    engine,
                    membership,
                    idle_seconds=idle_seconds,
                    keepalive_seconds=0.2,
                )
                await tg.start(service.serve)
                running[node] = HollowNode(node, engine, service, membership)
            yield running
            tg.cancel_scope.cancel()
    finally:
        for nc in connections:
            await nc.close()


async def start_container(
    runtime: HollowRuntime,
    node: str,
    replica: str,
    deployment: str = "web",
    namespace: str = "default",
    cluster: str = CLUSTER,
) -> str:
    """A replica's container, labelled as the agent of `cluster` labels it, running."""
    labels = {
        names.LABEL_MANAGED: "true",
        names.LABEL_CLUSTER: cluster,
        names.LABEL_NODE: node,
        names.LABEL_REPLICA: replica,
        names.LABEL_DEPLOYMENT: deployment,
        names.LABEL_NAMESPACE: namespace,
    }
    spec = ContainerSpec(name=f"corral-{cluster}-{replica}", image=IMAGE, labels=labels)
    container_id = await runtime.create_container(spec)
    await runtime.start_container(container_id)
    return container_id


async def run_replica(
    buckets: dict[str, NatsBucket],
    node: str,
    runtime: HollowRuntime | None,
    replica: str,
    deployment: str = "web",
    namespace: str = "default",
    cluster: str = CLUSTER,
) -> str:
    """A replica placed on `node`, its container (of `cluster`) running there (when the
    node has an engine here), and its status as the agent writes it. Returns the
    container id."""
    template = msgspec.json.decode(b'{"image":"%s"}' % IMAGE.encode(), type=ContainerTemplate)
    placement = Placement(
        replica=replica,
        deployment=deployment,
        node=node,
        template=template,
        template_hash="abc",
        generation=1,
        namespace=namespace,
    )
    await write_record(buckets[names.PLACEMENTS_BUCKET], placement.key, placement, None)
    container_id = ""
    if runtime is not None:
        container_id = await start_container(runtime, node, replica, deployment, namespace, cluster)
    status = ReplicaStatus(
        replica=replica,
        deployment=deployment,
        node=node,
        state=ReplicaState.RUNNING,
        container_id=container_id,
        namespace=namespace,
    )
    await write_record(buckets[names.REPLICA_STATUS_BUCKET], placement.key, status, None)
    return container_id


async def make_deployment(
    buckets: dict[str, NatsBucket],
    name: str = "web",
    namespace: str = "default",
    labels: dict[str, str] | None = None,
) -> None:
    template = msgspec.json.decode(b'{"image":"%s"}' % IMAGE.encode(), type=ContainerTemplate)
    deployment = Deployment(
        metadata=ObjectMeta(
            name=name, namespace=namespace, generation=1, uid="u-1", labels=labels or {}
        ),
        spec=DeploymentSpec(replicas=2, template=template),
    )
    key = names.object_key(namespace, name)
    await write_record(buckets[names.DEPLOYMENTS_BUCKET], key, deployment, None)


@asynccontextmanager
async def asked(
    nats_url: str, node: str, request: LogRequest, name: str = "client"
) -> AsyncIterator[tuple[NATS, Subscription]]:
    """A client's connection that sent `request` to `node`'s agent, and the subscription
    its answers come on; closed on the way out."""
    nc = await connect(nats_url, name=name)
    try:
        inbox = nc.new_inbox()
        subscription = await nc.subscribe(inbox)
        await nc.publish(names.logs_subject(node), encode(request), reply=inbox)
        yield nc, subscription
    finally:
        await nc.close()


async def test_the_logs_of_a_deployment_come_from_both_nodes_prefixed_with_tail_and_stderr(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with log_agents(nats_url, "node-1", "node-2") as nodes:
        await make_deployment(buckets)
        one = await run_replica(buckets, "node-1", nodes["node-1"].runtime, "web-aaaaa")
        two = await run_replica(buckets, "node-2", nodes["node-2"].runtime, "web-bbbbb")
        nodes["node-1"].runtime.write_log(one, "a1\na2\n")
        nodes["node-1"].runtime.write_log(one, "a3 oops\n", stream="stderr")
        nodes["node-2"].runtime.write_log(two, "b1\nb2\nb3\n")

        shown = await corral(nats_url, "logs", "deployment/web")
        assert shown.exit_code == 0, shown.output
        assert sorted(shown.stdout.splitlines()) == [
            "[web-aaaaa] a1",
            "[web-aaaaa] a2",
            "[web-bbbbb] b1",
            "[web-bbbbb] b2",
            "[web-bbbbb] b3",
        ]
        assert shown.stderr == "[web-aaaaa] a3 oops\n"

        tailed = await corral(nats_url, "logs", "deploy/web", "--tail", "2")
        assert tailed.exit_code == 0, tailed.output
        assert sorted(tailed.stdout.splitlines()) == [
            "[web-aaaaa] a2",
            "[web-bbbbb] b2",
            "[web-bbbbb] b3",
        ]
        assert tailed.stderr == "[web-aaaaa] a3 oops\n"

        # one replica by its name: no prefix (unless asked), in its order
        alone = await corral(nats_url, "logs", "web-bbbbb", "--tail", "1")
        assert (alone.exit_code, alone.stdout) == (0, "b3\n"), alone.output
        asked = await corral(nats_url, "logs", "web-bbbbb", "--prefix", "-t")
        assert asked.exit_code == 0, asked.output
        stamped = asked.stdout.splitlines()
        assert [line.split(" ", 2)[::2] for line in stamped] == [
            ["[web-bbbbb]", "b1"],
            ["[web-bbbbb]", "b2"],
            ["[web-bbbbb]", "b3"],
        ]
        assert all(line.split(" ")[1].endswith("Z") for line in stamped), stamped
        assert sum(n.service.served for n in nodes.values()) == 6

        # a log longer than one chunk (64 KiB) comes whole and in order
        long = [f"{n:06d} " + "z" * 200 + "\n" for n in range(2000)]  # ~400 KiB
        for line in long:
            nodes["node-2"].runtime.write_log(two, line)
        whole = await corral(nats_url, "logs", "web-bbbbb", "--tail", "2000")
        assert whole.exit_code == 0, whole.stderr
        assert whole.stdout == "".join(long)


async def test_follow_receives_new_lines_and_a_stopping_client_ends_the_agents_stream(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with log_agents(nats_url, "node-1", "node-2") as nodes:
        await make_deployment(buckets)
        one = await run_replica(buckets, "node-1", nodes["node-1"].runtime, "web-aaaaa")
        two = await run_replica(buckets, "node-2", nodes["node-2"].runtime, "web-bbbbb")
        nodes["node-1"].runtime.write_log(one, "old\n")
        client = await CorralClient.connect(nats_url, request_timeout=5)
        out, err = _Text(), _Text()
        printer = Printer(out, err, prefixed=True)  # type: ignore[arg-type]
        refs = [
            ReplicaRef("web-aaaaa", "node-1", "default", one),
            ReplicaRef("web-bbbbb", "node-2", "default", two),
        ]
        async with client, anyio.create_task_group() as tg:

            async def follow() -> None:
                await show_logs(
                    client, refs, follow=True, tail=None, since=None, timestamps=False,
                    printer=printer, answer_seconds=5,
                )  # fmt: skip

            tg.start_soon(follow)
            await eventually(lambda: _value(out.text), lambda text: "[web-aaaaa] old\n" in text)
            nodes["node-2"].runtime.write_log(two, "new on two\n")
            nodes["node-1"].runtime.write_log(one, "new on one\n")
            await eventually(
                lambda: _value(out.text),
                lambda text: (
                    "[web-bbbbb] new on two\n" in text and "[web-aaaaa] new on one\n" in text
                ),
            )
            assert [n.service.active for n in nodes.values()] == [1, 1]
            tg.cancel_scope.cancel()  # the client stops (Ctrl-C)
        # Each agent ends its stream at once: well before its idle bound of 10 s.
        await eventually(
            lambda: _value([n.service.active for n in nodes.values()]),
            lambda active: active == [0, 0],
            within=3,
        )
        assert [n.service.stopped_by_client for n in nodes.values()] == [1, 1]
        assert err.text == ""


async def test_a_client_that_never_acknowledges_gets_one_window_and_the_agent_gives_up(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    """A slow (here: stuck) client does not make the agent read, hold or send more
    than one window of chunks; silent for the idle bound, it is dropped."""
    async with log_agents(nats_url, "node-1", idle_seconds=1.0) as nodes:
        node = nodes["node-1"]
        container = await run_replica(buckets, "node-1", node.runtime, "web-aaaaa")
        for number in range(4000):  # ~4 MiB: 64 chunks' worth
            node.runtime.write_log(container, f"{number:06d} " + "x" * 1000 + "\n")
        request = LogRequest(replica="web-aaaaa", follow=True)
        async with asked(nats_url, "node-1", request, "stuck-client") as (_, subscription):
            chunks = []
            with anyio.move_on_after(2.5):  # past the idle bound: the agent gave up
                async for msg in subscription.messages:
                    chunks.append(decode(msg.data, LogChunk))
            assert [c.seq for c in chunks] == list(range(LOG_WINDOW_CHUNKS))
            assert all(len(encode(c)) <= 64 * 1024 + 4096 for c in chunks)
            assert node.service.active == 0 and node.service.stopped_by_client == 1


async def test_acknowledged_chunks_keep_a_long_log_flowing_in_order(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with log_agents(nats_url, "node-1") as nodes:
        node = nodes["node-1"]
        container = await run_replica(buckets, "node-1", node.runtime, "web-aaaaa")
        lines = [f"{number:06d} " + "y" * 500 + "\n" for number in range(3000)]
        for line in lines:
            node.runtime.write_log(container, line)
        request = LogRequest(replica="web-aaaaa")
        async with asked(nats_url, "node-1", request) as (nc, subscription):
            text, control = "", ""
            with anyio.fail_after(10):
                async for msg in subscription.messages:
                    chunk = decode(msg.data, LogChunk)
                    control = chunk.control or control
                    text += "".join(p.text for p in chunk.pieces)
                    if chunk.end:
                        break
                    await nc.publish(control, encode(LogAck(seq=chunk.seq)))
            assert text == "".join(lines)


async def ask_logs(nats_url: str, node: str, request: LogRequest) -> list[LogChunk]:
    """One request, as a client sends it: the chunks the agent answers, to the last."""
    chunks: list[LogChunk] = []
    async with asked(nats_url, node, request) as (nc, subscription):
        with anyio.fail_after(5):
            async for msg in subscription.messages:
                chunk = decode(msg.data, LogChunk)
                chunks.append(chunk)
                if chunk.end or chunk.error:
                    break
                if chunk.control:
                    await nc.publish(chunk.control, encode(LogAck(seq=chunk.seq)))
    return chunks


async def test_another_clusters_container_on_the_same_engine_is_never_streamed(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    engine = HollowRuntime(images={IMAGE})
    async with log_agents(nats_url, "node-1", runtime=engine) as nodes:
        # Another cluster's agent on the same engine runs a replica of the same name
        # (same node name, namespace and replica): its container is listed here too.
        theirs = await start_container(engine, "node-1", "web-aaaaa", cluster="beef")
        engine.write_log(theirs, "their secret\n")
        for asked in (LogRequest(replica="web-aaaaa"),
                      LogRequest(replica="web-aaaaa", container_id=theirs)):  # fmt: skip
            chunks = await ask_logs(nats_url, "node-1", asked)
            assert [c.seq for c in chunks] == [0] and chunks[0].pieces == []
            assert chunks[0].error == (
                "replica web-aaaaa of namespace default has no container on node node-1"
            )
        # Once this cluster's own container runs beside it, only that one is served,
        # even when the other's id is asked for.
        ours = await run_replica(buckets, "node-1", engine, "web-aaaaa")
        engine.write_log(ours, "our line\n")
        for asked in (LogRequest(replica="web-aaaaa"),
                      LogRequest(replica="web-aaaaa", container_id=theirs)):  # fmt: skip
            chunks = await ask_logs(nats_url, "node-1", asked)
            text = "".join(p.text for c in chunks for p in c.pieces)
            assert (text, chunks[-1].end, chunks[-1].error) == ("our line\n", True, "")
        # An adopted cluster's containers are this node's: served.
        nodes["node-1"].membership.adopted = frozenset({"beef"})
        chunks = await ask_logs(nats_url, "node-1", LogRequest(replica="web-aaaaa",
                                                               container_id=theirs))  # fmt: skip
        assert "".join(p.text for c in chunks for p in c.pieces) == "their secret\n"


async def test_an_agent_that_does_not_know_its_cluster_refuses_every_request(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with log_agents(nats_url, "node-1") as nodes:
        node = nodes["node-1"]
        container = await run_replica(buckets, "node-1", node.runtime, "web-aaaaa")
        node.runtime.write_log(container, "hello\n")
        # At start (nothing read yet), and facing a store of another cluster (its local
        # record names the cluster it belongs to, which is not the store's).
        for identity, cluster_id in ((Identity.UNKNOWN, ""), (Identity.MISMATCH, CLUSTER)):
            node.membership.identity, node.membership.cluster_id = identity, cluster_id
            chunks = await ask_logs(nats_url, "node-1", LogRequest(replica="web-aaaaa"))
            assert [c.seq for c in chunks] == [0] and chunks[0].pieces == []
            assert chunks[0].error == (
                "node node-1 does not know yet that it belongs to this cluster (its "
                f"identity: {identity}): no logs until it does; try again later"
            )
            assert not chunks[0].end
        node.membership.identity = Identity.RECOGNISED
        shown = await corral(nats_url, "logs", "web-aaaaa")
        assert (shown.exit_code, shown.stdout) == (0, "hello\n"), shown.output


async def test_a_node_whose_agent_does_not_answer_is_named_and_the_others_shown(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with log_agents(nats_url, "node-1") as nodes:
        await make_deployment(buckets)
        one = await run_replica(buckets, "node-1", nodes["node-1"].runtime, "web-aaaaa")
        await run_replica(buckets, "node-3", None, "web-ccccc")  # node-3: no agent runs
        nodes["node-1"].runtime.write_log(one, "hello\n")
        shown = await corral(nats_url, "logs", "deployment/web")
        assert shown.exit_code == 1
        assert shown.stdout == "[web-aaaaa] hello\n"
        assert "replica web-ccccc on node node-3: no agent answers for node node-3" in (
            shown.stderr
        )


async def test_bad_input_is_named_and_exits_1(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with log_agents(nats_url, "node-1") as nodes:
        await make_deployment(buckets)
        await make_deployment(buckets, "idle")
        await run_replica(buckets, "node-1", nodes["node-1"].runtime, "web-aaaaa")
        await run_replica(buckets, "node-1", None, "web-zzzzz")  # placed, no container yet
        cases = {
            ("deployment/nope",): 'deployment "nope" not found in namespace "default"',
            ("deployment/idle",): "deployment/idle has no replica placed on a node yet",
            ("web-xxxxx",): 'replica "web-xxxxx" not found in namespace "default"',
            ("-n", "other", "web-aaaaa"): 'replica "web-aaaaa" not found in namespace "other"',
            ("service/web",): "unknown kind 'service'",
            ("web-aaaaa", "--tail", "-1"): "--tail -1: give 0 or more lines",
            ("web-aaaaa", "--since", "yesterday"): "--since 'yesterday' is neither a duration",
            ("web-zzzzz",): "replica web-zzzzz of namespace default has no container on node",
        }
        for args, message in cases.items():
            result = await corral(nats_url, "logs", *args)
            assert result.exit_code == 1 and message in result.stderr, (args, result.output)


async def test_service_logs_and_stack_logs_lead_lines_with_replica_at_node(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with log_agents(nats_url, "node-1", "node-2") as nodes:
        await make_deployment(buckets)
        one = await run_replica(buckets, "node-1", nodes["node-1"].runtime, "web-aaaaa")
        nodes["node-1"].runtime.write_log(one, "a1\n")
        project = {"com.docker.compose.project": "shop"}
        await make_deployment(buckets, "db", "shop", project)
        await make_deployment(buckets, "api", "shop", project)
        db = await run_replica(buckets, "node-2", nodes["node-2"].runtime, "db-ddddd", "db", "shop")
        api = await run_replica(
            buckets, "node-1", nodes["node-1"].runtime, "api-eeeee", "api", "shop"
        )
        nodes["node-2"].runtime.write_log(db, "ready\n")
        nodes["node-1"].runtime.write_log(api, "listening\n")

        swarm = await corral(nats_url, "service", "logs", "web")
        assert (swarm.exit_code, swarm.stdout) == (0, "web-aaaaa@node-1    | a1\n"), swarm.output
        raw = await corral(nats_url, "service", "logs", "--raw", "web")
        assert (raw.exit_code, raw.stdout) == (0, "a1\n"), raw.output
        missing = await corral(nats_url, "service", "logs", "nope")
        assert missing.exit_code == 1 and 'deployment "nope" not found' in missing.stderr

        whole = await corral(nats_url, "stack", "logs", "shop")
        assert whole.exit_code == 0, whole.output
        assert sorted(whole.stdout.splitlines()) == [
            "api-eeeee@node-1    | listening",
            "db-ddddd@node-2    | ready",
        ]
        only = await corral(nats_url, "stack", "logs", "shop", "db")
        assert (only.exit_code, only.stdout) == (0, "db-ddddd@node-2    | ready\n"), only.output
        unknown = await corral(nats_url, "stack", "logs", "shop", "web")
        assert unknown.exit_code == 1 and "no such service in stack shop: web" in unknown.stderr


class _Text:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        return None


async def test_an_agent_that_subscribes_after_the_request_is_asked_again_and_streams(
    nats_url: str, buckets: dict[str, NatsBucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's agent not subscribed yet when the client asks (starting, reconnecting,
    or on another server of a cluster): "no responders" comes back, the client asks
    again until its timeout, and the log is shown."""
    sent = 0
    original = NATS.publish

    async def spied(self: NATS, subject: str, *args: Any, **kwargs: Any) -> None:
        nonlocal sent
        if subject == names.logs_subject("node-1"):
            sent += 1
        await original(self, subject, *args, **kwargs)

    monkeypatch.setattr(NATS, "publish", spied)
    runtime = HollowRuntime(images={IMAGE})
    container = await run_replica(buckets, "node-1", runtime, "web-aaaaa")
    runtime.write_log(container, "hello\n")
    results: list[Result] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            results.append(await corral(nats_url, "logs", "web-aaaaa"))

        tg.start_soon(run)
        # Asked again: the first request found nobody.
        await eventually(lambda: _value(sent >= 2 or bool(results)), bool)
        assert not results, results[0].output  # it gave up at the first "no responders"
        async with log_agents(nats_url, "node-1", runtime=runtime):
            await eventually(lambda: _value(bool(results)), bool)
    assert (results[0].exit_code, results[0].stdout) == (0, "hello\n"), results[0].output
