"""The client side of storage without NATS: Kubernetes PersistentVolume, claim and
StorageClass manifests (nodeAffinity, volumeMode, warnings), the create flags and their
bad input, and the kubectl-style columns of get and describe (docs/volumes.md)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from corral.client.api import CorralClient, CorralError, find_kind
from corral.client.cli.describe import describe_deployment
from corral.client.cli.kinds import read_kind
from corral.client.cli.main import cli
from corral.client.cli.manifests import load_manifests
from corral.client.cli.views import ClusterView
from corral.client.cli.vol_views import (
    VolView,
    default_class,
    describe_claim,
    describe_volume,
    render_vol_get,
)
from corral.contract.specs import ContainerTemplate, Deployment, DeploymentSpec, ObjectMeta
from corral.contract.state import Placement
from corral.contract.volume_specs import (
    DEFAULT_CLASS_ANNOTATION,
    PersistentVolume,
    PersistentVolumeClaim,
    PersistentVolumeClaimSpec,
    PersistentVolumeSpec,
    StorageClass,
    StorageRequest,
    VolumeResources,
)
from corral.contract.volume_state import ClaimStatus, VolumeAttachment, VolumeStatus

NOW = 1_000_000.0


def columns(line: str) -> list[str]:
    """A table's header cells (some hold one space: ACCESS MODES)."""
    return re.split(r"\s{2,}", line.strip())


LOCAL_PV = """\
apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-pv
  uid: 5d1c
  annotations: {pv.kubernetes.io/provisioned-by: hand}
spec:
  capacity: {storage: 1Gi}
  volumeMode: Filesystem
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: manual
  mountOptions: [noatime]
  local: {path: /mnt/disks/ssd1, fsType: ext4}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - key: kubernetes.io/hostname
              operator: In
              values: [n1]
"""

CLAIM = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Filesystem
  resources: {requests: {storage: 500Mi}, limits: {storage: 1Gi}}
  storageClassName: manual
  volumeName: local-pv
  selector: {matchLabels: {tier: db}}
"""

STORAGE_CLASS = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: corral.io/local-volume
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
mountOptions: [discard]
"""

DEPLOYMENT = """\
apiVersion: corral/v1
kind: Deployment
metadata: {name: db}
spec:
  template:
    image: busybox:1
    volumes:
      - {name: data, persistentVolumeClaim: {claimName: data}}
      - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
    volumeMounts:
      - {name: data, mountPath: /data}
      - {name: scratch, mountPath: /tmp/scratch, readOnly: true}
"""


# --- manifests ------------------------------------------------------------------------


def test_a_kubernetes_local_volume_takes_its_node_from_node_affinity_and_lists_what_it_drops() -> (
    None
):
    [manifest] = load_manifests(LOCAL_PV, "pv.yaml")
    assert manifest.kind is find_kind("pv")
    volume = manifest.spec
    assert isinstance(volume, PersistentVolume)
    assert volume.spec.node == "n1"
    assert volume.spec.local is not None and volume.spec.local.path == "/mnt/disks/ssd1"
    assert volume.spec.persistent_volume_reclaim_policy == "Delete"
    assert volume.spec.storage_class_name == "manual"
    assert volume.metadata.annotations == {"pv.kubernetes.io/provisioned-by": "hand"}
    # volumeMode: Filesystem is what corral's volumes are, the uid the server's: not a
    # warning.
    assert manifest.dropped == ("spec.mountOptions", "spec.local.fsType")


def test_a_claim_a_storage_class_and_a_deployment_with_volumes_mix_in_one_file() -> None:
    text = "---\n".join((LOCAL_PV, CLAIM, STORAGE_CLASS, DEPLOYMENT))
    _, claim, sc, deployment = load_manifests(text, "all.yaml")
    assert isinstance(claim.spec, PersistentVolumeClaim)
    spec = claim.spec.spec
    assert (spec.size_bytes, spec.storage_class_name, spec.volume_name) == (
        500 * 2**20,
        "manual",
        "local-pv",
    )
    assert spec.selector is not None and spec.selector.match_labels == {"tier": "db"}
    assert claim.dropped == ("spec.resources.limits",)
    assert isinstance(sc.spec, StorageClass)
    assert sc.spec.is_default and sc.spec.volume_binding_mode == "WaitForFirstConsumer"
    assert sc.spec.reclaim_policy == "Retain"
    assert sc.dropped == ("allowVolumeExpansion", "mountOptions")
    template = deployment.spec.spec.template  # type: ignore[attr-defined]
    assert [v.name for v in template.volumes] == ["data", "scratch"]
    assert template.volume_mounts[1].read_only is True
    assert deployment.dropped == ()


