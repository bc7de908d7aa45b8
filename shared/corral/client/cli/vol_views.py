"""What `corral get|describe` shows of volmgr's kinds: PersistentVolumes, claims and
StorageClasses.

Each comes from one read of volmgr's buckets (docs/volumes.md, "Records").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from corral.client.api import CorralClient, to_builtins
from corral.client.cli.describe import _fields, _mapping, _when, events_table, with_events
from corral.client.cli.kinds import CLAIMS, STORAGE_CLASSES, VOLUMES, not_found
from corral.client.cli.output import as_list, dump
from corral.client.cli.tables import NONE, age_since, object_table, render_table
from corral.contract.events import Event
from corral.contract.names import DEFAULT_NAMESPACE, split_object_key
from corral.contract.quantity import format_memory
from corral.contract.specs import claim_names
from corral.contract.state import Placement
from corral.contract.volume_specs import (
    PersistentVolume,
    PersistentVolumeClaim,
    StorageClass,
)
from corral.contract.volume_state import (
    CLAIM_BOUND,
    CLAIM_PENDING,
    VOLUME_PENDING,
    ClaimStatus,
    VolumeAttachment,
    VolumeStatus,
)

# kubectl's short access modes.
SHORT_MODES = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}
UNSET = "<unset>"  # a claim that names no class (docs/volumes.md, "Binding")


@dataclass
class VolView:
    """One read of the storage buckets (and of the placements, for who uses a claim)."""

    volumes: dict[str, PersistentVolume] = field(default_factory=dict)
    volume_statuses: dict[str, VolumeStatus] = field(default_factory=dict)
    claims: dict[str, PersistentVolumeClaim] = field(default_factory=dict)
    claim_statuses: dict[str, ClaimStatus] = field(default_factory=dict)
    classes: dict[str, StorageClass] = field(default_factory=dict)
    attachments: list[VolumeAttachment] = field(default_factory=list)
    placements: dict[str, Placement] = field(default_factory=dict)


async def read_vol(client: CorralClient, what: tuple[str, ...]) -> VolView:
    """Read the buckets named in `what` ("volumes", "claims", "classes", "attachments",
    "placements") concurrently."""
    view = VolView()

    async def volumes() -> None:
        view.volumes = await client.volumes()
        view.volume_statuses = await client.volume_statuses()

    async def claims() -> None:
        view.claims = await client.claims()
        view.claim_statuses = await client.claim_statuses()

    async def classes() -> None:
        view.classes = await client.storage_classes()

    async def attachments() -> None:
        view.attachments = await client.volume_attachments()

    async def placements() -> None:
        view.placements = await client.placements()

    readers = {
        "volumes": volumes,
        "claims": claims,
        "classes": classes,
        "attachments": attachments,
        "placements": placements,
    }
    async with anyio.create_task_group() as tg:
        for name in sorted(set(what)):
            tg.start_soon(readers[name])
    return view


def access_modes(modes: list[str]) -> str:
    """kubectl's ACCESS MODES: RWO,ROX,RWX,RWOP."""
    return ",".join(SHORT_MODES.get(mode, mode) for mode in modes) or NONE


def size_text(value: str | int) -> str:
    """A size as given ("100Mi"), or bytes made readable."""
    return value if isinstance(value, str) else format_memory(value)


def claim_ref(key: str) -> str:
    """A claim's key <namespace>.<name> as kubectl writes it: <namespace>/<name>."""
    if not key:
        return NONE
    namespace, name = split_object_key(key)
    return f"{namespace}/{name}"


# --- persistent volumes -----------------------------------------------------------------

VOLUME_HEADERS = (
    "NAME",
    "CAPACITY",
    "ACCESS MODES",
    "RECLAIM POLICY",
    "STATUS",
    "CLAIM",
    "STORAGECLASS",
    "NODE",
    "AGE",
)
VOLUME_WIDE_HEADERS = (*VOLUME_HEADERS, "SOURCE", "MESSAGE")


def volume_phase(status: VolumeStatus | None) -> str:
    """volmgr's phase; Pending until volmgr has seen the volume."""
    return status.phase if status is not None else VOLUME_PENDING


def volume_node(volume: PersistentVolume, status: VolumeStatus | None) -> str:
    """The node it lives on (volmgr's word, else the spec's)."""
    return (status.node if status is not None else "") or volume.spec.node or NONE


def volume_row(view: VolView, name: str, now: float, *, wide: bool) -> list[str]:
    volume = view.volumes[name]
    status = view.volume_statuses.get(name)
    spec = volume.spec
    row = [
        name,
        size_text(spec.capacity.storage),
        access_modes(list(spec.access_modes)),
        spec.persistent_volume_reclaim_policy,
        volume_phase(status),
        claim_ref(status.claim if status is not None else ""),
        spec.storage_class_name or NONE,
        volume_node(volume, status),
        age_since(volume.metadata.creation_timestamp, now),
    ]
    if wide:
        row += [spec.source, (status.message if status is not None else "") or NONE]
    return row


