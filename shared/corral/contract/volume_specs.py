"""What a client declares about storage: PersistentVolumes, claims and StorageClasses
(owner: volmgr; docs/volumes.md).

The shapes are Kubernetes' own `v1` fields (capacity.storage, accessModes,
persistentVolumeReclaimPolicy, storageClassName, hostPath, local, resources.requests.storage,
volumeName, selector.matchLabels; a StorageClass's provisioner, parameters, reclaimPolicy,
volumeBindingMode), so a manifest's JSON is a corral payload, plus corral's own: a volume's
`node` (Kubernetes says it with nodeAffinity on kubernetes.io/hostname) and `dockerVolume`
(a Docker volume driver with options). PersistentVolumes and StorageClasses are
cluster-wide; a claim lives in a namespace, like a Deployment.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Annotated, Final, Literal

import msgspec

from corral.contract.codec import described_pattern
from corral.contract.names import object_key
from corral.contract.quantity import (
    MAX_MEMORY_BYTES,
    MAX_QUANTITY_CHARS,
    STORAGE_PATTERN,
    storage_bytes,
)
from corral.contract.specs import (
    DnsLabel,
    Labels,
    ObjectMeta,
    _Public,
    _whole,
    check_cluster_wide,
    check_unique,
)

AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
ACCESS_MODES: Final = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
ReclaimPolicy = Literal["Retain", "Delete"]
BindingMode = Literal["Immediate", "WaitForFirstConsumer"]

# Provisioners corral runs itself (docs/volumes.md, "Provisioners").
PROVISIONER_LOCAL: Final = "corral.io/local-volume"  # an ext4 image on a loop device
PROVISIONER_DOCKER: Final = "corral.io/docker-volume"  # a Docker volume driver
NO_PROVISIONER: Final = "kubernetes.io/no-provisioner"  # static volumes only
PROVISIONERS: Final = (PROVISIONER_LOCAL, PROVISIONER_DOCKER, NO_PROVISIONER)
# The StorageClass volmgr makes at start (the default unless another one is marked so).
DEFAULT_STORAGE_CLASS: Final = "local"
# Kubernetes' annotation that marks the default StorageClass.
DEFAULT_CLASS_ANNOTATION: Final = "storageclass.kubernetes.io/is-default-class"

# Filesystem types of Docker's `local` driver whose data is not on the node (mount -t).
NETWORK_TYPES: Final = frozenset({"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs"})
MULTI_NODE_MODES: Final = frozenset({"ReadWriteMany", "ReadOnlyMany"})


def single_node(access_modes: Iterable[str]) -> bool:
    """A volume with these modes may be mounted on one node at a time: it offers neither
    ReadWriteMany nor ReadOnlyMany (the one rule of the scheduler, volmgr's parts and the
    agent; docs/volumes.md, "Never two writers")."""
    return not MULTI_NODE_MODES.intersection(access_modes)


MAX_ACCESS_MODES: Final = 4
MAX_PATH: Final = 4096
MAX_DRIVER_OPTIONS: Final = 32
MAX_PARAMETERS: Final = 32

_STORAGE_TEXT_PATTERN: Final = described_pattern(
    STORAGE_PATTERN, "not a storage quantity (examples: 100Mi, 1Gi, 500M)"
)
Storage = (
    Annotated[str, msgspec.Meta(pattern=_STORAGE_TEXT_PATTERN, max_length=MAX_QUANTITY_CHARS)]
    | Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMORY_BYTES)]  # bytes, at most 1 PiB as a quantity
)
AccessModes = Annotated[list[AccessMode], msgspec.Meta(max_length=MAX_ACCESS_MODES)]
AbsolutePath = Annotated[str, msgspec.Meta(max_length=MAX_PATH)]
# Docker's volume driver names and options: printable, no NUL.
_DRIVER_NAME: Final = described_pattern(
    _whole(r"[A-Za-z0-9][-A-Za-z0-9_./:]{0,127}"),
    "not a Docker volume driver name (letters, digits, '-', '_', '.', '/', ':')",
)
_OPTION_KEY: Final = described_pattern(
    _whole(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,62}"),
    "not an option name (letters, digits, '-', '_', '.')",
)
_OPTION_VALUE: Final = described_pattern(
    r"^[^\x00]*$", "contains a NUL character, which no driver can receive"
)
OptionKey = Annotated[str, msgspec.Meta(pattern=_OPTION_KEY, max_length=63)]
OptionValue = Annotated[str, msgspec.Meta(pattern=_OPTION_VALUE, max_length=1024)]
Options = Annotated[dict[OptionKey, OptionValue], msgspec.Meta(max_length=MAX_DRIVER_OPTIONS)]


def check_storage(field: str, value: str | int) -> int:
    """The bytes of a storage quantity, more than 0, or a ValueError naming `field`."""
    try:
        size = storage_bytes(value)
    except ValueError as error:
        raise ValueError(f"`{field}`: {error}") from None
    return size


def check_path(field: str, path: str) -> None:
    """An absolute, normalised path without NUL (where it is allowed is volmgr's check:
    corral.contract.volume_specs.refused_host_path)."""
    if "\x00" in path:
        raise ValueError(f"`{field}` contains a NUL character")
    if not path.startswith("/"):
        raise ValueError(f"`{field}` {path!r} is not an absolute path")
    if posixpath.normpath(path) != path:
        raise ValueError(f"`{field}` {path!r} is not a normalised path (no '..', '.' or '//')")


# Host paths never handed to a container as a volume (docs/volumes.md, "Host paths").
SYSTEM_PATHS: Final = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/docker",
    "/var/run",
    "/var/run/docker.sock",
    "/run/docker.sock",
)


def refused_host_path(
    path: str, *, forbidden: tuple[str, ...] = (), allowed: tuple[str, ...] = ()
) -> str:
    """Why `path` may not be a hostPath/local volume ("" when it may): a system
    location (SYSTEM_PATHS, or inside /proc, /sys, /dev, /boot, /etc), one of `forbidden`
    (the engine's data root, corral's own state: the caller knows them), or outside
    `allowed` when the operator set an allow-list."""
    clean = posixpath.normpath(path)
    inside = ("/proc", "/sys", "/dev", "/boot", "/etc", "/var/lib/docker")
    for root in (*SYSTEM_PATHS, *forbidden):
        if clean == root.rstrip("/") or (clean == "/" and root == "/"):
            return f"{path!r} is a system location"
    for root in (*inside, *forbidden):
        if clean.startswith(root.rstrip("/") + "/"):
            return f"{path!r} is inside {root}, a system location"
    if allowed and not any(clean == a or clean.startswith(a.rstrip("/") + "/") for a in allowed):
        return f"{path!r} is outside the allowed host paths ({', '.join(allowed)})"
    return ""


class StorageRequest(_Public, frozen=True):
    storage: Storage


class VolumeResources(_Public, frozen=True):
    """A claim's `resources`: `requests.storage` is the size it needs."""

    requests: StorageRequest


