"""volmgr's binding and provisioning decisions, pure (corral_volmgr.binding,
corral_volmgr.provisioning; docs/volumes.md "Binding", "Dynamic provisioning")."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from corral.contract.codec import decode, encode
from corral.contract.specs import ObjectMeta
from corral.contract.volume_specs import (
    HostPathSource,
    PersistentVolume,
    PersistentVolumeClaim,
    PersistentVolumeSpec,
    StorageClass,
    StorageRequest,
)
from corral.contract.volume_state import NodeVolumes, VolumeStatus
from corral_volmgr.binding import Bind, Candidate, Pending, Provision, decide, default_class
from corral_volmgr.provisioning import (
    LOCAL_VOLUME_LEAST_BYTES,
    initial_status,
    pick_node,
    provisioned_name,
    provisioned_size,
    provisioned_volume,
    room_problem,
    used_room,
)

MI = 2**20
KEY = "default.data"


def volume(
    name: str,
    size: str = "100Mi",
    *,
    phase: str = "Available",
    claim: str = "",
    created: float = 1.0,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> Candidate:
    pv = decode(
        encode(
            {
                "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": labels or {}, "creationTimestamp": created},
                "spec": {"capacity": {"storage": size}, **spec},
            }
        ),
        PersistentVolume,
    )
    status = None if phase == "" else VolumeStatus(name=name, phase=phase, claim=claim)
    return Candidate(pv, status)


def claim(size: str = "50Mi", **spec: Any) -> PersistentVolumeClaim:
    return decode(
        encode(
            {
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "uid": "u-1"},
                "spec": {"resources": {"requests": {"storage": size}}, **spec},
            }
        ),
        PersistentVolumeClaim,
    )


def klass(
    name: str,
    provisioner: str = "corral.io/local-volume",
    *,
    default: bool = False,
    created: float = 1.0,
    **fields: Any,
) -> StorageClass:
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return decode(
        encode(
            {
                "kind": "StorageClass",
                "metadata": {
                    "name": name,
                    "annotations": annotations,
                    "creationTimestamp": created,
                },
                "provisioner": provisioner,
                **fields,
            }
        ),
        StorageClass,
    )


LOCAL = klass("local", default=True, volumeBindingMode="WaitForFirstConsumer")

CASES: list[tuple[str, PersistentVolumeClaim, list[Candidate], list[StorageClass], Any]] = [
    (
        "the smallest fitting volume",
        claim("50Mi"),
        [volume("big", "1Gi"), volume("mid", "100Mi"), volume("tiny", "10Mi")],
        [],
        Bind("mid", ""),
    ),
    (
        "ties go to the oldest, then by name",
        claim(),
        [volume("b", created=2.0), volume("c", created=1.0), volume("a", created=2.0)],
        [],
        Bind("c", ""),
    ),
    (
        "a volume without every access mode is not taken",
        claim(accessModes=["ReadWriteMany"]),
        [volume("rwo"), volume("rwx", "1Gi", accessModes=["ReadWriteOnce", "ReadWriteMany"])],
        [],
        Bind("rwx", ""),
    ),
    (
        "the selector picks by labels",
        claim(selector={"matchLabels": {"tier": "gold"}}),
        [volume("plain"), volume("gold", "1Gi", labels={"tier": "gold"})],
        [],
        Bind("gold", ""),
    ),
    (
        "volumeName takes only that volume",
        claim(volumeName="big"),
        [volume("small"), volume("big", "1Gi")],
        [],
        Bind("big", ""),
    ),
    (
        "volumeName of a missing volume waits with VolumeNotFound",
        claim(volumeName="nope"),
        [volume("small")],
        [LOCAL],
        Pending("VolumeNotFound", 'volume "nope" not found'),
    ),
    (
        "an absent class takes a classless volume before the default class",
        claim(),
        [volume("classless"), volume("localvol", "60Mi", storageClassName="local")],
        [LOCAL],
        Bind("classless", ""),
    ),
    (
        "an absent class goes to the default class's volumes when no classless one fits",
        claim(),
        [volume("tiny", "10Mi"), volume("localvol", "60Mi", storageClassName="local")],
        [LOCAL],
        Bind("localvol", "local"),
    ),
    (
        "an absent class is provisioned by the default class when nothing fits",
        claim(),
        [volume("tiny", "10Mi")],
        [LOCAL],
        Provision(LOCAL),
    ),
    (
        "an empty class binds classless volumes only, never provisioned",
        claim(storageClassName=""),
        [volume("localvol", storageClassName="local")],
        [LOCAL],
        Pending("NoMatchingVolume", 'no volume of class "" fits: none exists'),
    ),
    (
        "a class without a StorageClass object binds statically",
        claim(storageClassName="manual"),
        [volume("plain"), volume("manual-1", storageClassName="manual")],
        [LOCAL],
        Bind("manual-1", "manual"),
    ),
    (
        "a class without a StorageClass object is never provisioned",
        claim(storageClassName="manual"),
        [],
        [LOCAL],
        Pending("NoMatchingVolume", 'no volume of class "manual" fits: none exists', "manual"),
    ),
    (
        "a released volume is not bound again",
        claim(storageClassName=""),
        [volume("old", phase="Released", claim="default.other")],
        [],
        Pending(
            "NoMatchingVolume",
            'no volume of class "" fits: 1 volume released (a Retain volume is not bound again)',
        ),
    ),
    (
        "a volume being deleted is never bound, even reserved for the claim",
        claim(storageClassName=""),
        [volume("going", phase="Deleting", claimRef="default/data")],
        [],
        Pending("NoMatchingVolume", 'no volume of class "" fits: 1 volume being deleted'),
    ),
    (
        "a volume reserved for another claim is not taken",
        claim(storageClassName=""),
        [
            volume("held", claimRef="default/other"),
            volume("bound", phase="Bound", claim="default.x"),
        ],
        [],
        Pending(
            "NoMatchingVolume",
            'no volume of class "" fits: 1 volume bound to another claim, '
            "1 volume reserved for another claim (claimRef)",
        ),
    ),
    (
        "a volume reserved for this claim is taken",
        claim(storageClassName=""),
        [volume("held", claimRef="default/data"), volume("free")],
        [],
        Bind("free", ""),
    ),
    (
        "the reason counts the volumes too small and names the largest",
        claim("500Mi", storageClassName=""),
        [volume("a", "40Mi"), volume("b", "100Mi")],
        [],
        Pending(
            "NoMatchingVolume",
            'no volume of class "" fits: 2 volumes too small (largest 100Mi, 500Mi asked)',
        ),
    ),
    (
        "a volume without a status yet is not available",
        claim(storageClassName=""),
        [volume("new", phase="")],
        [],
        Pending(
            "NoMatchingVolume",
            'no volume of class "" fits: 1 volume not available (being made or deleted)',
        ),
    ),
    (
        "an unknown provisioner waits, naming it",
        claim(storageClassName="odd"),
        [],
        [klass("odd", "example.com/odd")],
        Pending(
            "ProvisionerUnknown",
            'storageclass "odd" names provisioner "example.com/odd", which corral does not run '
            "(it runs corral.io/local-volume, corral.io/docker-volume, "
            "kubernetes.io/no-provisioner)",
            "odd",
        ),
    ),
    (
        "no-provisioner classes bind statically only",
        claim(storageClassName="static"),
        [],
        [klass("static", "kubernetes.io/no-provisioner")],
        Pending(
            "NoMatchingVolume",
            "no volume of class \"static\" fits: none exists; class 'static' provisions nothing",
            "static",
        ),
    ),
    (
        "no default class: an absent class waits",
        claim(),
        [],
        [],
        Pending(
            "NoMatchingVolume",
            'no volume of class "" fits: none exists; no StorageClass is marked default',
        ),
    ),
]


@pytest.mark.parametrize("what, pvc, volumes, classes, wanted", CASES, ids=[c[0] for c in CASES])
def test_binding_decides(
    what: str,
    pvc: PersistentVolumeClaim,
    volumes: list[Candidate],
    classes: list[StorageClass],
    wanted: Any,
) -> None:
    assert decide(pvc, KEY, volumes, {c.metadata.name: c for c in classes}) == wanted


def test_of_several_default_classes_the_newest_wins() -> None:
    old = klass("old", default=True, created=1.0)
    new = klass("new", default=True, created=2.0)
    assert default_class([new, old, klass("plain")]) == new


def test_a_provisioned_volumes_name_is_the_hash_of_its_claims_uid() -> None:
    assert provisioned_name("u-1") == "pvc-" + hashlib.sha256(b"u-1").hexdigest()[:12]
    made = provisioned_volume(claim(), LOCAL, "n1")
    assert made.metadata.name == provisioned_name("u-1")
    assert made.spec.claim_ref == "default/data" and made.spec.node == "n1"
    assert made.spec.persistent_volume_reclaim_policy == "Delete"
    assert made.spec.storage_class_name == "local" and made.spec.size_bytes == 50 * MI


def test_a_node_local_volume_is_made_with_the_least_room_its_file_system_needs() -> None:
    """mkfs.ext4 cannot make a file system of 1 KiB: the claim gets a volume of 1 MiB,
    which satisfies it (at least what it asks), as a cloud disk is rounded up."""
    tiny = claim("1Ki")
    assert provisioned_size(tiny, LOCAL) == LOCAL_VOLUME_LEAST_BYTES == MI
    assert provisioned_volume(tiny, LOCAL, "n1").spec.size_bytes == MI
    assert provisioned_size(claim(), LOCAL) == 50 * MI  # more than the least: as asked


def test_a_volume_with_no_source_counts_room_whoever_made_it() -> None:
    """countsRoom, not provisionedBy, is what room sums read: a volume made by hand
    with no source takes its node's room as a provisioned one does."""
    by_hand = PersistentVolume(
        metadata=ObjectMeta(name="big"),
        spec=PersistentVolumeSpec(capacity=StorageRequest(storage=100 * MI), node="n1"),
    )
    status = initial_status(by_hand)
    assert status.counts_room and not status.provisioned_by
    assert used_room([status]) == {"n1": 100 * MI}
    assert initial_status(provisioned_volume(claim(), LOCAL, "n1")).counts_room
    host = PersistentVolume(
        metadata=ObjectMeta(name="hp"),
        spec=PersistentVolumeSpec(
            capacity=StorageRequest(storage=100 * MI),
            node="n1",
            host_path=HostPathSource(path="/srv/x"),
        ),
    )
    assert not initial_status(host).counts_room