def volume_table(view: VolView, now: float, *, wide: bool) -> str:
    return object_table(
        "persistentvolumes",
        view.volumes,
        lambda name: volume_row(view, name, now, wide=wide),
        VOLUME_HEADERS,
        VOLUME_WIDE_HEADERS,
        wide=wide,
    )


def volume_object(view: VolView, name: str) -> dict[str, Any]:
    """The spec as stored, volmgr's status, and the volume's attachments on nodes."""
    item: dict[str, Any] = to_builtins(view.volumes[name])
    status = view.volume_statuses.get(name)
    item["status"] = to_builtins(status) if status is not None else {}
    item["attachments"] = [to_builtins(a) for a in view.attachments if a.volume == name]
    return item


def _source_text(volume: PersistentVolume) -> str:
    spec = volume.spec
    if spec.host_path is not None:
        kind = f" ({spec.host_path.type})" if spec.host_path.type else ""
        return f"hostPath {spec.host_path.path}{kind}"
    if spec.local is not None:
        return f"local {spec.local.path}"
    if spec.docker_volume is not None:
        options = _mapping(dict(spec.docker_volume.options))
        return f"dockerVolume driver {spec.docker_volume.driver}, options {options}"
    return "provisioned by corral (an ext4 image file on a loop device)"


def _yes_no(flag: bool | None) -> str:
    if flag is None:
        return "<unknown>"
    return "yes" if flag else "no"


def _enforced(flag: bool | None) -> str:
    if flag is False:
        return "no (a directory: writes are not limited to the size)"
    return _yes_no(flag)


def describe_volume(view: VolView, name: str, events: list[Event], now: float) -> str:
    """kubectl describe pv: spec, volmgr's status, and where the volume is attached."""
    volume = view.volumes[name]
    status = view.volume_statuses.get(name)
    spec = volume.spec
    lines = _fields(
        [
            ("Name", name),
            ("Created", _when(volume.metadata.creation_timestamp, now)),
            ("Labels", _mapping(volume.metadata.labels)),
            ("StorageClass", spec.storage_class_name or NONE),
            ("Status", volume_phase(status)),
            ("Claim", claim_ref(status.claim if status is not None else "")),
            ("Reserved For", spec.claim_ref or NONE),
            ("Reclaim Policy", spec.persistent_volume_reclaim_policy),
            ("Access Modes", access_modes(list(spec.access_modes))),
            ("Capacity", size_text(spec.capacity.storage)),
            ("Node", volume_node(volume, status)),
            ("Source", _source_text(volume)),
            ("Provisioned By", (status.provisioned_by if status is not None else "") or NONE),
            ("Size Enforced", _enforced(status.size_enforced if status is not None else None)),
            ("Attach Node", (status.attach_node if status is not None else "") or NONE),
            ("Message", (status.message if status is not None else "") or NONE),
        ]
    )
    attached = [a for a in view.attachments if a.volume == name]
    if attached:
        table = render_table(
            ("NODE", "READY", "DOCKER-VOLUME", "HOST-PATH", "SIZE-ENFORCED", "MESSAGE"),
            [
                [
                    a.node,
                    "yes" if a.ready else "no",
                    a.docker_volume or NONE,
                    a.host_path or NONE,
                    _yes_no(a.size_enforced),
                    a.message or NONE,
                ]
                for a in attached
            ],
        )
        lines += ["Attachments:", *("  " + line for line in table.splitlines())]
    else:
        lines.append("Attachments:  <none>")
    lines += events_table(events, now)
    return "\n".join(lines)


# --- claims -----------------------------------------------------------------------------

CLAIM_HEADERS = ("NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE")
CLAIM_WIDE_HEADERS = (*CLAIM_HEADERS, "REQUEST", "NODE", "REASON", "MESSAGE")


def claim_phase(status: ClaimStatus | None) -> str:
    return status.phase if status is not None else CLAIM_PENDING


def claim_class(claim: PersistentVolumeClaim, status: ClaimStatus | None) -> str:
    """The class it binds or provisions by; <unset> for a claim that names none and is
    not bound yet."""
    if status is not None and status.storage_class:
        return status.storage_class
    asked = claim.spec.storage_class_name
    if asked is None:
        return NONE if status is not None and status.phase == CLAIM_BOUND else UNSET
    return asked or NONE


def claim_reason(status: ClaimStatus | None) -> tuple[str, str]:
    """Why a claim is not bound (reason, message); ("", "") when it is."""
    if status is None:
        return "", "volmgr has not seen it yet"
    if status.phase == CLAIM_BOUND:
        return "", ""
    return status.reason, status.message