def test_a_kubernetes_claim_ref_object_becomes_namespace_slash_name() -> None:
    text = LOCAL_PV.replace(
        "  volumeMode: Filesystem\n",
        "  claimRef: {kind: PersistentVolumeClaim, namespace: default, name: data, uid: x1}\n",
    )
    [manifest] = load_manifests(text, "pv.yaml")
    assert manifest.spec.spec.claim_ref == "default/data"  # type: ignore[attr-defined]
    assert "spec.claimRef.uid" in manifest.dropped


AFFINITY = "spec.nodeAffinity.required.nodeSelectorTerms"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("operator: In", "operator: NotIn", f"{AFFINITY}[0].matchExpressions[0].operator"),
        (
            "key: kubernetes.io/hostname",
            "key: topology.kubernetes.io/zone",
            f"{AFFINITY}[0].matchExpressions[0].key",
        ),
        ("values: [n1]", "values: [n1, n2]", f"{AFFINITY}[0].matchExpressions[0].values"),
        ("values: [n1]", "values: []", f"{AFFINITY}[0].matchExpressions[0].values"),
        (
            "        - matchExpressions:\n",
            "        - matchFields: [{key: metadata.name, operator: In, values: [n1]}]\n"
            "          matchExpressions:\n",
            f"{AFFINITY}[0].matchFields",
        ),
        (
            "  nodeAffinity:\n    required:\n",
            "  nodeAffinity:\n    preferred: []\n    required:\n",
            "spec.nodeAffinity.preferred",
        ),
        (
            "              values: [n1]\n",
            "              values: [n1]\n        - matchExpressions: []\n",
            AFFINITY,
        ),
        ("volumeMode: Filesystem", "volumeMode: Block", "spec.volumeMode"),
        (
            "  local: {path: /mnt/disks/ssd1, fsType: ext4}\n",
            "  nfs: {server: x, path: /}\n",
            "spec.nfs",
        ),
        (
            "  storageClassName: manual\n",
            "  storageClassName: manual\n  node: n2\n",
            "spec.nodeAffinity",
        ),
    ],
)
def test_node_affinity_corral_cannot_honour_is_refused_naming_the_field(
    old: str, new: str, field: str
) -> None:
    assert old in LOCAL_PV
    with pytest.raises(CorralError) as raised:
        load_manifests(LOCAL_PV.replace(old, new), "pv.yaml")
    assert f"pv.yaml: `{field}`" in str(raised.value), str(raised.value)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("volumeMode: Filesystem", "volumeMode: Block", "spec.volumeMode"),
        (
            "selector: {matchLabels: {tier: db}}",
            "selector: {matchExpressions: [{key: tier, operator: In, values: [db]}]}",
            "spec.selector.matchExpressions",
        ),
        (
            "  volumeName: local-pv\n",
            "  dataSource: {kind: PersistentVolumeClaim, name: x}\n",
            "spec.dataSource",
        ),
    ],
)
def test_a_claim_field_that_would_change_what_it_binds_is_refused(
    old: str, new: str, field: str
) -> None:
    with pytest.raises(CorralError) as raised:
        load_manifests(CLAIM.replace(old, new), "pvc.yaml")
    assert f"`{field}`" in str(raised.value), str(raised.value)


def test_corrals_own_storage_documents_stay_strict() -> None:
    own = LOCAL_PV.replace("apiVersion: v1", "apiVersion: corral/v1")
    with pytest.raises(CorralError, match="unknown field"):
        load_manifests(own, "pv.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CLAIM.replace("storage: 500Mi", "storage: lots"), "`spec.resources.requests.storage`"),
        (CLAIM.replace("storage: 500Mi", "storage: 0"), "`spec.resources.requests.storage`"),
        (CLAIM.replace("storage: 500Mi", "storage: '0'"), "is zero"),
        (CLAIM.replace("[ReadWriteOnce]", "[Sometimes]"), "`spec.accessModes[0]`"),
        (LOCAL_PV.replace("path: /mnt/disks/ssd1", "path: disks"), "`spec.local.path`"),
        (
            STORAGE_CLASS.replace("reclaimPolicy: Retain", "reclaimPolicy: Recycle"),
            "`reclaimPolicy`",
        ),
    ],
)
def test_bad_storage_manifests_name_the_field(text: str, message: str) -> None:
    with pytest.raises(CorralError) as raised:
        load_manifests(text, "x.yaml")
    assert message in str(raised.value), str(raised.value)


