"""The CLI end to end against an in-process scheduler: create, apply, scale, delete,
and every kind of bad input rejected with a clear error and nothing stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import yaml
from click.testing import CliRunner, Result

from corral.client.cli.main import cli
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Reply
from corral.natsio.bus import connect
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext
from tests.integration.scheduler_harness import register_node, running_scheduler
from tests.waiting import eventually

MANIFEST = """\
apiVersion: corral/v1
kind: Deployment
metadata:
  name: my-app
spec:
  replicas: 2
  template:
    image: corral-test/busybox:1
    command: ["sh", "-c", "sleep 3600"]
    resources:
      requests: {cpu: 100m, memory: 32Mi}
"""


async def corral(url: str, *args: str, stdin: str | None = None) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, *args], input=stdin)

    return await anyio.to_thread.run_sync(invoke)


@asynccontextmanager
async def scheduler_and_node(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> AsyncIterator[ServiceContext]:
    """The scheduler in this task (a fixture would cross tasks) and one Ready node."""
    async with running_scheduler(nats_url) as ctx:
        await register_node(buckets[names.NODES_BUCKET], "n1")
        yield ctx


async def stored_names(buckets: dict[str, NatsBucket]) -> set[str]:
    found = set()
    async for entry in buckets[names.DEPLOYMENTS_BUCKET].watch():
        if entry is None:
            break
        if entry.value is not None:
            found.add(entry.key)
    return found


async def test_create_get_scale_delete(nats_url: str, buckets: dict[str, NatsBucket]) -> None:
    async with scheduler_and_node(nats_url, buckets):
        created = await corral(
            nats_url,
            "create", "deployment", "my-app", "--image=corral-test/busybox:1", "--replicas=3",
            "--requests", "cpu=100m,memory=64Mi", "--env", "GREETING=hi",
            "--", "sh", "-c", "echo hi; sleep 3600",
        )  # fmt: skip
        assert created.exit_code == 0, created.output
        assert created.stdout.strip() == "deployment/my-app created"

        again = await corral(nats_url, "create", "deployment", "my-app", "--image=x")
        assert again.exit_code == 1 and "already exists" in again.stderr

        stored = json.loads(
            (await corral(nats_url, "get", "deploy", "my-app", "-o", "json")).stdout
        )
        template = stored["spec"]["template"]
        container = template["spec"]["containers"][0]  # apps/v1, as kubectl prints it
        assert container["command"] == ["sh", "-c", "echo hi; sleep 3600"]
        assert container["env"] == [{"name": "GREETING", "value": "hi"}]
        assert container["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}

        async def replicas_listed() -> list[str]:
            result = await corral(nats_url, "get", "replicas")
            return [line.split()[2] for line in result.stdout.strip().splitlines()[1:]]

        await eventually(replicas_listed, lambda nodes: nodes == ["n1", "n1", "n1"])

        scaled = await corral(nats_url, "scale", "deployment", "my-app", "--replicas=5")
        assert scaled.exit_code == 0 and scaled.stdout.strip() == "deployment/my-app scaled"
        await eventually(replicas_listed, lambda nodes: len(nodes) == 5)

        nodes = await corral(nats_url, "get", "nodes")
        assert "500m/4" in nodes.stdout and "5/110" in nodes.stdout, nodes.stdout

        described = await corral(nats_url, "describe", "deployment", "my-app")
        assert described.exit_code == 0 and "5 desired" in described.stdout, described.output

        deleted = await corral(nats_url, "delete", "deployment", "my-app")
        assert deleted.exit_code == 0 and deleted.stdout.strip() == "deployment/my-app deleted"
        await eventually(replicas_listed, lambda nodes: nodes == [])
        assert await stored_names(buckets) == set()

        gone = await corral(nats_url, "delete", "deployment", "my-app")
        assert gone.exit_code == 1 and "not found" in gone.stderr


async def test_apply_created_unchanged_configured_and_delete_by_file(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    async with scheduler_and_node(nats_url, buckets):
        path = tmp_path / "my-app.yaml"
        path.write_text(MANIFEST)
        first = await corral(nats_url, "apply", "-f", str(path))
        assert first.exit_code == 0 and first.stdout.strip() == "deployment/my-app created", (
            first.output
        )
        second = await corral(nats_url, "apply", "-f", str(path))
        assert second.stdout.strip() == "deployment/my-app unchanged", second.output
        changed = MANIFEST.replace("replicas: 2", "replicas: 1")
        third = await corral(nats_url, "apply", "-f", "-", stdin=changed)
        assert third.stdout.strip() == "deployment/my-app configured", third.output

        two_docs = MANIFEST + "---\n" + MANIFEST.replace("name: my-app", "name: other")
        both = await corral(nats_url, "apply", "-f", "-", stdin=two_docs)
        assert both.stdout.split("\n")[:2] == [
            "deployment/my-app configured",
            "deployment/other created",
        ]

        removed = await corral(nats_url, "delete", "-f", "-", stdin=two_docs)
        assert removed.exit_code == 0, removed.output
        assert await stored_names(buckets) == set()


BAD_MANIFESTS = [
    pytest.param(
        "kind: Deployment\nmetadata: {name: x}\n", "missing required field `spec`", id="missing"
    ),
    pytest.param(MANIFEST.replace("replicas: 2", "replicas: two"), "spec.replicas", id="mistyped"),
    pytest.param(MANIFEST.replace("replicas: 2", "replicas: -3"), ">= 0", id="negative"),
    pytest.param(MANIFEST.replace("name: my-app", "name: My_App"), "DNS label", id="bad-name"),
    pytest.param(
        MANIFEST.replace("corral-test/busybox:1", "UPPER::bad"), "image reference", id="bad-image"
    ),
    pytest.param(
        MANIFEST.replace("Deployment", "Gadget"), "unknown kind 'Gadget'", id="unknown-kind"
    ),
    pytest.param("kind: [unclosed\n", "not valid YAML", id="not-yaml"),
    pytest.param(
        MANIFEST.replace("name: my-app", "name: my-app\n  labels: {x: " + "y" * 70_000 + "}"),
        "larger than the limit",
        id="oversized",
    ),
]


@pytest.mark.parametrize(("manifest", "expected"), BAD_MANIFESTS)
async def test_bad_manifests_are_refused_and_nothing_is_stored(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    manifest: str,
    expected: str,
) -> None:
    async with scheduler_and_node(nats_url, buckets):
        result = await corral(nats_url, "apply", "-f", "-", stdin=manifest)
        assert result.exit_code == 1
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.output
        assert await stored_names(buckets) == set()


async def test_the_server_rejects_what_skips_the_cli(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    """Raw requests (any NATS client) get the same errors, naming the field."""
    async with scheduler_and_node(nats_url, buckets):
        nc = await connect(nats_url, name="raw-client")
        try:
            subject = names.api_subject("deployment", "apply")
            malformed = decode((await nc.request(subject, b"{nope", timeout=5)).data, Reply)
            assert not malformed.ok and "malformed JSON" in malformed.error
            document = yaml.safe_load(MANIFEST)
            document["spec"]["replicas"] = -1
            negative = decode((await nc.request(subject, encode(document), timeout=5)).data, Reply)
            assert not negative.ok and negative.field == "spec.replicas"
        finally:
            await nc.close()
        assert await stored_names(buckets) == set()


async def test_scale_and_delete_of_unknown_deployment(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with scheduler_and_node(nats_url, buckets):
        scaled = await corral(nats_url, "scale", "deployment", "ghost", "--replicas", "2")
        assert scaled.exit_code == 1 and "deployment 'ghost' not found" in scaled.stderr
        unknown = await corral(nats_url, "scale", "gadget", "ghost", "--replicas", "2")
        assert unknown.exit_code == 2 and "corral knows Deployment" in unknown.stderr


async def test_client_library_round_trip(nats_url: str, buckets: dict[str, NatsBucket]) -> None:
    from corral.client.api import CorralClient, RequestRejected
    from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta

    spec = Deployment(
        metadata=ObjectMeta(name="lib"),
        spec=DeploymentSpec(replicas=1, template=ContainerTemplate(image="corral-test/busybox:1")),
    )
    async with scheduler_and_node(nats_url, buckets):
        async with await CorralClient.connect(nats_url) as client:
            reply = await client.apply(spec)
            assert reply.ok and reply.generation == 1
            assert (await client.apply(spec)).unchanged
            assert (await client.scale("lib", 2)).generation == 2
            assert set(await client.deployments()) == {"lib"}
            await eventually(client.placements, lambda found: len(found) == 2)
            with pytest.raises(RequestRejected) as rejected:
                await client.scale("ghost", 1)
            assert rejected.value.reply.field == "name"
            assert (await client.delete("deployment", "lib")).ok
            await eventually(client.placements, lambda found: found == {})
