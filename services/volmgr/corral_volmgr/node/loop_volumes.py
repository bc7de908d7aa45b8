"""Provisioned volumes on a node's disk (docs/volumes.md, "Dynamic provisioning"):

    <dir>/<clusterId>/<volume>.img    a sparse ext4 image of the volume's size
    <dir>/<clusterId>/<volume>/       where it is mounted (`mount -o loop`: the kernel
                                      detaches the loop device at `umount`, autoclear)
    <dir>/<clusterId>/<volume>.json   corral's label for the files: cluster id, volume, size

The empty mount point is made immutable (`chattr +i`): while the image is not mounted
(a reboot, before the node part mounts it again) nothing, a container included, can
write into the bare folder under it, where the data would silently not be the volume's.

Without working loop devices a volume is the directory alone (its size not enforced);
the `.json` says which (`sizeEnforced`), and a volume keeps the form it was made in.
Nothing is touched that has no `.json` of this cluster: files, mounts and loop devices
of others stay as they are. Every tool runs via anyio.run_process, every file operation
in a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import msgspec

from corral_volmgr.node import host
from corral_volmgr.node.host import CommandFailed

log = logging.getLogger(__name__)

LOOP_CONTROL: Final = Path("/dev/loop-control")
FILESYSTEM_LABEL: Final = "corral"
PROBE_BYTES: Final = 8 * 1024 * 1024
MAX_UNMOUNTS: Final = 8  # one target mounted several times over (never by corral)


class SizesDiffer(CommandFailed):
    """A kept image's `.json` gives another size than its volume's spec."""


class Sidecar(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """<volume>.json: what makes files in the volumes folder corral's."""

    cluster_id: str
    volume: str
    size_bytes: int
    size_enforced: bool = True  # an ext4 image on a loop device; False: a directory
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Prepared:
    """A provisioned volume ready on this node: the directory to hand to Docker."""

    host_path: str
    size_enforced: bool
    made: bool  # made now (image or directory), not found


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one cluster's volumes live in the volumes folder."""

    root: Path
    cluster_id: str

    @property
    def cluster_dir(self) -> Path:
        return self.root / self.cluster_id

    def image(self, volume: str) -> Path:
        return self.cluster_dir / f"{volume}.img"

    def new_image(self, volume: str) -> Path:
        """Where an image is made before it has its filesystem (then renamed)."""
        return self.cluster_dir / f"{volume}.img.new"

    def mountpoint(self, volume: str) -> Path:
        return self.cluster_dir / volume

    def sidecar(self, volume: str) -> Path:
        return self.cluster_dir / f"{volume}.json"


# --- can this node use loop devices? ---------------------------------------------------


async def probe_loop_devices(root: Path, loop_control: Path = LOOP_CONTROL) -> str:
    """Why provisioned volumes cannot be size-enforced images here ("" : they can): a
    real attempt (/dev/loop-control, `losetup --find`, mkfs.ext4, a small image mounted
    and unmounted in `root`)."""
    if not await anyio.to_thread.run_sync(loop_control.exists):
        return f"{loop_control} is missing"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is not installed"
    try:
        await host.run(["losetup", "--find"])
    except CommandFailed as error:
        return str(error)
    probe = root / f".probe-{os.getpid()}"
    image, target = probe / "probe.img", probe / "mnt"
    mounted = False
    try:
        await anyio.to_thread.run_sync(lambda: target.mkdir(parents=True, exist_ok=True))
        await host.run(["truncate", "-s", str(PROBE_BYTES), str(image)])
        await host.run(["mkfs.ext4", "-q", "-F", str(image)])
        await host.run(["mount", "-o", "loop", str(image), str(target)])
        mounted = True
        await host.run(["umount", str(target)])
        mounted = False
    except (CommandFailed, OSError) as error:
        return str(error)
    finally:
        with anyio.CancelScope(shield=True):
            if mounted:
                await host.run(["umount", str(target)], check=False)
            await detach_backing(image)
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(probe, ignore_errors=True))
    return ""


# --- loop devices ----------------------------------------------------------------------


async def loop_devices_of(image: Path) -> list[str]:
    """The loop devices backed by `image` (`losetup -j`)."""
    ran = await host.run(["losetup", "-j", str(image)], check=False)
    return [line.split(":", 1)[0] for line in ran.stdout.splitlines() if line.startswith("/dev/")]


