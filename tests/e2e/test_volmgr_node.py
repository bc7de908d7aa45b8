"""volmgr's node part through a real nats-server and the local Docker engine
(docs/volumes.md): the test writes the cluster part's and the scheduler's records by
hand (PersistentVolume, VolumeStatus, ClaimStatus, a placement), runs the node part
in-process, and sees the Docker volumes, mounts and attachments come and go.

Provisioned volumes need root and loop devices (skipped, saying so, only without
/dev/loop-control). Every test leaves `losetup -a`, the mounts and `docker volume ls`
as it found them, even when it fails.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.volume_state import NodeVolumes, VolumeAttachment
from corral.natsio.kv import NatsBucket
from corral.natsio.service import ServiceContext, base_parser, run_service
from corral_volmgr import node as node_part
from corral_volmgr.node import host
from tests.unit.volmgr_node_helpers import claim, placement, pv, status
from tests.waiting import eventually

pytestmark = pytest.mark.docker


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def docker_volumes() -> set[str]:
    return set(sh("docker", "volume", "ls", "-q").stdout.split())


def loops() -> set[str]:
    return set(sh("losetup", "-a").stdout.splitlines())


@dataclass
class Guard:
    """What this test made shows its cluster id (Docker volumes) or its folder (mounts,
    loop devices): none of it may be left."""

    folder: Path
    cluster: str = "no-cluster-yet"
    containers: list[str] = field(default_factory=list)


@pytest.fixture
def unchanged_host(docker_engine: str, tmp_path: Path) -> Iterator[Guard]:
    if not Path("/dev/loop-control").exists():
        pytest.skip("the kernel has no loop devices here (/dev/loop-control is missing)")
    if os.geteuid() != 0:
        pytest.fail("loop devices exist but this test needs root (mount, losetup)")
    guard = Guard(tmp_path / "corral-volumes")
    volumes_before, loops_before = docker_volumes(), loops()
    try:
        yield guard
    finally:
        if guard.containers:
            sh("docker", "rm", "-f", *guard.containers, check=False)
        left_volumes = [v for v in docker_volumes() - volumes_before if guard.cluster in v]
        left_mounts = host.under(host.read_mounts(), str(tmp_path))
        left_loops = [line for line in loops() - loops_before if str(tmp_path) in line]
        for name in left_volumes:
            sh("docker", "volume", "rm", "-f", name, check=False)
        for mount in left_mounts:
            sh("umount", "-l", mount.target, check=False)
        for line in left_loops:
            sh("losetup", "-d", line.split(":", 1)[0], check=False)
        sh("chattr", "-R", "-i", str(tmp_path), check=False)  # unmounted mount points
    assert not left_volumes and not left_mounts and not left_loops, (
        left_volumes,
        left_mounts,
        left_loops,
    )


def parser() -> argparse.ArgumentParser:
    """The node part's command line as main.py makes it (--node, --docker-host)."""
    made = base_parser("volmgr", 0)
    made.add_argument("--node", default="")
    made.add_argument("--docker-host")
    node_part.add_arguments(made)
    return made


def flags(nats_url: str, node: str, folder: Path, *extra: str) -> argparse.Namespace:
    return parser().parse_args(
        ["--nats", nats_url, "--metrics-port", "0", "--node", node,
         "--volumes-dir", str(folder), "--node-resync-seconds", "2", *extra]
    )  # fmt: skip


@asynccontextmanager
async def running_node_part(
    nats_url: str, node: str, folder: Path, *extra: str
) -> AsyncIterator[ServiceContext]:
    async with anyio.create_task_group() as tg:
        args = flags(nats_url, node, folder, *extra)
        ctx: ServiceContext = await tg.start(run_service, "volmgr", node_part.run, args)
        try:
            yield ctx
        finally:
            tg.cancel_scope.cancel()


async def remove_all(nats_url: str, node: str, folder: Path, *extra: str) -> str:
    printed = io.StringIO()
    with redirect_stdout(printed), anyio.fail_after(60):
        await run_service(
            "volmgr", node_part.run, flags(nats_url, node, folder, "--remove-all", *extra)
        )
    return printed.getvalue()


async def put(bucket: NatsBucket, key: str, value: object) -> None:
    await bucket.put(key, encode(value))


async def attachment(buckets: dict[str, NatsBucket], key: str) -> VolumeAttachment | None:
    entry = await buckets[names.VOLUME_ATTACHMENTS_BUCKET].get(key)
    return None if entry is None or entry.value is None else decode(entry.value, VolumeAttachment)


