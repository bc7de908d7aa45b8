"""`corral create pv|pvc|storageclass` (Kubernetes' words, with flags) and `corral volume
release`. Storage is volmgr's (docs/volumes.md): requests on
corral.api.persistentvolume|persistentvolumeclaim|storageclass.*, reads from its buckets."""

from __future__ import annotations

from typing import Any

import click

from corral.client.api import CorralClient
from corral.client.cli.net_requests import create_new, validated
from corral.client.cli.options import parse_labels, parse_pairs
from corral.client.cli.runner import run_with_client, settings_of
from corral.client.cli.service_commands import parse_selector
from corral.contract.events import Reply
from corral.contract.specs import API_VERSION
from corral.contract.volume_specs import (
    ACCESS_MODES,
    DEFAULT_CLASS_ANNOTATION,
    PersistentVolume,
    PersistentVolumeClaim,
    StorageClass,
    VolumeReleaseRequest,
)

_SHORT_MODES = {"rwo": "ReadWriteOnce", "rox": "ReadOnlyMany", "rwx": "ReadWriteMany"}
_SHORT_MODES["rwop"] = "ReadWriteOncePod"


class AccessModeType(click.ParamType[str, Any]):
    """An access mode: its name (any case) or kubectl's short form (RWO, ROX, RWX, RWOP)."""

    name = "access mode"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        for mode in ACCESS_MODES:
            if text.lower() == mode.lower():
                return mode
        if text.lower() in _SHORT_MODES:
            return _SHORT_MODES[text.lower()]
        self.fail(
            f"{text!r} is not an access mode: one of {', '.join(ACCESS_MODES)} "
            "(or RWO, ROX, RWX, RWOP)",
            param,
            ctx,
        )


def _choice(*values: str) -> click.Choice[str]:
    return click.Choice(values, case_sensitive=False)