# --- flags ------------------------------------------------------------------------------


@pytest.fixture
def nothing_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before any connection is made."""

    async def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("connected to NATS with bad input")

    monkeypatch.setattr(CorralClient, "connect", refuse)


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["pv", "p", "--size", "0"], "--size", "is zero"),
        (["pv", "p", "--size", "lots"], "--size", "not a storage quantity"),
        (["pvc", "c", "--size=0"], "--size", "is zero"),
        (["pvc", "c", "--size", "lots"], "--size", "not a storage quantity"),
        (
            ["pv", "p", "--size", "1Gi", "--access-mode", "Sometimes"],
            "--access-mode",
            "'Sometimes'",
        ),
        (
            ["pvc", "c", "--size", "1Gi", "--access-mode", "Sometimes"],
            "--access-mode",
            "'Sometimes'",
        ),
        (
            ["pv", "p", "--size", "1Gi", "--reclaim-policy", "Recycle"],
            "--reclaim-policy",
            "Recycle",
        ),
        (
            ["pv", "p", "--size", "1Gi", "--host-path", "data"],
            "--host-path",
            "not an absolute path",
        ),
        (["pv", "p", "--size", "1Gi", "--node", "N1"], "--node", "DNS label"),
        (["pv", "p", "--size", "1Gi", "--opt", "type"], "--opt", "NAME=VALUE"),
        (
            ["pv", "p", "--size", "1Gi", "--host-path", "/d", "--driver", "local"],
            "--driver",
            "one source",
        ),
        (["pvc", "c", "--size", "1Gi", "--volume", "Big"], "--volume", "DNS label"),
        (["pvc", "c", "--size", "1Gi", "--selector", "tier"], "--selector", "NAME=VALUE"),
        (["storageclass", "s", "--provisioner", ""], "--provisioner", "is empty"),
        (
            ["storageclass", "s", "--provisioner", "x", "--binding-mode", "Later"],
            "--binding-mode",
            "Later",
        ),
        (["pv", "P", "--size", "1Gi"], "NAME", "DNS label"),
    ],
)
def test_bad_flags_are_refused_naming_the_option_and_nothing_is_sent(
    nothing_sent: None, args: list[str], option: str, words: str
) -> None:
    result = CliRunner().invoke(cli, ["create", *args])
    assert result.exit_code == 2, result.output
    assert option in result.stderr and words in result.stderr, result.stderr


def test_volume_release_refuses_a_bad_node_before_sending(nothing_sent: None) -> None:
    result = CliRunner().invoke(cli, ["volume", "release", "pv1", "--node", "Gone_Node"])
    assert result.exit_code == 2 and "--node" in result.stderr, result.stderr


# --- get and describe ---------------------------------------------------------------------


def _volume(name: str, size: str = "100Mi", **spec: object) -> PersistentVolume:
    return PersistentVolume(
        metadata=ObjectMeta(name=name, creation_timestamp=NOW - 30),
        spec=PersistentVolumeSpec(capacity=StorageRequest(storage=size), **spec),  # type: ignore[arg-type]
    )


def _claim(
    name: str, size: str = "50Mi", storage_class: str | None = None
) -> PersistentVolumeClaim:
    return PersistentVolumeClaim(
        metadata=ObjectMeta(name=name, creation_timestamp=NOW - 20),
        spec=PersistentVolumeClaimSpec(
            resources=VolumeResources(requests=StorageRequest(storage=size)),
            storage_class_name=storage_class,
        ),
    )


def _view() -> VolView:
    return VolView(
        volumes={
            "my-pv": _volume("my-pv", access_modes=["ReadWriteOnce", "ReadOnlyMany"]),
            "shared": _volume(
                "shared",
                "1Gi",
                access_modes=["ReadWriteMany", "ReadWriteOncePod"],
                storage_class_name="nfs",
                persistent_volume_reclaim_policy="Delete",
            ),
        },
        volume_statuses={
            "my-pv": VolumeStatus(
                name="my-pv",
                phase="Bound",
                claim="default.my-pvc",
                node="n1",
                size_bytes=100 * 2**20,
                size_enforced=False,
                message="loop devices unavailable",
            ),
        },
        claims={"my-pvc": _claim("my-pvc"), "big": _claim("big", "10Gi", "")},
        claim_statuses={
            "my-pvc": ClaimStatus(
                name="my-pvc",
                phase="Bound",
                volume="my-pv",
                capacity_bytes=100 * 2**20,
                access_modes=["ReadWriteOnce", "ReadOnlyMany"],
                node="n1",
            ),
            "big": ClaimStatus(
                name="big",
                reason="NoMatchingVolume",
                message='no volume of class "" fits: 1 volume too small (largest 100Mi)',
            ),
        },
        attachments=[
            VolumeAttachment(
                volume="my-pv",
                node="n1",
                claim="default.my-pvc",
                ready=True,
                docker_volume="corral_pv_my-pv_c1",
                host_path="/v/c1/my-pv",
                size_enforced=False,
            ),
        ],
        placements={
            "n1.default.db-x1": Placement(
                replica="db-x1",
                deployment="db",
                node="n1",
                generation=1,
                template_hash="h",
                template=load_manifests(DEPLOYMENT, "d")[0].spec.spec.template,  # type: ignore[attr-defined]
            ),
            "n1.default.web-y": Placement(
                replica="web-y",
                deployment="web",
                node="n1",
                generation=1,
                template_hash="h",
                template=ContainerTemplate(image="nginx:1"),
            ),
        },
    )


def test_get_pv_has_kubectls_columns_and_short_access_modes() -> None:
    lines = render_vol_get(_view(), read_kind("pv"), None, "table", NOW).splitlines()
    assert columns(lines[0]) == [
        "NAME", "CAPACITY", "ACCESS MODES", "RECLAIM POLICY", "STATUS", "CLAIM",
        "STORAGECLASS", "NODE", "AGE",
    ]  # fmt: skip
    assert lines[1].split() == [
        "my-pv", "100Mi", "RWO,ROX", "Retain", "Bound", "default/my-pvc", "<none>", "n1", "30s",
    ]  # fmt: skip
    # Not seen by volmgr yet: Pending, on no node.
    assert lines[2].split() == [
        "shared", "1Gi", "RWX,RWOP", "Delete", "Pending", "<none>", "nfs", "<none>", "30s",
    ]  # fmt: skip


def test_get_pvc_shows_the_bound_volume_and_why_a_claim_is_pending() -> None:
    lines = render_vol_get(_view(), read_kind("pvc"), None, "table", NOW).splitlines()
    assert columns(lines[0]) == [
        "NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE",
        "REASON", "MESSAGE",
    ]  # fmt: skip
    assert lines[1].split()[:8] == [
        "big", "Pending", "<none>", "<none>", "<none>", "<none>", "20s", "NoMatchingVolume",
    ]  # fmt: skip
    assert lines[1].endswith('no volume of class "" fits: 1 volume too small (largest 100Mi)')
    assert lines[2].split() == [
        "my-pvc", "Bound", "my-pv", "100Mi", "RWO,ROX", "<none>", "20s", "<none>", "<none>",
    ]  # fmt: skip


def test_get_pvc_without_pending_claims_has_no_reason_columns() -> None:
    view = _view()
    text = render_vol_get(view, read_kind("pvc"), "my-pvc", "table", NOW)
    assert columns(text.splitlines()[0]) == [
        "NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE",
    ]  # fmt: skip
    with pytest.raises(CorralError, match="persistentvolumeclaim 'nope' not found"):
        render_vol_get(view, read_kind("pvc"), "nope", "table", NOW)


def test_a_claim_without_a_class_shows_unset_until_bound() -> None:
    view = VolView(claims={"c": _claim("c")}, claim_statuses={"c": ClaimStatus(name="c")})
    assert (
        render_vol_get(view, read_kind("pvc"), None, "wide", NOW).splitlines()[1].split()[5]
        == "<unset>"
    )


def test_get_pv_as_json_carries_status_and_attachments() -> None:
    item = json.loads(render_vol_get(_view(), read_kind("pv"), "my-pv", "json", NOW))
    assert item["kind"] == "PersistentVolume" and item["spec"]["capacity"] == {"storage": "100Mi"}
    assert item["status"]["claim"] == "default.my-pvc" and item["status"]["sizeEnforced"] is False
    assert [a["node"] for a in item["attachments"]] == ["n1"]


def _class(name: str, created: float, default: bool) -> StorageClass:
    annotations = {DEFAULT_CLASS_ANNOTATION: "true"} if default else {}
    return StorageClass(
        metadata=ObjectMeta(name=name, annotations=annotations, creation_timestamp=created),
        provisioner="corral.io/local-volume",
    )


def test_the_newest_class_marked_default_is_the_one_marked_in_get() -> None:
    classes = {
        "local": _class("local", NOW - 100, True),
        "fast": _class("fast", NOW - 10, True),
        "slow": _class("slow", NOW - 5, False),
    }
    assert default_class(classes) == "fast"
    view = VolView(classes=classes)
    lines = render_vol_get(view, read_kind("sc"), None, "table", NOW).splitlines()
    assert lines[0].split() == ["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "AGE"]
    assert [columns(line)[0].strip() for line in lines[1:]] == [
        "fast (default)",
        "local",
        "slow",
    ]
    # One class asked for: still marked by the decision among all of them.
    assert (
        render_vol_get(view, read_kind("sc"), "local", "table", NOW)
        .splitlines()[1]
        .startswith("local ")
    )
    assert "fast (default)" in render_vol_get(view, read_kind("sc"), "fast", "table", NOW)
    assert json.loads(render_vol_get(view, read_kind("sc"), "fast", "json", NOW))["default"] is True


def test_describe_pv_tells_status_size_enforcement_and_attachments() -> None:
    text = describe_volume(_view(), "my-pv", [], NOW)
    assert "Claim:          default/my-pvc" in text
    assert "Size Enforced:  no (a directory: writes are not limited to the size)" in text
    assert "Message:        loop devices unavailable" in text
    assert "Node:           n1" in text
    assert "Source:         provisioned by corral" in text
    attachments = text.split("Attachments:")[1].splitlines()
    assert attachments[1].split() == [
        "NODE",
        "READY",
        "DOCKER-VOLUME",
        "HOST-PATH",
        "SIZE-ENFORCED",
        "MESSAGE",
    ]
    assert attachments[2].split() == [
        "n1",
        "yes",
        "corral_pv_my-pv_c1",
        "/v/c1/my-pv",
        "no",
        "<none>",
    ]


def test_describe_pvc_lists_the_replicas_whose_template_names_it() -> None:
    view = _view()
    text = describe_claim(view, "my-pvc", [], NOW)
    assert "Volume:       my-pv" in text and "Requested:    50Mi RWO" in text
    assert "Used By:      <none>" in text  # db's template names `data`, not my-pvc
    view.claims["data"] = _claim("data")
    used = describe_claim(view, "data", [], NOW)
    assert "Reason:       <none>" in used and "volmgr has not seen it yet" in used
    rows = used.split("Used By:")[1].splitlines()
    assert rows[1].split() == ["REPLICA", "DEPLOYMENT", "NODE"]
    assert rows[2].split() == ["db-x1", "db", "n1"] and "web-y" not in used
    pending = describe_claim(view, "big", [], NOW)
    assert "Reason:       NoMatchingVolume" in pending and "largest 100Mi" in pending


def test_describe_deployment_lists_the_templates_volumes_and_mounts() -> None:
    deployment = load_manifests(
        DEPLOYMENT.replace("mountPath: /data}", "mountPath: /data, subPath: db}"), "d.yaml"
    )[0].spec
    assert isinstance(deployment, Deployment)
    text = describe_deployment(ClusterView(deployments={"db": deployment}), "db", [], NOW)
    assert "  Volumes:    data=pvc:data, scratch=emptyDir(Memory)" in text
    assert "  Mounts:     /data <- data/db, /tmp/scratch <- scratch (ro)" in text
    plain = Deployment(
        metadata=ObjectMeta(name="web"),
        spec=DeploymentSpec(template=ContainerTemplate(image="nginx:1")),
    )
    assert "  Volumes:    <none>" in describe_deployment(
        ClusterView(deployments={"web": plain}), "web", [], NOW
    )
