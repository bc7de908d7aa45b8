"""Compose files through a real nats-server, the real scheduler, netmgr's and volmgr's
cluster parts and two hollow node agents (docs/compose.md): a file of two services, two
networks and a named volume deploys into its project's namespace (`corral stack deploy`
and `corral apply -f` alike), leaves a Deployment of the same name in `default` as it
was, and `corral stack ls|ps|rm` list, show and remove the project."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import Result

from corral.client.api import CorralClient, find_kind
from corral.contract import names
from corral.contract.codec import decode
from corral.contract.network_specs import Network, Service
from corral.contract.specs import Deployment
from corral.contract.state import Placement
from corral.contract.volume_specs import PersistentVolumeClaim
from corral.natsio.kv import NatsBucket
from tests.agents import running_agent
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import running_scheduler
from tests.integration.test_cli_networks import corral
from tests.integration.volmgr_harness import running_volmgr
from tests.waiting import eventually

IMAGE = "corral-test/busybox:1"

COMPOSE = """
services:
  web:
    image: corral-test/busybox:1
    command: httpd -f -p 8080 -h /
    ports: ["30088:8080"]
    networks: [front, back]
    deploy: {replicas: 2}
    depends_on: [db]
  db:
    image: corral-test/busybox:1
    command: ["sleep", "3600"]
    networks: [back]
    expose: ["5432"]
    volumes: ["data:/data"]
networks:
  front: {}
  back: {}
volumes:
  data:
    driver_opts: {size: 64m}