class HostPathSource(_Public, frozen=True):
    """A directory of the node's filesystem (Kubernetes' hostPath). `type`: "" or
    DirectoryOrCreate (made when missing) or Directory (must exist)."""

    path: AbsolutePath
    type: Literal["", "DirectoryOrCreate", "Directory"] = ""

    def __post_init__(self) -> None:
        check_path("path", self.path)


class LocalSource(_Public, frozen=True):
    """A directory on one node (Kubernetes' local volume): the volume's `node` is required."""

    path: AbsolutePath

    def __post_init__(self) -> None:
        check_path("path", self.path)


class DockerVolumeSource(_Public, frozen=True):
    """A volume of a Docker volume driver, made with the same options on every node that
    uses it (`local` with type=nfs, or any installed plugin): shared storage when the driver's
    storage is. `driver`: "local" unless another is installed."""

    driver: Annotated[str, msgspec.Meta(pattern=_DRIVER_NAME, max_length=128)] = "local"
    options: Options = {}


class PersistentVolumeSpec(_Public, frozen=True, kw_only=True):
    """A piece of storage. With no source (hostPath, local, dockerVolume) it is a node-local
    volume corral provisions (an ext4 image of `capacity.storage` on a loop device) on the
    node where it is first used, or on `node`."""

    capacity: StorageRequest
    access_modes: AccessModes = msgspec.field(default_factory=lambda: ["ReadWriteOnce"])
    persistent_volume_reclaim_policy: ReclaimPolicy = "Retain"
    storage_class_name: Annotated[str, msgspec.Meta(max_length=253)] = ""
    # The node the volume lives on ("" : the node where it is first used, for node-local
    # volumes; any node, for a dockerVolume).
    node: DnsLabel | Literal[""] = ""
    host_path: HostPathSource | None = None
    local: LocalSource | None = None
    docker_volume: DockerVolumeSource | None = None
    # Reserved for one claim (<namespace>/<name>; Kubernetes' claimRef, as a string).
    claim_ref: Annotated[str, msgspec.Meta(max_length=127)] = ""

    def __post_init__(self) -> None:
        check_storage("capacity.storage", self.capacity.storage)
        check_unique("accessModes", list(self.access_modes))
        if not self.access_modes:
            raise ValueError("`accessModes` is empty: give at least one access mode")
        sources = [
            name
            for name, value in (
                ("hostPath", self.host_path),
                ("local", self.local),
                ("dockerVolume", self.docker_volume),
            )
            if value is not None
        ]
        if len(sources) > 1:
            raise ValueError(
                f"`{sources[1]}`: a volume has one source, not {' and '.join(sources)}"
            )
        if self.local is not None and not self.node:
            raise ValueError("`node` is required for a `local` volume (the node it is on)")
        if self.docker_volume is not None and self.node:
            raise ValueError("`node`: a dockerVolume is made on every node that uses it")
        if self.claim_ref:
            namespace, slash, name = self.claim_ref.partition("/")
            if not slash or not namespace or not name:
                raise ValueError(f"`claimRef` {self.claim_ref!r} is not <namespace>/<name>")

    @property
    def size_bytes(self) -> int:
        return storage_bytes(self.capacity.storage)

    @property
    def source(self) -> str:
        """ "provisioned", "hostPath", "local" or "dockerVolume"."""
        if self.host_path is not None:
            return "hostPath"
        if self.local is not None:
            return "local"
        if self.docker_volume is not None:
            return "dockerVolume"
        return "provisioned"

    @property
    def node_local(self) -> bool:
        """Its data lives on one node (replicas using it are placed there): every source
        but a dockerVolume, and a dockerVolume of the `local` driver whose `type` is not a
        network filesystem (its data is in that engine's data root, or a tmpfs)."""
        volume = self.docker_volume
        if volume is None:
            return True
        return volume.driver == "local" and volume.options.get("type", "") not in NETWORK_TYPES

    @property
    def single_node(self) -> bool:
        """Mounted on one node at a time (corral.contract.volume_specs.single_node)."""
        return single_node(self.access_modes)


