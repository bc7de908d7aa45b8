"""No code reaches into another object's private attributes (`x._name`, x not self or
cls) outside the one adapter per library that is pinned to the library's version
(corral/natsio/nats_internals.py for nats-py, checked by test_nats_internals.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("shared", "services", "bench")
ADAPTERS = {Path("shared/corral/natsio/nats_internals.py")}
PUBLIC_DESPITE_THE_UNDERSCORE = {"os._exit"}  # documented standard library API


def private_accesses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        if not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        text = ast.unparse(node)
        if text not in PUBLIC_DESPITE_THE_UNDERSCORE:
            found.append(f"{node.lineno}: {text}")
    return found


def test_the_check_finds_private_attributes_of_other_objects() -> None:
    assert private_accesses("ack = await self._kv._js.publish(x)") == ["1: self._kv._js"]
    assert private_accesses("info = nc._server_info") == ["1: nc._server_info"]
    assert private_accesses("self._kv = kv\nos._exit(0)\nx.__class__") == []


def test_only_the_pinned_adapters_touch_private_attributes_of_other_objects() -> None:
    offences = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in ADAPTERS or ".venv" in relative.parts:
                continue
            offences += [f"{relative}:{hit}" for hit in private_accesses(path.read_text())]
    assert offences == [], "wrap these in the library's adapter module:\n" + "\n".join(offences)