def _bound(status: ClaimStatus | None) -> tuple[str, str]:
    """A bound claim's (capacity, access modes) as kubectl shows them; <none> until bound."""
    if status is None or status.phase != CLAIM_BOUND:
        return NONE, NONE
    capacity = format_memory(status.capacity_bytes) if status.capacity_bytes else NONE
    return capacity, access_modes(status.access_modes)


def claim_row(view: VolView, name: str, now: float, *, wide: bool) -> list[str]:
    claim = view.claims[name]
    status = view.claim_statuses.get(name)
    row = [
        name,
        claim_phase(status),
        (status.volume if status is not None else "") or NONE,
        *_bound(status),
        claim_class(claim, status),
        age_since(claim.metadata.creation_timestamp, now),
    ]
    if wide:
        reason, message = claim_reason(status)
        row += [
            size_text(claim.spec.resources.requests.storage),
            (status.node if status is not None else "") or NONE,
            reason or NONE,
            message or NONE,
        ]
    return row


def claim_table(view: VolView, now: float, *, wide: bool) -> str:
    """The rows of `get pvc`; REASON and MESSAGE columns appear when any claim is not
    bound (why it is pending, or being deleted)."""
    if not view.claims:
        return "No persistentvolumeclaims."
    names = sorted(view.claims)
    rows = [claim_row(view, name, now, wide=wide) for name in names]
    if wide:
        return render_table(CLAIM_WIDE_HEADERS, rows)
    reasons = [claim_reason(view.claim_statuses.get(name)) for name in names]
    if any(reason or message for reason, message in reasons):
        rows = [
            [*row, reason or NONE, message or NONE]
            for row, (reason, message) in zip(rows, reasons, strict=True)
        ]
        return render_table((*CLAIM_HEADERS, "REASON", "MESSAGE"), rows)
    return render_table(CLAIM_HEADERS, rows)


def claim_users(view: VolView, name: str, namespace: str = DEFAULT_NAMESPACE) -> list[Placement]:
    """The placed replicas whose template names the claim."""
    users = [
        placement
        for placement in view.placements.values()
        if placement.namespace == namespace and name in claim_names(placement.template)
    ]
    return sorted(users, key=lambda p: (p.deployment, p.replica))


def claim_object(view: VolView, name: str) -> dict[str, Any]:
    item: dict[str, Any] = to_builtins(view.claims[name])
    status = view.claim_statuses.get(name)
    item["status"] = to_builtins(status) if status is not None else {}
    return item


def describe_claim(view: VolView, name: str, events: list[Event], now: float) -> str:
    """kubectl describe pvc: what it asks for, what it is bound to or why not, and the
    replicas using it."""
    claim = view.claims[name]
    status = view.claim_statuses.get(name)
    spec = claim.spec
    capacity, modes = _bound(status)
    selector = spec.selector.match_labels if spec.selector is not None else {}
    reason, message = claim_reason(status)
    lines = _fields(
        [
            ("Name", name),
            ("Namespace", claim.metadata.namespace),
            ("Created", _when(claim.metadata.creation_timestamp, now)),
            ("Labels", _mapping(claim.metadata.labels)),
            ("StorageClass", claim_class(claim, status)),
            ("Status", claim_phase(status)),
            ("Volume", (status.volume if status is not None else "") or NONE),
            ("Capacity", capacity),
            ("Access Modes", modes),
            (
                "Requested",
                f"{size_text(spec.resources.requests.storage)} "
                f"{access_modes(list(spec.access_modes))}",
            ),
            ("Volume Name", spec.volume_name or NONE),
            ("Selector", _mapping(dict(selector))),
            ("Node", (status.node if status is not None else "") or NONE),
            ("Reason", reason or NONE),
            ("Message", message or NONE),
        ]
    )
    users = claim_users(view, name, claim.metadata.namespace)
    if users:
        table = render_table(
            ("REPLICA", "DEPLOYMENT", "NODE"), [[p.replica, p.deployment, p.node] for p in users]
        )
        lines += ["Used By:", *("  " + line for line in table.splitlines())]
    else:
        lines.append("Used By:      <none>")
    lines += events_table(events, now)
    return "\n".join(lines)


def claim_description(view: VolView, name: str, events: list[Event]) -> dict[str, Any]:
    item = claim_object(view, name)
    item["usedBy"] = [
        {"replica": p.replica, "deployment": p.deployment, "node": p.node}
        for p in claim_users(view, name)
    ]
    return with_events(item, events)


# --- storage classes ------------------------------------------------------------------------

