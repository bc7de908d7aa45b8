"""What the node part does with one volume (docs/volumes.md): a pure function of the
records, tested without a kernel or an engine.

    PROVISION     a volume corral provisions (no source) that lives on this node:
                  image (or directory), mount, bind Docker volume, attachment
    HOST_PATH     a hostPath/local volume pinned to this node: checked directory, bind
                  Docker volume, attachment
    DOCKER_VOLUME a dockerVolume a replica on this node uses (ReadWriteOnce: attached
                  here): Docker volume with its driver and options, attachment
    RELEASE       the volume exists but has nothing to do here (now): its Docker volume
                  goes (once no container uses it), then its attachment; data stays
    REMOVE        the volume was deleted: as RELEASE, and a provisioned volume's image,
                  folder and .json go too (never a hostPath/local directory)
    LEAVE         a record of it cannot be read, or the cluster part has not said
                  where it lives yet: nothing changes
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from corral.contract.volume_specs import PersistentVolume
from corral.contract.volume_state import VolumeStatus

PROVISION: Final = "provision"
HOST_PATH: Final = "hostPath"
DOCKER_VOLUME: Final = "dockerVolume"
RELEASE: Final = "release"
REMOVE: Final = "remove"
LEAVE: Final = "leave"
# Access modes that let one node at a time mount a dockerVolume (VolumeStatus.attachNode):
# a volume with any of them is, as the cluster part sets attachNode for it.
SINGLE_NODE_MODES: Final = ("ReadWriteOnce", "ReadWriteOncePod")


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    reason: str = ""
    claim: str = ""  # the claim the attachment serves (<namespace>.<name>)


def single_node(pv: PersistentVolume) -> bool:
    """A volume only one node may mount at a time (it has ReadWriteOnce or
    ReadWriteOncePod among its modes)."""
    return any(mode in SINGLE_NODE_MODES for mode in pv.spec.access_modes)


def read_only(pv: PersistentVolume) -> bool:
    return list(pv.spec.access_modes) == ["ReadOnlyMany"]


def home_node(pv: PersistentVolume, status: VolumeStatus | None) -> str:
    """The node a node-local volume lives on ("" : not decided yet)."""
    return (status.node if status is not None else "") or pv.spec.node


def decide(
    node: str,
    pv: PersistentVolume | None,
    status: VolumeStatus | None,
    *,
    unreadable: bool = False,
    claims_used_here: Iterable[str] = (),
) -> Decision:
    """What node `node` does with one volume. `claims_used_here`: the claims bound to it
    (ClaimStatus.volume) that a placement on this node uses."""
    if unreadable:
        return Decision(LEAVE, "a record of it cannot be read")
    if pv is None:
        return Decision(REMOVE, "deleted")
    source = pv.spec.source
    claim = status.claim if status is not None else ""
    if source == "dockerVolume":
        used = sorted(claims_used_here)
        if not used:
            return Decision(RELEASE, "no replica on this node uses it")
        if single_node(pv):
            attached = status.attach_node if status is not None else ""
            if attached != node:
                where = f"attached to node {attached}" if attached else "not attached to a node yet"
                return Decision(RELEASE, f"{where} (single-node access mode)")
        return Decision(DOCKER_VOLUME, claim=claim or used[0])
    home = home_node(pv, status)
    if not home:
        if status is None:
            return Decision(LEAVE, "no status yet")
        return Decision(RELEASE, "not placed on a node yet")
    if home != node:
        return Decision(RELEASE, f"lives on node {home}")
    if source == "provisioned":
        return Decision(PROVISION, claim=claim)
    return Decision(HOST_PATH, claim=claim)
