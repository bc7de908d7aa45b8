"""hostPath and local volumes on this node (docs/volumes.md, "Host paths"): the node
part checks the path again with what only the node knows (its engine's data root, its
volumes folder, its --host-path-allow), and makes a missing directory unless the
volume's type is `Directory`. Their directories are the operator's: never deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.contract.volume_specs import PersistentVolume, refused_host_path


@dataclass(frozen=True, slots=True)
class HostPathRules:
    """What only the node knows: paths no volume may be, and the allow-list."""

    forbidden: tuple[str, ...] = ()  # the engine's data root, the volumes folder
    allowed: tuple[str, ...] = ()


def host_path_of(pv: PersistentVolume) -> tuple[str, str]:
    """(path, type) of a hostPath or local volume; ("", "") for other sources."""
    spec = pv.spec
    if spec.host_path is not None:
        return spec.host_path.path, spec.host_path.type
    if spec.local is not None:
        return spec.local.path, ""  # as a hostPath (docs/volumes.md, "The objects")
    return "", ""


def refusal(path: str, rules: HostPathRules) -> str:
    """Why `path` may not be handed to containers on this node ("" : it may)."""
    return refused_host_path(path, forbidden=rules.forbidden, allowed=rules.allowed)


def _leads_to(path: str, rules: HostPathRules) -> str:
    """Why where `path`'s symbolic links lead may not be handed out ("" : it may)."""
    resolved = os.path.realpath(path)
    if resolved == path:
        return ""
    refused = refusal(resolved, rules)
    return f"{path!r} leads to {refused}" if refused else ""


def prepare(path: str, kind: str, rules: HostPathRules) -> tuple[str, str]:
    """Check the path (and where its symbolic links lead), and make the directory when
    missing (types "" and DirectoryOrCreate): (what is wrong, "" ; the real path, its
    symbolic links resolved and checked, which is what Docker binds: never the path
    itself, whose links may change after the check). Blocking: call in a worker thread."""
    refused = refusal(path, rules) or _leads_to(path, rules)
    if refused:
        return refused, ""
    target = Path(path)
    if not target.is_dir():
        if target.exists() or target.is_symlink():
            return f"{path!r} exists and is not a directory", ""
        if kind == "Directory":
            return f"{path!r} does not exist (hostPath type Directory: it must)", ""
        try:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as error:
            return f"cannot make {path!r}: {error.strerror or error}", ""
    resolved = os.path.realpath(path)
    refused = refusal(resolved, rules) if resolved != path else ""
    if refused:
        return f"{path!r} leads to {refused}", ""
    if not Path(resolved).is_dir():
        return f"{path!r} is not a directory", ""
    return "", resolved
