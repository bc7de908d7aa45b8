"""`corral service ...` (Docker Swarm's commands) through a real nats-server, the real
scheduler, netmgr's cluster part and two hollow node agents (node-1 labelled disk=ssd):
create (waiting, with and without --publish: the node port is exactly the published
one), ls, ps, inspect, scale, update --image (waits, exit 0), rollback, rm; a constraint
no node meets stays pending with the reason; an update that misses its progress
deadline, or is rolled back, exits 1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from click.testing import Result

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Service
from corral.contract.state import DeploymentStatus, Placement
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext
from tests.agents import running_agent
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import request, running_scheduler
from tests.integration.test_cli_networks import corral
from tests.waiting import eventually

IMAGE = "corral-test/busybox:1"


@asynccontextmanager
async def cluster(nats_url: str) -> AsyncIterator[ServiceContext]:
    flags = ("--runtime", "hollow", "--cpu", "2", "--memory", "4Gi", "--heartbeat-seconds", "0.5")
    async with (
        running_scheduler(nats_url) as scheduler,
        running_netmgr(nats_url),
        running_agent(nats_url, "node-1", *flags, "--label", "disk=ssd"),
        running_agent(nats_url, "node-2", *flags),
    ):
        yield scheduler


async def placed(buckets: dict[str, NatsBucket], deployment: str) -> list[Placement]:
    found = []
    async for entry in buckets[names.PLACEMENTS_BUCKET].watch():
        if entry is None:
            break
        if entry.value and "_echo" not in entry.key:
            placement = decode(entry.value, Placement)
            if placement.deployment == deployment:
                found.append(placement)
    return found


async def stored(bucket: NatsBucket, key: str, kind: type) -> object:
    entry = await bucket.get(key)
    return None if entry is None or not entry.value else decode(entry.value, kind)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def rows(result: Result) -> list[list[str]]:
    return [line.split() for line in ok(result).stdout.strip().splitlines()]


async def test_a_swarm_service_is_created_listed_scaled_updated_rolled_back_and_removed(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url):
        await eventually(
            lambda: corral(nats_url, "get", "networks"), lambda r: "default" in r.stdout
        )
        created = ok(
            await corral(
                nats_url, "service", "create", "--name", "web", "--replicas", "2",
                "--publish", "30080:80", "--env", "GREETING=hi", IMAGE, "httpd", "-f", "-p", "80",
            )
        )  # fmt: skip
        # waited: the name, then the progress, and every replica is placed
        assert created.stdout == "web\n"
        assert created.stderr.rstrip().endswith('deployment "web" successfully rolled out')
        placements = await placed(buckets, "web")
        assert len(placements) == 2
        assert {p.template.args == ["httpd", "-f", "-p", "80"] for p in placements} == {True}
        service = await stored(buckets[names.SERVICES_BUCKET], "default.web", Service)
        assert isinstance(service, Service) and service.spec.type == "NodePort"
        assert [(p.port, p.node_port) for p in service.spec.ports] == [(80, 30080)]
        [_, row] = rows(await corral(nats_url, "get", "services"))
        assert row[0] == "web" and row[3] == "80:30080/TCP", row

        # without --publish: a Deployment and no Service; --detach does not wait
        detached = ok(await corral(nats_url, "service", "create", "-d", "--name", "api", IMAGE))
        assert detached.stdout == "api\n" and "rolled out" not in detached.stderr
        assert await stored(buckets[names.SERVICES_BUCKET], "default.api", Service) is None
        again = await corral(nats_url, "service", "create", "--name", "api", IMAGE)
        assert again.exit_code == 1 and "already exists" in again.stderr

        listed = await eventually(
            lambda: corral(nats_url, "service", "ls"),
            lambda r: "1/1" in r.stdout and "2/2" in r.stdout,
        )
        header, api, web = (line.split() for line in listed.stdout.strip().splitlines())
        assert header == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
        assert api[1:] == ["api", "replicated", "1/1", IMAGE]
        assert web[1:] == ["web", "replicated", "2/2", IMAGE, "*:30080->80/tcp"]

        tasks = await eventually(
            lambda: corral(nats_url, "service", "ps", "web"),
            lambda r: (
                [line.split()[4:6] for line in r.stdout.strip().splitlines()[1:]]
                == [["Running", "Running"]] * 2
            ),
        )
        lines = tasks.stdout.strip().splitlines()
        assert lines[0].split()[:4] == ["ID", "NAME", "IMAGE", "NODE"] and len(lines) == 3
        assert {line.split()[3] for line in lines[1:]} == {"node-1", "node-2"}

        inspected = json.loads(ok(await corral(nats_url, "service", "inspect", "web")).stdout)
        assert inspected[0]["Name"] == "web"
        assert inspected[0]["Deployment"]["spec"]["template"]["env"] == {"GREETING": "hi"}
        assert inspected[0]["Services"][0]["spec"]["ports"][0]["nodePort"] == 30080
        pretty = ok(await corral(nats_url, "service", "inspect", "--pretty", "web")).stdout
        assert "PublishedPort = 30080" in pretty and "Update order:\tstop-first" in pretty

        scaled = ok(await corral(nats_url, "service", "scale", "web=3"))
        assert scaled.stdout == "web scaled to 3\n" and "successfully rolled out" in scaled.stderr
        assert len(await placed(buckets, "web")) == 3

        updated = ok(await corral(nats_url, "service", "update", "--image", f"{IMAGE}-2", "web"))
        assert updated.stdout == "web\n" and "successfully rolled out" in updated.stderr
        assert {p.template.image for p in await placed(buckets, "web")} == {f"{IMAGE}-2"}

        rolled = ok(await corral(nats_url, "service", "rollback", "web"))
        assert rolled.stdout == "web\n" and "successfully rolled out" in rolled.stderr
        assert {p.template.image for p in await placed(buckets, "web")} == {IMAGE}

        # --publish-add makes the NodePort Service of a service that had none, and
        # --publish-rm of its last port deletes it
        ok(await corral(nats_url, "service", "update", "-d", "--publish-add", "30081:8080", "api"))
        service = await stored(buckets[names.SERVICES_BUCKET], "default.api", Service)
        assert isinstance(service, Service) and service.spec.type == "NodePort"
        assert [(p.port, p.node_port) for p in service.spec.ports] == [(8080, 30081)]
        ok(await corral(nats_url, "service", "update", "-d", "--publish-rm", "8080", "api"))
        assert await stored(buckets[names.SERVICES_BUCKET], "default.api", Service) is None

        removed = ok(await corral(nats_url, "service", "rm", "web", "api"))
        assert removed.stdout == "web\napi\n"
        await eventually(lambda: placed(buckets, "web"), lambda found: not found)
        assert await stored(buckets[names.SERVICES_BUCKET], "default.web", Service) is None
        assert await stored(buckets[names.DEPLOYMENTS_BUCKET], "default.api", object) is None
        gone = await corral(nats_url, "service", "rm", "web")
        assert gone.exit_code == 1 and "no such service: web" in gone.stderr


async def test_constraints_place_only_on_labelled_nodes_and_unmet_ones_stay_pending(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url):
        ssd = ok(
            await corral(
                nats_url, "service", "create", "--name", "fast", "--replicas", "3",
                "--constraint", "node.labels.disk==ssd", IMAGE,
            )
        )  # fmt: skip
        assert "successfully rolled out" in ssd.stderr
        assert {p.node for p in await placed(buckets, "fast")} == {"node-1"}

        nowhere = ok(
            await corral(
                nats_url, "service", "create", "-d", "--name", "nowhere",
                "--constraint", "node.labels.disk==nvme", IMAGE,
            )
        )  # fmt: skip
        assert nowhere.stdout == "nowhere\n"
        statuses = buckets[names.DEPLOYMENT_STATUS_BUCKET]
        status = await eventually(
            lambda: stored(statuses, "default.nowhere", DeploymentStatus),
            lambda s: isinstance(s, DeploymentStatus) and s.pending == 1,
        )
        assert isinstance(status, DeploymentStatus)
        assert status.pending_reason == "no node has labels disk=nvme"
        assert await placed(buckets, "nowhere") == []
        tasks = ok(await corral(nats_url, "service", "ps", "nowhere")).stdout
        assert "Pending" in tasks and tasks.rstrip().endswith("no node has labels disk=nvme")


async def test_a_service_in_a_namespace_is_made_waited_on_listed_and_removed_there(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url):
        await eventually(
            lambda: corral(nats_url, "get", "networks"), lambda r: "default" in r.stdout
        )
        made = ok(
            await corral(
                nats_url, "service", "create", "-n", "team-a", "--name", "web",
                "--publish", "30082:80", IMAGE,
            )
        )  # fmt: skip
        assert 'deployment "web" successfully rolled out' in made.stderr
        assert [p.namespace for p in await placed(buckets, "web")] == ["team-a"]
        service = await stored(buckets[names.SERVICES_BUCKET], "team-a.web", Service)
        assert isinstance(service, Service) and service.spec.ports[0].node_port == 30082
        listed = ok(await corral(nats_url, "service", "ls", "-n", "team-a")).stdout
        assert "*:30082->80/tcp" in listed and "1/1" in listed
        assert "web" not in ok(await corral(nats_url, "service", "ls")).stdout
        assert ok(await corral(nats_url, "service", "rm", "-n", "team-a", "web")).stdout == "web\n"
        await eventually(lambda: placed(buckets, "web"), lambda found: not found)
        assert await stored(buckets[names.SERVICES_BUCKET], "team-a.web", Service) is None


def slow_manifest() -> bytes:
    return encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "slow"},
            "spec": {"replicas": 1, "template": {"image": IMAGE}, "progressDeadlineSeconds": 2},
        }
    )


async def test_an_update_that_misses_its_deadline_or_is_rolled_back_exits_1(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url) as scheduler:
        assert (await request(scheduler.nc, "deployment", "apply", slow_manifest())).ok
        await eventually(lambda: placed(buckets, "slow"), lambda found: len(found) == 1)
        ok(await corral(nats_url, "service", "scale", "slow=1"))  # waits until available

        # a new template no node can take: no progress for 2 s
        stuck = await corral(
            nats_url, "service", "update", "--constraint-add", "node.labels.disk==nvme", "slow"
        )
        assert stuck.exit_code == 1, stuck.output
        assert 'service slow: deployment "slow" exceeded its progress deadline' in stuck.stderr

        # with --update-failure-action rollback the command fails the same way, and the
        # scheduler then puts the last fully available template back by itself
        rolled = await corral(
            nats_url, "service", "update", "--update-failure-action", "rollback",
            "--env-add", "TRY=2", "slow",
        )  # fmt: skip
        assert rolled.exit_code == 1, rolled.output
        assert 'service slow: deployment "slow"' in rolled.stderr, rolled.stderr
        await eventually(
            lambda: placed(buckets, "slow"),
            lambda found: [(p.template.node_selector, p.template.env) for p in found] == [({}, {})],
        )
