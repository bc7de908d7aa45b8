"""The networking commands end to end: the CLI against the real netmgr cluster part and
the real scheduler on a real nats-server (replica statuses written as an agent would)."""

from __future__ import annotations

import json

from corral.contract import names
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket, write_record
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import placements, running_scheduler
from tests.integration.test_cli_networks import corral, keys
from tests.waiting import eventually


async def table(url: str, *args: str) -> list[list[str]]:
    result = await corral(url, *args)
    assert result.exit_code == 0, result.output
    return [line.split() for line in result.stdout.strip().splitlines()]


async def test_networks_services_and_endpoints_through_the_cli_with_the_real_netmgr(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with (
        running_scheduler(nats_url, nodes={"n1": {}, "n2": {}}),
        running_netmgr(nats_url),
    ):
        # netmgr makes `default` at start, and gives every node a slice of it.
        await eventually(
            lambda: table(nats_url, "get", "networks"),
            lambda rows: len(rows) == 2 and rows[1][0] == "default" and rows[1][3] == "2",
        )
        created = await corral(nats_url, "network", "create", "backend", "--subnet", "10.50.0.0/16")
        assert created.exit_code == 0 and created.stdout.strip() == "network/backend created"
        overlapping = await corral(
            nats_url, "create", "network", "other", "--subnet", "10.50.128.0/17"
        )
        assert overlapping.exit_code == 1 and "spec.subnet" in overlapping.stderr, (
            overlapping.output
        )
        inspected = await eventually(
            lambda: corral(nats_url, "network", "inspect", "backend"),
            lambda result: len(json.loads(result.stdout)["slices"]) == 2,
        )
        slices = json.loads(inspected.stdout)["slices"]
        assert all(s["subnet"].startswith("10.50.") for s in slices), slices

        deployed = await corral(
            nats_url, "create", "deployment", "my-app", "--image", "corral-test/busybox:1",
            "--replicas", "2", "--port", "8080", "--network", "backend",
        )  # fmt: skip
        assert deployed.exit_code == 0, deployed.output
        exposed = await corral(nats_url, "expose", "deployment", "my-app", "--type=NodePort")
        assert exposed.exit_code == 0 and exposed.stdout.strip() == "service/my-app created", (
            exposed.output
        )
        [_, row] = await table(nats_url, "get", "services")
        assert row[:2] == ["my-app", "NodePort"] and row[2].startswith("10.96."), row
        port, _, protocol = row[3].partition("/")
        assert protocol == "TCP" and port.startswith("8080:3"), row

        # The replicas run (as their agent would report), each with an IP on `backend`.
        placed = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda found: len(found) == 2
        )
        ips = []
        for index, (key, placement) in enumerate(sorted(placed.items()), start=1):
            ip = f"10.50.{index}.{index + 1}"
            ips.append(f"{ip}:8080")
            status = ReplicaStatus(
                replica=placement.replica,
                deployment="my-app",
                node=placement.node,
                state=ReplicaState.RUNNING,
                template_hash=placement.template_hash,
                ips={"backend": ip},
            )
            await write_record(buckets[names.REPLICA_STATUS_BUCKET], key, status, None)
        rows = await eventually(
            lambda: table(nats_url, "get", "endpoints", "my-app"),
            lambda rows: len(rows) == 2 and rows[1][1] != "<none>",
        )
        assert sorted(rows[1][1].split(",")) == sorted(ips)
        described = await corral(nats_url, "describe", "service", "my-app")
        assert "Selector:     app=my-app" in described.stdout, described.output
        assert "Network:      backend" in described.stdout

        in_use = await corral(nats_url, "network", "rm", "backend")
        assert in_use.exit_code == 1 and "my-app" in in_use.stderr, in_use.output
        assert "backend" in await keys(buckets[names.NETWORKS_BUCKET])

        for args in (("delete", "service", "my-app"), ("delete", "deployment", "my-app")):
            result = await corral(nats_url, *args)
            assert result.exit_code == 0, result.output
        removed = await eventually(
            lambda: corral(nats_url, "delete", "network", "backend"),
            lambda result: result.exit_code == 0,
        )
        assert removed.stdout.strip() == "network/backend deleted"
        await eventually(
            lambda: table(nats_url, "get", "networks"),
            lambda rows: [row[0] for row in rows[1:]] == ["default"],
        )
