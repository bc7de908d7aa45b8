"""Kubernetes' `apps/v1` Deployment and corral's `corral/v1` one, both ways
(docs/manifests.md).

corral's template is one container (corral.contract.specs.ContainerTemplate): a Pod
template's single container and the Pod-level fields corral has (volumes, nodeSelector,
terminationGracePeriodSeconds) become its fields; several containers are refused, naming
`spec.template.spec.containers[1]`. What corral does not support is dropped and listed
(the caller warns, one line per document); what would change what runs if dropped is
refused, naming the field (RefusedField). Status and the metadata the server sets (uid,
resourceVersion, generation, creationTimestamp, managedFields) are read-only: ignored, as
`kubectl apply` ignores them, so `corral get -o yaml` output applies unchanged.

corral's own fields that apps/v1 has no place for travel as annotations: the template's
`networks` as `corral/networks` on the Pod template, `autoRollback` and `replacement`
as `corral/auto-rollback` (JSON) and `corral/replacement` on the Deployment; the
template's `restartedAt` is kubectl's own `kubectl.kubernetes.io/restartedAt`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from corral.client.api import to_builtins
from corral.client.cli.foreign_fields import SERVER_METADATA, drop_unknown
from corral.client.cli.kube_storage import RefusedField
from corral.contract.specs import (
    API_VERSION,
    ContainerPort,
    Deployment,
    DeploymentStrategy,
    Probe,
    Resources,
    VolumeMount,
)
from corral.contract.state import DeploymentStatus

APPS_API_VERSION: Final = "apps/v1"
NETWORKS_ANNOTATION: Final = "corral/networks"
AUTO_ROLLBACK_ANNOTATION: Final = "corral/auto-rollback"
REPLACEMENT_ANNOTATION: Final = "corral/replacement"
RESTARTED_AT_ANNOTATION: Final = "kubectl.kubernetes.io/restartedAt"
# Written by kubectl on the objects it applies; a copy of the whole object, not a setting.
LAST_APPLIED_ANNOTATION: Final = "kubectl.kubernetes.io/last-applied-configuration"

_TEMPLATE: Final = "spec.template"
_POD: Final = "spec.template.spec"
_CONTAINER: Final = "spec.template.spec.containers[0]"
# Fields that would change what runs if corral dropped them: refused, with why.
_REFUSED_CONTAINER: Final = {
    "workingDir": "corral runs the image's working directory; set it in the image",
    "envFrom": "corral takes env as a name/value list only (no ConfigMaps or Secrets)",
    "volumeDevices": "corral's volumes are filesystems (volumeMounts)",
}
_REFUSED_POD_FLAGS: Final = ("hostNetwork", "hostPID", "hostIPC")
# What a Kubernetes template says about a Pod that corral's template does not need to
# keep: the container's name (corral names containers after their replica).
_PLAIN_CONTAINER: Final = frozenset({"name"})


def is_apps(document: dict[str, Any]) -> bool:
    return document.get("kind") == "Deployment" and document.get("apiVersion") == APPS_API_VERSION


# --- apps/v1 -> corral/v1 -------------------------------------------------------------


def deployment_from_apps(document: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """corral's Deployment document for an apps/v1 one, and the paths of the fields it
    dropped (for the caller's warning); raises RefusedField naming a field."""
    dropped: list[str] = []
    for key in document:
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            dropped.append(key)
    metadata = _mapping(document.get("metadata", {}), "metadata")
    out_meta, annotations = _object_metadata(metadata, dropped)
    spec = _mapping(document.get("spec"), "spec")
    out_spec: dict[str, Any] = {}
    for key, value in spec.items():
        if key in (
            "replicas",
            "minReadySeconds",
            "revisionHistoryLimit",
            "progressDeadlineSeconds",
            "paused",
        ):
            out_spec[key] = value
        elif key == "strategy":
            dropped += drop_unknown(value, DeploymentStrategy, "spec.strategy")
            out_spec[key] = value
        elif key not in ("selector", "template"):
            dropped.append(f"spec.{key}")
    if REPLACEMENT_ANNOTATION in annotations:
        out_spec["replacement"] = annotations.pop(REPLACEMENT_ANNOTATION)
    if AUTO_ROLLBACK_ANNOTATION in annotations:
        try:
            out_spec["autoRollback"] = json.loads(annotations.pop(AUTO_ROLLBACK_ANNOTATION))
        except (TypeError, ValueError) as error:
            raise RefusedField(
                f"metadata.annotations.{AUTO_ROLLBACK_ANNOTATION}", f"not JSON: {error}"
            ) from None
    if annotations:
        out_meta["annotations"] = annotations
    template = _mapping(spec.get("template"), _TEMPLATE)
    out_template = _template(template, dropped)
    policy = out_template.get("restartPolicy")
    if policy is not None and out_spec.get("replacement") != "Never":
        raise RefusedField(
            f"{_POD}.restartPolicy",
            f"{policy!r}: a Deployment's Pods restart Always (only a container, annotated "
            f"{REPLACEMENT_ANNOTATION}: Never, restarts otherwise: docs/containers.md)",
        )
    labels = out_template.get("labels", {})
    _check_selector(spec.get("selector"), labels)
    name = out_meta.get("name")
    if labels == {"app": name}:
        # What corral gives a template without labels (replica_labels): kept as none, so
        # a Deployment made by `corral create deployment` comes back unchanged.
        del out_template["labels"]
    out_spec["template"] = out_template
    corral = {"apiVersion": API_VERSION, "kind": "Deployment", "metadata": out_meta}
    corral["spec"] = out_spec
    return corral, dropped


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        raise RefusedField(where, "missing")
    if not isinstance(value, dict):
        raise RefusedField(where, f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RefusedField(where, f"expected a list, got {type(value).__name__}")
    return value


def _object_metadata(
    metadata: dict[str, Any], dropped: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    out: dict[str, Any] = {}
    annotations: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in ("name", "namespace", "labels"):
            out[key] = value
        elif key == "annotations":
            annotations = dict(_mapping(value, "metadata.annotations"))
            if LAST_APPLIED_ANNOTATION in annotations:
                del annotations[LAST_APPLIED_ANNOTATION]
                dropped.append(f"metadata.annotations.{LAST_APPLIED_ANNOTATION}")
        elif key not in SERVER_METADATA:
            dropped.append(f"metadata.{key}")
    return out, annotations


def _check_selector(selector: Any, labels: dict[str, Any]) -> None:
    if selector is None:
        raise RefusedField(
            "spec.selector",
            "missing: apps/v1 needs matchLabels, which the template's labels must match",
        )
    selector = _mapping(selector, "spec.selector")
    for key in selector:
        if key not in ("matchLabels", "matchExpressions"):
            raise RefusedField(f"spec.selector.{key}", "not a field of a label selector")
    if selector.get("matchExpressions"):
        raise RefusedField(
            "spec.selector.matchExpressions",
            "not supported: select the template's labels with matchLabels",
        )
    match = _mapping(selector.get("matchLabels"), "spec.selector.matchLabels")
    if not match:
        raise RefusedField("spec.selector.matchLabels", "empty: it must select the template")
    for key, value in match.items():
        if key not in labels:
            raise RefusedField(
                f"spec.selector.matchLabels.{key}",
                f"does not match the template: `spec.template.metadata.labels` has no {key!r}",
            )
        if labels[key] != value:
            raise RefusedField(
                f"spec.selector.matchLabels.{key}",
                f"{value!r} does not match the template: `spec.template.metadata.labels."
                f"{key}` is {labels[key]!r}",
            )


def _template(template: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in template:
        if key not in ("metadata", "spec"):
            dropped.append(f"{_TEMPLATE}.{key}")
    metadata = _mapping(template.get("metadata", {}), f"{_TEMPLATE}.metadata")
    for key, value in metadata.items():
        where = f"{_TEMPLATE}.metadata.{key}"
        if key == "labels":
            out["labels"] = value
        elif key == "annotations":
            for name, text in _mapping(value, where).items():
                if name == RESTARTED_AT_ANNOTATION:
                    out["restartedAt"] = text
                elif name == NETWORKS_ANNOTATION:
                    if not isinstance(text, str):
                        raise RefusedField(f"{where}.{name}", "expected comma-separated names")
                    out["networks"] = [n.strip() for n in text.split(",") if n.strip()]
                else:
                    dropped.append(f"{where}.{name}")
        elif not (key == "creationTimestamp" and value is None):  # kubectl prints it
            dropped.append(where)
    pod = _mapping(template.get("spec"), _POD)
    containers = _list(pod.get("containers"), f"{_POD}.containers")
    if not containers:
        raise RefusedField(f"{_POD}.containers", "empty: give one container")
    if len(containers) > 1:
        raise RefusedField(
            f"{_POD}.containers[1]",
            "corral runs one container per replica (docs/manifests.md): make the other "
            "container a Deployment of its own",
        )
    for key, value in pod.items():
        where = f"{_POD}.{key}"
        if key == "containers":
            continue
        if key in ("volumes", "nodeSelector", "terminationGracePeriodSeconds"):
            out[key] = value
        elif key == "initContainers":
            if value:
                raise RefusedField(f"{where}[0]", "corral does not run init containers")
        elif key in _REFUSED_POD_FLAGS:
            if value:
                raise RefusedField(where, "corral's replicas have namespaces of their own")
        elif key == "restartPolicy":
            if value in ("OnFailure", "Never"):
                out["restartPolicy"] = value  # a container's only (deployment_from_apps)
            elif value != "Always":
                raise RefusedField(where, f"{value!r}: a Deployment's Pods restart Always")
        else:
            dropped.append(where)
    for index, volume in enumerate(_list(out.get("volumes", []), f"{_POD}.volumes")):
        where = f"{_POD}.volumes[{index}]"
        for key in _mapping(volume, where):
            if key not in ("name", "persistentVolumeClaim", "emptyDir"):
                raise RefusedField(
                    f"{where}.{key}",
                    "not supported: corral's volumes are persistentVolumeClaim and emptyDir",
                )
    out.update(_container(_mapping(containers[0], _CONTAINER), dropped))
    return out


def _container(container: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in container.items():
        where = f"{_CONTAINER}.{key}"
        if key in ("image", "command", "args"):
            out[key] = value
        elif key == "env":
            out["env"] = _env(_list(value, where))
        elif key == "ports":
            for index, port in enumerate(_list(value, where)):
                for refused in ("hostPort", "hostIP"):
                    if isinstance(port, dict) and refused in port:
                        raise RefusedField(
                            f"{where}[{index}].{refused}",
                            "not supported: publish a port on every node with a NodePort Service",
                        )
            dropped += drop_unknown(value, list[ContainerPort], where)
            out["ports"] = value
        elif key == "resources":
            dropped += drop_unknown(value, Resources, where)
            out["resources"] = value
        elif key in ("livenessProbe", "readinessProbe", "startupProbe"):
            _probe(value, where)
            dropped += drop_unknown(value, Probe, where)
            out[key] = value
        elif key == "volumeMounts":
            for index, mount in enumerate(_list(value, where)):
                if isinstance(mount, dict) and "subPathExpr" in mount:
                    raise RefusedField(f"{where}[{index}].subPathExpr", "not supported: subPath")
            dropped += drop_unknown(value, list[VolumeMount], where)
            out["volumeMounts"] = value
        elif key == "lifecycle":
            for hook, signal in _mapping(value, where).items():
                if hook == "stopSignal":
                    out["stopSignal"] = signal
                else:
                    dropped.append(f"{where}.{hook}")
        elif key in _REFUSED_CONTAINER:
            raise RefusedField(where, f"not supported: {_REFUSED_CONTAINER[key]}")
        elif key not in _PLAIN_CONTAINER:
            dropped.append(where)
    if "image" not in out:
        raise RefusedField(f"{_CONTAINER}.image", "missing")
    return out


def _env(items: list[Any]) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for index, item in enumerate(items):
        where = f"{_CONTAINER}.env[{index}]"
        item = _mapping(item, where)
        if "valueFrom" in item:
            raise RefusedField(
                f"{where}.valueFrom",
                "not supported: corral takes a value (no Secrets, ConfigMaps or field refs)",
            )
        for key in item:
            if key not in ("name", "value"):
                raise RefusedField(f"{where}.{key}", "not a field of an env entry")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise RefusedField(f"{where}.name", "missing")
        if name in env:
            raise RefusedField(f"{where}.name", f"{name!r} is given twice")
        value = item.get("value", "")
        if not isinstance(value, str):
            raise RefusedField(
                f"{where}.value", f"expected a string, got {value!r}: quote it, as Kubernetes"
            )
        env[name] = value
    return env


def _probe(probe: Any, where: str) -> None:
    probe = _mapping(probe, where)
    if "grpc" in probe:
        raise RefusedField(f"{where}.grpc", "not supported: use exec, httpGet or tcpSocket")
    get = probe.get("httpGet")
    if isinstance(get, dict) and "host" in get:
        raise RefusedField(
            f"{where}.httpGet.host", "not supported: corral probes the replica's own address"
        )
    for handler in ("httpGet", "tcpSocket"):
        action = probe.get(handler)
        if isinstance(action, dict) and isinstance(action.get("port"), str):
            port = action["port"]
            if port.isdigit():  # Kubernetes' IntOrString: "8080" is a number
                action["port"] = int(port)


# Where the fields of corral's template live in a Kubernetes Deployment: the decoder's
# error paths (`spec.template.env`) become the manifest's (docs/manifests.md).
_POD_FIELDS: Final = ("volumes", "nodeSelector", "terminationGracePeriodSeconds")


def kubernetes_path(path: str) -> str:
    """`spec.template.ports[0]` -> `spec.template.spec.containers[0].ports[0]`."""
    prefix = f"{_TEMPLATE}."
    if not path.startswith(prefix):
        return path
    rest = path[len(prefix) :]
    first = rest.split(".", 1)[0].split("[", 1)[0]
    if first in _POD_FIELDS:
        return f"{_POD}.{rest}"
    if first == "labels":
        return f"{_TEMPLATE}.metadata.{rest}"
    if first == "stopSignal":
        return f"{_CONTAINER}.lifecycle.{rest}"
    if first == "restartedAt":
        return f"{_TEMPLATE}.metadata.annotations.{RESTARTED_AT_ANNOTATION}"
    if first == "networks":
        return f"{_TEMPLATE}.metadata.annotations.{NETWORKS_ANNOTATION}"
    return f"{_CONTAINER}.{rest}"


# --- corral/v1 -> apps/v1 -------------------------------------------------------------


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def object_metadata(metadata: Any, *, server: bool = True) -> dict[str, Any]:
    """A corral ObjectMeta as Kubernetes prints it (with the server's fields if `server`)."""
    out: dict[str, Any] = {"name": metadata.name, "namespace": metadata.namespace}
    if metadata.labels:
        out["labels"] = dict(metadata.labels)
    if metadata.annotations:
        out["annotations"] = dict(metadata.annotations)
    if server:
        if metadata.uid:
            out["uid"] = metadata.uid
        if metadata.generation:
            out["generation"] = metadata.generation
        if metadata.creation_timestamp:
            out["creationTimestamp"] = rfc3339(metadata.creation_timestamp)
    return out


def deployment_to_apps(
    deployment: Deployment, status: DeploymentStatus | None = None, *, server: bool = True
) -> dict[str, Any]:
    """The apps/v1 manifest of a stored Deployment, as `kubectl get -o yaml` prints one:
    `corral apply -f` takes it back unchanged. `server`: with the server's metadata and
    the status."""
    spec = deployment.spec
    template = spec.template
    name = deployment.metadata.name
    metadata = object_metadata(deployment.metadata, server=server)
    extra: dict[str, str] = {}
    if spec.auto_rollback is not None:
        extra[AUTO_ROLLBACK_ANNOTATION] = json.dumps(
            to_builtins(spec.auto_rollback), separators=(",", ":"), sort_keys=True
        )
    if spec.replacement != "Fast":
        extra[REPLACEMENT_ANNOTATION] = spec.replacement
    if extra:
        metadata["annotations"] = {**metadata.get("annotations", {}), **extra}
    labels = dict(template.labels) if template.labels else {"app": name}
    container: dict[str, Any] = {"name": name, "image": template.image}
    fields = to_builtins(template)
    for key in ("command", "args"):
        if key in fields:
            container[key] = fields[key]
    if template.env:
        container["env"] = [{"name": k, "value": v} for k, v in template.env.items()]
    for key in ("ports", "resources", "livenessProbe", "readinessProbe", "startupProbe"):
        if key in fields:
            container[key] = fields[key]
    if "volumeMounts" in fields:
        container["volumeMounts"] = fields["volumeMounts"]
    if template.stop_signal:
        container["lifecycle"] = {"stopSignal": template.stop_signal}
    pod: dict[str, Any] = {"containers": [container]}
    if "volumes" in fields:
        pod["volumes"] = fields["volumes"]
    if template.node_selector:
        pod["nodeSelector"] = dict(template.node_selector)
    pod["terminationGracePeriodSeconds"] = template.termination_grace_period_seconds
    if template.restart_policy != "Always":  # a container's (docs/containers.md)
        pod["restartPolicy"] = template.restart_policy
    template_meta: dict[str, Any] = {"labels": labels}
    annotations: dict[str, str] = {}
    if template.restarted_at:
        annotations[RESTARTED_AT_ANNOTATION] = template.restarted_at
    if template.networks:
        annotations[NETWORKS_ANNOTATION] = ",".join(template.networks)
    if annotations:
        template_meta["annotations"] = annotations
    out_spec: dict[str, Any] = {
        "replicas": spec.replicas,
        "selector": {"matchLabels": dict(labels)},
        "template": {"metadata": template_meta, "spec": pod},
        "strategy": _strategy(spec.strategy),
        "revisionHistoryLimit": spec.revision_history_limit,
        "progressDeadlineSeconds": spec.progress_deadline_seconds,
    }
    if spec.min_ready_seconds:
        out_spec["minReadySeconds"] = spec.min_ready_seconds
    if spec.paused:
        out_spec["paused"] = True
    out: dict[str, Any] = {
        "apiVersion": APPS_API_VERSION,
        "kind": "Deployment",
        "metadata": metadata,
        "spec": out_spec,
    }
    if server:
        out["status"] = deployment_status(status)
    return out


def _strategy(strategy: DeploymentStrategy) -> dict[str, Any]:
    out: dict[str, Any] = {"type": strategy.type}
    if strategy.rolling_update is not None:
        out["rollingUpdate"] = to_builtins(strategy.rolling_update)
    return out


def deployment_status(status: DeploymentStatus | None) -> dict[str, Any]:
    """kubectl's status fields (and corral's pending count and reason)."""
    if status is None:
        return {}
    out: dict[str, Any] = {
        "observedGeneration": status.observed_generation,
        "replicas": status.placed,
        "updatedReplicas": status.updated,
        "readyReplicas": status.ready,
        "availableReplicas": status.available,
    }
    unavailable = max(0, status.replicas - status.available)
    if unavailable:
        out["unavailableReplicas"] = unavailable
    if status.pending:
        out["pending"] = status.pending
    if status.pending_reason:
        out["pendingReason"] = status.pending_reason
    if status.conditions:
        out["conditions"] = [
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastUpdateTime": rfc3339(c.last_update_time),
                "lastTransitionTime": rfc3339(c.last_transition_time),
            }
            for c in status.conditions
        ]
    if status.auto_rollback is not None:
        out["autoRollback"] = to_builtins(status.auto_rollback)
    return out


def strip_server_fields(document: dict[str, Any]) -> dict[str, Any]:
    """`document` without status and the server's metadata (for diff)."""
    out = {key: value for key, value in document.items() if key != "status"}
    metadata = out.get("metadata")
    if isinstance(metadata, dict):
        out["metadata"] = {k: v for k, v in metadata.items() if k not in SERVER_METADATA}
    return out


__all__ = [
    "APPS_API_VERSION",
    "deployment_from_apps",
    "deployment_to_apps",
    "is_apps",
    "kubernetes_path",
]
