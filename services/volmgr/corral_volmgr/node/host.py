"""Running the host's tools (`truncate`, `mkfs.ext4`, `mount`, `umount`, `losetup`) and
reading its mount table, for volmgr's node part.

Every tool runs through anyio.run_process (never blocking the event loop); the mount
table is read in a worker thread. `parse_mountinfo` is a pure function, tested on
recorded /proc/self/mountinfo lines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

from corral.natsio.host_tools import CommandFailed as CommandFailed  # raised by run
from corral.natsio.host_tools import Ran, run_tool

log = logging.getLogger(__name__)

MOUNTINFO: Final = Path("/proc/self/mountinfo")
COMMAND_TIMEOUT: Final = 120.0  # mkfs of a large image on a slow disk


async def run(argv: Sequence[str], *, check: bool = True) -> Ran:
    """Run a host tool; CommandFailed when it is missing, hangs, or exits non-zero
    (with `check`)."""
    return await run_tool(argv, check=check, seconds=COMMAND_TIMEOUT)


@dataclass(frozen=True, slots=True)
class Mount:
    target: str  # the mount point
    source: str  # the device (/dev/loop3), or what the filesystem says
    fstype: str


def _unescape(text: str) -> str:
    r"""mountinfo's octal escapes (\040 for a space, \011, \012, \134)."""
    if "\\" not in text:
        return text
    out = bytearray()
    raw = text.encode()
    i = 0
    while i < len(raw):
        digits = raw[i + 1 : i + 4]
        if raw[i] == 0x5C and len(digits) == 3 and digits.isdigit():
            out.append(int(digits, 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="surrogateescape")


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a /proc/<pid>/mountinfo table, in its order (later mounts over
    earlier ones on one target)."""
    found: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-")
        except ValueError:
            continue
        if dash < 5 or len(fields) < dash + 3:
            continue
        found.append(Mount(_unescape(fields[4]), _unescape(fields[dash + 2]), fields[dash + 1]))
    return found


def read_mounts(path: Path = MOUNTINFO) -> list[Mount]:
    """This process's mount table (the host's: the node part runs in its namespace)."""
    return parse_mountinfo(path.read_text())


async def mounts() -> list[Mount]:
    return await anyio.to_thread.run_sync(read_mounts)


def under(mounts: Sequence[Mount], root: str) -> list[Mount]:
    """The mounts at `root` or below it, deepest first (the order to unmount them)."""
    top = root.rstrip("/")
    inside = [m for m in mounts if m.target == top or m.target.startswith(top + "/")]
    return sorted(inside, key=lambda m: m.target.count("/"), reverse=True)