CLASS_HEADERS = ("NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "AGE")
CLASS_WIDE_HEADERS = (*CLASS_HEADERS, "PARAMETERS")


def default_class(classes: dict[str, StorageClass]) -> str:
    """The class claims without one are provisioned by: of those marked default, the
    newest (as Kubernetes 1.26+), then by name; "" when none is marked."""
    marked = [c for c in classes.values() if c.is_default]
    if not marked:
        return ""
    return max(marked, key=lambda c: (c.metadata.creation_timestamp, c.metadata.name)).key


def class_table(view: VolView, now: float, *, wide: bool, only: str | None = None) -> str:
    """The rows of `get storageclasses` (of class `only`); the default class is marked."""
    if not view.classes:
        return "No storageclasses."
    default = default_class(view.classes)  # decided among all of them
    rows = []
    for name in sorted(view.classes) if only is None else [only]:
        sc = view.classes[name]
        row = [
            f"{name} (default)" if name == default else name,
            sc.provisioner,
            sc.reclaim_policy,
            sc.volume_binding_mode,
            age_since(sc.metadata.creation_timestamp, now),
        ]
        if wide:
            row.append(_mapping(dict(sc.parameters)))
        rows.append(row)
    return render_table(CLASS_WIDE_HEADERS if wide else CLASS_HEADERS, rows)


def describe_class(view: VolView, name: str, events: list[Event], now: float) -> str:
    """kubectl describe storageclass: whether it is the default, how it provisions, and
    what becomes of the volumes it made."""
    sc = view.classes[name]
    lines = _fields(
        [
            ("Name", name),
            ("IsDefaultClass", "Yes" if name == default_class(view.classes) else "No"),
            ("Created", _when(sc.metadata.creation_timestamp, now)),
            ("Labels", _mapping(sc.metadata.labels)),
            ("Provisioner", sc.provisioner),
            ("Parameters", _mapping(dict(sc.parameters))),
            ("ReclaimPolicy", sc.reclaim_policy),
            ("VolumeBindingMode", sc.volume_binding_mode),
        ]
    )
    lines += events_table(events, now)
    return "\n".join(lines)


def class_object(view: VolView, name: str) -> dict[str, Any]:
    item: dict[str, Any] = to_builtins(view.classes[name])
    item["default"] = name == default_class(view.classes)
    return item


# --- get ----------------------------------------------------------------------------------

# The buckets each kind's `get` reads.
VOL_NEEDS: dict[str, tuple[str, ...]] = {
    VOLUMES: ("volumes", "attachments"),
    CLAIMS: ("claims",),
    STORAGE_CLASSES: ("classes",),
}


def _known(view: VolView, kind: str) -> dict[str, Any]:
    if kind == VOLUMES:
        return view.volumes
    if kind == CLAIMS:
        return view.claims
    return view.classes


def render_vol_get(view: VolView, kind: str, name: str | None, output: str, now: float) -> str:
    """The text of `corral get pv|pvc|storageclasses [NAME] -o OUTPUT`."""
    known = _known(view, kind)
    if name is not None and name not in known:
        raise not_found(kind, name)
    selected = sorted(known) if name is None else [name]
    if output in ("json", "yaml"):
        make = {VOLUMES: volume_object, CLAIMS: claim_object, STORAGE_CLASSES: class_object}[kind]
        objects = [make(view, key) for key in selected]
        return dump(objects[0] if name is not None else as_list(objects), output)
    wide = output == "wide"
    if kind == STORAGE_CLASSES:
        return class_table(view, now, wide=wide, only=name)
    if name is not None:
        view = _only(view, kind, name)
    if kind == VOLUMES:
        return volume_table(view, now, wide=wide)
    return claim_table(view, now, wide=wide)


def _only(view: VolView, kind: str, name: str) -> VolView:
    if kind == VOLUMES:
        return VolView(
            volumes={name: view.volumes[name]},
            volume_statuses={k: v for k, v in view.volume_statuses.items() if k == name},
        )
    return VolView(
        claims={name: view.claims[name]},
        claim_statuses={k: v for k, v in view.claim_statuses.items() if k == name},
    )


def describe_storage(
    view: VolView, kind: str, name: str, events: list[Event], output: str, now: float
) -> str:
    """`corral describe pv|pvc|storageclass NAME` as text, or as data (-o json|yaml)."""
    if name not in _known(view, kind):
        raise not_found(kind, name)
    if kind == STORAGE_CLASSES:
        if output == "text":
            return describe_class(view, name, events, now)
        return dump(with_events(class_object(view, name), events), output)
    if kind == VOLUMES:
        if output == "text":
            return describe_volume(view, name, events, now)
        return dump(with_events(volume_object(view, name), events), output)
    if output == "text":
        return describe_claim(view, name, events, now)
    return dump(claim_description(view, name, events), output)
