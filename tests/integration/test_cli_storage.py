"""`corral create|get|describe|delete pv|pvc|storageclass`, `corral apply -f` of Kubernetes
storage manifests and `corral volume release` through a real nats-server, against volmgr's
real cluster part (and the scheduler and netmgr for a mixed file): docs/volumes.md."""

from __future__ import annotations

import json
import re

import anyio
import yaml
from click.testing import CliRunner, Result

from corral.client.cli.main import cli
from corral.contract import names
from corral.contract.codec import encode
from corral.natsio.kv import NatsBucket
from tests.integration.netmgr_harness import running_netmgr
from tests.integration.scheduler_harness import placements, running_scheduler
from tests.integration.volmgr_harness import running_volmgr
from tests.unit.volmgr_helpers import attachment, placement
from tests.waiting import eventually


async def corral(url: str, *args: str, stdin: str | None = None) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, ["--nats", url, *args], input=stdin)

    return await anyio.to_thread.run_sync(invoke)


def rows(result: Result) -> list[list[str]]:
    """A table's cells (headers may hold one space: ACCESS MODES)."""
    return [re.split(r"\s{2,}", line.strip()) for line in result.stdout.strip().splitlines()]


def row_of(result: Result, name: str) -> list[str]:
    found = [row for row in rows(result)[1:] if row[0] == name]
    assert found, result.stdout
    return found[0]


async def test_the_seeds_two_commands_bind_and_get_shows_it(nats_url: str) -> None:
    async with running_volmgr(nats_url):
        made = await corral(nats_url, "create", "pv", "my-pv", "--size=100Mi")
        assert made.exit_code == 0, made.output
        assert made.stdout.strip() == "persistentvolume/my-pv created"
        claimed = await corral(nats_url, "create", "pvc", "my-pvc", "--size=50Mi")
        assert claimed.exit_code == 0 and claimed.stdout.strip() == (
            "persistentvolumeclaim/my-pvc created"
        ), claimed.output

        async def get_pvc() -> Result:
            return await corral(nats_url, "get", "pvc")

        got = await eventually(get_pvc, lambda r: "Bound" in r.stdout)
        assert rows(got)[0] == [
            "NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE",
        ]  # fmt: skip
        assert row_of(got, "my-pvc")[:6] == ["my-pvc", "Bound", "my-pv", "100Mi", "RWO", "<none>"]
        pv = await corral(nats_url, "get", "persistentvolumes")
        assert row_of(pv, "my-pv")[:8] == [
            "my-pv", "100Mi", "RWO", "Retain", "Bound", "default/my-pvc", "<none>", "<none>",
        ]  # fmt: skip
        classes = await corral(nats_url, "get", "storageclasses")
        assert row_of(classes, "local (default)")[1:4] == [
            "corral.io/local-volume", "Delete", "WaitForFirstConsumer",
        ]  # fmt: skip
        again = await corral(nats_url, "create", "pv", "my-pv", "--size=1Gi")
        assert again.exit_code == 1 and "persistentvolume 'my-pv' already exists" in again.stderr
        as_json = json.loads((await corral(nats_url, "get", "pvc", "my-pvc", "-o", "json")).stdout)
        assert as_json["status"]["volume"] == "my-pv"
        assert as_json["spec"]["resources"] == {"requests": {"storage": "50Mi"}}
        as_yaml = yaml.safe_load((await corral(nats_url, "get", "pv", "-o", "yaml")).stdout)
        assert [item["metadata"]["name"] for item in as_yaml["items"]] == ["my-pv"]


async def test_a_claim_that_nothing_fits_is_pending_with_the_reason_in_get_and_describe(
    nats_url: str,
) -> None:
    async with running_volmgr(nats_url):
        assert (await corral(nats_url, "create", "pv", "small", "--size=40Mi")).exit_code == 0
        made = await corral(nats_url, "create", "pvc", "big", "--size=1Gi", "--storage-class", "")
        assert made.exit_code == 0, made.output

        async def get_pvc() -> Result:
            return await corral(nats_url, "get", "pvc")

        got = await eventually(get_pvc, lambda r: "NoMatchingVolume" in r.stdout)
        assert rows(got)[0][-2:] == ["REASON", "MESSAGE"]
        assert row_of(got, "big")[:2] == ["big", "Pending"]
        described = await corral(nats_url, "describe", "pvc", "big")
        assert "Reason:       NoMatchingVolume" in described.stdout, described.output
        assert "40Mi" in described.stdout  # the message tells the largest volume
        # It binds as soon as a fitting volume appears.
        assert (await corral(nats_url, "create", "pv", "large", "--size=2Gi")).exit_code == 0
        bound = await eventually(get_pvc, lambda r: "Bound" in r.stdout)
        assert row_of(bound, "big")[:3] == ["big", "Bound", "large"]


