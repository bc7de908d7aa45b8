"""Rancher's containers through a real nats-server, the scheduler, a stand-in for
netmgr's cluster part and hollow node agents (docs/containers.md): `corral create
container` places one replica; when its node is lost it is not placed again (a
Deployment's replica on the same node is) and `get containers` shows it NodeLost; it is
never scaled; `create service --container` selects it on its declared ports, and is
refused with neither ports nor --port; `delete container` removes it."""

from __future__ import annotations

from typing import Any

import anyio

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.network_specs import Service
from corral.contract.specs import CONTAINER_LABEL
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.natsio.kv import NatsBucket
from tests.integration.scheduler_harness import placements, request, running_scheduler
from tests.integration.test_cli_networks import corral, netmgr
from tests.integration.test_cluster_hollow import hollow_agent
from tests.waiting import eventually


async def placed(buckets: dict[str, NatsBucket], deployment: str) -> list[Placement]:
    found = await placements(buckets[names.PLACEMENTS_BUCKET])
    return [p for p in found.values() if p.deployment == deployment]


async def running(buckets: dict[str, NatsBucket], deployment: str) -> list[str]:
    """The nodes where the agents report the Deployment's replicas Running."""
    nodes = []
    for placement in await placed(buckets, deployment):
        entry = await buckets[names.REPLICA_STATUS_BUCKET].get(placement.key)
        if entry is not None and entry.value:
            status = decode(entry.value, ReplicaStatus)
            if status.state == ReplicaState.RUNNING:
                nodes.append(status.node)
    return nodes


async def agent_until(nats_url: str, node: str, stop: anyio.Event, *, task_status: Any) -> None:
    """A hollow agent of `node` that runs until `stop` is set."""
    async with hollow_agent(nats_url, node):
        task_status.started()
        await stop.wait()


async def test_a_container_is_placed_once_and_stays_on_its_lost_node_while_a_deployment_moves(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    stop_first, stop_second = anyio.Event(), anyio.Event()
    async with (
        running_scheduler(nats_url) as scheduler,
        netmgr(nats_url, buckets),
        anyio.create_task_group() as tg,
    ):
        await tg.start(agent_until, nats_url, "node-1", stop_first)
        made = await corral(
            nats_url, "create", "container", "web", "--image=corral-test/busybox:1",
            "--port", "8080", "--env", "A=1", "--", "httpd", "-f", "-p", "8080",
        )  # fmt: skip
        assert made.exit_code == 0 and made.stdout.strip() == "container/web created", made.output
        bare = await corral(nats_url, "create", "container", "bare", "--image=busybox")
        assert bare.exit_code == 0, bare.output
        app = await corral(nats_url, "create", "deployment", "app", "--image=busybox")
        assert app.exit_code == 0, app.output
        await eventually(lambda: running(buckets, "web"), lambda n: n == ["node-1"])
        await eventually(lambda: running(buckets, "app"), lambda n: n == ["node-1"])
        listed = await corral(nats_url, "get", "containers")
        rows = [line.split() for line in listed.stdout.splitlines()]
        assert rows[0] == ["NAME", "IMAGE", "NODE", "STATUS", "RESTARTS", "AGE", "PORTS"]
        assert [(r[0], r[2], r[6]) for r in rows[1:]] == [
            ("bare", "node-1", "<none>"),
            ("web", "node-1", "8080/TCP"),
        ], listed.output  # the Deployment app is no container

        # Never scaled: refused naming the field.
        scale = await request(
            scheduler.nc, "deployment", "scale", b'{"name": "web", "replicas": 2}'
        )
        assert not scale.ok and scale.field == "replicas" and "is a container" in scale.error
        scaled = await corral(nats_url, "scale", "deployment", "web", "--replicas", "2")
        assert scaled.exit_code == 1 and "is a container" in scaled.stderr, scaled.output

        # A Service in front of it, on its declared port; none without ports.
        svc = await corral(nats_url, "create", "service", "web", "--container", "web")
        assert svc.exit_code == 0 and svc.stdout.strip() == "service/web created", svc.output
        entry = await buckets[names.SERVICES_BUCKET].get(names.object_key("default", "web"))
        assert entry is not None and entry.value
        service = decode(entry.value, Service)
        assert service.spec.selector == {CONTAINER_LABEL: "web"}
        assert [(p.port, p.target, p.protocol) for p in service.spec.ports] == [(8080, 8080, "TCP")]
        none = await corral(nats_url, "create", "service", "bare", "--container", "bare")
        assert none.exit_code == 1, none.output
        assert "container 'bare' declares no port" in none.stderr and "--port" in none.stderr
        given = await corral(
            nats_url, "create", "service", "bare", "--container", "bare", "--port", "80"
        )
        assert given.exit_code == 0, given.output

        # node-2 joins, node-1's agent goes: the Deployment's replica moves to node-2,
        # the container keeps its place on node-1 and shows NodeLost.
        await tg.start(agent_until, nats_url, "node-2", stop_second)
        stop_first.set()
        await eventually(lambda: running(buckets, "app"), lambda n: n == ["node-2"], within=30)
        assert [p.node for p in await placed(buckets, "web")] == ["node-1"]
        shown = await eventually(
            lambda: corral(nats_url, "get", "container", "web"),
            lambda r: "NodeLost" in r.stdout,
            within=15,
        )
        assert shown.stdout.splitlines()[1].split()[2:4] == ["node-1", "NodeLost"]
        described = await corral(nats_url, "describe", "container", "web")
        assert "a container is not moved" in described.stdout, described.output

        # delete container: only containers; the container's placement goes.
        wrong = await corral(nats_url, "delete", "container", "app")
        assert wrong.exit_code == 1 and "is a deployment, not a container" in wrong.stderr
        gone = await corral(nats_url, "delete", "container", "web")
        assert gone.exit_code == 0 and gone.stdout.strip() == "container/web deleted", gone.output
        await eventually(lambda: placed(buckets, "web"), lambda p: p == [])
        after = await corral(nats_url, "get", "containers")
        assert [line.split()[0] for line in after.stdout.splitlines()[1:]] == ["bare"]
        stop_second.set()