class PersistentVolume(
    _Public, frozen=True, kw_only=True, tag_field="kind", tag="PersistentVolume"
):
    api_version: Literal["corral/v1", "v1"] = "corral/v1"
    metadata: ObjectMeta
    spec: PersistentVolumeSpec

    def __post_init__(self) -> None:
        check_cluster_wide("PersistentVolume", self.metadata)

    @property
    def key(self) -> str:
        """Volumes are cluster-wide: the key is the name."""
        return self.metadata.name


class LabelSelector(_Public, frozen=True):
    match_labels: Labels = {}


class PersistentVolumeClaimSpec(_Public, frozen=True, kw_only=True):
    """A request for storage. `storageClassName`: absent (None) means the default class,
    after a fitting volume with no class (docs/volumes.md, "Binding"); "" means no class
    (static volumes only); a name binds to volumes of that class, and is provisioned by
    that StorageClass if one exists. `volumeName`: bind to exactly that volume."""

    resources: VolumeResources
    access_modes: AccessModes = msgspec.field(default_factory=lambda: ["ReadWriteOnce"])
    storage_class_name: Annotated[str, msgspec.Meta(max_length=253)] | None = None
    volume_name: DnsLabel | Literal[""] = ""
    selector: LabelSelector | None = None

    def __post_init__(self) -> None:
        check_storage("resources.requests.storage", self.resources.requests.storage)
        check_unique("accessModes", list(self.access_modes))
        if not self.access_modes:
            raise ValueError("`accessModes` is empty: give at least one access mode")

    @property
    def size_bytes(self) -> int:
        return storage_bytes(self.resources.requests.storage)


class PersistentVolumeClaim(
    _Public, frozen=True, kw_only=True, tag_field="kind", tag="PersistentVolumeClaim"
):
    api_version: Literal["corral/v1", "v1"] = "corral/v1"
    metadata: ObjectMeta
    spec: PersistentVolumeClaimSpec

    @property
    def key(self) -> str:
        return object_key(self.metadata.namespace, self.metadata.name)


ParameterKey = Annotated[str, msgspec.Meta(pattern=_OPTION_KEY, max_length=63)]


class StorageClass(_Public, frozen=True, kw_only=True, tag_field="kind", tag="StorageClass"):
    """How claims of this class are provisioned. Fields at the top level, as in
    Kubernetes' storage.k8s.io/v1. `parameters`: for corral.io/docker-volume, `driver`
    and the driver's options (the others); corral.io/local-volume takes none.
    The default class carries the annotation storageclass.kubernetes.io/is-default-class:
    "true"."""

    api_version: Literal["corral/v1", "storage.k8s.io/v1"] = "corral/v1"
    metadata: ObjectMeta
    provisioner: Annotated[str, msgspec.Meta(max_length=253)]
    parameters: Annotated[
        dict[ParameterKey, OptionValue], msgspec.Meta(max_length=MAX_PARAMETERS)
    ] = {}
    reclaim_policy: ReclaimPolicy = "Delete"
    volume_binding_mode: BindingMode = "Immediate"

    def __post_init__(self) -> None:
        check_cluster_wide("StorageClass", self.metadata)
        if not self.provisioner:
            raise ValueError("`provisioner` is empty")

    @property
    def key(self) -> str:
        return self.metadata.name

    @property
    def spec(self) -> tuple[object, ...]:
        """What an apply may change besides the metadata (corral.natsio.spec_api compares
        it): the class's own fields, kept at the top level as Kubernetes has them."""
        return (self.provisioner, self.parameters, self.reclaim_policy, self.volume_binding_mode)

    @property
    def is_default(self) -> bool:
        return self.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION) == "true"


class VolumeReleaseRequest(_Public, frozen=True):
    """An operator's word that node `node` no longer uses volume `name` (the node is gone
    for good): volmgr forgets its attachment there, so the volume may be used on another
    node (`corral volume release NAME --node N`; corral.api.persistentvolume.release)."""

    name: DnsLabel
    node: DnsLabel
