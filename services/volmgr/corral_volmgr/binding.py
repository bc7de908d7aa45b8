"""Which volume a claim binds, or why it waits (docs/volumes.md, "Binding"): pure
functions of the claim, the volumes with their statuses, and the StorageClasses.

A volume is available to a claim when its phase is Available, it is not reserved for
another claim (spec.claimRef), its size and access modes suffice, its class is the
claim's and its labels match the claim's selector. The claim takes the smallest
(ties: the oldest, then by name). An absent class first looks for a volume with no
class, then goes to the default class; a class without a StorageClass object binds
statically only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from corral.contract.quantity import format_memory
from corral.contract.specs import labels_match
from corral.contract.volume_specs import (
    NO_PROVISIONER,
    PROVISIONERS,
    PersistentVolume,
    PersistentVolumeClaim,
    StorageClass,
)
from corral.contract.volume_state import (
    VOLUME_AVAILABLE,
    VOLUME_BOUND,
    VOLUME_DELETING,
    VOLUME_PENDING,
    VOLUME_RELEASED,
    VolumeStatus,
)

# ClaimStatus.reason of a pending claim.
NO_MATCHING_VOLUME: Final = "NoMatchingVolume"
VOLUME_NOT_FOUND: Final = "VolumeNotFound"
PROVISIONER_UNKNOWN: Final = "ProvisionerUnknown"
WAIT_FOR_FIRST_CONSUMER: Final = "WaitForFirstConsumer"
NODE_FULL: Final = "NodeFull"
PROVISIONING: Final = "Provisioning"


@dataclass(frozen=True)
class Candidate:
    """A volume with its status (None: the cluster part has not written one yet)."""

    volume: PersistentVolume
    status: VolumeStatus | None = None

    @property
    def name(self) -> str:
        return self.volume.metadata.name


@dataclass(frozen=True)
class Bind:
    """Bind the claim to this volume."""

    volume: str
    storage_class: str


@dataclass(frozen=True)
class Provision:
    """No volume fits: make one with this StorageClass."""

    storage_class: StorageClass


@dataclass(frozen=True)
class Pending:
    """The claim waits: why, in a word and in words."""

    reason: str
    message: str
    storage_class: str = ""


Decision = Bind | Provision | Pending


def claim_ref_key(claim_ref: str) -> str:
    """A PersistentVolume's claimRef (<namespace>/<name>) as a claim key (<namespace>.<name>)."""
    namespace, _, name = claim_ref.partition("/")
    return f"{namespace}.{name}"


def default_class(classes: Iterable[StorageClass]) -> StorageClass | None:
    """The class marked default; of several, the newest (Kubernetes 1.26+), then by name."""
    marked = [c for c in classes if c.is_default]
    if not marked:
        return None
    return max(marked, key=lambda c: (c.metadata.creation_timestamp, c.metadata.name))


def misfit(claim: PersistentVolumeClaim, key: str, candidate: Candidate) -> str:
    """Why `candidate` cannot take the claim (keyed `key`), as a category word, or ""
    when it can (its class is checked by the caller): "bound", "reserved",
    "released", "deleting", "unavailable", "small", "modes", "selector". A Deleting
    volume is never bound (it is being taken down on its nodes)."""
    status = candidate.status
    spec = candidate.volume.spec
    if status is None:
        return "unavailable"
    if spec.claim_ref and claim_ref_key(spec.claim_ref) != key:
        return "reserved"
    if status.phase == VOLUME_RELEASED:
        return "released"
    if status.phase == VOLUME_DELETING:
        return "deleting"
    if status.phase in (VOLUME_BOUND, VOLUME_PENDING) and status.claim and status.claim != key:
        return "bound"
    if status.phase != VOLUME_AVAILABLE:
        return "unavailable"
    if spec.size_bytes < claim.spec.size_bytes:
        return "small"
    if not set(claim.spec.access_modes) <= set(spec.access_modes):
        return "modes"
    selector = claim.spec.selector
    if selector is not None and not labels_match(
        selector.match_labels, candidate.volume.metadata.labels
    ):
        return "selector"
    return ""


def _order(candidate: Candidate) -> tuple[int, float, str]:
    metadata = candidate.volume.metadata
    return (candidate.volume.spec.size_bytes, metadata.creation_timestamp, metadata.name)


