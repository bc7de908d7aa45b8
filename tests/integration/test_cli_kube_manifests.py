"""Plain Kubernetes manifests through a real nats-server, against the scheduler and
netmgr's and volmgr's cluster parts (docs/manifests.md): a file of an apps/v1
Deployment, a Service, a PersistentVolume and a claim applies in one command; what
`corral get -o yaml` prints applies back unchanged; `corral delete -f` and `corral diff -f`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import yaml
from click.testing import CliRunner, Result

from corral.client.cli.main import cli
from corral.contract import names
from corral.contract.codec import decode
from corral.contract.specs import Deployment
from corral.natsio.kv import NatsBucket
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import running_scheduler
from tests.integration.volmgr_harness import running_volmgr
from tests.waiting import eventually

MIXED = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: {kubernetes.io/change-cause: first}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  minReadySeconds: 1
  revisionHistoryLimit: 4
  progressDeadlineSeconds: 60
  template:
    metadata:
      labels: {app: web, tier: front}
    spec:
      terminationGracePeriodSeconds: 5
      volumes:
        - {name: data, persistentVolumeClaim: {claimName: data}}
      containers:
        - name: web
          image: corral-test/busybox:1
          imagePullPolicy: IfNotPresent
          command: [sh, -c]
          args: ["sleep 3600"]
          env:
            - {name: GREETING, value: hi}
          ports:
            - {name: http, containerPort: 8080}
          resources:
            requests: {cpu: 10m, memory: 16Mi}
          readinessProbe:
            tcpSocket: {port: http}
          volumeMounts:
            - {name: data, mountPath: /data}
          lifecycle:
            stopSignal: SIGINT
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: disk1}
spec:
  capacity: {storage: 1Gi}
  storageClassName: ""
  local: {path: /mnt/corral-test-disk1}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: kubernetes.io/hostname, operator: In, values: [n1]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 500Mi}}
  storageClassName: ""
"""


async def corral(url: str, *args: str, stdin: str | None = None) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, *args], input=stdin)

    return await anyio.to_thread.run_sync(invoke)


@asynccontextmanager
async def cluster(nats_url: str) -> AsyncIterator[None]:
    async with (
        running_volmgr(nats_url),
        running_netmgr(nats_url),
        running_scheduler(nats_url, nodes={"n1": {}}),
    ):
        yield


async def stored_deployment(buckets: dict[str, NatsBucket], name: str) -> Deployment | None:
    entry = await buckets[names.DEPLOYMENTS_BUCKET].get(names.object_key("default", name))
    return None if entry is None or not entry.value else decode(entry.value, Deployment)


