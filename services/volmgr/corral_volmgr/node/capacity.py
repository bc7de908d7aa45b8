"""The room a node offers to provisioned volumes (NodeVolumes.capacityBytes;
docs/volumes.md, "Room"): the operator's `--capacity`, or measured: the free space of
the volumes folder's filesystem plus what this cluster's images there already hold
(they count against the capacity as the volumes placed here, at their full size).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from corral.contract.quantity import storage_bytes

ROUNDING: Final = 1024 * 1024  # reported in whole MiB: a byte written is not a change


def parse_capacity(text: str) -> int | None:
    """`--capacity`: bytes or a quantity ("20Gi"); "" : measured. ValueError naming it."""
    if not text:
        return None
    try:
        return storage_bytes(int(text) if text.isdigit() else text)
    except ValueError as error:
        raise ValueError(f"--capacity {text!r}: {error}") from None


def free_bytes(path: Path) -> int:
    """What an unprivileged writer may still use on `path`'s filesystem (blocking)."""
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize


def measured(free: int, held: int) -> int:
    """The room from the filesystem's free bytes and the images' held bytes."""
    return max(0, free + held) // ROUNDING * ROUNDING
