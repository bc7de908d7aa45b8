"""The names the read commands accept: singular, plural and short, like kubectl."""

from __future__ import annotations

import click

from corral.client.api import NotFound

DEPLOYMENTS = "deployments"
REPLICAS = "replicas"
NODES = "nodes"
NETWORKS = "networks"
SERVICES = "services"
ENDPOINTS = "endpoints"
# The kinds netmgr keeps (corral.client.cli.net_views shows them).
NETWORKING = (NETWORKS, SERVICES, ENDPOINTS)
VOLUMES = "persistentvolumes"
CLAIMS = "persistentvolumeclaims"
STORAGE_CLASSES = "storageclasses"
# The kinds volmgr keeps (corral.client.cli.vol_views shows them).
STORAGE = (VOLUMES, CLAIMS, STORAGE_CLASSES)
# Rancher's containers: Deployments made by `corral create container` (container_commands).
CONTAINERS = "containers"

_READ_KINDS = {
    DEPLOYMENTS: ("deployment", "deployments", "deploy"),
    REPLICAS: ("replica", "replicas", "pod", "pods", "po"),
    NODES: ("node", "nodes", "no"),
    NETWORKS: ("network", "networks", "net"),
    SERVICES: ("service", "services", "svc"),
    ENDPOINTS: ("endpoints", "endpoint", "ep"),
    VOLUMES: ("persistentvolume", "persistentvolumes", "pv"),
    CLAIMS: ("persistentvolumeclaim", "persistentvolumeclaims", "pvc"),
    STORAGE_CLASSES: ("storageclass", "storageclasses", "sc"),
    CONTAINERS: ("container", "containers"),
}
SINGULAR = {
    DEPLOYMENTS: "deployment",
    REPLICAS: "replica",
    NODES: "node",
    NETWORKS: "network",
    SERVICES: "service",
    ENDPOINTS: "endpoints",
    VOLUMES: "persistentvolume",
    CLAIMS: "persistentvolumeclaim",
    STORAGE_CLASSES: "storageclass",
    CONTAINERS: "container",
}


def not_found(kind: str, name: str) -> NotFound:
    """The error of a read of `name`, of `kind` (any spelling SINGULAR knows), not found."""
    return NotFound(f"{SINGULAR[kind]} {name!r} not found")


def read_kind(text: str) -> str:
    """'deploy' -> 'deployments'; raises click.BadParameter naming the kinds."""
    wanted = text.lower()
    for kind, spellings in _READ_KINDS.items():
        if wanted in spellings:
            return kind
    known = ", ".join(_READ_KINDS)
    raise click.BadParameter(f"unknown kind {text!r}: corral shows {known}", param_hint="KIND")


def split_kind_name(kind: str, name: str | None) -> tuple[str, str | None]:
    """Accept both `deployment my-app` and `deployment/my-app`."""
    if "/" in kind:
        if name is not None:
            raise click.UsageError(f"give either {kind!r} or a NAME, not both")
        kind, _, name = kind.partition("/")
        if not name:
            raise click.BadParameter(f"{kind}/ has no name after the slash", param_hint="KIND")
    return kind, name