async def test_a_mixed_kubernetes_file_applies_in_one_command_and_every_kind_round_trips(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with cluster(nats_url):
        applied = await corral(nats_url, "apply", "-f", "-", stdin=MIXED)
        assert applied.exit_code == 0, applied.output
        assert applied.stdout.splitlines() == [
            "deployment/web created",
            "service/web created",
            "persistentvolume/disk1 created",
            "persistentvolumeclaim/data created",
        ]
        assert applied.stderr.strip() == (
            "warning: <stdin> (document 1) Deployment/web: dropped fields corral does not "
            "support: spec.template.spec.containers[0].imagePullPolicy"
        )
        web = await stored_deployment(buckets, "web")
        assert web is not None
        template = web.spec.template
        assert (template.image, template.command, template.args) == (
            "corral-test/busybox:1",
            ["sh", "-c"],
            ["sleep 3600"],
        )
        assert template.env == {"GREETING": "hi"} and template.labels["tier"] == "front"
        assert template.stop_signal == "SIGINT" and template.termination_grace_period_seconds == 5
        assert (web.spec.replicas, web.spec.min_ready_seconds) == (2, 1)
        assert web.metadata.annotations == {"kubernetes.io/change-cause": "first"}

        async def placed() -> int:
            found = await corral(nats_url, "get", "replicas")
            return sum(" n1 " in line for line in found.stdout.splitlines())

        await eventually(placed, lambda count: count == 2)

        for kind, name in (
            ("deployment", "web"),
            ("service", "web"),
            ("pv", "disk1"),
            ("pvc", "data"),
            ("network", "default"),
        ):
            printed = await corral(nats_url, "get", kind, name, "-o", "yaml")
            assert printed.exit_code == 0, printed.output
            again = await corral(nats_url, "apply", "-f", "-", stdin=printed.stdout)
            assert again.exit_code == 0, (kind, again.output)
            assert again.stdout.strip().endswith(f"/{name} unchanged"), (kind, again.output)
            assert again.stderr == "", (kind, again.stderr)

        deployment = yaml.safe_load(
            (await corral(nats_url, "get", "deploy", "web", "-o", "yaml")).stdout
        )
        assert deployment["apiVersion"] == "apps/v1"
        assert deployment["spec"]["selector"] == {"matchLabels": {"app": "web", "tier": "front"}}
        assert deployment["status"]["replicas"] == 2
        listed = yaml.safe_load((await corral(nats_url, "get", "deployments", "-o", "json")).stdout)
        assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
        assert [item["metadata"]["name"] for item in listed["items"]] == ["web"]
        volume = yaml.safe_load((await corral(nats_url, "get", "pv", "disk1", "-o", "yaml")).stdout)
        assert volume["apiVersion"] == "v1" and "nodeAffinity" in volume["spec"]
        after = await stored_deployment(buckets, "web")
        assert after is not None and after.metadata.generation == 1


async def test_diff_exits_1_on_differences_0_when_none_and_2_on_errors(
    nats_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MIXED)
    async with cluster(nats_url):
        before = await corral(nats_url, "diff", "-f", str(path))
        assert before.exit_code == 1, before.output
        assert "--- /dev/null\n+++ b/deployment/web\n" in before.stdout
        assert "+apiVersion: apps/v1\n" in before.stdout

        applied = await corral(nats_url, "apply", "-f", str(path))
        assert applied.exit_code == 0, applied.output
        same = await corral(nats_url, "diff", "-f", str(path))
        assert same.exit_code == 0, same.output
        assert same.stdout == ""

        path.write_text(MIXED.replace("replicas: 2", "replicas: 3"))
        changed = await corral(nats_url, "diff", "-f", str(path))
        assert changed.exit_code == 1, changed.output
        assert changed.stdout.startswith("--- a/deployment/web\n+++ b/deployment/web\n")
        assert "-  replicas: 2\n+  replicas: 3\n" in changed.stdout
        assert "service/web" not in changed.stdout  # unchanged, clusterIP allocated or not

        path.write_text(MIXED.replace("kind: Service", "kind: Gadget"))
        broken = await corral(nats_url, "diff", "-f", str(path))
        assert broken.exit_code == 2, broken.output
        assert "(document 2) Gadget/web: unknown kind 'Gadget'" in broken.stderr


async def test_delete_f_deletes_every_object_and_reports_the_missing_one(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MIXED)
    async with cluster(nats_url):
        applied = await corral(nats_url, "apply", "-f", str(path))
        assert applied.exit_code == 0, applied.output
        gone = await corral(nats_url, "delete", "service", "web")
        assert gone.exit_code == 0, gone.output

        removed = await corral(nats_url, "delete", "-f", str(path))
        assert removed.exit_code == 1, removed.output
        assert "deployment/web deleted" in removed.stdout
        assert "Error (NotFound): service 'web' not found" in removed.stderr
        assert "persistentvolumeclaim" in removed.stdout and "persistentvolume" in removed.stdout
        assert await stored_deployment(buckets, "web") is None


async def test_a_kubernetes_deployment_keeps_its_own_namespace_through_apply_get_diff_and_delete(
    nats_url: str, buckets: dict[str, NatsBucket], tmp_path: Path
) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(
        MIXED.split("---\n")[0]
        .replace("name: web\n", "name: web\n  namespace: shop\n", 1)
        .replace(
            "      volumes:\n        - {name: data, persistentVolumeClaim: {claimName: data}}\n", ""
        )
        .replace("          volumeMounts:\n            - {name: data, mountPath: /data}\n", "")
    )
    async with cluster(nats_url):
        applied = await corral(nats_url, "apply", "-f", str(path))
        assert applied.exit_code == 0, applied.output
        stored = await buckets[names.DEPLOYMENTS_BUCKET].get(names.object_key("shop", "web"))
        assert stored is not None and stored.value
        assert await stored_deployment(buckets, "web") is None  # not in default

        printed = await corral(nats_url, "get", "deploy", "web", "-n", "shop", "-o", "yaml")
        assert printed.exit_code == 0, printed.output
        assert yaml.safe_load(printed.stdout)["metadata"]["namespace"] == "shop"
        again = await corral(nats_url, "apply", "-f", "-", stdin=printed.stdout)
        assert again.stdout.strip() == "deployment/web unchanged", again.output
        same = await corral(nats_url, "diff", "-f", str(path))
        assert same.exit_code == 0, same.output

        removed = await corral(nats_url, "delete", "-f", str(path))
        assert removed.exit_code == 0, removed.output
        gone = await buckets[names.DEPLOYMENTS_BUCKET].get(names.object_key("shop", "web"))
        assert gone is None or not gone.value
