"""Kubernetes-style manifests: YAML documents (apiVersion/kind/metadata/spec) to specs.

Each document is decoded exactly as its owner will decode it (corral.contract.codec), so a
bad manifest is refused before anything leaves the machine, with the same error
the server would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from corral.client.api import API_KINDS, ApiKind, CorralError, find_kind
from corral.client.cli.foreign_fields import drop_unsupported, is_kubernetes
from corral.client.cli.kube_storage import RefusedField, translate_storage
from corral.contract.codec import InvalidPayload, decode_payload

# A manifest file larger than this is refused before it is parsed (a spec is at most
# 64 KiB on the wire; a file may hold several documents and comments).
MAX_MANIFEST_BYTES = 1024 * 1024
# Mappings and lists nest at most this deep in a manifest (a Deployment needs 6). PyYAML
# builds nested nodes by recursion: 3 KB of "[" would exhaust Python's stack.
MAX_MANIFEST_DEPTH = 64
# An integer in a manifest has at most this many characters (Python refuses to read
# more than 4300 digits, and no field of a spec needs more than 20).
MAX_INTEGER_CHARS = 64


class _ManifestLoader(yaml.SafeLoader):
    """YAML for manifests: no anchors and aliases (a few hundred bytes of nested aliases
    expand to gigabytes, a "billion laughs", and manifests have no need of them), and
    nesting bounded by MAX_MANIFEST_DEPTH, checked as each node is entered."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not supported in manifests", event.start_mark
            )
        if self._depth >= MAX_MANIFEST_DEPTH and self.check_event(
            yaml.SequenceStartEvent, yaml.MappingStartEvent
        ):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"mappings and lists nest deeper than {MAX_MANIFEST_DEPTH} levels, "
                "the limit for a manifest",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> Any:
        if len(node.value) > MAX_INTEGER_CHARS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"an integer of {len(node.value)} characters: "
                f"at most {MAX_INTEGER_CHARS} in a manifest",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


_ManifestLoader.add_constructor("tag:yaml.org,2002:int", _ManifestLoader.construct_yaml_int)


@dataclass(frozen=True)
class Manifest:
    kind: ApiKind
    spec: msgspec.Struct
    name: str
    where: str  # "my-app.yaml" or "my-app.yaml (document 2)", for messages
    # Fields of a plain Kubernetes document corral does not support, dropped (their
    # dotted paths): the caller warns with them (corral.client.cli.foreign_fields).
    dropped: tuple[str, ...] = ()


def load_manifests(text: str, source: str) -> list[Manifest]:
    """Every document of a YAML stream, validated; raises CorralError naming the problem."""
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_ManifestLoader) if doc is not None]
    except yaml.YAMLError as error:
        raise CorralError(f"{source}: not valid YAML: {error}") from None
    except ValueError as error:  # a value PyYAML recognised but could not build
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
    dropped: list[str] = []
    if is_kubernetes(document, kind.kind):
        try:
            if kind.kind in ("PersistentVolume", "PersistentVolumeClaim"):
                dropped = translate_storage(document)
        except RefusedField as error:
            raise CorralError(f"{where}: {error}") from None
        dropped = drop_unsupported(document, kind.spec_type) + dropped
    try:
        raw = msgspec.json.encode(document)
    except (TypeError, msgspec.EncodeError) as error:
        raise CorralError(f"{where}: cannot be expressed as JSON: {error}") from None
    try:
        spec = decode_payload(raw, kind.spec_type)
    except InvalidPayload as error:
        raise CorralError(f"{where}: {error.message}") from None
    return Manifest(kind=kind, spec=spec, name=_name_of(spec), where=where, dropped=tuple(dropped))


def _name_of(spec: msgspec.Struct) -> str:
    metadata = getattr(spec, "metadata", None)
    name = getattr(metadata, "name", None)
    return name if isinstance(name, str) else ""