async def loop_devices_under(root: Path) -> list[tuple[str, str]]:
    """(device, backing file) of every loop device whose file is in `root`."""
    ran = await host.run(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE"], check=False)
    if ran.code != 0 or not ran.stdout.strip():
        return []
    top = str(root).rstrip("/") + "/"
    found = []
    for device in json.loads(ran.stdout).get("loopdevices") or []:
        back = str(device.get("back-file") or "").removesuffix(" (deleted)")
        if back.startswith(top):
            found.append((str(device.get("name")), back))
    return found


async def detach_backing(image: Path) -> list[str]:
    """Detach the loop devices still backed by `image` (autoclear normally did);
    the errors."""
    errors = []
    for device in await loop_devices_of(image):
        try:
            await host.run(["losetup", "-d", device])
        except CommandFailed as error:
            errors.append(str(error))
    return errors


# --- the volumes ---------------------------------------------------------------------


class LoopVolumes:
    """The provisioned volumes of one cluster in one volumes folder."""

    def __init__(self, layout: Layout, *, loop_devices: bool) -> None:
        self.layout = layout
        self.loop_devices = loop_devices

    # reading

    def read_sidecar(self, volume: str) -> Sidecar | None:
        """The volume's `.json` when it is this cluster's (blocking: call in a thread)."""
        try:
            found = msgspec.json.decode(self.layout.sidecar(volume).read_bytes(), type=Sidecar)
        except (OSError, msgspec.DecodeError):
            return None
        if found.cluster_id != self.layout.cluster_id or found.volume != volume:
            return None
        return found

    def ours(self) -> list[Sidecar]:
        """Every volume of this cluster in the folder, by its `.json` (blocking)."""
        try:
            listed = sorted(self.layout.cluster_dir.glob("*.json"))
        except OSError:
            return []
        found = [self.read_sidecar(path.stem) for path in listed]
        return [sidecar for sidecar in found if sidecar is not None]

    def held_bytes(self, counted: Callable[[str], bool]) -> int:
        """The disk this cluster's images of the volumes `counted` says take now (they are
        sparse; blocking): those of volumes the cluster part still counts against the
        node's room. An image kept after its volume went (keepData, a missing record) is
        not offered again as room."""
        total = 0
        for sidecar in self.ours():
            if not counted(sidecar.volume):
                continue
            try:
                total += self.layout.image(sidecar.volume).stat().st_blocks * 512
            except OSError:
                continue
        return total

    async def mounted(self, volume: str) -> bool:
        target = str(self.layout.mountpoint(volume))
        return any(m.target == target for m in await host.mounts())

    # making

    async def ensure(self, volume: str, size_bytes: int) -> Prepared:
        """Make the volume if it is missing and mount it if it is not: idempotent."""
        layout = self.layout
        sidecar = await anyio.to_thread.run_sync(self._ensure_sidecar, volume, size_bytes)
        target = layout.mountpoint(volume)
        if not sidecar.size_enforced:
            made = await anyio.to_thread.run_sync(_make_dir, target)
            return Prepared(str(target), size_enforced=False, made=made)
        if await self.mounted(volume):
            return Prepared(str(target), size_enforced=True, made=False)
        image = layout.image(volume)
        made = False
        if not await anyio.to_thread.run_sync(image.exists):
            if not self.loop_devices:
                raise CommandFailed(f"{image} is missing and loop devices are unavailable")
            await self._make_image(volume, sidecar.size_bytes)
            made = True
        elif not self.loop_devices:
            raise CommandFailed(f"cannot mount {image}: loop devices are unavailable")
        await anyio.to_thread.run_sync(_make_dir, target)
        await set_immutable(target, True)
        await host.run(["mount", "-o", "loop", str(image), str(target)])
        log.info("volume %s mounted at %s", volume, target)
        return Prepared(str(target), size_enforced=True, made=made)

    def _ensure_sidecar(self, volume: str, size_bytes: int) -> Sidecar:
        found = self.read_sidecar(volume)
        if found is not None:
            if found.size_bytes != size_bytes:
                # a volume made again under a kept one's name: never resized nor formatted
                raise SizesDiffer(
                    f"{self.layout.sidecar(volume)} says {found.size_bytes} bytes, the volume "
                    f"{size_bytes}: the image kept there is another volume's of that name "
                    "(delete it, or make the volume with its size)"
                )
            return found
        self.layout.cluster_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sidecar = Sidecar(
            cluster_id=self.layout.cluster_id,
            volume=volume,
            size_bytes=size_bytes,
            size_enforced=self.loop_devices,
            created_at=time.time(),
        )
        path = self.layout.sidecar(volume)
        temporary = path.with_name(path.name + ".new")
        temporary.write_bytes(msgspec.json.encode(sidecar))
        os.replace(temporary, path)  # first: the image made next is labelled ours
        return sidecar

    async def _make_image(self, volume: str, size_bytes: int) -> None:
        new = self.layout.new_image(volume)
        await anyio.to_thread.run_sync(lambda: new.unlink(missing_ok=True))
        await host.run(["truncate", "-s", str(size_bytes), str(new)])
        await host.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", FILESYSTEM_LABEL, str(new)])
        await anyio.to_thread.run_sync(os.replace, new, self.layout.image(volume))
        log.info("volume %s: ext4 image of %d bytes made", volume, size_bytes)

    # unmaking

    async def unmount(self, volume: str) -> None:
        """Unmount the volume (every mount on its mount point) and detach its loop device;
        its files stay."""
        target = str(self.layout.mountpoint(volume))
        for _ in range(MAX_UNMOUNTS):
            if not any(m.target == target for m in await host.mounts()):
                break
            await host.run(["umount", target])
            log.info("volume %s unmounted", volume)
        errors = await detach_backing(self.layout.image(volume))
        if errors:
            raise CommandFailed("; ".join(errors))

    async def delete(self, volume: str) -> bool:
        """Unmount the volume and delete its image, folder and `.json`, when it is this
        cluster's (its `.json` says so); False when there was nothing of it."""
        if await anyio.to_thread.run_sync(self.read_sidecar, volume) is None:
            return False
        await self.unmount(volume)
        await set_immutable(self.layout.mountpoint(volume), False)
        await anyio.to_thread.run_sync(self._delete_files, volume)
        log.info("volume %s deleted (image, folder, .json)", volume)
        return True

    def _delete_files(self, volume: str) -> None:
        layout = self.layout
        if any(m.target == str(layout.mountpoint(volume)) for m in host.read_mounts()):
            raise CommandFailed(f"{layout.mountpoint(volume)} is still mounted")
        layout.image(volume).unlink(missing_ok=True)
        layout.new_image(volume).unlink(missing_ok=True)
        shutil.rmtree(layout.mountpoint(volume), ignore_errors=True)
        layout.sidecar(volume).unlink(missing_ok=True)  # last: the label goes with the files

    async def remove_all(self, *, delete_data: bool) -> tuple[list[str], list[str]]:
        """Unmount everything under this cluster's folder and detach its loop devices;
        with `delete_data`, delete the folder too. (what was done, errors)"""
        done: list[str] = []
        errors: list[str] = []
        root = self.layout.cluster_dir
        for mount in host.under(await host.mounts(), str(root)):
            try:
                await host.run(["umount", mount.target])
                done.append(f"unmounted {mount.target}")
            except CommandFailed as error:
                errors.append(str(error))
        for device, back in await loop_devices_under(root):
            try:
                await host.run(["losetup", "-d", device])
                done.append(f"detached {device} ({back})")
            except CommandFailed as error:
                errors.append(str(error))
        if delete_data and await anyio.to_thread.run_sync(root.exists):
            if host.under(await host.mounts(), str(root)):
                errors.append(f"{root}: still mounted, its data is kept")
            else:
                for sidecar in await anyio.to_thread.run_sync(self.ours):
                    await set_immutable(self.layout.mountpoint(sidecar.volume), False)
                await anyio.to_thread.run_sync(shutil.rmtree, root)
                done.append(f"deleted {root}")
        return done, errors


async def set_immutable(path: Path, immutable: bool) -> None:
    """`chattr +i` / `-i` on an (unmounted) mount point; best effort: a filesystem
    without the attribute (tmpfs, overlay) only loses the guard."""
    ran = await host.run(["chattr", "+i" if immutable else "-i", str(path)], check=False)
    if ran.code != 0:
        log.debug("chattr on %s: %s", path, ran.stderr.strip())


def _make_dir(path: Path) -> bool:
    if path.is_dir():
        return False
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    return True