"""


@asynccontextmanager
async def cluster(nats_url: str) -> AsyncIterator[None]:
    """Two hollow nodes with the scheduler, netmgr and volmgr, once the default network is."""
    flags = ("--runtime", "hollow", "--cpu", "2", "--memory", "4Gi", "--heartbeat-seconds", "0.5")
    async with (
        running_scheduler(nats_url),
        running_netmgr(nats_url),
        running_volmgr(nats_url),
        running_agent(nats_url, "node-1", *flags),
        running_agent(nats_url, "node-2", *flags),
    ):
        await eventually(
            lambda: corral(nats_url, "get", "networks"), lambda r: "default" in r.stdout
        )
        yield


def compose_file(folder: Path, text: str) -> Path:
    """`text` as folder/compose.yaml: the folder's name is the project's."""
    folder.mkdir()
    file = folder / "compose.yaml"
    file.write_text(text)
    return file


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


async def stored(bucket: NatsBucket, key: str, kind: type) -> object:
    entry = await bucket.get(key)
    return None if entry is None or not entry.value else decode(entry.value, kind)


async def placed(buckets: dict[str, NatsBucket], namespace: str, name: str) -> list[Placement]:
    found = []
    async for entry in buckets[names.PLACEMENTS_BUCKET].watch():
        if entry is None:
            break
        if entry.value and "_echo" not in entry.key:
            placement = decode(entry.value, Placement)
            if placement.deployment == name and placement.namespace == namespace:
                found.append(placement)
    return found


async def test_a_compose_file_deploys_into_its_namespace_and_stack_ls_ps_rm_follow_it(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    file = compose_file(tmp_path / "shop", COMPOSE)
    deployments = buckets[names.DEPLOYMENTS_BUCKET]
    async with cluster(nats_url):
        ok(await corral(nats_url, "create", "deployment", "web", "--image", f"{IMAGE}-old"))
        before = await stored(deployments, "default.web", Deployment)
        assert isinstance(before, Deployment)

        deployed = ok(await corral(nats_url, "stack", "deploy", "-c", str(file), "shop"))
        assert deployed.stdout.splitlines() == [
            "network/shop-front created",
            "network/shop-back created",
            "persistentvolumeclaim/data created",
            "deployment/web created",
            "service/web created",
            "deployment/db created",
            "service/db created",
        ]
        assert deployed.stderr.splitlines() == [
            f"warning: {file} (Compose project shop): dropped fields corral does not "
            "support: services.web.depends_on"
        ]

        # the Compose service `web` is shop/web: default/web is untouched
        web = await stored(deployments, "shop.web", Deployment)
        assert isinstance(web, Deployment) and web.spec.replicas == 2
        assert web.spec.template.networks == ["shop-front", "shop-back"]
        after = await stored(deployments, "default.web", Deployment)
        assert after == before
        db = await stored(deployments, "shop.db", Deployment)
        assert isinstance(db, Deployment) and db.spec.template.networks == ["shop-back"]
        assert db.spec.template.volumes[0].persistent_volume_claim is not None
        for network in ("shop-front", "shop-back"):
            made = await stored(buckets[names.NETWORKS_BUCKET], network, Network)
            assert isinstance(made, Network)
            assert made.metadata.labels["com.docker.compose.project"] == "shop"
        claim = await stored(buckets[names.CLAIMS_BUCKET], "shop.data", PersistentVolumeClaim)
        assert isinstance(claim, PersistentVolumeClaim)
        assert claim.spec.resources.requests.storage == "64Mi"
        front = await stored(buckets[names.SERVICES_BUCKET], "shop.web", Service)
        assert isinstance(front, Service) and front.spec.type == "NodePort"
        assert [(p.port, p.node_port) for p in front.spec.ports] == [(8080, 30088)]
        assert front.spec.network == "shop-front"
        back = await stored(buckets[names.SERVICES_BUCKET], "shop.db", Service)
        assert isinstance(back, Service) and back.spec.type == "ClusterIP"
        assert await stored(buckets[names.SERVICES_BUCKET], "default.web", Service) is None

        web_replicas = await eventually(
            lambda: placed(buckets, "shop", "web"), lambda found: len(found) == 2
        )
        assert {p.template.image for p in web_replicas} == {IMAGE}
        assert len(await placed(buckets, "default", "web")) == 1

        # corral apply -f does the same: the folder's name is the project
        again = ok(await corral(nats_url, "apply", "-f", str(file)))
        assert again.stdout.splitlines() == [
            "network/shop-front unchanged",
            "network/shop-back unchanged",
            "persistentvolumeclaim/data unchanged",
            "deployment/web unchanged",
            "service/web unchanged",
            "deployment/db unchanged",
            "service/db unchanged",
        ]
        assert "dropped fields corral does not support: services.web.depends_on" in again.stderr
        # and corral diff -f sees nothing to change
        same = await corral(nats_url, "diff", "-f", str(file))
        assert same.exit_code == 0 and same.stdout == "", same.output

        listed = ok(await corral(nats_url, "stack", "ls"))
        assert [line.split() for line in listed.stdout.splitlines()] == [
            ["NAME", "SERVICES", "NAMESPACE"],
            ["shop", "2", "shop"],
        ]
        tasks = await eventually(
            lambda: corral(nats_url, "stack", "ps", "shop"),
            lambda r: r.stdout.count(" Running ") >= 2 and r.stdout.count("web-") == 2,
        )
        lines = tasks.stdout.strip().splitlines()
        assert lines[0].split()[:4] == ["ID", "NAME", "IMAGE", "NODE"]
        assert sum(1 for line in lines[1:] if line.split()[1].startswith("web-")) == 2
        assert "*:30088->8080/tcp" in tasks.stdout

        # a project's object is never taken over by another's
        other = compose_file(
            tmp_path / "other",
            "services:\n  a: {image: corral-test/busybox:1, networks: [x]}\n"
            "networks:\n  x: {name: shop-front}\n",
        )
        refused = await corral(nats_url, "stack", "deploy", "-c", str(other))
        assert refused.exit_code == 1
        assert "network/shop-front exists, of project 'shop'" in refused.stderr
        assert await stored(deployments, "other.a", Deployment) is None

        removed = ok(await corral(nats_url, "stack", "rm", "shop"))
        assert removed.stdout.splitlines() == [
            "service/db deleted",
            "service/web deleted",
            "deployment/db deleted",
            "deployment/web deleted",
            "persistentvolumeclaim/data kept, with its data (stack rm --volumes deletes it, "
            "as docker compose down -v)",
            "network/shop-back deleted",
            "network/shop-front deleted",
        ]
        await eventually(lambda: placed(buckets, "shop", "web"), lambda found: not found)
        for network in ("shop-front", "shop-back"):
            assert await stored(buckets[names.NETWORKS_BUCKET], network, Network) is None
        assert await stored(buckets[names.SERVICES_BUCKET], "shop.web", Service) is None
        assert await stored(deployments, "default.web", Deployment) == before
        assert isinstance(
            await stored(buckets[names.CLAIMS_BUCKET], "shop.data", PersistentVolumeClaim),
            PersistentVolumeClaim,
        )
        assert ok(await corral(nats_url, "stack", "ls")).stdout.strip() == "No stacks."

        volumes = ok(await corral(nats_url, "stack", "rm", "--volumes", "shop"))
        assert volumes.stdout.splitlines() == ["persistentvolumeclaim/data deleted"]
        await eventually(
            lambda: stored(buckets[names.CLAIMS_BUCKET], "shop.data", PersistentVolumeClaim),
            lambda found: found is None,
        )
        gone = await corral(nats_url, "stack", "rm", "shop")
        assert gone.exit_code == 1 and "nothing found in stack: shop" in gone.stderr


async def test_apply_of_a_compose_file_sends_nothing_when_it_would_take_over_another_s_object(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    file = compose_file(tmp_path / "shop", COMPOSE)
    deployments = buckets[names.DEPLOYMENTS_BUCKET]
    networks = buckets[names.NETWORKS_BUCKET]
    claims = buckets[names.CLAIMS_BUCKET]
    async with cluster(nats_url):
        # a user's own Deployment `web` in the project's namespace, made without Compose
        mine = "deployment", "web", "-n", "shop", "--image", f"{IMAGE}-mine"
        ok(await corral(nats_url, "create", *mine))
        before = await stored(deployments, "shop.web", Deployment)
        assert isinstance(before, Deployment)

        refused = await corral(nats_url, "apply", "-f", str(file))
        assert refused.exit_code == 1, refused.output
        assert "deployment/web exists, made outside this project" in refused.stderr
        assert refused.stdout == ""
        # nothing sent: not even the networks and the claim, which come first in the file
        assert await stored(deployments, "shop.web", Deployment) == before
        assert await stored(deployments, "shop.db", Deployment) is None
        for network in ("shop-front", "shop-back"):
            assert await stored(networks, network, Network) is None
        assert await stored(claims, "shop.data", PersistentVolumeClaim) is None

        # a network of the file's `name:` that another project made is not taken over
        first = compose_file(
            tmp_path / "first",
            "services:\n  a: {image: corral-test/busybox:1, networks: [x]}\n"
            "networks:\n  x: {name: shared-net}\n",
        )
        ok(await corral(nats_url, "apply", "-f", str(first)))
        owned = await stored(networks, "shared-net", Network)
        assert isinstance(owned, Network)
        second = compose_file(
            tmp_path / "second",
            "services:\n  b: {image: corral-test/busybox:1, networks: [y]}\n"
            "networks:\n  y: {name: shared-net, ipam: {config: [{subnet: 10.177.0.0/16}]}}\n",
        )
        taken = await corral(nats_url, "apply", "-f", str(second))
        assert taken.exit_code == 1, taken.output
        assert "network/shared-net exists, of project 'first'" in taken.stderr
        assert await stored(networks, "shared-net", Network) == owned
        assert await stored(deployments, "second.b", Deployment) is None


async def test_delete_f_of_a_compose_file_removes_only_its_project_s_objects_networks_last(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    file = compose_file(tmp_path / "shop", COMPOSE)
    deployments = buckets[names.DEPLOYMENTS_BUCKET]
    networks = buckets[names.NETWORKS_BUCKET]
    claims = buckets[names.CLAIMS_BUCKET]
    async with cluster(nats_url):
        ok(await corral(nats_url, "apply", "-f", str(file)))
        # the user makes shop/db their own (a manifest without the project's label) and
        # adds shop/extra: neither is the project's any more
        (tmp_path / "db.yaml").write_text(
            "apiVersion: corral/v1\nkind: Deployment\n"
            "metadata: {name: db, namespace: shop}\n"
            "spec: {replicas: 1, template: {image: corral-test/busybox:1-mine}}\n"
        )
        ok(await corral(nats_url, "apply", "-f", str(tmp_path / "db.yaml")))
        ok(await corral(nats_url, "create", "deployment", "extra", "-n", "shop", "--image", IMAGE))
        db = await stored(deployments, "shop.db", Deployment)
        assert isinstance(db, Deployment) and "com.docker.compose.project" not in db.metadata.labels
        await eventually(lambda: placed(buckets, "shop", "web"), lambda found: len(found) == 2)

        removed = ok(await corral(nats_url, "delete", "-f", str(file)))
        assert removed.stdout.splitlines() == [
            "service/db deleted",
            "service/web deleted",
            "deployment/web deleted",
            "persistentvolumeclaim/data kept, with its data (delete -f --volumes deletes it, "
            "as docker compose down -v)",
            "network/shop-back deleted",
            "network/shop-front deleted",
        ]
        assert await stored(deployments, "shop.db", Deployment) == db
        assert isinstance(await stored(deployments, "shop.extra", Deployment), Deployment)
        for network in ("shop-front", "shop-back"):
            assert await stored(networks, network, Network) is None
        assert isinstance(
            await stored(claims, "shop.data", PersistentVolumeClaim), PersistentVolumeClaim
        )

        volumes = ok(await corral(nats_url, "delete", "-f", str(file), "--volumes"))
        assert volumes.stdout.splitlines() == ["persistentvolumeclaim/data deleted"]
        await eventually(
            lambda: stored(claims, "shop.data", PersistentVolumeClaim),
            lambda found: found is None,
        )
        gone = await corral(nats_url, "delete", "-f", str(file))
        assert gone.exit_code == 1 and "nothing found in stack: shop" in gone.stderr
        assert await stored(deployments, "shop.db", Deployment) == db


SMALL = "services:\n  web: {image: corral-test/busybox:1}\n"


def on_first_read(
    monkeypatch: pytest.MonkeyPatch, bucket: str, then: Callable[[CorralClient], Awaitable[None]]
) -> None:
    """`then` runs (on the command's own client: it has its own event loop) right after
    the command's first read of `bucket`: another writer between its check and its write."""
    read_bucket = CorralClient.read_bucket
    done = False

    async def read_then(self: CorralClient, *args: Any) -> Any:
        nonlocal done
        found = await read_bucket(self, *args)
        if args[0] == bucket and not done:
            done = True
            await then(self)
        return found

    monkeypatch.setattr(CorralClient, "read_bucket", read_then)


def deployment_document(deployment: Deployment, **metadata: Any) -> bytes:
    data = msgspec.to_builtins(deployment)
    data["metadata"] = {
        "name": deployment.metadata.name,
        "namespace": deployment.metadata.namespace,
        "labels": dict(deployment.metadata.labels),
        **metadata,
    }
    return msgspec.json.encode(data)


async def test_apply_of_a_compose_file_overwrites_nothing_made_after_its_ownership_check(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = compose_file(tmp_path / "shop", SMALL)
    deployments = buckets[names.DEPLOYMENTS_BUCKET]
    async with cluster(nats_url):

        async def user_makes_web(client: CorralClient) -> None:
            made = {
                "apiVersion": "corral/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"replicas": 0, "template": {"image": f"{IMAGE}-mine"}},
            }
            reply = await client.request(
                find_kind("Deployment"), "apply", msgspec.json.encode(made)
            )
            assert reply.ok, reply

        on_first_read(monkeypatch, names.DEPLOYMENTS_BUCKET, user_makes_web)
        refused = await corral(nats_url, "apply", "-f", str(file))
        assert refused.exit_code == 1, refused.output
        assert "deployment/web changed since it was checked: run it again" in refused.stderr
        mine = await stored(deployments, "shop.web", Deployment)
        assert isinstance(mine, Deployment)
        assert mine.spec.template.image == f"{IMAGE}-mine"
        assert "com.docker.compose.project" not in mine.metadata.labels


async def test_delete_f_of_a_compose_file_refuses_to_delete_what_changed_after_it_was_read(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = compose_file(tmp_path / "shop", SMALL)
    deployments = buckets[names.DEPLOYMENTS_BUCKET]
    async with cluster(nats_url):
        ok(await corral(nats_url, "apply", "-f", str(file)))

        async def someone_changes_web(client: CorralClient) -> None:
            web = await client.deployment("web", "shop")
            assert web is not None
            changed = deployment_document(web, annotations={"owner": "ops"})
            assert (await client.request(find_kind("Deployment"), "apply", changed)).ok

        # the Deployments are read first, then the Services: web changes in between
        on_first_read(monkeypatch, names.SERVICES_BUCKET, someone_changes_web)
        refused = await corral(nats_url, "delete", "-f", str(file))
        assert refused.exit_code == 1, refused.output
        assert "deployment/web changed since it was checked: run it again" in refused.stderr
        web = await stored(deployments, "shop.web", Deployment)
        assert isinstance(web, Deployment) and web.metadata.annotations == {"owner": "ops"}
