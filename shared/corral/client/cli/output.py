"""Machine-readable output of the read commands: -o json and -o yaml."""

from __future__ import annotations

import json
from typing import Any

API_VERSION = "corral/v1"


def as_list(items: list[Any]) -> dict[str, Any]:
    """Several objects, the way kubectl prints them: a List with items."""
    return {"apiVersion": API_VERSION, "kind": "List", "items": items}


def dump(data: Any, output: str) -> str:
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    if output == "yaml":
        import yaml  # here: PyYAML only for -o yaml

        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    raise ValueError(f"unknown output format {output!r}")
