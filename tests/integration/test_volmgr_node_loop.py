"""volmgr's node part against the real kernel: ext4 images on loop devices, mounted in a
tmp folder, their size enforced; restored after a restart; --remove-all and
--delete-data (docs/volumes.md).

These need root and loop devices. They run wherever /dev/loop-control exists (here
and in CI), failing rather than skipping when not root; skipped, saying so, only where
the kernel has no loop devices. Every test leaves `losetup -a` and the mount table
as it found them, even when it fails (the fixture unmounts and detaches what is left
under its folder).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import decode
from corral.contract.volume_state import VolumeAttachment
from corral.natsio.kv import MemoryBucket
from corral_volmgr.node import host
from corral_volmgr.node.loop_volumes import Layout, LoopVolumes, probe_loop_devices
from corral_volmgr.node.part import NodePart, NodeSettings
from tests.unit.volmgr_node_helpers import CLUSTER, FakeDockerVolumes, put, pv, status

MiB = 1024 * 1024


def loops() -> list[str]:
    return subprocess.run(
        ["losetup", "-a"], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def mount_lines() -> list[str]:
    return Path("/proc/self/mounts").read_text().splitlines()


@pytest.fixture
def volumes_dir(tmp_path: Path) -> Iterator[Path]:
    """A volumes folder of this test; afterwards nothing of it is mounted or on a loop
    device, and `losetup -a` and the mounts are as before (but for other tests' lines)."""
    if not Path("/dev/loop-control").exists():
        pytest.skip("the kernel has no loop devices here (/dev/loop-control is missing)")
    if os.geteuid() != 0:
        pytest.fail("loop devices exist but these tests need root (mount, losetup)")
    root = tmp_path / "corral-volumes"
    before_loops, before_mounts = set(loops()), set(mount_lines())
    try:
        yield root
    finally:
        # what the code left behind fails the test; it is cleaned up all the same
        left_mounts = host.under(host.read_mounts(), str(tmp_path))
        left_loops = [line for line in loops() if str(tmp_path) in line]
        for mount in left_mounts:
            subprocess.run(["umount", "-l", mount.target], capture_output=True, check=False)
        for line in left_loops:
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)
        # mount points are immutable while unmounted: pytest may delete the folder later
        subprocess.run(["chattr", "-R", "-i", str(tmp_path)], capture_output=True, check=False)
    assert not left_mounts and not left_loops, (left_mounts, left_loops)
    assert not [line for line in set(loops()) - before_loops if str(tmp_path) in line]
    assert not [line for line in set(mount_lines()) - before_mounts if str(tmp_path) in line]


def image_loops(image: Path) -> list[str]:
    return [line for line in loops() if str(image) in line]


