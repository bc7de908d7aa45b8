"""Kubernetes-style manifests: YAML documents (apiVersion/kind/metadata/spec) to specs.

Each document is decoded exactly as its owner will decode it (corral.codec), so a
bad manifest is refused before anything leaves the machine, with the same error
the server would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from corral.client import API_KINDS, ApiKind, CorralError, find_kind
from corral.codec import InvalidPayload, decode_payload

# A manifest file larger than this is refused before it is parsed (a spec is at most
# 64 KiB on the wire; a file may hold several documents and comments).
MAX_MANIFEST_BYTES = 1024 * 1024


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a few hundred bytes of nested aliases expand
    to gigabytes (a "billion laughs"), and manifests have no need of them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not supported in manifests", event.start_mark
            )
        return super().compose_node(parent, index)


@dataclass(frozen=True)
class Manifest:
    kind: ApiKind
    spec: msgspec.Struct
    name: str
    where: str  # "my-app.yaml" or "my-app.yaml (document 2)", for messages


def load_manifests(text: str, source: str) -> list[Manifest]:
    """Every document of a YAML stream, validated; raises CorralError naming the problem."""
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_NoAliasLoader) if doc is not None]
    except yaml.YAMLError as error:
        raise CorralError(f"{source}: not valid YAML: {error}") from None
    if not documents:
        raise CorralError(f"{source}: no manifest in it (expected a YAML document with a kind)")
    several = len(documents) > 1
    return [
        parse_document(document, f"{source} (document {index})" if several else source)
        for index, document in enumerate(documents, start=1)
    ]


def parse_document(document: Any, where: str) -> Manifest:
    known = ", ".join(sorted(API_KINDS))
    if not isinstance(document, dict):
        raise CorralError(
            f"{where}: expected a mapping with apiVersion, kind, metadata and spec, "
            f"got {type(document).__name__}"
        )
    kind_name = document.get("kind")
    if not isinstance(kind_name, str) or not kind_name:
        raise CorralError(f"{where}: missing `kind`: corral knows {known}")
    if kind_name not in API_KINDS:
        raise CorralError(f"{where}: unknown kind {kind_name!r}: corral knows {known}")
    kind = find_kind(kind_name)
    try:
        raw = msgspec.json.encode(document)
    except (TypeError, msgspec.EncodeError) as error:
        raise CorralError(f"{where}: cannot be expressed as JSON: {error}") from None
    try:
        spec = decode_payload(raw, kind.spec_type)
    except InvalidPayload as error:
        raise CorralError(f"{where}: {error.message}") from None
    return Manifest(kind=kind, spec=spec, name=_name_of(spec), where=where)


def _name_of(spec: msgspec.Struct) -> str:
    metadata = getattr(spec, "metadata", None)
    name = getattr(metadata, "name", None)
    return name if isinstance(name, str) else ""
