"""`corral service update --publish-add/--publish-rm` touches only the Service the swarm
service publishes with (at the revision it read), and creates (`service create`,
`corral create deployment|container|service`) never replace an object of the same name
made after their check (metadata.createOnly, docs/api.md) -- through a real nats-server,
the real scheduler and netmgr's cluster part (no agents: nothing is waited on)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest

from corral.client.api import CorralClient, find_kind
from corral.client.cli import net_requests
from corral.client.cli.swarm_commands import publish_change, published_ports
from corral.contract import names
from corral.contract.codec import decode
from corral.contract.events import REASON_CONFLICT, Reply
from corral.contract.network_specs import Service
from corral.natsio.kv import NatsBucket
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import running_scheduler
from tests.integration.test_cli_networks import corral
from tests.waiting import eventually

IMAGE = "corral-test/busybox:1"


@asynccontextmanager
async def apis(nats_url: str) -> AsyncIterator[CorralClient]:
    async with running_scheduler(nats_url), running_netmgr(nats_url):
        await eventually(
            lambda: corral(nats_url, "get", "networks"), lambda r: "default" in r.stdout
        )
        client = await CorralClient.connect(nats_url)
        try:
            yield client
        finally:
            await client.close()


async def apply(client: CorralClient, kind: str, document: dict[str, Any]) -> Reply:
    return await client.request(find_kind(kind), "apply", msgspec.json.encode(document))


def a_service(
    selector: dict[str, str], type_: str = "ClusterIP", **metadata: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", **metadata},
        "spec": {"type": type_, "selector": selector, "ports": [{"port": 80}]},
    }


def a_deployment(image: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "corral/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", **metadata},
        "spec": {"replicas": 0, "template": {"image": image}},
    }


async def entry_of(bucket: NatsBucket, key: str = "default.web") -> tuple[bytes | None, int]:
    entry = await bucket.get(key)
    return (None, 0) if entry is None else (entry.value, entry.revision)


@pytest.mark.parametrize(
    ("selector", "type_"),
    [({"app": "other"}, "ClusterIP"), ({"app": "web"}, "ClusterIP"), ({"app": "x"}, "NodePort")],
    ids=["selects-others", "not-nodeport", "nodeport-selecting-others"],
)
async def test_publish_rm_and_add_leave_a_users_own_service_of_the_same_name_untouched(
    nats_url: str, buckets: dict[str, NatsBucket], selector: dict[str, str], type_: str
) -> None:
    async with apis(nats_url) as client:
        made = await corral(nats_url, "service", "create", "-d", "--name", "web", IMAGE)
        assert made.exit_code == 0, made.output
        assert (await apply(client, "Service", a_service(selector, type_))).ok
        before = await entry_of(buckets[names.SERVICES_BUCKET])

        removed = await corral(nats_url, "service", "update", "-d", "--publish-rm", "80", "web")
        assert removed.exit_code == 0, removed.output
        assert "left as it is" in removed.stderr and "no port was unpublished" in removed.stderr
        assert await entry_of(buckets[names.SERVICES_BUCKET]) == before

        added = await corral(
            nats_url, "service", "update", "-d", "--publish-add", "30085:8080", "web"
        )
        assert added.exit_code == 1 and "cannot publish ports" in added.stderr, added.output
        assert await entry_of(buckets[names.SERVICES_BUCKET]) == before


async def test_publish_add_carries_the_services_revision_so_a_change_made_meanwhile_is_kept(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with apis(nats_url) as client:
        made = await corral(
            nats_url, "service", "create", "-d", "--name", "web", "-p", "30086:80", IMAGE
        )
        assert made.exit_code == 0, made.output
        deployment = await client.deployment("web")
        assert deployment is not None
        replies: list[Reply] = []
        reads = 0
        read_bucket = client.read_bucket
        request = client.request

        async def read_then_changed(*args: Any) -> Any:
            # Someone else changes the Service right after this read (the first one).
            nonlocal reads
            found = await read_bucket(*args)
            reads += 1
            if reads == 1:
                service = await client.services()
                data = msgspec.to_builtins(service["web"])
                data["metadata"] = {"name": "web", "annotations": {"owner": "ops"}}
                assert (await request(find_kind("Service"), "apply", msgspec.json.encode(data))).ok
            return found

        async def recorded(*args: Any) -> Reply:
            reply = await request(*args)
            replies.append(reply)
            return reply

        client.read_bucket = read_then_changed  # type: ignore[method-assign]
        client.request = recorded  # type: ignore[method-assign]
        await publish_change(
            client,
            deployment,
            msgspec.to_builtins(deployment.spec.template),
            published_ports(["30087:8080"], "--publish-add"),
            [],
        )
        # the first apply, at the revision read before the change, was a Conflict;
        # the second, read again, kept the change and added the port
        assert [r.reason for r in replies] == [REASON_CONFLICT, ""], replies
        raw, _ = await entry_of(buckets[names.SERVICES_BUCKET])
        assert raw is not None
        service = decode(raw, Service)
        assert service.metadata.annotations == {"owner": "ops"}
        assert sorted((p.port, p.node_port) for p in service.spec.ports) == [
            (80, 30086),
            (8080, 30087),
        ]


async def test_a_create_only_apply_of_a_stored_name_is_a_conflict_naming_it(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with apis(nats_url) as client:
        first = await apply(client, "Deployment", a_deployment(IMAGE, createOnly=True))
        assert first.ok, first
        raw, revision = await entry_of(buckets[names.DEPLOYMENTS_BUCKET])
        assert raw is not None and b"createOnly" not in raw  # a precondition, never stored
        again = await apply(client, "Deployment", a_deployment(f"{IMAGE}-2", createOnly=True))
        assert not again.ok and again.reason == REASON_CONFLICT
        assert "deployment 'web' already exists" in again.error
        assert again.field == "metadata.createOnly"
        assert await entry_of(buckets[names.DEPLOYMENTS_BUCKET]) == (raw, revision)

        assert (await apply(client, "Service", a_service({"app": "a"}, createOnly=True))).ok
        before = await entry_of(buckets[names.SERVICES_BUCKET])
        refused = await apply(client, "Service", a_service({"app": "b"}, createOnly=True))
        assert not refused.ok and refused.reason == REASON_CONFLICT
        assert "service 'web' already exists" in refused.error
        assert await entry_of(buckets[names.SERVICES_BUCKET]) == before


async def nothing(*_: Any) -> None:
    return None


async def no_services(*_: Any) -> dict[str, Service]:
    return {}


async def nothing_exists(*_: Any) -> bool:
    return False


async def test_creates_racing_an_apply_of_the_same_name_refuse_and_overwrite_nothing(
    nats_url: str, buckets: dict[str, NatsBucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other apply lands between the command's check and its own apply: simulated by
    making the object first and skipping the check."""
    async with apis(nats_url) as client:
        assert (await apply(client, "Deployment", a_deployment(IMAGE))).ok
        deployment = await entry_of(buckets[names.DEPLOYMENTS_BUCKET])
        monkeypatch.setattr(CorralClient, "deployment", nothing)
        monkeypatch.setattr(CorralClient, "services", no_services)
        monkeypatch.setattr(net_requests, "exists", nothing_exists)

        # service create --publish: its Service is made, the Deployment refused, and
        # the Service it made (only that one) removed again
        swarm = await corral(
            nats_url, "service", "create", "-d", "--name", "web", "-p", "30088:80", "other:1"
        )
        assert swarm.exit_code == 1 and "already exists" in swarm.stderr, swarm.output
        assert await entry_of(buckets[names.DEPLOYMENTS_BUCKET]) == deployment
        assert (await entry_of(buckets[names.SERVICES_BUCKET]))[0] is None

        for args in (
            ("create", "deployment", "web", "--image", "other:1"),
            ("create", "container", "web", "--image", "other:1"),
        ):
            result = await corral(nats_url, *args)
            assert result.exit_code == 1 and "already exists" in result.stderr, result.output
            assert await entry_of(buckets[names.DEPLOYMENTS_BUCKET]) == deployment

        # a user's Service `web`: service create --publish and create service refuse
        assert (await apply(client, "Service", a_service({"app": "mine"}))).ok
        service = await entry_of(buckets[names.SERVICES_BUCKET])
        swarm = await corral(
            nats_url, "service", "create", "-d", "--name", "web", "-p", "30089:80", "other:1"
        )
        assert swarm.exit_code == 1 and "already exists" in swarm.stderr, swarm.output
        made = await corral(
            nats_url, "create", "service", "web", "--selector", "app=x", "--port", "81"
        )
        assert made.exit_code == 1 and "already exists" in made.stderr, made.output
        assert await entry_of(buckets[names.SERVICES_BUCKET]) == service
        assert await entry_of(buckets[names.DEPLOYMENTS_BUCKET]) == deployment


