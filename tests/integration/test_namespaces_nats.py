"""Namespaces end to end through a real nats-server (issue 11): the same names in two
namespaces are two objects, each run, served and bound on its own; the CLI's -n and -A."""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from functools import partial

import anyio
import msgspec
from click.testing import CliRunner, Result

from corral.client.cli.main import cli
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.network_specs import Service
from corral.contract.network_state import Endpoints
from corral.contract.specs import ObjectMeta
from corral.contract.state import DeploymentStatus, ReplicaState, ReplicaStatus
from corral.contract.volume_specs import (
    PersistentVolumeClaim,
    PersistentVolumeClaimSpec,
    StorageRequest,
    VolumeResources,
)
from corral.contract.volume_state import ClaimStatus
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext
from tests.agents import running_agent
from tests.integration.cluster_part_harness import record
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import placements, request, running_scheduler
from tests.integration.volmgr_harness import running_volmgr
from tests.unit.netmgr_helpers import node, placement, status, template
from tests.waiting import eventually


async def corral(url: str, *args: str, stdin: str | None = None) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, *args], input=stdin)

    return await anyio.to_thread.run_sync(invoke)


def rows(result: Result) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in result.stdout.strip().splitlines()]


def hollow_agent(nats_url: str, node_name: str) -> AbstractAsyncContextManager[ServiceContext]:
    flags = ("--runtime", "hollow", "--cpu", "2", "--memory", "4Gi", "--heartbeat-seconds", "0.5")
    return running_agent(nats_url, node_name, *flags)


async def running(buckets: dict[str, NatsBucket]) -> dict[str, ReplicaStatus]:
    """Placement key -> status, of the placed replicas their agent reports Running."""
    placed: set[str] = set()
    async for entry in buckets[names.PLACEMENTS_BUCKET].watch():
        if entry is None:
            break
        if entry.value is not None:
            placed.add(entry.key)
    found: dict[str, ReplicaStatus] = {}
    async for entry in buckets[names.REPLICA_STATUS_BUCKET].watch():
        if entry is None:
            break
        if entry.value is not None and entry.key in placed:
            replica = decode(entry.value, ReplicaStatus)
            if replica.state == ReplicaState.RUNNING:
                found[entry.key] = replica
    return found