def test_a_docker_volume_class_makes_a_docker_volume_with_its_parameters() -> None:
    nfs = klass("nfs", "corral.io/docker-volume", parameters={"driver": "local", "type": "nfs"})
    made = provisioned_volume(claim(), nfs, "n1")
    assert made.spec.docker_volume is not None and made.spec.node == ""
    assert made.spec.docker_volume.options == {"type": "nfs"}


def nodes(**capacity: int) -> dict[str, NodeVolumes]:
    return {
        name: NodeVolumes(node=name, ready=size > 0, capacity_bytes=abs(size))
        for name, size in capacity.items()
    }


def test_room_is_the_capacity_less_the_volumes_with_no_source_on_the_node() -> None:
    statuses = [
        VolumeStatus(
            name="a", node="n1", size_bytes=40 * MI, provisioned_by="local", counts_room=True
        ),
        VolumeStatus(name="b", node="n1", size_bytes=20 * MI, counts_room=True),  # by hand
        VolumeStatus(name="hp", node="n1", size_bytes=500 * MI),  # a hostPath: not counted
        VolumeStatus(name="c", node="", size_bytes=60 * MI, provisioned_by="local"),
    ]
    used = used_room(statuses)
    assert used == {"n1": 60 * MI}
    both = nodes(n1=100 * MI, n2=50 * MI)
    assert pick_node(40 * MI, both, used) == ("n2", "")  # 50Mi free beats 40Mi
    assert pick_node(30 * MI, nodes(n1=100 * MI, n2=100 * MI), {}) == ("n1", "")  # by name
    node, why = pick_node(60 * MI, both, used)
    assert node == "" and "0/2 nodes have 60Mi" in why
    assert pick_node(1, nodes(n1=-100 * MI), {}) == ("", "no node has a volume manager running")
    assert room_problem("n1", 50 * MI, both, used).startswith("node n1 has 40Mi free of 100Mi")
    assert room_problem("n9", 1, both, used) == "node n9 has no volume manager running"
    assert room_problem("n2", 50 * MI, both, used) == ""
