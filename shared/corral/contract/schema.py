"""The JSON Schema of every public payload, generated from the msgspec Structs.

What a client sends (Deployment, ScaleRequest, DeleteRequest, NodeReleaseRequest,
NodeDecision), what it gets back
(Reply), the events it may read (Event) and the records it may read from KV
(Node, Placement, ReplicaStatus, DeploymentStatus). The generated files are
committed under docs/schema/ (`python -m corral.contract.schema docs/schema` rewrites them;
a unit test checks that they are current).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from corral.contract.events import Event, Reply
from corral.contract.logs import LogAck, LogChunk, LogRequest
from corral.contract.network_specs import Network, Service
from corral.contract.network_state import (
    Endpoints,
    NetworkSlice,
    NetworkStatus,
    NodeNetwork,
    ReplicaDrain,
)
from corral.contract.specs import (
    DeleteRequest,
    Deployment,
    NodeDecision,
    NodeReleaseRequest,
    ScaleRequest,
)
from corral.contract.state import (
    DeploymentHistory,
    DeploymentStatus,
    Node,
    Placement,
    ReplicaStatus,
)
from corral.contract.volume_specs import (
    PersistentVolume,
    PersistentVolumeClaim,
    StorageClass,
    VolumeReleaseRequest,
)
from corral.contract.volume_state import ClaimStatus, NodeVolumes, VolumeAttachment, VolumeStatus

PUBLIC_PAYLOADS: Final[dict[str, type[msgspec.Struct]]] = {
    "Deployment": Deployment,
    "ScaleRequest": ScaleRequest,
    "DeleteRequest": DeleteRequest,
    "NodeReleaseRequest": NodeReleaseRequest,
    "NodeDecision": NodeDecision,
    "Reply": Reply,
    "Event": Event,
    "Node": Node,
    "Placement": Placement,
    "ReplicaStatus": ReplicaStatus,
    "DeploymentStatus": DeploymentStatus,
    "DeploymentHistory": DeploymentHistory,
    "Network": Network,
    "Service": Service,
    "NetworkStatus": NetworkStatus,
    "NetworkSlice": NetworkSlice,
    "Endpoints": Endpoints,
    "NodeNetwork": NodeNetwork,
    "ReplicaDrain": ReplicaDrain,
    "PersistentVolume": PersistentVolume,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "StorageClass": StorageClass,
    "VolumeReleaseRequest": VolumeReleaseRequest,
    "VolumeStatus": VolumeStatus,
    "ClaimStatus": ClaimStatus,
    "NodeVolumes": NodeVolumes,
    "VolumeAttachment": VolumeAttachment,
    "LogRequest": LogRequest,
    "LogChunk": LogChunk,
    "LogAck": LogAck,
}

_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def find_payload(name: str) -> str:
    """The canonical name of a payload, matched case-insensitively; KeyError when unknown."""
    for known in PUBLIC_PAYLOADS:
        if known.lower() == name.lower():
            return known
    raise KeyError(name)


def schema_of(name: str) -> dict[str, Any]:
    """One payload's schema, self-contained: its definitions under $defs."""
    payload = PUBLIC_PAYLOADS[name]
    schema: dict[str, Any] = {"$schema": _DIALECT, "$id": f"corral/v1/{name}.json"}
    schema.update(msgspec.json.schema(payload))
    _tag_optional(schema, payload)
    cleaned: dict[str, Any] = _clean_descriptions(schema)
    return cleaned


def _tag_optional(schema: dict[str, Any], payload: type[msgspec.Struct]) -> None:
    """The decoder reads a payload of one known type, where the tag field (a Deployment's
    `kind`) may be left out; so the schema does not require it either (whatever the
    decoder accepts, the schema accepts: tests/unit/test_schema_agreement.py)."""
    tag_field = payload.__struct_config__.tag_field
    definition = schema.get("$defs", {}).get(payload.__name__)
    if tag_field is None or definition is None:
        return
    required = [field for field in definition.get("required", []) if field != tag_field]
    if required:
        definition["required"] = required
    else:
        definition.pop("required", None)


def _clean_descriptions(node: Any) -> Any:
    """Descriptions come from docstrings: without their source indentation."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _clean_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(item) for item in node]
    return node


def render(schema: dict[str, Any]) -> str:
    """The exact text of a committed schema file."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def generated_files() -> dict[str, str]:
    """File name -> contents, for every public payload."""
    return {f"{name}.json": render(schema_of(name)) for name in PUBLIC_PAYLOADS}


def write_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in generated_files().items():
        path = folder / file_name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schema")
    for path in write_files(target):
        print(path)
