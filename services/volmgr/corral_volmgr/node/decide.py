"""What the node part does with one volume (docs/volumes.md): a pure function of the
records, tested without a kernel or an engine.

    PROVISION     a volume corral provisions (no source) that lives on this node:
                  image (or directory), mount, bind Docker volume, attachment
    HOST_PATH     a hostPath/local volume pinned to this node: checked directory, bind
                  Docker volume, attachment
    DOCKER_VOLUME a dockerVolume a replica on this node uses (single-node: attached
                  here), or a node-local one that lives here: Docker volume with its
                  driver and options, attachment
    RELEASE       the volume exists but has nothing to do here (now): once no container
                  uses it, a bind Docker volume goes and the image is unmounted, then the
                  attachment goes; data stays (a dockerVolume's Docker volume IS its data:
                  kept)
    DELETE        its VolumeStatus says Deleting: as RELEASE, and the Docker volume and a
                  provisioned volume's image, folder and .json go too unless `keepData`
                  (never a hostPath/local directory)
    LEAVE         a record of it is missing or cannot be read, or the cluster part has
                  not said where it lives yet: nothing changes (a missing record is never
                  a reason to delete: only the Deleting phase is)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from corral.contract.volume_specs import PersistentVolume
from corral.contract.volume_state import VOLUME_DELETING, VOLUME_RELEASED, VolumeStatus

PROVISION: Final = "provision"
HOST_PATH: Final = "hostPath"
DOCKER_VOLUME: Final = "dockerVolume"
RELEASE: Final = "release"
DELETE: Final = "delete"
LEAVE: Final = "leave"
NO_RECORD: Final = "no record"  # LEAVE's reason when the volume's record is gone


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    reason: str = ""
    claim: str = ""  # the claim the attachment serves (<namespace>.<name>); "" : none
    keep_data: bool = False  # DELETE: the data stays (image, .json, a dockerVolume's volume)


def read_only(pv: PersistentVolume) -> bool:
    return list(pv.spec.access_modes) == ["ReadOnlyMany"]


def home_node(pv: PersistentVolume, status: VolumeStatus | None) -> str:
    """The node a node-local volume lives on ("" : not decided yet)."""
    return (status.node if status is not None else "") or pv.spec.node


def served_claim(status: VolumeStatus) -> str:
    """The claim an attachment serves: none for a Released volume (its old claim's name
    may be taken by a new claim, which must never get this volume's data)."""
    return "" if status.phase == VOLUME_RELEASED else status.claim


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
    if status is not None and status.phase == VOLUME_DELETING:
        return Decision(DELETE, "deleted", keep_data=status.keep_data)
    if pv is None or status is None:
        return Decision(LEAVE, NO_RECORD)
    claim = served_claim(status)
    home = home_node(pv, status)
    if pv.spec.source == "dockerVolume":
        if pv.spec.node_local and home:
            if home != node:
                return Decision(RELEASE, f"lives on node {home}")
            return Decision(DOCKER_VOLUME, claim=claim)
        used = sorted(claims_used_here)
        if not used:
            return Decision(RELEASE, "no replica on this node uses it")
        if pv.spec.single_node and status.attach_node != node:
            attached = status.attach_node
            where = f"attached to node {attached}" if attached else "not attached to a node yet"
            return Decision(RELEASE, f"{where} (single-node access modes)")
        if status.phase == VOLUME_RELEASED:
            return Decision(DOCKER_VOLUME)
        return Decision(DOCKER_VOLUME, claim=claim or used[0])
    if not home:
        return Decision(RELEASE, "not placed on a node yet")
    if home != node:
        return Decision(RELEASE, f"lives on node {home}")
    if pv.spec.source == "provisioned":
        return Decision(PROVISION, claim=claim)
    return Decision(HOST_PATH, claim=claim)
