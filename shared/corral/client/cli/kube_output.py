"""Stored objects as manifests: `corral get KIND [NAME...] -o yaml|json` (kubectl-style:
a List when several) and the two sides of `corral diff` (docs/manifests.md).

Each kind prints in its Kubernetes form (apps/v1 Deployment, v1 Service,
PersistentVolume, PersistentVolumeClaim, storage.k8s.io/v1 StorageClass), which
`corral apply -f` takes back unchanged; a Network, which Kubernetes has not, in corral's
own `corral/v1` form. The translation of a Deployment lives in
corral.client.cli.kube_apps, of a volume's node and claimRef in kube_storage: one home each.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, cast

import msgspec

from corral.client.api import ApiKind, CorralClient, to_builtins
from corral.client.cli.foreign_fields import KUBERNETES_KINDS, SERVER_METADATA
from corral.client.cli.kube_apps import deployment_to_apps, object_metadata
from corral.client.cli.kube_storage import HOSTNAME_KEY
from corral.contract.network_specs import Network, Service
from corral.contract.specs import API_VERSION, Deployment
from corral.contract.volume_specs import PersistentVolume, StorageClass

# kubectl's List of several objects.
LIST_API_VERSION: Final = "v1"


def as_kube_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": LIST_API_VERSION,
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    }


def kubernetes_form(obj: msgspec.Struct, status: Any = None, *, server: bool = True) -> Any:
    """The manifest `corral get -o yaml` prints for a stored object (`server`: with the
    server's metadata and the status)."""
    if isinstance(obj, Deployment):
        return deployment_to_apps(obj, status, server=server)
    if isinstance(obj, Network):
        return corral_form(obj, status, server=server)
    out: dict[str, Any] = to_builtins(obj)
    kind = str(out.get("kind"))
    out = {"apiVersion": KUBERNETES_KINDS[kind], "kind": kind, **_rest(out)}
    out["metadata"] = object_metadata(cast(Any, obj).metadata, server=server)
    if isinstance(obj, StorageClass):
        del out["metadata"]["namespace"]  # classes are cluster-wide
    if isinstance(obj, PersistentVolume):
        del out["metadata"]["namespace"]
        out["spec"] = _volume_spec(out["spec"])
    if server and status is not None:
        out["status"] = to_builtins(status)
    return out


def corral_form(obj: msgspec.Struct, status: Any = None, *, server: bool = True) -> Any:
    """corral's own `corral/v1` document of an object."""
    out: dict[str, Any] = to_builtins(obj)
    out = {"apiVersion": API_VERSION, "kind": out.get("kind"), **_rest(out)}
    if not server:
        metadata = out.get("metadata", {})
        out["metadata"] = {
            key: value
            for key, value in metadata.items()
            if key not in SERVER_METADATA and key != "specSequence"
        }
        out["metadata"].setdefault("namespace", "default")
        if isinstance(obj, (StorageClass, PersistentVolume)):
            del out["metadata"]["namespace"]
    elif status is not None:
        out["status"] = to_builtins(status)
    return out


def _rest(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in ("apiVersion", "kind")}


def _volume_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """corral's `node` as Kubernetes' nodeAffinity, its claimRef `ns/name` as an object
    (kube_storage reads both back)."""
    out = dict(spec)
    node = out.pop("node", "")
    if node:
        term = {"matchExpressions": [{"key": HOSTNAME_KEY, "operator": "In", "values": [node]}]}
        out["nodeAffinity"] = {"required": {"nodeSelectorTerms": [term]}}
    ref = out.get("claimRef")
    if isinstance(ref, str) and ref:
        namespace, _, name = ref.rpartition("/")
        out["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": namespace or "default"}
        out["claimRef"]["name"] = name
    return out


async def read_objects(
    client: CorralClient,
    kind: ApiKind,
    names: Iterable[str] | None = None,
    namespace: str | None = None,
) -> dict[str, tuple[msgspec.Struct, Any]]:
    """The stored objects of `kind` (of `namespace`, else the client's, for the kinds
    that have one), each with its status record (or None), by name; only `names` when
    given."""
    objects: dict[str, Any]
    statuses: dict[str, Any] = {}
    if kind.kind == "Deployment":
        objects = await client.deployments(namespace)
        statuses = await client.deployment_statuses(namespace)
    elif kind.kind == "Network":
        objects = await client.networks()
        statuses = await client.network_statuses()
    elif kind.kind == "Service":
        objects = await client.services(namespace)
    elif kind.kind == "PersistentVolume":
        objects = await client.volumes()
        statuses = await client.volume_statuses()
    elif kind.kind == "PersistentVolumeClaim":
        objects = await client.claims(namespace)
        statuses = await client.claim_statuses(namespace)
    else:
        objects = await client.storage_classes()
    wanted = None if names is None else set(names)
    return {
        name: (obj, statuses.get(name))
        for name, obj in sorted(objects.items())
        if wanted is None or name in wanted
    }


def with_allocations(wanted: msgspec.Struct, stored: msgspec.Struct | None) -> msgspec.Struct:
    """What apply would store for `wanted`: what the owner allocates and a file leaves
    out (a Service's clusterIP and node ports, a Network's subnet) stays as stored."""
    if isinstance(wanted, Service) and isinstance(stored, Service):
        spec = wanted.spec
        if not spec.cluster_ip:
            spec = msgspec.structs.replace(spec, cluster_ip=stored.spec.cluster_ip)
        if spec.type == "NodePort":
            before = {(p.port, p.protocol): p.node_port for p in stored.spec.ports}
            ports = [
                p
                if p.node_port
                else msgspec.structs.replace(p, node_port=before.get((p.port, p.protocol), 0))
                for p in spec.ports
            ]
            spec = msgspec.structs.replace(spec, ports=ports)
        return msgspec.structs.replace(wanted, spec=spec)
    if isinstance(wanted, Network) and isinstance(stored, Network) and not wanted.spec.subnet:
        return msgspec.structs.replace(wanted, spec=stored.spec)
    return wanted


__all__ = [
    "as_kube_list",
    "corral_form",
    "kubernetes_form",
    "read_objects",
    "with_allocations",
]