def write(path: Path, size: int) -> None:
    with path.open("wb") as file:
        chunk = b"x" * MiB
        for _ in range(size // MiB):
            file.write(chunk)
        file.flush()
        os.fsync(file.fileno())


async def test_the_probe_finds_working_loop_devices_and_leaves_nothing(volumes_dir: Path):
    await anyio.to_thread.run_sync(lambda: volumes_dir.mkdir(parents=True))
    assert await probe_loop_devices(volumes_dir) == ""
    assert await anyio.to_thread.run_sync(lambda: list(volumes_dir.iterdir())) == []
    assert "/dev/nowhere is missing" in await probe_loop_devices(
        volumes_dir, loop_control=Path("/dev/nowhere")
    )


async def test_a_20mi_volume_is_an_ext4_image_where_writing_30mi_fails_with_no_space_left(
    volumes_dir: Path,
):
    layout = Layout(volumes_dir, CLUSTER)
    volumes = LoopVolumes(layout, loop_devices=True)
    prepared = await volumes.ensure("pv1", 20 * MiB)
    assert prepared.size_enforced and prepared.made
    assert prepared.host_path == str(layout.mountpoint("pv1"))
    mounted = [m for m in host.read_mounts() if m.target == prepared.host_path]
    assert len(mounted) == 1 and mounted[0].fstype == "ext4"
    assert mounted[0].source.startswith("/dev/loop")
    assert layout.image("pv1").stat().st_size == 20 * MiB
    label = json.loads(layout.sidecar("pv1").read_text())
    assert label == {
        "clusterId": CLUSTER,
        "volume": "pv1",
        "sizeBytes": 20 * MiB,
        "sizeEnforced": True,
        "createdAt": label["createdAt"],
    }
    with pytest.raises(OSError) as failed:
        await anyio.to_thread.run_sync(write, layout.mountpoint("pv1") / "big", 30 * MiB)
    assert failed.value.errno == errno.ENOSPC
    assert "No space left on device" in str(failed.value)
    again = await volumes.ensure("pv1", 20 * MiB)  # idempotent: not mounted twice
    assert not again.made
    assert len([m for m in host.read_mounts() if m.target == prepared.host_path]) == 1
    await volumes.unmount("pv1")
    assert not await volumes.mounted("pv1")
    assert image_loops(layout.image("pv1")) == []  # autoclear detached it
    assert layout.image("pv1").exists()  # the data stays
    # unmounted, the bare mount point takes no write (it would not be the volume's)
    with pytest.raises(PermissionError):
        await anyio.to_thread.run_sync((layout.mountpoint("pv1") / "lost").write_text, "x")


async def part_on(
    volumes_dir: Path, buckets: dict[str, MemoryBucket]
) -> tuple[NodePart, FakeDockerVolumes]:
    """A node part (the one before a restart, or after) on the same records, its own
    attachments read from the bucket as its watch would."""
    docker = FakeDockerVolumes()
    settings = NodeSettings(node="n1", cluster_id=CLUSTER, volumes_dir=volumes_dir)
    part = NodePart(buckets, settings, docker)  # type: ignore[arg-type]
    put(part.volumes, "pv1", pv("pv1"))
    put(part.statuses, "pv1", status("pv1", node="n1", claim="default.data"))
    async with anyio.create_task_group() as tg:
        await tg.start(part.attachments.run)
        tg.cancel_scope.cancel()
    return part, docker


async def test_after_a_restart_the_image_is_mounted_again_before_anything_is_reported(
    volumes_dir: Path,
):
    buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    first, _ = await part_on(volumes_dir, buckets)
    await first.start()
    assert first.loop_problem == ""
    await first.reconcile_volume("pv1")
    attachment = first.attachments.get(names.attachment_key("n1", "pv1"))
    assert attachment is not None and attachment.ready and attachment.size_enforced
    (Path(attachment.host_path) / "kept").write_text("still here")
    await first.loops.unmount("pv1")  # a reboot: the mounts are gone
    assert not (Path(attachment.host_path) / "kept").exists()
    second, _ = await part_on(volumes_dir, buckets)
    await second.start()  # before the controller runs
    assert await second.loops.mounted("pv1")
    assert (Path(attachment.host_path) / "kept").read_text() == "still here"
    assert second.started
    # a deleted volume: its image, folder and .json go, and its loop device
    layout = second.loops.layout
    image = layout.image("pv1")
    put(second.statuses, "pv1", status("pv1", node="n1", phase="Deleting"))
    assert await second.reconcile_volume("pv1") is None
    assert image_loops(image) == [] and not await second.loops.mounted("pv1")
    assert not image.exists() and not layout.sidecar("pv1").exists()
    assert not layout.mountpoint("pv1").exists()
    entry = await buckets[names.VOLUME_ATTACHMENTS_BUCKET].get("n1.pv1")
    assert entry is None or entry.value is None


async def test_remove_all_unmounts_and_keeps_the_images_and_delete_data_deletes_them(
    volumes_dir: Path,
):
    buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    part, docker = await part_on(volumes_dir, buckets)
    await part.start()
    await part.reconcile_volume("pv1")
    layout = part.loops.layout
    (layout.mountpoint("pv1") / "kept").write_text("data")
    report = await part.remove_all(delete_data=False)
    assert report.errors == []
    assert f"unmounted {layout.mountpoint('pv1')}" in report.done
    assert f"removed Docker volume {names.docker_volume_name('pv1', CLUSTER)}" in report.done
    assert docker.volumes == {}
    assert not await part.loops.mounted("pv1") and image_loops(layout.image("pv1")) == []
    assert layout.image("pv1").exists()
    gone = await buckets[names.VOLUME_ATTACHMENTS_BUCKET].get("n1.pv1")
    assert gone is None or gone.value is None  # its Docker volume is gone: so is it
    # `corral up` again: mounted with its data
    again, _ = await part_on(volumes_dir, buckets)
    await again.start()
    assert (layout.mountpoint("pv1") / "kept").read_text() == "data"
    await again.reconcile_volume("pv1")
    entry = await buckets[names.VOLUME_ATTACHMENTS_BUCKET].get("n1.pv1")
    assert entry is not None and entry.value is not None
    assert decode(entry.value, VolumeAttachment).ready
    report = await again.remove_all(delete_data=True)
    assert report.errors == [] and f"deleted {layout.cluster_dir}" in report.done
    assert not layout.cluster_dir.exists() and image_loops(layout.image("pv1")) == []


async def test_mounts_and_files_of_another_cluster_in_the_folder_are_left_alone(volumes_dir: Path):
    theirs = LoopVolumes(Layout(volumes_dir, "other"), loop_devices=True)
    await theirs.ensure("pv1", 8 * MiB)
    try:
        buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
        part, _ = await part_on(volumes_dir, buckets)
        report = await part.remove_all(delete_data=True)
        assert report.errors == []
        assert await theirs.mounted("pv1")
        assert theirs.layout.image("pv1").exists()
    finally:
        await theirs.unmount("pv1")


async def test_a_volumes_folder_behind_a_symbolic_link_finds_its_mounts_and_takes_them_down(
    volumes_dir: Path,
):
    real = volumes_dir.parent / "real-volumes"
    await anyio.to_thread.run_sync(lambda: real.mkdir())
    await anyio.to_thread.run_sync(volumes_dir.symlink_to, real)
    buckets = {name: MemoryBucket(name) for name in names.ALL_BUCKETS}
    part, _ = await part_on(volumes_dir, buckets)
    await part.start()
    await part.reconcile_volume("pv1")
    assert await part.loops.mounted("pv1")
    attachment = part.attachments.get(names.attachment_key("n1", "pv1"))
    assert attachment is not None and attachment.host_path == str(real / CLUSTER / "pv1")
    assert len([m for m in host.read_mounts() if m.target == attachment.host_path]) == 1
    again, _ = await part_on(volumes_dir, buckets)
    await again.start()  # a restart: found mounted, not mounted a second time over it
    assert len([m for m in host.read_mounts() if m.target == attachment.host_path]) == 1
    put(again.statuses, "pv1", status("pv1", node="n1", phase="Deleting"))
    assert await again.reconcile_volume("pv1") is None
    assert not host.under(host.read_mounts(), str(real))
    assert not (real / CLUSTER / "pv1.img").exists()