def _canonical(value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    return next(choice for choice in choices if choice.lower() == value.lower())


_RECLAIM = ("Retain", "Delete")
_BINDING = ("Immediate", "WaitForFirstConsumer")

_size_option = click.option(
    "--size",
    required=True,
    metavar="SIZE",
    help="A storage quantity, e.g. 100Mi, 1Gi, 500M.",
)
_access_option = click.option(
    "--access-mode",
    "access_modes",
    type=AccessModeType(),
    multiple=True,
    metavar="MODE",
    help="ReadWriteOnce (default), ReadOnlyMany, ReadWriteMany or ReadWriteOncePod "
    "(or RWO, ROX, RWX, RWOP). Repeatable.",
)
_label_option = click.option(
    "--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable."
)


def _metadata(name: str, labels: tuple[str, ...]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = parse_labels(labels)
    return metadata


# --- create pv --------------------------------------------------------------------------

# A field's path -> the flag it came from (the first prefix that matches names it).
_VOLUME_FLAGS = {
    "metadata.name": "NAME",
    "metadata.labels": "--label",
    "spec.capacity": "--size",
    "spec.accessModes": "--access-mode",
    "spec.persistentVolumeReclaimPolicy": "--reclaim-policy",
    "spec.storageClassName": "--storage-class",
    "spec.node": "--node",
    "spec.hostPath": "--host-path",
    "spec.dockerVolume.options": "--opt",
    "spec.dockerVolume": "--driver",
}


def volume_manifest(
    name: str,
    *,
    size: str,
    access_modes: tuple[str, ...] = (),
    reclaim_policy: str | None = None,
    storage_class: str | None = None,
    node: str | None = None,
    host_path: str | None = None,
    driver: str | None = None,
    options: tuple[str, ...] = (),
    labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A PersistentVolume as JSON-able data. --driver or --opt make it a dockerVolume
    (driver `local` unless --driver says otherwise)."""
    spec: dict[str, Any] = {"capacity": {"storage": size}}
    if access_modes:
        spec["accessModes"] = list(access_modes)
    if reclaim_policy is not None:
        spec["persistentVolumeReclaimPolicy"] = _canonical(reclaim_policy, _RECLAIM)
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    if node is not None:
        spec["node"] = node
    if host_path is not None:
        spec["hostPath"] = {"path": host_path}
    if driver is not None or options:
        docker: dict[str, Any] = {"options": parse_pairs(options, "--opt")}
        if driver is not None:
            docker["driver"] = driver
        spec["dockerVolume"] = docker
    return {
        "apiVersion": API_VERSION,
        "kind": "PersistentVolume",
        "metadata": _metadata(name, labels),
        "spec": spec,
    }


@click.command("pv")
@click.argument("name")
@_size_option
@_access_option
@click.option(
    "--reclaim-policy",
    type=_choice(*_RECLAIM),
    metavar="Retain|Delete",
    help="What deleting its claim does: Retain (default) keeps the data, Delete removes it.",
)
@click.option(
    "--storage-class",
    metavar="CLASS",
    help="Its class (default: none; claims of that class bind to it).",
)
@click.option(
    "--node",
    metavar="NODE",
    help="The node it lives on (default: the node where it is first used).",
)
@click.option(
    "--host-path",
    metavar="PATH",
    help="A directory of the node (made when missing) instead of a volume corral provisions.",
)
@click.option(
    "--driver",
    metavar="DRIVER",
    help="A Docker volume driver (e.g. local, or an installed plugin): a volume made with "
    "--opt on every node that uses it.",
)
@click.option(
    "--opt",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A driver option (as docker volume create --opt), e.g. type=tmpfs. Repeatable.",
)
@_label_option
@click.pass_context
def create_volume(ctx: click.Context, /, name: str, **flags: Any) -> None:
    """Create PersistentVolume NAME of --size. Without a source it is a node-local volume
    corral provisions (an ext4 image of that size) on --node, or where first used."""
    raw = validated(volume_manifest(name, **flags), PersistentVolume, _VOLUME_FLAGS)
    create_new(settings_of(ctx), "PersistentVolume", name, raw)


# --- create pvc -------------------------------------------------------------------------

_CLAIM_FLAGS = {
    "metadata.name": "NAME",
    "metadata.labels": "--label",
    "spec.resources": "--size",
    "spec.accessModes": "--access-mode",
    "spec.storageClassName": "--storage-class",
    "spec.volumeName": "--volume",
    "spec.selector": "--selector",
}


def claim_manifest(
    name: str,
    *,
    size: str,
    access_modes: tuple[str, ...] = (),
    storage_class: str | None = None,
    volume: str | None = None,
    selectors: tuple[str, ...] = (),
    labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A PersistentVolumeClaim as JSON-able data. `storage_class` None leaves the class
    absent (a fitting volume without a class, else the default class); "" is no class."""
    spec: dict[str, Any] = {"resources": {"requests": {"storage": size}}}
    if access_modes:
        spec["accessModes"] = list(access_modes)
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    if volume is not None:
        spec["volumeName"] = volume
    if selectors:
        spec["selector"] = {"matchLabels": parse_selector(selectors)}
    return {
        "apiVersion": API_VERSION,
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(name, labels),
        "spec": spec,
    }


@click.command("pvc")
@click.argument("name")
@_size_option
@_access_option
@click.option(
    "--storage-class",
    metavar="CLASS",
    help="The class to bind or provision by. Not given: a fitting volume without a class, "
    'else the default class; "" : volumes without a class only.',
)
@click.option("--volume", metavar="PV", help="Bind to exactly this PersistentVolume.")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    metavar="KEY=VALUE[,...]",
    help="Bind only to a volume with these labels. Repeatable.",
)
@_label_option
@click.pass_context
def create_claim(ctx: click.Context, /, name: str, **flags: Any) -> None:
    """Create PersistentVolumeClaim NAME for --size: volmgr binds it to the smallest fitting
    volume, or provisions one; a template's volumes name it (persistentVolumeClaim)."""
    raw = validated(claim_manifest(name, **flags), PersistentVolumeClaim, _CLAIM_FLAGS)
    create_new(settings_of(ctx), "PersistentVolumeClaim", name, raw)


# --- create storageclass ---------------------------------------------------------------------

_CLASS_FLAGS = {
    "metadata.name": "NAME",
    "metadata.labels": "--label",
    "provisioner": "--provisioner",
    "parameters": "--parameter",
    "reclaimPolicy": "--reclaim-policy",
    "volumeBindingMode": "--binding-mode",
}


def class_manifest(
    name: str,
    *,
    provisioner: str,
    parameters: tuple[str, ...] = (),
    reclaim_policy: str | None = None,
    binding_mode: str | None = None,
    default: bool = False,
    labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A StorageClass as JSON-able data (its fields at the top level, as Kubernetes')."""
    metadata = _metadata(name, labels)
    if default:
        metadata["annotations"] = {DEFAULT_CLASS_ANNOTATION: "true"}
    manifest: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "StorageClass",
        "metadata": metadata,
        "provisioner": provisioner,
    }
    if parameters:
        manifest["parameters"] = parse_pairs(parameters, "--parameter")
    if reclaim_policy is not None:
        manifest["reclaimPolicy"] = _canonical(reclaim_policy, _RECLAIM)
    if binding_mode is not None:
        manifest["volumeBindingMode"] = _canonical(binding_mode, _BINDING)
    return manifest


@click.command("storageclass")
@click.argument("name")
@click.option(
    "--provisioner",
    required=True,
    metavar="NAME",
    help="corral.io/local-volume (an ext4 image on the node), corral.io/docker-volume "
    "(a Docker volume driver: --parameter driver=... and its options) or "
    "kubernetes.io/no-provisioner (existing volumes only).",
)
@click.option(
    "--parameter",
    "parameters",
    multiple=True,
    metavar="KEY=VALUE",
    help="A parameter of the provisioner. Repeatable.",
)
@click.option(
    "--reclaim-policy",
    type=_choice(*_RECLAIM),
    metavar="Retain|Delete",
    help="Of the volumes it provisions (default Delete).",
)
@click.option(
    "--binding-mode",
    type=_choice(*_BINDING),
    metavar="Immediate|WaitForFirstConsumer",
    help="When a claim's volume is provisioned: at once (default), or on the node of the "
    "first replica that uses it.",
)
@click.option(
    "--default",
    "default",
    is_flag=True,
    help="Make it the default class (claims that name none are provisioned by it).",
)
@_label_option
@click.pass_context
def create_storage_class(ctx: click.Context, /, name: str, **flags: Any) -> None:
    """Create StorageClass NAME: how claims of this class get a volume."""
    raw = validated(class_manifest(name, **flags), StorageClass, _CLASS_FLAGS)
    create_new(settings_of(ctx), "StorageClass", name, raw)


# --- volume release ---------------------------------------------------------------------


@click.group()
def volume() -> None:
    """Operator commands about PersistentVolumes (see also: corral get|describe pv)."""


@volume.command("release")
@click.argument("name")
@click.option(
    "--node",
    required=True,
    metavar="NODE",
    help="The node that is gone for good: its attachment of the volume is forgotten.",
)
@click.pass_context
def volume_release(ctx: click.Context, name: str, node: str) -> None:
    """Say that NODE no longer uses volume NAME (the node is gone for good), so that a
    ReadWriteOnce volume blocked by it may be mounted elsewhere. Only when the node's
    containers are known to be stopped: otherwise two nodes may write at once."""
    validated(
        {"name": name, "node": node}, VolumeReleaseRequest, {"name": "NAME", "node": "--node"}
    )

    async def send(client: CorralClient) -> Reply:
        return await client.release_volume(name, node)

    reply = run_with_client(settings_of(ctx), send)  # a refusal: its error, exit 1
    click.echo(reply.message or f"persistentvolume/{name} released from node {node}")