async def test_service_rm_leaves_a_users_service_of_the_same_name_that_selects_it(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with apis(nats_url) as client:
        made = await corral(nats_url, "service", "create", "-d", "--name", "web", IMAGE)
        assert made.exit_code == 0, made.output
        # selects the swarm service's replicas, but ClusterIP: not the one it publishes with
        assert (await apply(client, "Service", a_service({"app": "web"}))).ok
        before = await entry_of(buckets[names.SERVICES_BUCKET])

        removed = await corral(nats_url, "service", "rm", "web")
        assert removed.exit_code == 0, removed.output
        assert "left as it is" in removed.stderr, removed.output
        assert (await entry_of(buckets[names.DEPLOYMENTS_BUCKET]))[0] is None
        assert await entry_of(buckets[names.SERVICES_BUCKET]) == before


async def test_service_rm_refuses_to_delete_its_service_changed_after_it_was_read(
    nats_url: str, buckets: dict[str, NatsBucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with apis(nats_url):
        made = await corral(
            nats_url, "service", "create", "-d", "--name", "web", "-p", "30090:80", IMAGE
        )
        assert made.exit_code == 0, made.output
        read_bucket = CorralClient.read_bucket

        async def read_then_changed(self: CorralClient, *args: Any) -> Any:
            # Someone else changes the Service right after the command reads it (on the
            # command's own connection: it runs its own event loop).
            found = await read_bucket(self, *args)
            if args[0] == names.SERVICES_BUCKET and "default.web" in found:
                data = msgspec.to_builtins(found["default.web"][0])
                data["metadata"] = {"name": "web", "annotations": {"owner": "ops"}}
                assert (await apply(self, "Service", data)).ok
            return found

        monkeypatch.setattr(CorralClient, "read_bucket", read_then_changed)
        removed = await corral(nats_url, "service", "rm", "web")
        assert removed.exit_code == 1, removed.output
        assert "changed since it was read" in removed.stderr, removed.output
        raw, _ = await entry_of(buckets[names.SERVICES_BUCKET])
        assert raw is not None
        assert decode(raw, Service).metadata.annotations == {"owner": "ops"}