MIXED = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
volumeBindingMode: Immediate
allowVolumeExpansion: true
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: disk1
  labels: {tier: db}
spec:
  capacity: {storage: 1Gi}
  volumeMode: Filesystem
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: fast
  mountOptions: [noatime]
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
  storageClassName: fast
  selector: {matchLabels: {tier: db}}
---
apiVersion: corral/v1
kind: Deployment
metadata: {name: db}
spec:
  replicas: 1
  template:
    image: corral-test/busybox:1
    volumes:
      - {name: data, persistentVolumeClaim: {claimName: data}}
    volumeMounts:
      - {name: data, mountPath: /data}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{port: 5432}]
  sessionAffinity: None
"""


async def test_a_mixed_kubernetes_file_applies_binds_places_and_deletes_with_protection(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with (
        running_volmgr(nats_url),
        running_netmgr(nats_url),
        running_scheduler(nats_url, nodes={"n1": {}, "n2": {}}),
    ):
        applied = await corral(nats_url, "apply", "-f", "-", stdin=MIXED)
        assert applied.exit_code == 0, applied.output
        assert applied.stdout.splitlines() == [
            "storageclass/fast created",
            "persistentvolume/disk1 created",
            "persistentvolumeclaim/data created",
            "deployment/db created",
            "service/db created",
        ]
        # Every dropped field named, never silently; volumeMode: Filesystem is no warning.
        assert "StorageClass/fast: dropped fields corral does not support: " in applied.stderr
        assert "allowVolumeExpansion" in applied.stderr and "spec.mountOptions" in applied.stderr
        assert "spec.sessionAffinity" in applied.stderr and "volumeMode" not in applied.stderr

        async def get(*args: str) -> Result:
            return await corral(nats_url, "get", *args)

        pv = await eventually(lambda: get("pv", "disk1"), lambda r: "Bound" in r.stdout)
        assert row_of(pv, "disk1")[1:8] == [
            "1Gi", "RWO", "Retain", "Bound", "default/data", "fast", "n1",
        ]  # fmt: skip
        # The claim pins its replica to the volume's node.
        placed = await eventually(
            lambda: placements(buckets[names.PLACEMENTS_BUCKET]), lambda p: len(p) == 1
        )
        [replica] = placed.values()
        assert replica.node == "n1"

        described = await corral(nats_url, "describe", "pvc", "data")
        assert described.exit_code == 0, described.output
        assert "Volume:       disk1" in described.stdout
        assert "Selector:     tier=db" in described.stdout
        used = described.stdout.split("Used By:")[1].splitlines()
        assert used[2].split() == [replica.replica, "db", "n1"]
        volume = await corral(nats_url, "describe", "pv", "disk1")
        assert "Source:         local /mnt/corral-test-disk1" in volume.stdout, volume.output
        assert "Node:           n1" in volume.stdout

        # In use: the claim is Terminating, the reply says why; the volume too.
        refused = await corral(nats_url, "delete", "pvc", "data")
        assert refused.exit_code == 0, refused.output
        assert f"in use by replica(s) {replica.replica}: Terminating" in refused.stdout
        assert refused.stdout.startswith("persistentvolumeclaim/data: "), refused.output
        kept = await corral(nats_url, "delete", "pv", "disk1")
        assert "bound to claim default.data: Terminating" in kept.stdout, kept.output
        assert kept.stdout.startswith("persistentvolume/disk1: "), kept.output  # which one
        # Once no replica uses it, both go.
        assert (await corral(nats_url, "delete", "deployment", "db")).exit_code == 0
        await eventually(
            lambda: get("pvc"), lambda r: r.stdout.strip() == "No persistentvolumeclaims."
        )
        await eventually(lambda: get("pv"), lambda r: r.stdout.strip() == "No persistentvolumes.")
        missing = await corral(nats_url, "describe", "pvc", "data")
        assert missing.exit_code == 1 and "persistentvolumeclaim 'data' not found" in missing.stderr


async def test_a_storage_class_is_created_from_flags_and_deleted(nats_url: str) -> None:
    async with running_volmgr(nats_url):
        made = await corral(
            nats_url, "create", "storageclass", "nfs", "--provisioner", "corral.io/docker-volume",
            "--parameter", "type=nfs", "--reclaim-policy", "retain", "--binding-mode", "immediate",
        )  # fmt: skip
        assert made.exit_code == 0 and made.stdout.strip() == "storageclass/nfs created", (
            made.output
        )
        got = await corral(nats_url, "get", "sc", "nfs", "-o", "wide")
        assert row_of(got, "nfs")[1:4] == ["corral.io/docker-volume", "Retain", "Immediate"]
        assert row_of(got, "nfs")[-1] == "type=nfs"
        described = await corral(nats_url, "describe", "storageclass", "nfs")
        assert described.exit_code == 0, described.output
        fields = dict(
            re.split(r":\s+", line, maxsplit=1)
            for line in described.stdout.splitlines()
            if re.match(r"^[A-Za-z]+:\s+\S", line)
        )
        assert fields["Provisioner"] == "corral.io/docker-volume"
        assert fields["Parameters"] == "type=nfs"
        assert fields["ReclaimPolicy"] == "Retain" and fields["VolumeBindingMode"] == "Immediate"
        assert fields["IsDefaultClass"] == "No"
        default = await corral(nats_url, "describe", "sc", "local", "-o", "json")
        assert json.loads(default.stdout)["default"] is True, default.output
        missing = await corral(nats_url, "describe", "sc", "nope")
        assert missing.exit_code == 1 and "storageclass 'nope' not found" in missing.stderr
        gone = await corral(nats_url, "delete", "storageclass", "nfs")
        assert gone.stdout.strip() == "storageclass/nfs deleted", gone.output
        listed = await corral(nats_url, "get", "sc")
        assert "nfs" not in listed.stdout


async def test_describe_pv_shows_attachments_and_release_forgets_a_gone_nodes(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    attachments = buckets[names.VOLUME_ATTACHMENTS_BUCKET]
    async with running_volmgr(nats_url):
        made = await corral(
            nats_url, "create", "pv", "shared", "--size=1Gi", "--driver", "local",
            "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--label", "team=a",
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        await attachments.put(
            names.attachment_key("n2", "shared"), encode(attachment("n2", "shared"))
        )
        described = await corral(nats_url, "describe", "pv", "shared")
        assert "dockerVolume driver local, options device=tmpfs, type=tmpfs" in described.stdout
        table = described.stdout.split("Attachments:")[1].splitlines()
        assert table[2].split()[:3] == ["n2", "yes", "corral_pv_shared_test"]

        released = await corral(nats_url, "volume", "release", "shared", "--node", "n2")
        assert released.exit_code == 0, released.output
        assert "forgot the attachment of persistentvolume 'shared' on node 'n2'" in released.stdout
        entry = await attachments.get(names.attachment_key("n2", "shared"))
        assert entry is None or entry.value is None
        again = await corral(nats_url, "volume", "release", "shared", "--node", "n2")
        assert again.exit_code == 1 and "nothing to release" in again.stderr
        after = await corral(nats_url, "describe", "pv", "shared")
        assert "Attachments:  <none>" in after.stdout


async def test_a_claim_used_by_a_placement_is_listed_in_describe(
    nats_url: str, buckets: dict[str, NatsBucket]
) -> None:
    async with running_volmgr(nats_url):
        assert (await corral(nats_url, "create", "pvc", "logs", "--size=10Mi")).exit_code == 0
        used = placement("app-x1", "n3", "logs")
        await buckets[names.PLACEMENTS_BUCKET].put(used.key, encode(used))
        other = placement("app-y2", "n3", "other")
        await buckets[names.PLACEMENTS_BUCKET].put(other.key, encode(other))
        described = await corral(nats_url, "describe", "pvc", "logs")
        assert described.exit_code == 0, described.output
        assert "StorageClass:" in described.stdout and "app-y2" not in described.stdout
        assert described.stdout.split("Used By:")[1].splitlines()[2].split() == [
            "app-x1", "app", "n3",
        ]  # fmt: skip
        as_json = json.loads(
            (await corral(nats_url, "describe", "pvc", "logs", "-o", "json")).stdout
        )
        assert as_json["usedBy"] == [{"replica": "app-x1", "deployment": "app", "node": "n3"}]
