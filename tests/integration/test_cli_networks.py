"""`corral network create|ls|inspect|rm`, `corral create|get|delete network(s)` through
a real nats-server, against a stand-in for netmgr's cluster part (netmgr_responder)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import yaml
from click.testing import CliRunner, Result

from corral.client.cli.main import cli
from corral.contract import names
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from tests.integration.netmgr_responder import Responder, netmgr_responder


async def corral(url: str, *args: str, stdin: str | None = None) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, *args], input=stdin)

    return await anyio.to_thread.run_sync(invoke)


@asynccontextmanager
async def netmgr(nats_url: str, buckets: dict[str, NatsBucket]) -> AsyncIterator[Responder]:
    nc = await connect(nats_url, name="netmgr-responder")
    try:
        async with netmgr_responder(nc, buckets) as responder:
            yield responder
    finally:
        await nc.close()


async def keys(bucket: NatsBucket) -> set[str]:
    found = set()
    async for entry in bucket.watch():
        if entry is None:
            break
        if entry.value:
            found.add(entry.key)
    return found


async def test_a_network_is_created_listed_inspected_and_removed_with_either_words(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with netmgr(nats_url, buckets):
        swarm = await corral(
            nats_url, "network", "create", "backend", "--subnet", "10.50.0.0/16",
            "--label", "team=a", "--label", "tier=db",
        )  # fmt: skip
        assert swarm.exit_code == 0, swarm.output
        assert swarm.stdout.strip() == "network/backend created"
        rancher = await corral(nats_url, "create", "network", "frontend", "--slice-prefix", "26")
        assert rancher.exit_code == 0 and rancher.stdout.strip() == "network/frontend created"

        again = await corral(nats_url, "network", "create", "backend")
        assert again.exit_code == 1 and "network 'backend' already exists" in again.stderr

        listed = await corral(nats_url, "network", "ls")
        lines = listed.stdout.strip().splitlines()
        assert lines[0].split() == ["NAME", "SUBNET", "SLICE", "NODES", "STATUS", "AGE"]
        assert lines[1].split()[:5] == ["backend", "10.50.0.0/16", "/24", "2", "Ready"]
        assert lines[2].split()[:5] == ["frontend", "10.128.0.0/16", "/26", "2", "Ready"]
        got = await corral(nats_url, "get", "networks")
        assert got.stdout == listed.stdout
        wide = await corral(nats_url, "get", "net", "backend", "-o", "wide")
        assert "team=a,tier=db" in wide.stdout and "frontend" not in wide.stdout

        inspected = await corral(nats_url, "network", "inspect", "backend")
        assert inspected.exit_code == 0, inspected.output
        data = json.loads(inspected.stdout)
        assert data["kind"] == "Network" and data["metadata"]["labels"] == {
            "team": "a",
            "tier": "db",
        }
        assert data["spec"]["subnet"] == "10.50.0.0/16"
        assert data["status"]["subnet"] == "10.50.0.0/16"
        assert [(s["node"], s["subnet"]) for s in data["slices"]] == [
            ("n1", "10.50.1.0/24"),
            ("n2", "10.50.2.0/24"),
        ]
        as_yaml = yaml.safe_load(
            (await corral(nats_url, "network", "inspect", "backend", "-o", "yaml")).stdout
        )
        assert as_yaml == data
        missing = await corral(nats_url, "network", "inspect", "nowhere")
        assert missing.exit_code == 1 and "network 'nowhere' not found" in missing.stderr

        described = await corral(nats_url, "describe", "network", "backend")
        assert "Subnet:       10.50.0.0/16" in described.stdout, described.output
        assert "n2     10.50.2.0/24   10.50.2.1" in described.stdout

        removed = await corral(nats_url, "network", "rm", "backend")
        assert removed.exit_code == 0 and removed.stdout.strip() == "network/backend deleted"
        deleted = await corral(nats_url, "delete", "network", "frontend")
        assert deleted.exit_code == 0 and deleted.stdout.strip() == "network/frontend deleted"
        assert await keys(buckets[names.NETWORKS_BUCKET]) == set()
        assert (await corral(nats_url, "get", "networks")).stdout.strip() == "No networks."
        gone = await corral(nats_url, "network", "rm", "backend")
        assert gone.exit_code == 1 and "not found" in gone.stderr


async def test_removing_a_network_in_use_is_refused_with_what_uses_it(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with netmgr(nats_url, buckets):
        assert (await corral(nats_url, "network", "create", "backend")).exit_code == 0
        made = await corral(
            nats_url, "create", "service", "db", "--selector", "app=db", "--port", "5432",
            "--network", "backend",
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        refused = await corral(nats_url, "network", "rm", "backend")
        assert refused.exit_code == 1
        assert "network 'backend' is in use by service/db" in refused.stderr
        assert await keys(buckets[names.NETWORKS_BUCKET]) == {"backend"}


BAD_NETWORKS = [
    pytest.param(["--subnet", "10.50.0.1/16"], "--subnet", "host bits set", id="host-bits"),
    pytest.param(["--subnet", "banana"], "--subnet", "not an IPv4 range", id="not-a-cidr"),
    pytest.param(
        ["--subnet", "10.0.0.0/26"], "--subnet", "smaller than one node's slice", id="tiny"
    ),
    pytest.param(["--slice-prefix", "30"], "--slice-prefix", "<= 28", id="slice-too-long"),
    pytest.param(["--label", "novalue"], "--label", "not NAME=VALUE", id="label"),
    pytest.param(["--label", "bad key=x"], "--label", "metadata.labels", id="label-key"),
]


@pytest.mark.parametrize(("flags", "flag", "expected"), BAD_NETWORKS)
async def test_a_bad_network_flag_is_refused_naming_it_and_nothing_is_sent(
    nats_url: str, buckets: dict[str, NatsBucket], flags: list[str], flag: str, expected: str
) -> None:
    async with netmgr(nats_url, buckets) as responder:
        result = await corral(nats_url, "network", "create", "backend", *flags)
        assert result.exit_code == 2, result.output
        assert flag in result.stderr and expected in result.stderr, result.stderr
        assert "Traceback" not in result.output
        assert responder.requests == []
    assert await keys(buckets[names.NETWORKS_BUCKET]) == set()


async def test_a_bad_network_name_is_refused_naming_it(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with netmgr(nats_url, buckets) as responder:
        result = await corral(nats_url, "network", "create", "Bad_Name")
        assert result.exit_code == 2 and "NAME" in result.stderr and "DNS label" in result.stderr
        removed = await corral(nats_url, "network", "rm", "Bad_Name")
        assert removed.exit_code == 2 and "NAME" in removed.stderr, removed.output
        assert responder.requests == []