def by_namespace(found: dict[str, ReplicaStatus]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for replica in found.values():
        out.setdefault(replica.namespace, set()).add(replica.replica)
    return out


async def test_two_deployments_named_web_in_two_namespaces_both_run_and_a_delete_leaves_the_other(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_scheduler(nats_url), hollow_agent(nats_url, "node-1"):
        made = await corral(
            nats_url, "create", "deployment", "web", "--image=nginx", "--replicas=2"
        )
        assert made.exit_code == 0, made.output
        made = await corral(
            nats_url, "create", "deployment", "web", "--image=httpd", "--replicas=1", "-n", "team-a"
        )
        assert made.exit_code == 0, made.output
        assert made.stdout.strip() == "deployment/web created"

        both = await eventually(
            lambda: running(buckets),
            lambda r: (
                {k: len(v) for k, v in by_namespace(r).items()} == {"default": 2, "team-a": 1}
            ),
        )
        mine = by_namespace(both)
        assert not mine["default"] & mine["team-a"], "replica names never collide"
        for key, replica in both.items():
            assert key == names.placement_key("node-1", replica.namespace, replica.replica)

        # -A: a NAMESPACE column first, both Deployments; -n: one namespace's
        listed = await eventually(
            lambda: corral(nats_url, "get", "deployments", "-A"),
            lambda r: "2/2" in r.stdout and "1/1" in r.stdout,
        )
        table = rows(listed)
        assert table[0][:2] == ["NAMESPACE", "NAME"], listed.stdout
        assert sorted((row[0], row[1], row[2]) for row in table[1:]) == [
            ("default", "web", "2/2"),
            ("team-a", "web", "1/1"),
        ]
        team = await corral(nats_url, "get", "replicas", "-n", "team-a")
        assert team.exit_code == 0, team.output
        assert [row[0] for row in rows(team)[1:]] == sorted(mine["team-a"])
        spaces = await corral(nats_url, "get", "namespaces")
        assert [row[:2] for row in rows(spaces)[1:]] == [["default", "1"], ["team-a", "1"]]
        described = await corral(nats_url, "describe", "deployment", "web", "-n", "team-a")
        assert "httpd" in described.stdout and "nginx" not in described.stdout

        scaled = await corral(
            nats_url, "scale", "deployment", "web", "--replicas=3", "-n", "team-a"
        )
        assert scaled.exit_code == 0, scaled.output
        await eventually(
            lambda: running(buckets),
            lambda r: (
                {k: len(v) for k, v in by_namespace(r).items()} == {"default": 2, "team-a": 3}
            ),
        )

        gone = await corral(nats_url, "delete", "deployment", "web", "--namespace", "team-a")
        assert gone.exit_code == 0, gone.output
        left = await eventually(
            lambda: running(buckets), lambda r: set(by_namespace(r)) == {"default"}
        )
        assert {replica.replica for replica in left.values()} == mine["default"]
        default = await corral(nats_url, "get", "deployments")
        assert [row[:2] for row in rows(default)[1:]] == [["web", "2/2"]]


async def test_apply_puts_a_manifest_in_its_own_namespace_and_a_conflicting_n_is_refused(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    manifest = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n  namespace: team-b\n"
        "spec:\n  replicas: 1\n  selector:\n    matchLabels: {app: api}\n  template:\n"
        "    metadata:\n      labels: {app: api}\n    spec:\n      containers:\n"
        "      - name: api\n        image: nginx\n"
    )
    bare = manifest.replace("  namespace: team-b\n", "")
    async with running_scheduler(nats_url):
        refused = await corral(nats_url, "apply", "-f", "-", "-n", "team-c", stdin=manifest)
        assert refused.exit_code == 2
        assert "'team-b'" in refused.output and "'team-c'" in refused.output
        assert await buckets[names.DEPLOYMENTS_BUCKET].get("team-b.api") is None

        applied = await corral(nats_url, "apply", "-f", "-", stdin=manifest)
        assert applied.exit_code == 0, applied.output
        same = await corral(nats_url, "apply", "-f", "-", "-n", "team-b", stdin=manifest)
        assert same.exit_code == 0 and "unchanged" in same.stdout, same.output
        filled = await corral(nats_url, "apply", "-f", "-", "-n", "team-c", stdin=bare)
        assert filled.exit_code == 0, filled.output
        stored = buckets[names.DEPLOYMENTS_BUCKET]
        assert await stored.get("team-b.api") is not None
        assert await stored.get("team-c.api") is not None
        assert await stored.get("default.api") is None
        back = await corral(nats_url, "get", "deployment", "api", "-n", "team-b", "-o", "yaml")
        assert "namespace: team-b" in back.stdout, back.output
        missing = await corral(nats_url, "get", "deployment", "api")
        assert missing.exit_code == 1 and "not found" in missing.stderr


async def test_a_service_selects_only_the_replicas_of_its_own_namespace(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    endpoints = buckets[names.ENDPOINTS_BUCKET]
    async with running_netmgr(nats_url):
        await buckets[names.NODES_BUCKET].put("n1", encode(node("n1")))
        await eventually(
            lambda: buckets[names.NETWORKS_BUCKET].get("default"), lambda e: e is not None
        )
        for namespace in ("default", "team-a"):
            made = await corral(
                nats_url,
                "create",
                "service",
                "web",
                "--selector=app=web",
                "--port=80:8080",
                "-n",
                namespace,
            )
            assert made.exit_code == 0, made.output
        ips = {"default": "10.128.0.7", "team-a": "10.128.0.8"}
        for namespace, replica in (("default", "web-a"), ("team-a", "web-b")):
            p = msgspec.structs.replace(
                placement(replica, "web", "n1", template(("http", 8080))), namespace=namespace
            )
            replica_status = msgspec.structs.replace(
                status(p, {"default": ips[namespace]}), namespace=namespace
            )
            await buckets[names.PLACEMENTS_BUCKET].put(p.key, encode(p))
            await buckets[names.REPLICA_STATUS_BUCKET].put(p.key, encode(replica_status))
        for namespace, replica in (("default", "web-a"), ("team-a", "web-b")):
            ready = await eventually(
                partial(record, endpoints, f"{namespace}.web", Endpoints),
                lambda e: e is not None and bool(e.addresses),
            )
            assert [(a.ip, a.replica) for a in ready.addresses] == [(ips[namespace], replica)]
            assert ready.namespace == namespace
        default = await record(buckets[names.SERVICES_BUCKET], "default.web", Service)
        team = await record(buckets[names.SERVICES_BUCKET], "team-a.web", Service)
        assert default.spec.cluster_ip != team.spec.cluster_ip
        listed = await corral(nats_url, "get", "services", "-A")
        assert sorted(row[:2] for row in rows(listed)[1:]) == [
            ["default", "web"],
            ["team-a", "web"],
        ]
        refused = await corral(nats_url, "create", "network", "back", "-n", "team-a")
        assert refused.exit_code == 2 and "No such option '-n'" in refused.output  # cluster-wide
        assert await buckets[names.NETWORKS_BUCKET].get("back") is None


async def test_a_claim_of_the_same_name_in_two_namespaces_binds_separately(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_volmgr(nats_url):
        for pv in ("pv-1", "pv-2"):
            made = await corral(nats_url, "create", "pv", pv, "--size=100Mi")
            assert made.exit_code == 0, made.output
        for namespace in ("default", "team-a"):
            made = await corral(nats_url, "create", "pvc", "data", "--size=50Mi", "-n", namespace)
            assert made.exit_code == 0, made.output
        statuses = buckets[names.CLAIM_STATUS_BUCKET]
        bound = {}
        for namespace in ("default", "team-a"):
            found = await eventually(
                partial(record, statuses, f"{namespace}.data", ClaimStatus),
                lambda s: s is not None and bool(s.volume),
            )
            bound[namespace] = found.volume
        assert sorted(bound.values()) == ["pv-1", "pv-2"]
        listed = await corral(nats_url, "get", "pvc", "-A")
        assert sorted(row[:3] for row in rows(listed)[1:]) == sorted(
            [namespace, "data", "Bound"] for namespace in ("default", "team-a")
        ), listed.stdout
        pvs = await corral(nats_url, "get", "pv")
        claims = sorted(row[5] for row in rows(pvs)[1:])
        assert claims == ["default/data", "team-a/data"], pvs.stdout

        gone = await corral(nats_url, "delete", "pvc", "data", "-n", "team-a")
        assert gone.exit_code == 0, gone.output
        await eventually(
            lambda: buckets[names.CLAIMS_BUCKET].get("team-a.data"), lambda e: e is None
        )
        kept = await record(statuses, "default.data", ClaimStatus)
        assert kept.volume == bound["default"]


def claim_user(namespace: str, replicas: int = 1) -> bytes:
    template = {
        "image": "corral-test/busybox:1",
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}],
        "volumeMounts": [{"name": "v", "mountPath": "/data"}],
    }
    return encode(
        {
            "kind": "Deployment",
            "metadata": {"name": "db", "namespace": namespace},
            "spec": {"replicas": replicas, "template": template},
        }
    )


async def test_a_templates_claim_name_is_the_claim_of_the_deployments_own_namespace(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    # The test plays volmgr: one claim `data`, in team-a, bound to a volume on n2.
    claim = PersistentVolumeClaim(
        metadata=ObjectMeta(name="data", namespace="team-a"),
        spec=PersistentVolumeClaimSpec(
            resources=VolumeResources(requests=StorageRequest(storage="100Mi"))
        ),
    )
    await buckets[names.CLAIMS_BUCKET].put(claim.key, encode(claim))
    bound = ClaimStatus(name="data", namespace="team-a", phase="Bound", volume="pv-1", node="n2")
    await buckets[names.CLAIM_STATUS_BUCKET].put(bound.key, encode(bound))
    async with running_scheduler(nats_url, nodes={"n1": {}, "n2": {}}) as ctx:
        for namespace in ("team-b", "team-a"):
            applied = await request(ctx.nc, "deployment", "apply", claim_user(namespace))
            assert applied.ok, applied.error
        placed = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 1
        )
        assert [(p.namespace, p.node) for p in placed.values()] == [("team-a", "n2")]
        waiting = await eventually(
            lambda: record(buckets[names.DEPLOYMENT_STATUS_BUCKET], "team-b.db", DeploymentStatus),
            lambda s: s.pending == 1,
        )
        assert waiting.pending_reason == 'persistentvolumeclaim "data" not found'