def inspect_volume(name: str) -> dict[str, object] | None:
    done = sh("docker", "volume", "inspect", name, check=False)
    if done.returncode != 0:
        return None
    found: dict[str, object] = json.loads(done.stdout)[0]
    return found


async def test_a_provisioned_volume_becomes_a_labelled_docker_volume_on_a_mounted_image_and_goes(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    test_image: str,
    unchanged_host: Guard,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="corral_volmgr.node.part")
    folder = unchanged_host.folder
    async with running_node_part(nats_url, node_name, folder) as ctx:
        cluster = unchanged_host.cluster = ctx.cluster.id
        record = await eventually(
            lambda: buckets[names.NODE_VOLUMES_BUCKET].get(node_name),
            lambda entry: entry is not None and decode(entry.value or b"{}", NodeVolumes).ready,
        )
        assert record is not None and record.value is not None
        reported = decode(record.value, NodeVolumes)
        assert reported.loop_devices and reported.capacity_bytes > 0
        assert reported.volumes_dir == str(folder)
        await put(buckets[names.VOLUMES_BUCKET], "pv-e2e", pv("pv-e2e", size="20Mi"))
        await put(
            buckets[names.VOLUME_STATUS_BUCKET],
            "pv-e2e",
            status("pv-e2e", node=node_name, claim="default.data"),
        )
        key = names.attachment_key(node_name, "pv-e2e")
        ready = await eventually(
            lambda: attachment(buckets, key), lambda a: a is not None and a.ready, within=20
        )
        assert ready is not None and ready.size_enforced and ready.claim == "default.data"
        name = names.docker_volume_name("pv-e2e", cluster)
        assert ready.docker_volume == name
        shown = inspect_volume(name)
        assert shown is not None
        assert shown["Labels"] == {
            names.LABEL_MANAGED: "true",
            names.LABEL_CLUSTER: cluster,
            names.LABEL_VOLUME: "pv-e2e",
            names.LABEL_NODE: node_name,
        }
        assert shown["Options"] == {"type": "none", "o": "bind", "device": ready.host_path}
        # a container writes through the Docker volume: the file is in the mounted image,
        # and past the volume's size it gets "No space left on device"
        writer = f"volmgr-e2e-{uuid.uuid4().hex[:8]}"
        unchanged_host.containers.append(writer)
        done = sh(
            "docker", "run", "--name", writer, "-v", f"{name}:/data", test_image, "sh", "-c",
            "echo hello > /data/hello && dd if=/dev/zero of=/data/big bs=1M count=30",
            check=False,
        )  # fmt: skip
        assert done.returncode != 0 and "No space left on device" in done.stderr
        assert (Path(ready.host_path) / "hello").read_text() == "hello\n"
        # deleted (the cluster part's tombstone) while the stopped container still holds
        # its Docker volume: kept
        await put(
            buckets[names.VOLUME_STATUS_BUCKET],
            "pv-e2e",
            status("pv-e2e", node=node_name, phase="Deleting"),
        )
        waiting = await eventually(
            lambda: attachment(buckets, key), lambda a: a is not None and not a.ready
        )
        assert waiting is not None and "being removed" in waiting.message
        assert inspect_volume(name) is not None
        # a container that only binds a subPath of it (Docker's volume filter misses it)
        # carries the agent's uses-volume label: it holds the volume all the same
        binder = f"volmgr-e2e-{uuid.uuid4().hex[:8]}"
        unchanged_host.containers.append(binder)
        made = sh("docker", "create", "--name", binder, "--label",
                  f"{names.uses_volume_label('pv-e2e')}=1", "-v",
                  f"{ready.host_path}/sub:/data", test_image, "true")  # fmt: skip
        binder_id = made.stdout.strip()
        sh("docker", "rm", "-f", writer)
        # a take-down tried with the writer gone finds the binder alone, and stops there
        alone = f"volume pv-e2e: used by container(s) ['{binder_id}']; trying again"

        async def logged() -> str:
            return caplog.text

        await eventually(logged, lambda text: alone in text, within=20)
        assert inspect_volume(name) is not None
        assert (Path(ready.host_path) / "hello").read_text() == "hello\n"
        assert host.under(host.read_mounts(), str(folder))
        sh("docker", "rm", "-f", binder)
        await eventually(lambda: attachment(buckets, key), lambda a: a is None, within=20)
        assert inspect_volume(name) is None
        assert not host.under(host.read_mounts(), str(folder))
        assert not (folder / cluster / "pv-e2e.img").exists()
        assert not (folder / cluster / "pv-e2e.json").exists()


