"""volmgr's node part without a kernel or an engine: its decisions per volume, and its
reconciles on in-memory buckets, a fake engine and provisioned volumes as directories
(the fallback where loop devices are missing) in a tmp folder."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from msgspec.structs import replace as replace_struct

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.volume_state import NodeVolumes, VolumeAttachment
from corral.natsio.kv import MemoryBucket
from corral.natsio.service import RefusedToStart
from corral_volmgr import node as node_part
from corral_volmgr.node import capacity, decide, host
from corral_volmgr.node.docker_volumes import bind_volume, driver_volume
from corral_volmgr.node.host_paths import HostPathRules, prepare
from corral_volmgr.node.loop_volumes import Layout, LoopVolumes
from corral_volmgr.node.part import NodePart, NodeSettings
from tests.unit.volmgr_node_helpers import (
    CLUSTER,
    FakeDockerVolumes,
    claim,
    placement,
    put,
    pv,
    status,
)

# --- decisions -----------------------------------------------------------------------------


def test_a_provisioned_volume_is_made_only_on_the_node_its_status_names():
    assert decide.decide("n1", pv("a"), status("a", node="n1")).action == decide.PROVISION
    other = decide.decide("n1", pv("a"), status("a", node="n2"))
    assert (other.action, other.reason) == (decide.RELEASE, "lives on node n2")
    assert decide.decide("n1", pv("a"), status("a")).action == decide.RELEASE  # not placed
    assert decide.decide("n1", pv("a"), None).action == decide.LEAVE  # no status yet
    assert decide.decide("n1", pv("a", node="n1"), None).action == decide.LEAVE
    assert decide.decide("n1", pv("a", node="n1"), status("a")).action == decide.PROVISION


def test_a_host_path_volume_is_made_on_its_spec_node_or_its_status_node():
    spec_node = pv("h", host_path="/srv/data", node="n1")
    assert decide.decide("n1", spec_node, status("h")).action == decide.HOST_PATH
    assert decide.decide("n2", spec_node, status("h")).action == decide.RELEASE
    first_use = pv("h", host_path="/srv/data")
    assert decide.decide("n1", first_use, status("h", node="n1")).action == decide.HOST_PATH


def test_a_docker_volume_is_made_only_while_a_replica_here_uses_it_and_rwo_only_where_attached():
    rwo = pv("d", driver="local", options={"type": "tmpfs", "device": "tmpfs"})
    attached_here = status("d", claim="default.data", attach_node="n1")
    assert decide.decide("n1", rwo, attached_here).action == decide.RELEASE  # no replica here
    used = decide.decide("n1", rwo, attached_here, claims_used_here=["default.data"])
    assert (used.action, used.claim) == (decide.DOCKER_VOLUME, "default.data")
    elsewhere = decide.decide(
        "n1", rwo, status("d", claim="default.data", attach_node="n2"), claims_used_here=["x"]
    )
    assert elsewhere.action == decide.RELEASE
    assert "attached to node n2" in elsewhere.reason
    nfs = {"type": "nfs", "o": "addr=10.0.0.1", "device": ":/export"}
    rwo_nfs = pv("d", driver="local", options=nfs)
    elsewhere = decide.decide(
        "n1", rwo_nfs, status("d", claim="default.data", attach_node="n2"), claims_used_here=["c"]
    )
    assert elsewhere.action == decide.RELEASE


def test_a_mixed_mode_shared_docker_volume_is_mounted_wherever_used_as_the_scheduler_spreads_it():
    # [RWO, RWX] offers ReadWriteMany: not single-node (volume_specs.single_node), so a
    # replica the scheduler put on n1 gets it although attachNode names n2
    both = pv(
        "d",
        driver="local",
        options={"type": "nfs", "o": "addr=10.0.0.1", "device": ":/export"},
        modes=("ReadWriteOnce", "ReadWriteMany"),
    )
    used = decide.decide(
        "n1", both, status("d", claim="default.data", attach_node="n2"), claims_used_here=["c"]
    )
    assert used.action == decide.DOCKER_VOLUME


def test_a_local_driver_docker_volume_lives_on_its_node_like_a_provisioned_one():
    plain = pv("d", driver="local", modes=("ReadWriteMany",))  # its data: the engine's root
    here = decide.decide("n1", plain, status("d", node="n1", claim="default.data"))
    assert (here.action, here.claim) == (decide.DOCKER_VOLUME, "default.data")
    there = decide.decide("n1", plain, status("d", node="n2"), claims_used_here=["c"])
    assert (there.action, there.reason) == (decide.RELEASE, "lives on node n2")
    shared = pv("d", driver="local", modes=("ReadWriteMany",))
    anywhere = decide.decide(
        "n1", shared, status("d", claim="default.data"), claims_used_here=["c"]
    )
    assert anywhere.action == decide.DOCKER_VOLUME


def test_only_the_deleting_phase_deletes_and_a_missing_or_unreadable_record_is_left_alone():
    assert decide.decide("n1", None, None) == decide.Decision(decide.LEAVE, decide.NO_RECORD)
    assert decide.decide("n1", None, status("a", node="n1")).action == decide.LEAVE
    deleting = status("a", node="n1", phase="Deleting", keep_data=True)
    assert decide.decide("n1", pv("a"), deleting) == decide.Decision(
        decide.DELETE, "deleted", keep_data=True
    )
    assert decide.decide("n1", None, deleting).action == decide.DELETE
    assert decide.decide("n1", None, None, unreadable=True).action == decide.LEAVE


def test_a_released_volume_is_attached_for_no_claim():
    released = status("a", node="n1", claim="default.data", phase="Released")
    assert decide.decide("n1", pv("a"), released) == decide.Decision(decide.PROVISION)
    shared = pv("d", driver="local", options={"type": "nfs", "device": ":/x"})
    released = status("d", claim="default.data", attach_node="n1", phase="Released")
    made = decide.decide("n1", shared, released, claims_used_here=["default.data"])
    assert (made.action, made.claim) == (decide.DOCKER_VOLUME, "")


# --- small pieces ----------------------------------------------------------------------------


def test_mountinfo_is_parsed_with_its_escapes_and_mounts_under_a_folder_deepest_first():
    text = (
        "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext4 /dev/loop3 rw\n"
        "37 35 98:0 / /var/lib/corral/volumes/c0/x rw shared:2 - ext4 /dev/loop4 rw\n"
        "38 37 98:0 / /var/lib/corral/volumes/c0/x/sub rw - tmpfs tmpfs rw\n"
        "39 35 98:0 / /var/lib/corral/volumes/c01 rw - ext4 /dev/loop5 rw\n"
    )
    mounts = host.parse_mountinfo(text)
    assert mounts[0] == host.Mount("/mnt/a b", "/dev/loop3", "ext4")
    inside = host.under(mounts, "/var/lib/corral/volumes/c0")
    assert [m.target for m in inside] == [
        "/var/lib/corral/volumes/c0/x/sub",
        "/var/lib/corral/volumes/c0/x",
    ]


def test_capacity_is_a_quantity_or_measured_in_whole_mebibytes():
    assert capacity.parse_capacity("") is None
    assert capacity.parse_capacity("20Gi") == 20 * 1024**3
    assert capacity.parse_capacity("1048576") == 1024 * 1024
    with pytest.raises(ValueError, match="--capacity 'lots'"):
        capacity.parse_capacity("lots")
    assert capacity.measured(5 * 1024 * 1024 + 7, 1024 * 1024) == 6 * 1024 * 1024


def test_a_host_path_is_refused_in_the_engines_data_root_and_outside_the_allow_list(tmp_path):
    rules = HostPathRules(forbidden=(str(tmp_path / "docker"),), allowed=(str(tmp_path),))
    assert "system location" in prepare(str(tmp_path / "docker" / "x"), "", rules)[0]
    assert "outside the allowed" in prepare("/srv/elsewhere", "", rules)[0]
    made = tmp_path / "made" / "here"
    assert prepare(str(made), "DirectoryOrCreate", rules) == ("", str(made))
    assert made.is_dir()
    assert "does not exist" in prepare(str(tmp_path / "missing"), "Directory", rules)[0]
    (tmp_path / "link").symlink_to("/etc")
    assert "leads to" in prepare(str(tmp_path / "link"), "", HostPathRules())[0]
    (tmp_path / "to-docker").symlink_to(tmp_path / "docker")
    assert "leads to" in prepare(str(tmp_path / "to-docker" / "new"), "", rules)[0]
    assert not (tmp_path / "docker" / "new").exists()  # refused before it is made


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser()
    made.add_argument("--node", default="")
    made.add_argument("--host-path-allow", action="append", default=[])  # the cluster part's
    node_part.add_arguments(made)
    return made


def test_the_flags_are_checked_naming_the_flag_and_a_flag_main_has_already_is_kept():
    args = parser().parse_args(["--node", "n1", "--capacity", "1Gi", "--host-path-allow", "/srv"])
    settings = node_part.settings_from_args(args, CLUSTER)
    assert settings.capacity_bytes == 1024**3
    assert settings.host_path_allow == ("/srv",)
    assert settings.volumes_dir == Path("/var/lib/corral/volumes")
    for flags, named in (
        (["--node", "N_1"], "--node"),
        (["--node", "n1", "--capacity", "0"], "--capacity"),
        (["--node", "n1", "--volumes-dir", "relative"], "--volumes-dir"),
        (["--node", "n1", "--host-path-allow", "/srv/../etc"], "--host-path-allow"),
        (["--node", "n1", "--node-resync-seconds", "0"], "--node-resync-seconds"),
    ):
        with pytest.raises(RefusedToStart, match=named):
            node_part.settings_from_args(parser().parse_args(flags), CLUSTER)


# --- reconciles ------------------------------------------------------------------------------


def make_part(tmp_path: Path, node: str = "n1") -> tuple[NodePart, FakeDockerVolumes]:
    buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    docker = FakeDockerVolumes(node=node)
    settings = NodeSettings(node=node, cluster_id=CLUSTER, volumes_dir=tmp_path / "volumes")
    loops = LoopVolumes(Layout(settings.volumes_dir, CLUSTER), loop_devices=False)
    part = NodePart(buckets, settings, docker, loops=loops)  # type: ignore[arg-type]
    part.loop_problem = "/dev/loop-control is missing"
    return part, docker


def attachment(part: NodePart, volume: str) -> VolumeAttachment | None:
    return part.attachments.get(names.attachment_key(part.settings.node, volume))


async def stored(part: NodePart, volume: str) -> VolumeAttachment | None:
    entry = await part.attachments_bucket.get(names.attachment_key(part.settings.node, volume))
    return None if entry is None or entry.value is None else decode(entry.value, VolumeAttachment)


async def test_a_provisioned_volume_without_loop_devices_is_a_directory_with_a_bind_volume(
    tmp_path,
):
    part, docker = make_part(tmp_path)
    put(part.volumes, "pv1", pv("pv1"))
    put(part.statuses, "pv1", status("pv1", node="n1", claim="default.data"))
    assert await part.reconcile_volume("pv1") is None
    folder = tmp_path / "volumes" / CLUSTER / "pv1"
    assert folder.is_dir()
    label = json.loads((tmp_path / "volumes" / CLUSTER / "pv1.json").read_text())
    assert label["clusterId"] == CLUSTER and label["volume"] == "pv1"
    assert label["sizeBytes"] == 20 * 1024 * 1024 and label["sizeEnforced"] is False
    name = names.docker_volume_name("pv1", CLUSTER)
    shown = docker.volumes[name]
    assert shown["Options"] == {"type": "none", "o": "bind", "device": str(folder)}
    assert shown["Labels"][names.LABEL_VOLUME] == "pv1"
    assert shown["Labels"][names.LABEL_NODE] == "n1"
    written = await stored(part, "pv1")
    assert written is not None and written.ready and written.size_enforced is False
    assert (written.docker_volume, written.host_path, written.claim) == (
        name,
        str(folder),
        "default.data",
    )


async def test_a_volume_of_another_node_makes_nothing_here(tmp_path):
    part, docker = make_part(tmp_path)
    put(part.volumes, "pv1", pv("pv1"))
    put(part.statuses, "pv1", status("pv1", node="n2"))
    await part.reconcile_volume("pv1")
    assert docker.volumes == {} and attachment(part, "pv1") is None
    assert not (tmp_path / "volumes" / CLUSTER / "pv1").exists()


async def test_a_deleting_provisioned_volume_loses_its_docker_volume_files_and_attachment_last(
    tmp_path,
):
    part, docker = make_part(tmp_path)
    put(part.volumes, "pv1", pv("pv1"))
    put(part.statuses, "pv1", status("pv1", node="n1"))
    await part.reconcile_volume("pv1")
    name = names.docker_volume_name("pv1", CLUSTER)
    docker.in_use.add(name)  # a container still has it: Docker refuses
    put(part.statuses, "pv1", status("pv1", node="n1", phase="Deleting"))
    retry = await part.reconcile_volume("pv1")
    assert retry is not None and retry.requeue_after == 0.5
    kept = await stored(part, "pv1")
    assert kept is not None and not kept.ready and "being removed" in kept.message
    assert (tmp_path / "volumes" / CLUSTER / "pv1.json").exists()  # nothing deleted yet
    assert (await part.reconcile_volume("pv1")).requeue_after == 1.0  # type: ignore[union-attr]
    docker.in_use.clear()
    assert await part.reconcile_volume("pv1") is None
    assert docker.removed == [name]
    assert sorted(p.name for p in (tmp_path / "volumes" / CLUSTER).iterdir()) == []
    assert await stored(part, "pv1") is None


async def test_files_of_another_cluster_in_the_volumes_folder_are_never_touched(tmp_path):
    part, _ = make_part(tmp_path)
    theirs = tmp_path / "volumes" / CLUSTER
    theirs.mkdir(parents=True)
    (theirs / "pv1").mkdir()
    (theirs / "pv1" / "data").write_text("keep")
    (theirs / "pv1.json").write_text(
        json.dumps({"clusterId": "other", "volume": "pv1", "sizeBytes": 1})
    )
    part.local.add("pv1")
    put(part.statuses, "pv1", status("pv1", node="n1", phase="Deleting"))
    await part.reconcile_volume("pv1")  # deleted, as far as this cluster knows
    assert (theirs / "pv1" / "data").read_text() == "keep"


async def test_a_refused_host_path_is_said_in_the_attachment_and_a_good_one_is_made(tmp_path):
    part, docker = make_part(tmp_path)
    docker.root = str(tmp_path / "docker-root")
    put(part.volumes, "h1", pv("h1", host_path=str(tmp_path / "docker-root" / "x"), node="n1"))
    put(part.statuses, "h1", status("h1"))
    await part.reconcile_record()  # reads the engine's data root
    result = await part.reconcile_volume("h1")
    assert result is not None
    refused = await stored(part, "h1")
    assert refused is not None and not refused.ready and "system location" in refused.message
    assert docker.volumes == {}
    path = tmp_path / "srv" / "h2"
    put(part.volumes, "h2", pv("h2", host_path=str(path), node="n1"))
    put(part.statuses, "h2", status("h2"))
    assert await part.reconcile_volume("h2") is None
    made = await stored(part, "h2")
    assert made is not None and made.ready and made.host_path == str(path)
    assert made.size_enforced is False and path.is_dir()
    put(part.statuses, "h2", status("h2", phase="Deleting"))
    await part.reconcile_volume("h2")
    assert path.is_dir()  # the operator's directory stays
    assert names.docker_volume_name("h2", CLUSTER) not in docker.volumes
    assert await stored(part, "h2") is None


async def test_a_docker_volume_follows_the_placements_here_and_is_handed_over_keeping_its_data(
    tmp_path,
):
    part, docker = make_part(tmp_path)
    tmpfs = pv("d1", driver="local", options={"type": "tmpfs", "device": "tmpfs"})
    put(part.volumes, "d1", tmpfs)
    put(part.statuses, "d1", status("d1", claim="default.data", attach_node="n1"))
    put(part.claims, "default.data", claim("data", "d1"))
    await part.reconcile_volume("d1")
    assert docker.volumes == {}  # no replica here uses it
    put(part.placements, "n1.default.r1", placement("n1", "r1", "data"))
    assert "d1" in part.controller.queue  # the placement's claim's volume was enqueued
    await part.reconcile_volume("d1")
    name = names.docker_volume_name("d1", CLUSTER)
    assert docker.volumes[name]["Options"] == {"type": "tmpfs", "device": "tmpfs"}
    ready = await stored(part, "d1")
    assert ready is not None and ready.ready and ready.claim == "default.data"
    assert ready.host_path == ""
    # the replica goes; its stopped container still holds the volume: the attachment stays
    docker.in_use.add(name)
    put(part.placements, "n1.default.r1", None)
    assert (await part.reconcile_volume("d1")) is not None
    assert await stored(part, "d1") is not None
    docker.in_use.clear()
    assert await part.reconcile_volume("d1") is None
    # no container uses it: the attachment goes (another node may attach it), the Docker
    # volume stays: it is the data
    assert await stored(part, "d1") is None
    assert name in docker.volumes and docker.removed == []
    # only Deleting removes it
    put(part.statuses, "d1", status("d1", phase="Deleting"))
    assert await part.reconcile_volume("d1") is None
    assert docker.removed == [name]


async def test_a_rwo_docker_volume_is_not_made_where_it_is_not_attached(tmp_path):
    part, docker = make_part(tmp_path)
    put(part.volumes, "d1", pv("d1", driver="local"))
    put(part.statuses, "d1", status("d1", claim="default.data", attach_node="n2"))
    put(part.claims, "default.data", claim("data", "d1"))
    put(part.placements, "n1.default.r1", placement("n1", "r1", "data"))
    await part.reconcile_volume("d1")
    assert docker.volumes == {} and await stored(part, "d1") is None


async def test_the_node_record_says_loop_devices_are_missing_and_offers_the_capacity_flag(
    tmp_path,
):
    part, _ = make_part(tmp_path)
    part.settings = NodeSettings(
        node="n1", cluster_id=CLUSTER, volumes_dir=tmp_path / "volumes", capacity_bytes=1 << 30
    )
    await part.reconcile_record()
    entry = await part.node_bucket.get("n1")
    assert entry is not None and entry.value is not None
    record = decode(entry.value, NodeVolumes)
    assert record.ready is False and record.message == "starting"
    part.started = True
    await part.reconcile_record()
    record = decode((await part.node_bucket.get("n1")).value, NodeVolumes)  # type: ignore[union-attr,arg-type]
    assert record.ready and not record.loop_devices and record.capacity_bytes == 1 << 30
    assert "loop devices unavailable: /dev/loop-control is missing" in record.message
    assert "size is not enforced" in record.message


# --- deletion only through the Deleting phase -------------------------------------------------


async def provisioned(tmp_path: Path) -> tuple[NodePart, FakeDockerVolumes, Path]:
    part, docker = make_part(tmp_path)
    put(part.volumes, "pv1", pv("pv1"))
    put(part.statuses, "pv1", status("pv1", node="n1", claim="default.data"))
    assert await part.reconcile_volume("pv1") is None
    folder = tmp_path / "volumes" / CLUSTER / "pv1"
    (folder / "kept").write_text("data")
    return part, docker, folder


async def test_a_volume_whose_records_vanish_is_left_with_its_data_and_said_once(tmp_path, caplog):
    part, docker, folder = await provisioned(tmp_path)
    put(part.volumes, "pv1", None)  # a bucket rolled back or emptied: no tombstone
    put(part.statuses, "pv1", None)
    for _ in range(2):
        assert await part.reconcile_volume("pv1") is None
    assert (folder / "kept").read_text() == "data"
    assert (folder.parent / "pv1.json").exists()
    assert names.docker_volume_name("pv1", CLUSTER) in docker.volumes
    assert await stored(part, "pv1") is not None
    said = [r.getMessage() for r in caplog.records if "has no record" in r.getMessage()]
    assert said == [f"volume pv1 has no record: its data is kept at {folder}"]
    assert "pv1" in part.local and await part.restore() == []  # not mounted again


async def test_a_deleting_volume_with_keep_data_keeps_its_image_and_loses_the_rest(tmp_path):
    part, docker, folder = await provisioned(tmp_path)
    put(part.statuses, "pv1", status("pv1", node="n1", phase="Deleting", keep_data=True))
    assert await part.reconcile_volume("pv1") is None
    assert (folder / "kept").read_text() == "data"
    assert (folder.parent / "pv1.json").exists()
    assert docker.volumes == {}  # the bind volume holds nothing
    assert await stored(part, "pv1") is None


async def test_a_local_docker_volume_no_replica_uses_any_more_keeps_its_data(tmp_path):
    part, docker = make_part(tmp_path)
    put(part.volumes, "d1", pv("d1", driver="local", modes=("ReadWriteMany",)))
    put(part.statuses, "d1", status("d1", node="n1", claim="default.data"))
    put(part.claims, "default.data", claim("data", "d1"))
    put(part.placements, "n1.default.r1", placement("n1", "r1", "data"))
    assert await part.reconcile_volume("d1") is None
    name = names.docker_volume_name("d1", CLUSTER)
    assert name in docker.volumes
    put(part.placements, "n1.default.r1", None)  # scaled to 0
    put(part.statuses, "d1", status("d1", node="n2"))  # or moved to another node
    assert await part.reconcile_volume("d1") is None
    assert await stored(part, "d1") is None
    assert name in docker.volumes and docker.removed == []
    put(part.statuses, "d1", status("d1", phase="Deleting", keep_data=True))
    assert await part.reconcile_volume("d1") is None
    assert name in docker.volumes and docker.removed == []  # Retain: still its data


async def test_a_container_binding_only_a_sub_path_blocks_the_take_down(tmp_path):
    part, docker, folder = await provisioned(tmp_path)
    docker.labelled.add("pv1")  # its uses-volume label; Docker's volume filter misses it
    put(part.statuses, "pv1", status("pv1", node="n1", phase="Deleting"))
    assert await part.reconcile_volume("pv1") is not None
    assert (folder / "kept").read_text() == "data"
    assert names.docker_volume_name("pv1", CLUSTER) in docker.volumes
    held = await stored(part, "pv1")
    assert held is not None and not held.ready
    docker.labelled.clear()
    assert await part.reconcile_volume("pv1") is None
    assert not folder.exists() and await stored(part, "pv1") is None


async def test_a_released_volume_is_attached_ready_for_no_claim(tmp_path):
    part, _, _ = await provisioned(tmp_path)
    released = status("pv1", node="n1", claim="default.data", phase="Released")
    put(part.statuses, "pv1", released)
    assert await part.reconcile_volume("pv1") is None
    written = await stored(part, "pv1")
    assert written is not None and written.ready and written.claim == ""


async def test_a_host_path_that_is_a_link_to_an_allowed_folder_is_bound_by_its_real_path(
    tmp_path,
):
    part, docker = make_part(tmp_path)
    allowed = tmp_path / "srv"
    (allowed / "real").mkdir(parents=True)
    (allowed / "link").symlink_to(allowed / "real")
    part.settings = replace(part.settings, host_path_allow=(str(allowed),))
    put(part.volumes, "h1", pv("h1", host_path=str(allowed / "link"), node="n1"))
    put(part.statuses, "h1", status("h1"))
    assert await part.reconcile_volume("h1") is None
    shown = docker.volumes[names.docker_volume_name("h1", CLUSTER)]
    assert shown["Options"]["device"] == str(allowed / "real")
    made = await stored(part, "h1")
    assert made is not None and made.ready and made.host_path == str(allowed / "real")


def test_a_volumes_folder_behind_a_symbolic_link_is_used_by_its_real_path(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    settings = NodeSettings(node="n1", cluster_id=CLUSTER, volumes_dir=tmp_path / "link")
    part = NodePart(buckets, settings, FakeDockerVolumes())  # type: ignore[arg-type]
    assert part.settings.volumes_dir == tmp_path / "real"
    assert part.loops.layout.mountpoint("pv1") == tmp_path / "real" / CLUSTER / "pv1"


async def test_corral_down_keeps_a_docker_volume_holding_data_unless_data_is_deleted(tmp_path):
    part, docker = make_part(tmp_path)
    data = driver_volume("d1", "local", {}, CLUSTER, "n1")
    bind = bind_volume("pv1", str(tmp_path), CLUSTER, "n1")
    await docker.ensure(data)
    await docker.ensure(bind)
    report = await part.remove_all(delete_data=False)
    assert report.errors == [] and docker.removed == [bind.name]
    assert f"kept Docker volume {data.name}: it holds its volume's data" in report.done
    report = await part.remove_all(delete_data=True)
    assert report.errors == [] and docker.removed == [bind.name, data.name]


# --- a Docker volume or an image holding data is never remade (second review) ---------------


def with_uid(volume, uid: str):  # type: ignore[no-untyped-def]
    return replace_struct(volume, metadata=replace_struct(volume.metadata, uid=uid))


async def test_a_docker_volume_holding_data_is_never_remade_with_changed_options(tmp_path):
    part, docker = make_part(tmp_path)
    put(part.volumes, "d1", pv("d1", driver="local", options={"type": "ext4", "device": "/x"}))
    put(part.statuses, "d1", status("d1", node="n1"))
    assert await part.reconcile_volume("d1") is None
    name = names.docker_volume_name("d1", CLUSTER)
    made = dict(docker.volumes[name])
    put(part.volumes, "d1", pv("d1", driver="local", options={"type": "ext4", "device": "/y"}))
    assert await part.reconcile_volume("d1") is not None
    assert docker.volumes[name] == made and docker.removed == []
    said = await stored(part, "d1")
    assert said is not None and not said.ready
    assert f"the Docker volume {name} holds data and was made with other options" in said.message
    assert "delete the volume (Deleting) or restore its options" in said.message
    put(part.statuses, "d1", status("d1", phase="Deleting", keep_data=True))
    assert await part.reconcile_volume("d1") is None
    assert docker.volumes[name] == made  # Retain: still its data
    put(part.statuses, "d1", status("d1", phase="Deleting"))
    part.local.add("d1")
    assert await part.reconcile_volume("d1") is None
    assert docker.removed == [name]


async def test_deleting_removes_the_docker_volume_a_node_handed_over_without_an_attachment(
    tmp_path,
):
    part, docker = make_part(tmp_path)
    d1 = with_uid(pv("d1", driver="local", options={"type": "tmpfs", "device": "tmpfs"}), "u1")
    name = names.docker_volume_name("d1", CLUSTER)
    docker.volumes[name] = {  # kept by a hand-over; this node part restarted since
        "Name": name,
        "Driver": "local",
        "Options": {"type": "tmpfs", "device": "tmpfs"},
        "Labels": bind_volume("d1", "/x", CLUSTER, "n1").labels,
    }
    put(part.volumes, "d1", d1)
    put(part.statuses, "d1", status("d1", phase="Deleting", keep_data=True))
    assert await part.reconcile_volume("d1") is None
    assert name in docker.volumes  # Retain
    put(part.statuses, "d1", status("d1", phase="Deleting"))
    assert await part.reconcile_volume("d1") is None
    assert docker.removed == [name]


async def test_a_new_volume_of_a_kept_name_never_adopts_the_old_ones_docker_volume(tmp_path):
    part, docker = make_part(tmp_path)
    options = {"type": "tmpfs", "device": "tmpfs"}
    put(part.volumes, "d1", with_uid(pv("d1", driver="local", options=options), "u1"))
    put(part.statuses, "d1", status("d1", node="n1"))
    assert await part.reconcile_volume("d1") is None
    name = names.docker_volume_name("d1", CLUSTER)
    assert docker.volumes[name]["Labels"][names.LABEL_VOLUME_UID] == "u1"
    put(part.volumes, "d1", with_uid(pv("d1", driver="local", options=options), "u2"))
    assert await part.reconcile_volume("d1") is not None
    said = await stored(part, "d1")
    assert said is not None and not said.ready and "holds another volume's data" in said.message
    assert "u1" in said.message and docker.removed == []
    put(part.statuses, "d1", status("d1", phase="Deleting"))  # u2 deleted: u1's data stays
    assert await part.reconcile_volume("d1") is None
    assert name in docker.volumes and docker.removed == []


async def test_the_room_offered_counts_only_images_of_volumes_with_a_record_not_deleting(
    tmp_path,
):
    part, _, _ = await provisioned(tmp_path)
    loops = part.loops
    await anyio.to_thread.run_sync(loops._ensure_sidecar, "kept", 1 << 20)  # no record
    for volume in ("pv1", "kept"):
        loops.layout.image(volume).write_bytes(b"x" * (1 << 20))
    one = loops.layout.image("pv1").stat().st_blocks * 512
    assert one >= 1 << 20
    assert loops.held_bytes(part.counts_room) == one
    put(part.statuses, "pv1", status("pv1", node="n1", phase="Deleting", keep_data=True))
    assert loops.held_bytes(part.counts_room) == 0


async def test_a_volume_made_again_under_a_kept_images_name_with_another_size_is_not_mounted(
    tmp_path,
):
    part, _, folder = await provisioned(tmp_path)  # 20Mi, kept after its volume went
    put(part.volumes, "pv1", pv("pv1", size="30Mi"))
    assert await part.reconcile_volume("pv1") is not None
    said = await stored(part, "pv1")
    assert said is not None and not said.ready and "sizes differ" in said.message
    assert json.loads((folder.parent / "pv1.json").read_text())["sizeBytes"] == 20 << 20
    assert (folder / "kept").read_text() == "data"
