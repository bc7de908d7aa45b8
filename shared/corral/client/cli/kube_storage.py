"""Plain Kubernetes storage manifests (`v1` PersistentVolume and PersistentVolumeClaim,
`storage.k8s.io/v1` StorageClass) made corral payloads (docs/volumes.md, "The objects").

Most of their fields are corral's own already. What differs is said here, before the
fields corral has no use for are dropped with a warning (corral.client.cli.foreign_fields):

- a volume's `nodeAffinity` with one `kubernetes.io/hostname In [node]` term is corral's
  `spec.node`; any other node affinity is refused, naming the field (dropping it would
  let the volume be used on any node);
- `volumeMode: Filesystem` is what corral's volumes are (dropped silently); `Block` is
  refused;
- a volume's `claimRef` object {namespace, name} is corral's `<namespace>/<name>`;
- what would change what a claim binds to or holds if dropped (another volume source
  such as `nfs` or `csi`, a selector's `matchExpressions`, a claim's `dataSource`) is
  refused, naming the field.
"""

from __future__ import annotations

from typing import Any, Final

HOSTNAME_KEY: Final = "kubernetes.io/hostname"
# Volume sources of Kubernetes that corral does not have: refused, never dropped (the
# volume would become one corral provisions).
_OTHER_SOURCES: Final = (
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "csi", "fc",
    "flexVolume", "flocker", "gcePersistentDisk", "glusterfs", "iscsi", "nfs",
    "photonPersistentDisk", "portworxVolume", "quobyte", "rbd", "scaleIO", "storageos",
    "vsphereVolume",
)  # fmt: skip
_SOURCES_HINT: Final = (
    "corral's volume sources are hostPath, local and dockerVolume (a Docker volume "
    "driver with options, e.g. driver local with type=nfs)"
)


class RefusedField(ValueError):
    """A field of a Kubernetes manifest corral cannot honour: `field` is its dotted path."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"`{field}`: {why}")
        self.field = field


def translate_storage(document: dict[str, Any]) -> list[str]:
    """Make a Kubernetes PersistentVolume or PersistentVolumeClaim document a corral one,
    in place. Returns the paths of the fields it removed that the caller must warn about;
    raises RefusedField."""
    spec = document.get("spec")
    if not isinstance(spec, dict):
        return []
    _volume_mode(spec)
    if document.get("kind") == "PersistentVolume":
        return _volume(spec)
    _claim(spec)
    return []


def _volume_mode(spec: dict[str, Any]) -> None:
    mode = spec.pop("volumeMode", "Filesystem")
    if mode != "Filesystem":
        raise RefusedField(
            "spec.volumeMode",
            f"{mode!r}: corral's volumes are filesystems (volumeMode: Filesystem)",
        )


def _volume(spec: dict[str, Any]) -> list[str]:
    for source in _OTHER_SOURCES:
        if source in spec:
            raise RefusedField(f"spec.{source}", f"not supported: {_SOURCES_HINT}")
    dropped: list[str] = []
    if "nodeAffinity" in spec:
        node = affinity_node(spec.pop("nodeAffinity"))
        if spec.get("node", node) != node:
            raise RefusedField(
                "spec.nodeAffinity",
                f"names node {node!r}, and `spec.node` {spec['node']!r}",
            )
        spec["node"] = node
    ref = spec.get("claimRef")
    if isinstance(ref, dict):
        name = ref.get("name")
        if not isinstance(name, str) or not name:
            raise RefusedField("spec.claimRef.name", "missing: the claim it is reserved for")
        namespace = ref.get("namespace") or "default"
        spec["claimRef"] = f"{namespace}/{name}"
        dropped = [
            f"spec.claimRef.{key}"
            for key in ref
            if key not in ("name", "namespace", "kind", "apiVersion")
        ]
    return dropped


def affinity_node(affinity: Any) -> str:
    """The node of a volume's nodeAffinity: exactly one required term with one
    expression `kubernetes.io/hostname In [node]`; anything else is refused naming
    the field that differs."""
    base = "spec.nodeAffinity"
    _only_keys(affinity, base, ("required",))
    required = affinity["required"]
    _only_keys(required, f"{base}.required", ("nodeSelectorTerms",))
    terms = required["nodeSelectorTerms"]
    where = f"{base}.required.nodeSelectorTerms"
    _one(terms, where, "a volume lives on one node: give one term")
    term = terms[0]
    where += "[0]"
    _only_keys(term, where, ("matchExpressions",))
    expressions = term["matchExpressions"]
    where += ".matchExpressions"
    _one(expressions, where, f"give one expression: {HOSTNAME_KEY} In [node]")
    expression = expressions[0]
    where += "[0]"
    _only_keys(expression, where, ("key", "operator", "values"))
    if expression.get("key") != HOSTNAME_KEY:
        raise RefusedField(
            f"{where}.key",
            f"{expression.get('key')!r}: corral places volumes by node name ({HOSTNAME_KEY})",
        )
    if expression.get("operator") != "In":
        raise RefusedField(f"{where}.operator", f"{expression.get('operator')!r}: only In")
    values = expression.get("values")
    _one(values, f"{where}.values", "a volume lives on one node: give one node name")
    node = values[0]
    if not isinstance(node, str):
        raise RefusedField(f"{where}.values[0]", "not a node name")
    return node


def _only_keys(value: Any, where: str, keys: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise RefusedField(where, f"expected a mapping with {', '.join(keys)}")
    for key in value:
        if key not in keys:
            raise RefusedField(
                f"{where}.{key}",
                f"not supported: corral reads only {HOSTNAME_KEY} In [one node] here",
            )
    for key in keys:
        if key not in value:
            raise RefusedField(f"{where}.{key}", "missing")


def _one(value: Any, where: str, why: str) -> None:
    if not isinstance(value, list) or len(value) != 1:
        count = len(value) if isinstance(value, list) else "no list"
        raise RefusedField(where, f"{count} given: {why}")


def _claim(spec: dict[str, Any]) -> None:
    for field in ("dataSource", "dataSourceRef"):
        if field in spec:
            raise RefusedField(
                f"spec.{field}",
                "corral does not fill a volume from a snapshot or another claim "
                "(the claim would get an empty volume)",
            )
    selector = spec.get("selector")
    if isinstance(selector, dict) and selector.get("matchExpressions"):
        raise RefusedField(
            "spec.selector.matchExpressions",
            "not supported: select volumes with matchLabels",
        )
    if isinstance(selector, dict) and "matchExpressions" in selector:
        del selector["matchExpressions"]  # empty: it selects nothing more
