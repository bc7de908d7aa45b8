"""Plain Kubernetes manifests (`apiVersion: v1`, a StorageClass's `storage.k8s.io/v1`):
the fields corral has no use for.

A Kubernetes Service carries fields corral does not support (sessionAffinity,
externalTrafficPolicy, ...), a PersistentVolume mountOptions, a StorageClass
allowVolumeExpansion. They are dropped before the document is decoded, and the caller
warns with their paths: never silently. What the server writes (`status`, and of the
metadata uid, resourceVersion, generation, creationTimestamp, managedFields) is read-only:
ignored without a warning, as `kubectl apply` ignores it, so what `corral get -o yaml`
prints applies unchanged (docs/manifests.md). corral's own documents (`corral/v1`) stay
strict: an unknown field there is an error.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

KUBERNETES_API_VERSION: Final = "v1"
# The Kubernetes apiVersion of each kind corral reads plain Kubernetes manifests of.
KUBERNETES_KINDS: Final = {
    "Service": KUBERNETES_API_VERSION,
    "PersistentVolume": KUBERNETES_API_VERSION,
    "PersistentVolumeClaim": KUBERNETES_API_VERSION,
    "StorageClass": "storage.k8s.io/v1",
}
# Of a Kubernetes object's metadata, what corral reads (annotations are free text for
# tools and people: kept; a StorageClass's marks the default class).
_KUBERNETES_METADATA: Final = frozenset({"name", "namespace", "labels", "annotations"})
# What the server sets: read-only, ignored on the way in (the top-level `status` too).
SERVER_METADATA: Final = frozenset(
    {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"}
)


def is_kubernetes(document: dict[str, Any], kind: str) -> bool:
    """A plain Kubernetes document of a kind corral reads (not corral's own `corral/v1`)."""
    return kind in KUBERNETES_KINDS and document.get("apiVersion") == KUBERNETES_KINDS[kind]


def drop_unsupported(document: dict[str, Any], spec_type: type[msgspec.Struct]) -> list[str]:
    """Remove from `document` (in place) every field `spec_type` does not have, and
    return their dotted paths (e.g. `spec.ports[0].appProtocol`), in document order."""
    dropped: list[str] = []
    info = msgspec.inspect.type_info(spec_type)
    assert isinstance(info, msgspec.inspect.StructType)
    metadata = document.get("metadata")
    if isinstance(metadata, dict):
        for key in list(metadata):
            if key in SERVER_METADATA:
                del metadata[key]
            elif key not in _KUBERNETES_METADATA:
                del metadata[key]
                dropped.append(f"metadata.{key}")
    document.pop("status", None)
    for key in list(document):
        if key in ("apiVersion", "kind", "metadata"):
            continue
        field = _field(info, key)
        if field is None:
            del document[key]
            dropped.append(key)
        else:
            _walk(document[key], field, key, dropped)
    return dropped


def drop_unknown(value: Any, kind: Any, path: str) -> list[str]:
    """Remove from `value` (in place) what the type `kind` (a Struct, or e.g.
    list[Struct]) does not have; return the dotted paths removed, under `path`."""
    dropped: list[str] = []
    _walk(value, msgspec.inspect.type_info(kind), path, dropped)
    return dropped


def _field(info: msgspec.inspect.StructType, key: str) -> msgspec.inspect.Type | None:
    for field in info.fields:
        if field.encode_name == key:
            return field.type
    return None


def _unwrap(kind: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """The type itself: without its constraints, and of an optional struct
    (`LocalSource | None`) the struct."""
    while True:
        if isinstance(kind, msgspec.inspect.Metadata):
            kind = kind.type
        elif isinstance(kind, msgspec.inspect.UnionType):
            structs = [t for t in kind.types if isinstance(_unwrap(t), msgspec.inspect.StructType)]
            if len(structs) != 1:
                return kind
            kind = structs[0]
        else:
            return kind


def _walk(value: Any, kind: msgspec.inspect.Type, path: str, dropped: list[str]) -> None:
    kind = _unwrap(kind)
    if isinstance(kind, msgspec.inspect.StructType) and isinstance(value, dict):
        for key in list(value):
            field = _field(kind, key) if isinstance(key, str) else None
            if field is None:
                del value[key]
                dropped.append(f"{path}.{key}")
            else:
                _walk(value[key], field, f"{path}.{key}", dropped)
    elif isinstance(kind, msgspec.inspect.ListType) and isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, kind.item_type, f"{path}[{index}]", dropped)