def choose_volume(
    claim: PersistentVolumeClaim, key: str, candidates: Iterable[Candidate], class_name: str
) -> tuple[Candidate | None, str]:
    """The smallest fitting volume of class `class_name` (ties: the oldest, then by
    name), or None and why none fits ("no volume of class \"\" fits: ...")."""
    fitting: list[Candidate] = []
    misses: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        if candidate.volume.spec.storage_class_name != class_name:
            continue
        why = misfit(claim, key, candidate)
        if why:
            misses.setdefault(why, []).append(candidate)
        else:
            fitting.append(candidate)
    if fitting:
        return min(fitting, key=_order), ""
    return None, no_fit_message(claim, class_name, misses)


def _count(n: int, what: str) -> str:
    return f"{n} volume{'s' if n != 1 else ''} {what}"


def no_fit_message(
    claim: PersistentVolumeClaim, class_name: str, misses: Mapping[str, list[Candidate]]
) -> str:
    head = f'no volume of class "{class_name}" fits'
    if not misses:
        return f"{head}: none exists"
    parts: list[str] = []
    small = misses.get("small", [])
    if small:
        largest = max(c.volume.spec.size_bytes for c in small)
        parts.append(
            f"{_count(len(small), 'too small')} (largest {format_memory(largest)}, "
            f"{format_memory(claim.spec.size_bytes)} asked)"
        )
    modes = misses.get("modes", [])
    if modes:
        parts.append(
            _count(len(modes), f"without access mode {', '.join(claim.spec.access_modes)}")
        )
    for word, what in (
        ("selector", "not matching the selector"),
        ("bound", "bound to another claim"),
        ("reserved", "reserved for another claim (claimRef)"),
        ("released", "released (a Retain volume is not bound again)"),
        ("deleting", "being deleted"),
        ("unavailable", "not available (being made or deleted)"),
    ):
        found = misses.get(word, [])
        if found:
            parts.append(_count(len(found), what))
    return f"{head}: {', '.join(parts)}"


def decide(
    claim: PersistentVolumeClaim,
    key: str,
    candidates: Iterable[Candidate],
    classes: Mapping[str, StorageClass],
) -> Decision:
    """What to do with a pending claim (keyed `key`): bind, provision, or wait."""
    volumes = list(candidates)
    spec = claim.spec
    if spec.volume_name:
        named = [c for c in volumes if c.name == spec.volume_name]
        if not named:
            return Pending(VOLUME_NOT_FOUND, f'volume "{spec.volume_name}" not found')
        class_name = named[0].volume.spec.storage_class_name
        if spec.storage_class_name is not None and spec.storage_class_name != class_name:
            return Pending(
                NO_MATCHING_VOLUME,
                f'volume "{spec.volume_name}" is of class "{class_name}", not '
                f'"{spec.storage_class_name}"',
            )
        chosen, why = choose_volume(claim, key, named, class_name)
        if chosen is None:
            return Pending(NO_MATCHING_VOLUME, f'volume "{spec.volume_name}": {why}', class_name)
        return Bind(chosen.name, class_name)
    if spec.storage_class_name is not None:
        class_name = spec.storage_class_name
    else:
        chosen, why = choose_volume(claim, key, volumes, "")
        if chosen is not None:
            return Bind(chosen.name, "")
        default = default_class(classes.values())
        if default is None:
            return Pending(NO_MATCHING_VOLUME, f"{why}; no StorageClass is marked default")
        class_name = default.metadata.name
    chosen, why = choose_volume(claim, key, volumes, class_name)
    if chosen is not None:
        return Bind(chosen.name, class_name)
    storage_class = classes.get(class_name) if class_name else None
    if storage_class is None:
        return Pending(NO_MATCHING_VOLUME, why, class_name)
    provisioner = storage_class.provisioner
    if provisioner == NO_PROVISIONER:
        return Pending(
            NO_MATCHING_VOLUME, f"{why}; class {class_name!r} provisions nothing", class_name
        )
    if provisioner not in PROVISIONERS:
        return Pending(
            PROVISIONER_UNKNOWN,
            f'storageclass "{class_name}" names provisioner "{provisioner}", which corral '
            f"does not run (it runs {', '.join(PROVISIONERS)})",
            class_name,
        )
    if spec.selector is not None and spec.selector.match_labels:
        return Pending(
            NO_MATCHING_VOLUME,
            f"{why}; a claim with a selector is not provisioned (as Kubernetes)",
            class_name,
        )
    return Provision(storage_class)