async def test_a_docker_volume_is_made_for_a_placement_here_handed_over_once_no_container_has_it(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    test_image: str,
    unchanged_host: Guard,
) -> None:
    folder = unchanged_host.folder
    async with running_node_part(nats_url, node_name, folder) as ctx:
        cluster = unchanged_host.cluster = ctx.cluster.id
        tmpfs = pv("scratch", driver="local", options={"type": "tmpfs", "device": "tmpfs"})
        await put(buckets[names.VOLUMES_BUCKET], "scratch", tmpfs)
        await put(
            buckets[names.VOLUME_STATUS_BUCKET],
            "scratch",
            status("scratch", claim="default.data", attach_node=node_name),
        )
        await put(buckets[names.CLAIM_STATUS_BUCKET], "default.data", claim("data", "scratch"))
        replica = names.placement_key(node_name, "default", "r1")
        await put(buckets[names.PLACEMENTS_BUCKET], replica, placement(node_name, "r1", "data"))
        key = names.attachment_key(node_name, "scratch")
        ready = await eventually(
            lambda: attachment(buckets, key), lambda a: a is not None and a.ready, within=20
        )
        assert ready is not None and ready.host_path == "" and ready.claim == "default.data"
        name = names.docker_volume_name("scratch", cluster)
        shown = inspect_volume(name)
        assert shown is not None and shown["Driver"] == "local"
        assert shown["Options"] == {"type": "tmpfs", "device": "tmpfs"}
        assert shown["Labels"][names.LABEL_VOLUME] == "scratch"  # type: ignore[index]
        user = f"volmgr-e2e-{uuid.uuid4().hex[:8]}"
        unchanged_host.containers.append(user)
        sh("docker", "create", "--name", user, "-v", f"{name}:/data", test_image, "true")
        await buckets[names.PLACEMENTS_BUCKET].delete(replica)
        # the replica's container still exists: Docker refuses, the attachment stays
        held = await eventually(
            lambda: attachment(buckets, key), lambda a: a is not None and not a.ready
        )
        assert held is not None and inspect_volume(name) is not None
        sh("docker", "rm", "-f", user)
        await eventually(lambda: attachment(buckets, key), lambda a: a is None, within=20)
        assert inspect_volume(name) is not None  # the Docker volume is the data: kept
        await put(
            buckets[names.VOLUME_STATUS_BUCKET], "scratch", status("scratch", phase="Deleting")
        )
        await eventually(
            lambda: anyio.to_thread.run_sync(inspect_volume, name),
            lambda shown: shown is None,
            within=20,
        )


async def test_remove_all_keeps_the_data_and_delete_data_removes_it(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    unchanged_host: Guard,
) -> None:
    folder = unchanged_host.folder
    async with running_node_part(nats_url, node_name, folder) as ctx:
        cluster = unchanged_host.cluster = ctx.cluster.id
        await put(buckets[names.VOLUMES_BUCKET], "pv-down", pv("pv-down", size="8Mi"))
        await put(buckets[names.VOLUME_STATUS_BUCKET], "pv-down", status("pv-down", node=node_name))
        key = names.attachment_key(node_name, "pv-down")
        ready = await eventually(
            lambda: attachment(buckets, key), lambda a: a is not None and a.ready, within=20
        )
        assert ready is not None
        (Path(ready.host_path) / "kept").write_text("data")
    name = names.docker_volume_name("pv-down", cluster)
    printed = await remove_all(nats_url, node_name, folder)
    assert f"removed Docker volume {name}" in printed
    assert f"unmounted {ready.host_path}" in printed
    assert inspect_volume(name) is None and not host.under(host.read_mounts(), str(folder))
    assert (folder / cluster / "pv-down.img").exists()
    assert await attachment(buckets, key) is None
    # up again: mounted with its data
    async with running_node_part(nats_url, node_name, folder):
        await eventually(
            lambda: attachment(buckets, key), lambda a: a is not None and a.ready, within=20
        )
        assert (Path(ready.host_path) / "kept").read_text() == "data"
    printed = await remove_all(nats_url, node_name, folder, "--delete-data")
    assert f"deleted {folder / cluster}" in printed
    assert not (folder / cluster).exists()
