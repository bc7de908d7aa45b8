"""`corral get` / `describe` / `events` against a real NATS with seeded buckets."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import anyio
import msgspec
import pytest
import yaml
from click.testing import CliRunner, Result

from corral.client.cli.main import cli
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import (
    DeploymentStatus,
    Node,
    NodeCapacity,
    Placement,
    ReplicaState,
    ReplicaStatus,
)
from corral.natsio.bus import EventPublisher, connect
from corral.natsio.kv import NatsBucket, write_record


async def corral(url: str, *args: str, stdin: str | None = None) -> Result:
    """Run the CLI in a worker thread (it calls anyio.run itself)."""

    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, *args], input=stdin)

    return await anyio.to_thread.run_sync(invoke)


def template() -> ContainerTemplate:
    return msgspec.json.decode(
        b'{"image":"corral-test/busybox:1","resources":{"requests":{"cpu":"100m","memory":"64Mi"}}}',
        type=ContainerTemplate,
    )


async def seed(buckets: dict[str, NatsBucket], now: float) -> None:
    tmpl = template()
    web = Deployment(
        metadata=ObjectMeta(name="web", generation=2, uid="u-1", creation_timestamp=now - 300),
        spec=DeploymentSpec(replicas=3, template=tmpl),
    )
    await write_record(buckets[names.DEPLOYMENTS_BUCKET], "default.web", web, None)
    await write_record(
        buckets[names.DEPLOYMENT_STATUS_BUCKET],
        "default.web",
        DeploymentStatus(
            name="web",
            observed_generation=2,
            replicas=3,
            placed=2,
            ready=1,
            updated=2,
            available=1,
            pending=1,
            pending_reason="no node has 100m cpu free",
            updated_at=now - 10,
        ),
        None,
    )
    for node, heartbeat in (("n1", now - 1), ("n2", now - 60)):
        await write_record(
            buckets[names.NODES_BUCKET],
            node,
            Node(
                name=node,
                capacity=NodeCapacity(cpu_millis=2000, memory_bytes=4 * 2**30, pods=110),
                agent_started_at=now - 3600,
                heartbeat_at=heartbeat,
            ),
            None,
        )
    for replica in ("web-a", "web-b"):
        key = names.placement_key("n1", "default", replica)
        await write_record(
            buckets[names.PLACEMENTS_BUCKET],
            key,
            Placement(
                replica=replica,
                deployment="web",
                node="n1",
                template=tmpl,
                template_hash=tmpl.template_hash(),
                generation=2,
                cpu_millis=100,
                memory_bytes=64 * 2**20,
                created_at=now - 120,
            ),
            None,
        )
    await write_record(
        buckets[names.REPLICA_STATUS_BUCKET],
        names.placement_key("n1", "default", "web-a"),
        ReplicaStatus(
            replica="web-a",
            deployment="web",
            node="n1",
            state=ReplicaState.RUNNING,
            container_id="0123456789abcdef",
            restarts=2,
            started_at=now - 100,
            updated_at=now - 100,
        ),
        None,
    )


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def columns(table: list[list[str]], name: str) -> dict[str, str]:
    """First cell -> the named column of a table whose cells have no blanks."""
    index = table[0].index(name)
    return {row[0]: row[index] for row in table[1:]}


async def test_get_deployments_table_json_yaml(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await seed(buckets, time.time())

    result = await corral(nats_url, "get", "deployments")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert lines[1].split()[:5] == ["web", "1/3", "2", "1", "5m"]
    assert "1 pending: no node has 100m cpu free" in lines[1]

    for spelling in ("deployment", "deploy", "deployments/web"):
        args: Sequence[str] = ("get", spelling) if "/" in spelling else ("get", spelling, "web")
        same = await corral(nats_url, *args)
        assert same.exit_code == 0 and "1/3" in same.stdout, same.output

    as_json = json.loads((await corral(nats_url, "get", "deployment", "web", "-o", "json")).stdout)
    assert as_json["metadata"]["name"] == "web"
    assert as_json["spec"]["replicas"] == 3
    assert as_json["status"]["pendingReason"] == "no node has 100m cpu free"

    as_yaml = yaml.safe_load((await corral(nats_url, "get", "deployments", "-o", "yaml")).stdout)
    assert as_yaml["kind"] == "List"
    assert [item["metadata"]["name"] for item in as_yaml["items"]] == ["web"]

    wide = await corral(nats_url, "get", "deployments", "-o", "wide")
    assert "corral-test/busybox:1" in wide.stdout and "cpu=100m,memory=64Mi" in wide.stdout


async def test_get_replicas_includes_pending(nats_url: str, buckets: dict[str, NatsBucket]) -> None:
    await seed(buckets, time.time())
    result = await corral(nats_url, "get", "replicas")
    assert result.exit_code == 0, result.output
    table = rows(result.stdout)
    assert table[0] == [
        "NAME", "DEPLOYMENT", "NODE", "CONTAINER", "READY", "STATE", "RESTARTS", "AGE"
    ]  # fmt: skip
    assert table[1] == ["web-a", "web", "n1", "0123456789ab", "1/1", "Running", "2", "2m"]
    assert table[2] == ["web-b", "web", "n1", "<none>", "0/1", "Pending", "0", "2m"]
    assert table[3][:6] == ["<pending>", "web", "<none>", "<none>", "0/1", "Pending"]

    wide = await corral(nats_url, "get", "pods", "-o", "wide")
    assert "no node has 100m cpu free" in wide.stdout

    single = await corral(nats_url, "get", "replica", "web-a", "-o", "json")
    assert single.exit_code == 0, single.output
    one = json.loads(single.stdout)
    assert one["status"]["state"] == "Running" and one["placement"]["node"] == "n1"


async def test_get_replicas_of_one_node_reads_only_that_nodes_keys(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await seed(buckets, time.time())
    on_n2 = await corral(nats_url, "get", "replicas", "--node", "n2")
    assert on_n2.exit_code == 0 and on_n2.stdout.strip() == "No replicas.", on_n2.output
    entry = await buckets[names.PLACEMENTS_BUCKET].get(
        names.placement_key("n1", "default", "web-b")
    )
    assert entry is not None and entry.value is not None
    moved = decode(entry.value, Placement)
    moved = msgspec.structs.replace(moved, node="n2", replica="web-z")
    await buckets[names.PLACEMENTS_BUCKET].put(moved.key, encode(moved))
    on_n1 = await corral(nats_url, "get", "replicas", "--node", "n1")
    assert on_n1.exit_code == 0, on_n1.output
    assert [row[0] for row in rows(on_n1.stdout)[1:]] == ["web-a", "web-b"]
    on_n2 = await corral(nats_url, "get", "replicas", "--node", "n2")
    assert [row[:3] for row in rows(on_n2.stdout)[1:]] == [["web-z", "web", "n2"]]
    bad = await corral(nats_url, "get", "replicas", "--node", "N_1")
    assert bad.exit_code != 0 and "--node" in bad.output and "N_1" in bad.output
    misplaced = await corral(nats_url, "get", "nodes", "--node", "n1")
    assert misplaced.exit_code != 0 and "get replicas" in misplaced.output


async def test_get_nodes_ready_and_allocated(nats_url: str, buckets: dict[str, NatsBucket]) -> None:
    await seed(buckets, time.time())
    result = await corral(nats_url, "get", "nodes")
    assert result.exit_code == 0, result.output
    table = rows(result.stdout)
    assert table[0] == ["NAME", "STATUS", "CPU", "MEMORY", "PODS", "AGE"]
    assert table[1] == ["n1", "Ready", "200m/2", "128Mi/4Gi", "2/110", "60m"]
    assert table[2] == ["n2", "NotReady", "0/2", "0/4Gi", "0/110", "60m"]

    items = json.loads((await corral(nats_url, "get", "nodes", "-o", "json")).stdout)["items"]
    assert items[0]["allocated"] == {"cpuMillis": 200, "memoryBytes": 64 * 2**21, "pods": 2}


async def test_describe_deployment_shows_spec_status_replicas_events(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await seed(buckets, time.time())
    nc = await connect(nats_url, name="test-events")
    try:
        await EventPublisher(nc, source="scheduler").emit(
            "deployment", "web", "ScalingReplicaSet", "scaled up to 3"
        )
        await nc.flush()
    finally:
        await nc.close()

    result = await corral(nats_url, "describe", "deployment", "web")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in (
        "Name:",
        "corral-test/busybox:1",
        "3 desired | 2 placed | 2 up-to-date | 1 ready | 1 pending",
        "no node has 100m cpu free",
        "web-a",
        "ScalingReplicaSet",
        "scaled up to 3",
    ):
        assert expected in text, (expected, text)

    data = yaml.safe_load((await corral(nats_url, "describe", "deploy/web", "-o", "yaml")).stdout)
    assert [event["reason"] for event in data["events"]] == ["ScalingReplicaSet"]
    assert {replica["name"] for replica in data["replicas"]} == {"web-a", "web-b", "<pending>"}

    events = await corral(nats_url, "events")
    assert events.exit_code == 0 and "deployment/web" in events.stdout, events.output
    for_web = json.loads(
        (await corral(nats_url, "events", "--for", "deployment/web", "-o", "json")).stdout
    )
    assert [item["message"] for item in for_web["items"]] == ["scaled up to 3"]

    node = await corral(nats_url, "describe", "node", "n1")
    assert node.exit_code == 0 and "200m allocated of 2" in node.stdout, node.output


async def test_missing_objects_and_empty_cluster(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    empty = await corral(nats_url, "get", "deployments")
    assert empty.exit_code == 0 and "No deployments." in empty.stdout

    missing = await corral(nats_url, "get", "deployment", "nope")
    assert missing.exit_code == 1
    assert "deployment 'nope' not found" in missing.stderr

    unknown = await corral(nats_url, "get", "widgets")
    assert unknown.exit_code != 0
    assert "unknown kind 'widgets'" in unknown.stderr and "deployments" in unknown.stderr

    no_events = await corral(nats_url, "events")
    assert no_events.exit_code == 0 and "No events." in no_events.stdout


async def test_follow_events_streams_new_ones(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    from corral.client.api import CorralClient

    nc = await connect(nats_url, name="test-events")
    publisher = EventPublisher(nc, source="test")
    try:
        await publisher.emit("deployment", "web", "Old", "before")
        async with await CorralClient.connect(nats_url) as client:
            seen: list[str] = []
            with anyio.fail_after(10):
                async for event in client.follow_events(limit=10):
                    seen.append(event.reason)
                    if event.reason == "Old":
                        await publisher.emit("deployment", "web", "New", "after")
                    if event.reason == "New":
                        break
            assert seen == ["Old", "New"]
    finally:
        await nc.close()


@pytest.mark.parametrize("output", ["json", "yaml"])
async def test_get_machine_output_on_empty(nats_url: str, output: str) -> None:
    result = await corral(nats_url, "get", "nodes", "-o", output)
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout) if output == "json" else yaml.safe_load(result.stdout)
    assert loaded["items"] == []


async def test_get_several_names_shows_each_and_says_which_are_missing(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    await seed(buckets, time.time())
    both = await corral(nats_url, "get", "nodes", "n2", "n1")
    assert both.exit_code == 0, both.output
    table = rows(both.stdout)
    assert table[0][0] == "NAME" and [row[0] for row in table[1:]] == ["n2", "n1"]
    assert table[0].count("NAME") == 1  # one header over both rows

    pods = json.loads(
        (await corral(nats_url, "get", "pods", "web-a", "web-b", "-o", "json")).stdout
    )
    assert pods["kind"] == "List"
    assert [item["name"] for item in pods["items"]] == ["web-a", "web-b"]

    one_missing = await corral(nats_url, "get", "nodes", "n1", "nope", "gone")
    assert one_missing.exit_code == 1
    assert [row[0] for row in rows(one_missing.stdout)[1:]] == ["n1"]  # the found one shown
    assert one_missing.stderr.splitlines() == [
        "Error (NotFound): node 'nope' not found",
        "Error (NotFound): node 'gone' not found",
    ]
    none_found = await corral(nats_url, "get", "deployments", "a", "b", "-o", "yaml")
    assert none_found.exit_code == 1  # still a List, empty: several names give one always
    assert yaml.safe_load(none_found.stdout)["items"] == []
    assert "deployment 'b' not found" in none_found.stderr

    manifests = yaml.safe_load(
        (await corral(nats_url, "get", "deployments", "web", "-o", "yaml")).stdout
    )
    assert manifests["kind"] == "Deployment"  # one name: the object itself, as before
    listed = yaml.safe_load(
        (await corral(nats_url, "get", "deployments", "web", "nope", "-o", "yaml")).stdout
    )
    assert listed["kind"] == "List" and listed["apiVersion"] == "v1"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["web"]

    spaces = await corral(nats_url, "get", "namespaces", "default", "nope")
    assert spaces.exit_code == 1 and rows(spaces.stdout)[1][0] == "default"
    assert "namespace 'nope' not found" in spaces.stderr

    twice = await corral(nats_url, "get", "nodes", "n1", "n1")
    assert twice.exit_code == 2 and "given twice" in twice.stderr
    mixed = await corral(nats_url, "get", "node/n1", "n2")
    assert mixed.exit_code == 2 and "not both" in mixed.stderr
    everywhere = await corral(nats_url, "get", "pods", "web-a", "web-b", "-A")
    assert everywhere.exit_code == 2 and "give no NAME" in everywhere.stderr
