"""Kubernetes-style manifests: YAML documents (apiVersion/kind/metadata/spec) to specs.

Each document is decoded exactly as its owner will decode it (corral.contract.codec), so a
bad manifest is refused before anything leaves the machine, with the same error
the server would give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import yaml

from corral.client.api import API_KINDS, ApiKind, CorralError, find_kind
from corral.client.cli.foreign_fields import KUBERNETES_KINDS, drop_unsupported, is_kubernetes
from corral.client.cli.kube_apps import (
    APPS_API_VERSION,
    deployment_from_apps,
    is_apps,
    kubernetes_path,
)
from corral.client.cli.kube_storage import RefusedField, translate_storage
from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.network_specs import Service
from corral.contract.specs import API_VERSION

# A manifest file larger than this is refused before it is parsed (a spec is at most
# 64 KiB on the wire; a file may hold several documents and comments).
MAX_MANIFEST_BYTES = 1024 * 1024
# Mappings and lists nest at most this deep in a manifest (a Deployment needs 6). PyYAML
# builds nested nodes by recursion: 3 KB of "[" would exhaust Python's stack.
MAX_MANIFEST_DEPTH = 64
# An integer in a manifest has at most this many characters (Python refuses to read
# more than 4300 digits, and no field of a spec needs more than 20).
MAX_INTEGER_CHARS = 64


class BoundedLoader(yaml.SafeLoader):
    """YAML with nesting bounded by MAX_MANIFEST_DEPTH, checked as each node is entered,
    and integers by MAX_INTEGER_CHARS; `what`: the file it reads, for messages."""

    what = "a manifest"
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self._depth >= MAX_MANIFEST_DEPTH and self.check_event(
            yaml.SequenceStartEvent, yaml.MappingStartEvent
        ):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"mappings and lists nest deeper than {MAX_MANIFEST_DEPTH} levels, "
                f"the limit for {self.what}",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> Any:
        """A mapping, refused when it names a key twice (kubectl and Compose refuse it;
        taking the last would apply another object than the one read). Checked as
        written, before merge keys (`<<: *common`) are expanded: a key given beside a
        merge overrides it, as YAML says."""
        node = super().compose_mapping_node(anchor)
        seen: dict[str, Any] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if key.value in seen:
                raise yaml.composer.ComposerError(
                    "while reading a mapping",
                    seen[key.value],
                    f"the key {key.value!r} is given twice in {self.what}",
                    key.start_mark,
                )
            seen[key.value] = key.start_mark
        return node

    def construct_yaml_int(self, node: Any) -> Any:
        if len(node.value) > MAX_INTEGER_CHARS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"an integer of {len(node.value)} characters: "
                f"at most {MAX_INTEGER_CHARS} in {self.what}",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


class _ManifestLoader(BoundedLoader):
    """YAML for manifests: bounded (BoundedLoader), and no anchors and aliases (a few
    hundred bytes of nested aliases expand to gigabytes, a "billion laughs", and
    manifests have no need of them)."""

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
    # "my-app.yaml" or "my-app.yaml (document 2) Deployment/web", for messages
    where: str
    # Fields of a plain Kubernetes document corral does not support, dropped (their
    # dotted paths): the caller warns with them (corral.client.cli.foreign_fields).
    dropped: tuple[str, ...] = ()
    # The document's apiVersion: corral's own (corral/v1) or Kubernetes' (apps/v1, v1,
    # storage.k8s.io/v1); `corral diff` shows an object in its file's form.
    api_version: str = API_VERSION
    # The document's own metadata.namespace, None when it gives none: then -n, else
    # $CORRAL_NAMESPACE, decides (corral.client.cli.namespaces.resolve_namespaces).
    declared_namespace: str | None = None
    # Its index in a file of several documents (from 1); 0: the file's only one.
    document: int = 0

    @property
    def label(self) -> str:
        """Where it is and what it is: `web.yaml: deployment/web`, or of a document of
        several `all.yaml (document 2) Deployment/web` (its `where` says both)."""
        if self.document:
            return self.where
        return f"{self.where}: {self.kind.subject_kind}/{self.name}"

    @property
    def kubernetes(self) -> bool:
        return self.api_version != API_VERSION

    @property
    def namespace(self) -> str:
        metadata = getattr(self.spec, "metadata", None)
        return str(getattr(metadata, "namespace", "default"))


def load_manifests(text: str, source: str) -> list[Manifest]:
    """Every document of a YAML stream, validated; raises CorralError naming the problem
    (the document, and the field)."""
    # A Compose file (a top-level `services:` mapping, no apiVersion/kind) is translated
    # into manifests by corral.client.cli.compose (docs/compose.md).
    from corral.client.cli.compose import compose_manifests

    compose = compose_manifests(text, source)
    if compose is not None:
        return compose
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_ManifestLoader) if doc is not None]
    except yaml.YAMLError as error:
        raise CorralError(f"{source}: not valid YAML: {error}") from None
    except ValueError as error:  # a value PyYAML recognised but could not build
        raise CorralError(f"{source}: not valid YAML: {error}") from None
    if not documents:
        raise CorralError(f"{source}: no manifest in it (expected a YAML document with a kind)")
    several = len(documents) > 1
    manifests = [
        replace(
            parse_document(document, _where(source, index if several else 0, document)),
            document=index if several else 0,
        )
        for index, document in enumerate(documents, start=1)
    ]
    check_unique_objects(manifests)
    return manifests


def _where(source: str, index: int, document: Any) -> str:
    """`source (document 2) Deployment/web`: the document by index, kind and name."""
    named = ""
    if isinstance(document, dict):
        kind = document.get("kind")
        metadata = document.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if isinstance(kind, str) and kind:
            named = f"{kind}/{name}" if isinstance(name, str) and name else kind
    if not index:  # the only document: the file names it
        return source
    return f"{source} (document {index}) {named}" if named else f"{source} (document {index})"


def check_unique_objects(manifests: list[Manifest]) -> None:
    """The same kind, namespace and name twice: refused, naming both documents."""
    seen: dict[tuple[str, str, str], Manifest] = {}
    for manifest in manifests:
        identity = (manifest.kind.kind, manifest.namespace, manifest.name)
        first = seen.setdefault(identity, manifest)
        if first is not manifest:
            raise CorralError(
                f"{manifest.where}: `metadata.name` {manifest.name!r}: "
                f"{manifest.kind.kind} {manifest.namespace}/{manifest.name} is also "
                f"{first.where}: each object once per apply"
            )


def check_node_ports(manifests: list[Manifest]) -> None:
    """One node port given to two Services of what is applied: refused naming both
    before anything is sent (netmgr would refuse the second Service after the objects
    before it were applied). For apply and stack deploy only: delete and diff take the
    same files whatever they hold."""
    node_ports: dict[tuple[int, str], Manifest] = {}
    for manifest in manifests:
        if not isinstance(manifest.spec, Service):
            continue
        for index, port in enumerate(manifest.spec.spec.ports):
            if not port.node_port:
                continue
            taken = node_ports.setdefault((port.node_port, port.protocol), manifest)
            if taken is not manifest:
                raise CorralError(
                    f"{manifest.where}: `spec.ports[{index}].nodePort` "
                    f"{port.node_port}/{port.protocol} is also Service {taken.name}'s "
                    f"({taken.where}): a node port serves one Service"
                )


def _api_versions(kind: str) -> tuple[str, ...]:
    if kind == "Deployment":
        return (API_VERSION, APPS_API_VERSION)
    other = KUBERNETES_KINDS.get(kind)
    return (API_VERSION, other) if other else (API_VERSION,)


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
        raise CorralError(f"{where}: unknown kind {kind_name!r} (`kind`): corral knows {known}")
    kind = find_kind(kind_name)
    api_version = document.get("apiVersion", API_VERSION)  # none: corral's own form
    versions = _api_versions(kind.kind)
    if api_version not in versions:
        raise CorralError(
            f"{where}: `apiVersion` {api_version!r} is unknown: corral reads a {kind.kind} "
            f"as {' or '.join(versions)}"
        )
    # The status is the server's (what `corral get -o yaml` prints): read-only, ignored.
    document = {key: value for key, value in document.items() if key != "status"}
    dropped: list[str] = []
    declared = _declared_namespace(document)
    apps = is_apps(document)
    try:
        if apps:
            document, dropped = deployment_from_apps(document)
        elif is_kubernetes(document, kind.kind):
            if kind.kind in ("PersistentVolume", "PersistentVolumeClaim"):
                dropped = translate_storage(document)
            dropped = drop_unsupported(document, kind.spec_type) + dropped
    except RefusedField as error:
        raise CorralError(f"{where}: {error}") from None
    try:
        raw = msgspec.json.encode(document)
    except (TypeError, msgspec.EncodeError) as error:
        raise CorralError(f"{where}: cannot be expressed as JSON: {error}") from None
    try:
        spec = decode_payload(raw, kind.spec_type)
    except InvalidPayload as error:
        message = error.message
        if apps:
            message = re.sub(r"`(spec\.template\.[^`]*)`", _kubernetes_path, message)
        raise CorralError(f"{where}: {message}") from None
    return Manifest(
        kind=kind,
        spec=spec,
        name=_name_of(spec),
        where=where,
        dropped=tuple(dropped),
        api_version=str(api_version),
        declared_namespace=declared,
    )


def _declared_namespace(document: dict[str, Any]) -> str | None:
    """The document's own metadata.namespace (None: it gives none)."""
    metadata = document.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if isinstance(namespace, str) else None


def _kubernetes_path(match: re.Match[str]) -> str:
    return f"`{kubernetes_path(match.group(1))}`"


def _name_of(spec: msgspec.Struct) -> str:
    metadata = getattr(spec, "metadata", None)
    name = getattr(metadata, "name", None)
    return name if isinstance(name, str) else ""
