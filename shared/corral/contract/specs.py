"""What a client declares: the public spec payloads, one home for each type.

Every payload here travels as JSON on a public subject (see corral.contract.names), so any
NATS client can drive corral. Field names are camelCase on the wire, as in
Kubernetes manifests. Validation happens while decoding (corral.contract.codec): a
payload that fails it is rejected whole, with an error that names the field.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Final, Literal

import msgspec

from corral.contract.codec import described_pattern
from corral.contract.names import DEFAULT_NAMESPACE, object_key
from corral.contract.quantity import (
    CPU_PATTERN,
    MAX_CPU_CORES,
    MAX_MEMORY_BYTES,
    MAX_QUANTITY_CHARS,
    MEMORY_PATTERN,
    check_cpu_limit,
    check_memory_limit,
    cpu_millis,
    memory_bytes,
)

API_VERSION = "corral/v1"

# The bounds of a spec. Most are msgspec.Meta constraints, so the JSON Schemas in
# docs/schema/ carry them and the decoder enforces them, naming the field.
MAX_REPLICAS: Final = 10_000
MAX_LABELS: Final = 64
MAX_LABEL_PREFIX: Final = 253  # a DNS subdomain
MAX_LABEL_NAME: Final = 63
MAX_LABEL_KEY: Final = MAX_LABEL_PREFIX + 1 + MAX_LABEL_NAME
MAX_LABEL_VALUE: Final = 63
MAX_ENV: Final = 256
MAX_ENV_NAME: Final = 256
MAX_ENV_VALUE: Final = 32 * 1024
MAX_ARGS: Final = 256  # items of `command`, and of `args`
MAX_ARG: Final = 4096  # characters of one item
MAX_IMAGE_REFERENCE: Final = 255
MAX_UID: Final = 64
MAX_COUNTER: Final = 2**63 - 1  # generation, resourceVersion
MAX_EPOCH_SECONDS: Final = 253402300799.0  # 9999-12-31T23:59:59Z, as RFC 3339 reaches


def _whole(regex: str) -> str:
    """A pattern the whole string must match. msgspec searches with Python's `re`,
    where `$` also matches before a final newline ("web\\n" would pass): the
    lookahead refuses that, and means nothing in JSON Schema's ECMA-262 regexes,
    where `$` is the end. Patterns use no \\d or \\w: those differ between the two."""
    return f"^(?:{regex})$(?!\\n)"


_DNS_LABEL_RE: Final = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_SUBDOMAIN_RE: Final = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
# A label's name, or value when not empty (Kubernetes' "qualified name" part)
_LABEL_NAME_RE: Final = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
DNS_LABEL_MEANING: Final = (
    "not a DNS label: use at most 63 lowercase letters, digits and '-', "
    "starting and ending with a letter or digit"
)
DNS_LABEL_PATTERN: Final = described_pattern(_whole(_DNS_LABEL_RE), DNS_LABEL_MEANING)
LABEL_KEY_PATTERN: Final = described_pattern(
    _whole(rf"(?:(?=[^/]{{1,{MAX_LABEL_PREFIX}}}/){_DNS_SUBDOMAIN_RE}/)?{_LABEL_NAME_RE}"),
    "not a label key: [prefix/]name, the name at most 63 letters, digits, '-', '_' "
    "or '.', starting and ending with a letter or digit; the prefix a DNS subdomain "
    "(lowercase, dot-separated) of at most 253 characters",
)
LABEL_VALUE_PATTERN: Final = described_pattern(
    _whole(f"(?:{_LABEL_NAME_RE})?"),
    "not a label value: empty, or at most 63 letters, digits, '-', '_' or '.', "
    "starting and ending with a letter or digit",
)
ENV_NAME_PATTERN: Final = described_pattern(
    _whole("[A-Za-z_][A-Za-z0-9_]*"),
    "not a valid environment variable name (POSIX: letters, digits and '_', "
    "not starting with a digit)",
)
NO_NUL_PATTERN: Final = described_pattern(
    r"^[^\x00]*$", "contains a NUL character, which no process can receive"
)
# The grammar of github.com/distribution/reference, without the IPv6 host form.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
IMAGE_REFERENCE_PATTERN: Final = described_pattern(
    _whole(
        rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?/)?"
        rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
        r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
        r"(?:@sha256:[a-f0-9]{64})?"
    ),
    "not a valid image reference (expected [registry/]name[:tag][@sha256:digest], lowercase name)",
)
CLUSTER_ID_PATTERN: Final = described_pattern(
    _whole("(?:[0-9a-f]{16})?"), "not a cluster id (16 hex digits)"
)
_CPU_TEXT_PATTERN: Final = described_pattern(
    CPU_PATTERN, "not a CPU quantity (examples: 250m, 0.5, 2)"
)
_MEMORY_TEXT_PATTERN: Final = described_pattern(
    MEMORY_PATTERN, "not a memory quantity (examples: 64Mi, 1Gi, 500M)"
)

DnsLabel = Annotated[str, msgspec.Meta(pattern=DNS_LABEL_PATTERN, max_length=63)]
LabelKey = Annotated[str, msgspec.Meta(pattern=LABEL_KEY_PATTERN, max_length=MAX_LABEL_KEY)]
LabelValue = Annotated[str, msgspec.Meta(pattern=LABEL_VALUE_PATTERN, max_length=MAX_LABEL_VALUE)]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    msgspec.Meta(
        max_length=MAX_LABELS,
        description=f"Kubernetes label syntax: [prefix/]name -> value; at most {MAX_LABELS}",
    ),
]
EnvName = Annotated[str, msgspec.Meta(pattern=ENV_NAME_PATTERN, max_length=MAX_ENV_NAME)]
EnvValue = Annotated[str, msgspec.Meta(pattern=NO_NUL_PATTERN, max_length=MAX_ENV_VALUE)]
Arg = Annotated[str, msgspec.Meta(pattern=NO_NUL_PATTERN, max_length=MAX_ARG)]
Args = Annotated[list[Arg], msgspec.Meta(max_length=MAX_ARGS)]
Counter = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNTER)]
EpochSeconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_EPOCH_SECONDS)]
Replicas = Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)]
# A quantity: text with a unit, or a JSON number (cores; bytes). The bounds of the
# value itself are checked by corral.contract.quantity (a unit multiplies the text's number).
Cpu = (
    Annotated[str, msgspec.Meta(pattern=_CPU_TEXT_PATTERN, max_length=MAX_QUANTITY_CHARS)]
    | Annotated[int, msgspec.Meta(ge=0, le=MAX_CPU_CORES)]
    | Annotated[float, msgspec.Meta(ge=0, le=MAX_CPU_CORES)]
)
Memory = (
    Annotated[str, msgspec.Meta(pattern=_MEMORY_TEXT_PATTERN, max_length=MAX_QUANTITY_CHARS)]
    | Annotated[int, msgspec.Meta(ge=0, le=MAX_MEMORY_BYTES)]
    | Annotated[float, msgspec.Meta(ge=0, le=MAX_MEMORY_BYTES)]
)


def check_dns_label(field: str, value: str) -> None:
    if len(value) > 63 or not re.fullmatch(_DNS_LABEL_RE, value):
        raise ValueError(f"`{field}` {value!r} is {DNS_LABEL_MEANING}")


class _Public(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    gc=False,  # not tracked by the cyclic collector: as state._Record
    forbid_unknown_fields=True,
    omit_defaults=True,
    rename="camel",
):
    """Base of every public payload: immutable, camelCase on the wire, strict.

    Defaults are omitted when encoding, so adding a field with a default later
    changes neither the stored bytes nor a template's hash.
    Validation errors raised in __post_init__ start with the offending field in
    backquotes, relative to the struct; corral.contract.codec joins it to the path.
    """


# The namespace of an object: a DNS label, as in Kubernetes (at most 63 lowercase letters,
# digits and '-'). Names are unique per namespace: every bucket key is
# <namespace>.<name> (corral.contract.names.object_key). Namespaces are implicit: one
# exists while something is in it (docs/api.md, "Namespaces").
Namespace = Annotated[
    str,
    msgspec.Meta(
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description=(
            "The object's namespace: a DNS label (at most 63 lowercase letters, digits "
            "and '-'); names are unique per namespace. Implicit: it exists while "
            "something is in it."
        ),
    ),
]


# A precondition: the KV revision of the object the writer last saw; 0: none.
ResourceVersion = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_COUNTER,
        description="A precondition: the KV revision of the object the writer last saw; 0: none.",
    ),
]


MAX_ANNOTATIONS: Final = 64
MAX_ANNOTATION_VALUE: Final = 4096
Annotations = Annotated[
    dict[
        LabelKey,
        Annotated[str, msgspec.Meta(pattern=NO_NUL_PATTERN, max_length=MAX_ANNOTATION_VALUE)],
    ],
    msgspec.Meta(
        max_length=MAX_ANNOTATIONS,
        description=f"Kubernetes annotations: [prefix/]name -> text; at most {MAX_ANNOTATIONS}",
    ),
]


class ObjectMeta(_Public, frozen=True, kw_only=True):
    name: DnsLabel
    # Kubernetes' label syntax: [prefix/]name = value (see LABEL_KEY_PATTERN)
    labels: Labels = {}
    # Free text for tools and people; corral reads one: a StorageClass's
    # storageclass.kubernetes.io/is-default-class (corral.contract.volume_specs).
    annotations: Annotations = {}
    namespace: Namespace = "default"
    resource_version: ResourceVersion = 0
    # A precondition of an apply: the object must not exist yet (kubectl create); one
    # that does is refused Conflict, left as it is. Never stored (docs/api.md).
    create_only: bool = False
    # Set by the owner when it stores the object; ignored when a client sends them.
    generation: Counter = 0
    uid: Annotated[str, msgspec.Meta(pattern=_whole("[-A-Za-z0-9_.]*"), max_length=MAX_UID)] = ""
    creation_timestamp: EpochSeconds = 0.0
    # Set by the owner: the CORRAL_SPECS stream sequence this version came from (a
    # request: the stream's last sequence when it was written). A durable spec at or
    # below it is older, and never applied over it (docs/api.md, durable specs).
    spec_sequence: Counter = 0


def check_cluster_wide(kind: str, metadata: ObjectMeta) -> None:
    """A cluster-wide kind (Network, PersistentVolume, StorageClass) lives in no namespace:
    one other than the default is refused rather than ignored."""
    if metadata.namespace != DEFAULT_NAMESPACE:
        raise ValueError(
            f"`metadata.namespace` {metadata.namespace!r}: a {kind} is cluster-wide, "
            "in no namespace; leave the namespace out"
        )


class ResourceList(_Public, frozen=True):
    """CPU: "250m", "0.5" or a number of cores; memory: "64Mi", "1G" or a number of
    bytes. Bounded (corral.contract.quantity): CPU 0 to 1024 cores, memory 0 to 1Pi."""

    cpu: Cpu | None = None
    memory: Memory | None = None

    def __post_init__(self) -> None:
        # The pattern admits the text; the bounds hold for its value (with its unit).
        if self.cpu is not None:
            try:
                cpu_millis(self.cpu)
            except ValueError as error:
                raise ValueError(f"`cpu`: {error}") from None
        if self.memory is not None:
            try:
                memory_bytes(self.memory)
            except ValueError as error:
                raise ValueError(f"`memory`: {error}") from None

    @property
    def cpu_millis(self) -> int:
        return 0 if self.cpu is None else cpu_millis(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return 0 if self.memory is None else memory_bytes(self.memory)


class Resources(_Public, frozen=True):
    """requests: what the scheduler reserves on a node; limits: what the engine enforces.

    A limit, when given, is at least 1m of CPU and 6Mi of memory (Docker refuses less)."""

    requests: ResourceList = ResourceList()
    limits: ResourceList = ResourceList()

    def __post_init__(self) -> None:
        if self.limits.cpu is not None:
            try:
                check_cpu_limit(self.limits.cpu_millis)
            except ValueError as error:
                raise ValueError(f"`limits.cpu`: {error}") from None
        if self.limits.memory is not None:
            try:
                check_memory_limit(self.limits.memory_bytes)
            except ValueError as error:
                raise ValueError(f"`limits.memory`: {error}") from None
        if self.limits.cpu_millis and self.requests.cpu_millis > self.limits.cpu_millis:
            raise ValueError("`requests.cpu` is larger than `limits.cpu`")
        if self.limits.memory_bytes and self.requests.memory_bytes > self.limits.memory_bytes:
            raise ValueError("`requests.memory` is larger than `limits.memory`")


# An IANA service name, as Kubernetes' named ports: at most 15 lowercase letters, digits
# and '-', at least one letter, no '--', starting and ending with a letter or digit.
PORT_NAME_PATTERN: Final = described_pattern(
    _whole(r"(?=[-a-z0-9]*[a-z])(?!.*--)[a-z0-9](?:[-a-z0-9]{0,13}[a-z0-9])?"),
    "not a port name: at most 15 lowercase letters, digits and '-', with at least one "
    "letter, no '--', starting and ending with a letter or digit",
)
PortName = Annotated[str, msgspec.Meta(pattern=PORT_NAME_PATTERN, max_length=15)]
PortNumber = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Protocol = Literal["TCP", "UDP"]
MAX_PORTS: Final = 64
MAX_NETWORKS: Final = 8


class ContainerPort(_Public, frozen=True):
    """A port the container listens on (Kubernetes' containerPort): Services target it
    by number or by name."""

    container_port: PortNumber
    name: PortName | None = None
    protocol: Protocol = "TCP"


def check_unique(field: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"`{field}` names {value!r} twice")
        seen.add(value)


MAX_VOLUMES: Final = 32
MAX_MOUNT_PATH: Final = 4096


class ClaimSource(_Public, frozen=True):
    """A PersistentVolumeClaim of the Deployment's namespace (Kubernetes' persistentVolumeClaim)."""

    claim_name: DnsLabel
    read_only: bool = False


class EmptyDirSource(_Public, frozen=True):
    """A directory that lives and dies with the replica (Kubernetes' emptyDir): a Docker
    volume on the replica's node, removed with its container. `medium: Memory`: a tmpfs."""

    medium: Literal["", "Memory"] = ""
    size_limit: Memory | None = None


class Volume(_Public, frozen=True):
    """A volume the template's container may mount: exactly one of `persistentVolumeClaim`
    and `emptyDir`."""

    name: DnsLabel
    persistent_volume_claim: ClaimSource | None = None
    empty_dir: EmptyDirSource | None = None

    def __post_init__(self) -> None:
        given = [
            f
            for f, v in (
                ("persistentVolumeClaim", self.persistent_volume_claim),
                ("emptyDir", self.empty_dir),
            )
            if v is not None
        ]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise ValueError(
                f"`{self.name}` needs exactly one source (persistentVolumeClaim or emptyDir), "
                f"not {what}"
            )


class VolumeMount(_Public, frozen=True):
    """Where a volume appears in the container. `subPath`: a directory inside the volume
    (relative, no '..') mounted instead of its root."""

    name: DnsLabel
    mount_path: Annotated[str, msgspec.Meta(pattern=NO_NUL_PATTERN, max_length=MAX_MOUNT_PATH)]
    read_only: bool = False
    sub_path: Annotated[str, msgspec.Meta(pattern=NO_NUL_PATTERN, max_length=MAX_MOUNT_PATH)] = ""

    def __post_init__(self) -> None:
        if not self.mount_path.startswith("/"):
            raise ValueError(f"`mountPath` {self.mount_path!r} is not an absolute path")
        if self.mount_path.rstrip("/") == "":
            raise ValueError("`mountPath` '/' would hide the container's whole filesystem")
        if self.sub_path:
            parts = self.sub_path.split("/")
            if self.sub_path.startswith("/") or ".." in parts:
                raise ValueError(
                    f"`subPath` {self.sub_path!r} must be a relative path inside the volume "
                    "(no leading '/', no '..')"
                )


MAX_PROBE_SECONDS: Final = 3600
ProbeSeconds = Annotated[int, msgspec.Meta(ge=0, le=MAX_PROBE_SECONDS)]
ProbePeriod = Annotated[int, msgspec.Meta(ge=1, le=MAX_PROBE_SECONDS)]
Threshold = Annotated[int, msgspec.Meta(ge=1, le=100)]


class ExecAction(_Public, frozen=True):
    """Run `command` in the container (no shell unless it names one): 0 is success."""

    command: Annotated[list[Arg], msgspec.Meta(min_length=1, max_length=MAX_ARGS)]


HTTP_PATH_PATTERN: Final = described_pattern(
    _whole(r"/[^\x00-\x20\x7f]*"),
    "not an HTTP path: it starts with '/' and has no spaces or control characters",
)


class HTTPGetAction(_Public, frozen=True):
    """GET http://<replica's address>:<port><path>: a status of 200-399 is success.
    `port`: a number, or the name of a template port."""

    port: PortNumber | PortName
    path: Annotated[str, msgspec.Meta(pattern=HTTP_PATH_PATTERN, max_length=2048)] = "/"
    scheme: Literal["HTTP"] = "HTTP"


class TCPSocketAction(_Public, frozen=True):
    """Open a TCP connection to the replica's address and `port`: connecting is success."""

    port: PortNumber | PortName


class Probe(_Public, frozen=True):
    """A check the node agent runs on a replica (Kubernetes' fields and defaults): exactly
    one of `exec`, `httpGet`, `tcpSocket`; first `initialDelaySeconds` after the start,
    then every `periodSeconds`, each given `timeoutSeconds`; `failureThreshold` failures
    in a row make it fail, `successThreshold` successes in a row make it pass."""

    exec: ExecAction | None = None
    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    initial_delay_seconds: ProbeSeconds = 0
    period_seconds: ProbePeriod = 10
    timeout_seconds: ProbePeriod = 1
    success_threshold: Threshold = 1
    failure_threshold: Threshold = 3

    def __post_init__(self) -> None:
        given = [
            name
            for name, value in (
                ("exec", self.exec),
                ("httpGet", self.http_get),
                ("tcpSocket", self.tcp_socket),
            )
            if value is not None
        ]
        if not given:
            raise ValueError("a probe needs a handler: one of exec, httpGet or tcpSocket")
        if len(given) > 1:
            raise ValueError(
                f"`{given[1]}`: a probe has exactly one handler (exec, httpGet or tcpSocket), "
                f"not {' and '.join(given)}"
            )

    @property
    def port(self) -> int | str | None:
        """The port its handler names (None for exec)."""
        if self.http_get is not None:
            return self.http_get.port
        if self.tcp_socket is not None:
            return self.tcp_socket.port
        return None


PROBES: Final = ("livenessProbe", "readinessProbe", "startupProbe")

# Graceful stops: Kubernetes' default grace period, and a bound (an hour).
DEFAULT_TERMINATION_GRACE_SECONDS: Final = 30
MAX_TERMINATION_GRACE_SECONDS: Final = 3600
# The signals a stop may start with (Docker's StopSignal takes these names).
RestartPolicy = Literal["Always", "OnFailure", "Never"]

StopSignal = Literal[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGKILL"
]


class WithVolumes(typing.Protocol):
    """What claim_names reads of a template (a ContainerTemplate, or a view of one:
    corral.contract.views)."""

    @property
    def volumes(self) -> Sequence[Volume]: ...


def claim_names(template: WithVolumes) -> list[str]:
    """The claims a template's volumes name, in order, each once."""
    found: list[str] = []
    for volume in template.volumes:
        claim = volume.persistent_volume_claim
        if claim is not None and claim.claim_name not in found:
            found.append(claim.claim_name)
    return found


class ContainerTemplate(_Public, frozen=True):
    """The container every replica of a Deployment runs.

    `labels` are the replicas' own labels, which Services select (a Pod template's
    metadata.labels); a template without labels gives its replicas `app: <deployment>`
    (corral.contract.specs.replica_labels). `networks`: the corral networks the replicas
    join, the first being the one their default route and DNS go through; none: the
    cluster's `default` network."""

    image: Annotated[
        str, msgspec.Meta(pattern=IMAGE_REFERENCE_PATTERN, max_length=MAX_IMAGE_REFERENCE)
    ]
    command: Args | None = None  # replaces the image's entrypoint
    args: Args | None = None  # replaces the image's cmd
    env: Annotated[dict[EnvName, EnvValue], msgspec.Meta(max_length=MAX_ENV)] = {}
    resources: Resources = Resources()
    labels: Labels = {}
    ports: Annotated[list[ContainerPort], msgspec.Meta(max_length=MAX_PORTS)] = []
    networks: Annotated[list[DnsLabel], msgspec.Meta(max_length=MAX_NETWORKS)] = []
    volumes: Annotated[list[Volume], msgspec.Meta(max_length=MAX_VOLUMES)] = []
    volume_mounts: Annotated[list[VolumeMount], msgspec.Meta(max_length=MAX_VOLUMES)] = []
    # Health checks the node agent runs (docs/rollouts.md): readiness decides `ready`,
    # liveness restarts the container, startup holds the other two back until it passes.
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    # Set by `corral rollout restart` (a UTC time, as kubectl's restartedAt annotation) so
    # the template hash changes and every replica is replaced; omitted when empty, so the
    # hash of a template that was never restarted is what it always was.
    restarted_at: Annotated[str, msgspec.Meta(max_length=64, pattern=NO_NUL_PATTERN)] = ""
    # Graceful stops (docs/rollouts.md, "Graceful stops"): a replica going away first
    # leaves its Services' endpoints, then gets `stopSignal` (empty: the image's
    # STOPSIGNAL, else SIGTERM), then SIGKILL after `terminationGracePeriodSeconds`
    # (Kubernetes' field and default; a Pod's `lifecycle.stopSignal`).
    termination_grace_period_seconds: Annotated[
        int, msgspec.Meta(ge=0, le=MAX_TERMINATION_GRACE_SECONDS)
    ] = DEFAULT_TERMINATION_GRACE_SECONDS
    stop_signal: StopSignal | Literal[""] = ""
    # Only nodes whose labels include every one of these (Kubernetes' Pod nodeSelector;
    # Swarm's `--constraint node.labels.K==V`); none: any node.
    node_selector: Labels = {}
    # When the node agent starts an exited container again, on its own node and after its
    # restart back-off (Kubernetes' Pod restartPolicy): "Always" (the default), "OnFailure"
    # (only after a non-zero exit), "Never" (an exited container stays Exited: its status
    # says Exited with its exit code). docs/containers.md.
    restart_policy: RestartPolicy = "Always"

    def __post_init__(self) -> None:
        check_unique("networks", self.networks)
        check_unique("volumes[].name", [v.name for v in self.volumes])
        paths = [m.mount_path.rstrip("/") for m in self.volume_mounts]
        check_unique("volumeMounts[].mountPath", paths)
        port_names = {p.name for p in self.ports if p.name}
        for field, probe in (
            ("livenessProbe", self.liveness_probe),
            ("readinessProbe", self.readiness_probe),
            ("startupProbe", self.startup_probe),
        ):
            if probe is None:
                continue
            if isinstance(probe.port, str) and probe.port not in port_names:
                handler = "httpGet" if probe.http_get is not None else "tcpSocket"
                raise ValueError(
                    f"`{field}.{handler}.port` {probe.port!r} is not the name of a port of "
                    f"the template (`ports` names {', '.join(sorted(port_names)) or 'none'})"
                )
            if field != "readinessProbe" and probe.success_threshold != 1:
                raise ValueError(f"`{field}.successThreshold` must be 1 (as Kubernetes)")
        defined = {v.name for v in self.volumes}
        for index, mount in enumerate(self.volume_mounts):
            if mount.name not in defined:
                raise ValueError(
                    f"`volumeMounts[{index}].name` {mount.name!r} is not a volume of the "
                    f"template (`volumes` has {', '.join(sorted(defined)) or 'none'})"
                )
        check_unique("ports", [f"{p.container_port}/{p.protocol}" for p in self.ports])
        check_unique("ports[].name", [p.name for p in self.ports if p.name])

    def template_hash(self) -> str:
        """A short stable digest: replicas whose hash differs run an older template."""
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()[:10]


DEFAULT_NETWORK: Final = "default"


class WithLabels(typing.Protocol):
    """What replica_labels reads of a template (or of a view of one: corral.contract.views)."""

    @property
    def labels(self) -> Mapping[str, str]: ...


class WithNetworks(typing.Protocol):
    """What replica_networks reads of a template (or of a view of one)."""

    @property
    def networks(self) -> Sequence[str]: ...


def replica_labels(deployment: str, template: WithLabels) -> dict[str, str]:
    """The labels a Service's selector matches on a replica: the template's own, or
    `app: <deployment>` when it has none (what `corral create deployment` sets)."""
    return dict(template.labels) if template.labels else {"app": deployment}


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every pair of `selector` is among `labels` (an empty selector matches anything:
    Kubernetes' matchLabels; a Service's empty selector selects nothing, netmgr's rule)."""
    return all(labels.get(key) == value for key, value in selector.items())


def replica_networks(template: WithNetworks) -> list[str]:
    """The corral networks a replica joins, in order (the first carries its default route)."""
    return list(template.networks) if template.networks else [DEFAULT_NETWORK]


# A rolling update's bound: a count, or a percentage of the desired replicas (as
# Kubernetes' IntOrString; maxUnavailable at most 100%, checked in code).
MAX_ROLLOUT_PERCENT: Final = 999
ROLLOUT_PERCENT_PATTERN: Final = described_pattern(
    _whole("(?:0|[1-9][0-9]{0,2})%"), "not a percentage like '25%' (0% to 999%)"
)
IntOrPercent = (
    Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)]
    | Annotated[str, msgspec.Meta(pattern=ROLLOUT_PERCENT_PATTERN, max_length=4)]
)
MAX_MIN_READY_SECONDS: Final = 86_400
MAX_REVISION_HISTORY: Final = 100
# The annotation a client sets to say why it changed a Deployment (kubectl's); the
# scheduler records it with the template's revision (corral rollout history).
CHANGE_CAUSE_ANNOTATION: Final = "kubernetes.io/change-cause"


def _is_zero(value: int | str) -> bool:
    return value == 0 or value == "0%"


class RollingUpdate(_Public, frozen=True):
    """How far a rolling update may go over (`maxSurge`) and under (`maxUnavailable`)
    the desired replicas, Kubernetes' fields and defaults (25% each; surge rounds up,
    unavailable down)."""

    max_surge: IntOrPercent = "25%"
    max_unavailable: IntOrPercent = "25%"

    def __post_init__(self) -> None:
        if _is_zero(self.max_surge) and _is_zero(self.max_unavailable):
            raise ValueError(
                "maxSurge and maxUnavailable must not both be zero: no replica could be replaced"
            )
        unavailable = self.max_unavailable
        if isinstance(unavailable, str) and int(unavailable[:-1]) > 100:
            raise ValueError(f"`maxUnavailable`: at most 100%, got {unavailable!r}")


class DeploymentStrategy(_Public, frozen=True):
    """RollingUpdate (the default): new replicas replace old ones within the bounds of
    `rollingUpdate`. Recreate: every old replica stops before a new one is placed."""

    type: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    rolling_update: RollingUpdate | None = None

    def __post_init__(self) -> None:
        if self.type == "Recreate" and self.rolling_update is not None:
            raise ValueError("`rollingUpdate`: only allowed with type RollingUpdate, not Recreate")


DEFAULT_STRATEGY: Final = DeploymentStrategy()
DEFAULT_ROLLING_UPDATE: Final = RollingUpdate()


# progressDeadlineSeconds: Kubernetes' default (10 minutes) and a bound (a week).
DEFAULT_PROGRESS_DEADLINE_SECONDS: Final = 600
MAX_PROGRESS_DEADLINE_SECONDS: Final = 7 * 86_400
# The most restarts a crash-loop rule may count (ReplicaStatus.restartTimes keeps as many).
MAX_CRASH_LOOP_RESTARTS: Final = 10
MAX_CRASH_LOOP_WINDOW_SECONDS: Final = 86_400


class AutoRollback(_Public, frozen=True):
    """Opt-in automatic rollback (as Nomad's `auto_revert`; docs/rollouts.md): when a new
    revision misses its progress deadline (`onProgressDeadline`), or one of its replicas
    restarts `crashLoopRestarts` times within `crashLoopWindowSeconds` (`onCrashLoop`),
    the scheduler puts back the template of the last revision that was fully available."""

    on_progress_deadline: bool = True
    on_crash_loop: bool = True
    crash_loop_restarts: Annotated[int, msgspec.Meta(ge=1, le=MAX_CRASH_LOOP_RESTARTS)] = 3
    crash_loop_window_seconds: Annotated[
        int, msgspec.Meta(ge=1, le=MAX_CRASH_LOOP_WINDOW_SECONDS)
    ] = 300

    def __post_init__(self) -> None:
        if not self.on_progress_deadline and not self.on_crash_loop:
            raise ValueError(
                "`autoRollback`: onProgressDeadline and onCrashLoop are both false, so it "
                "would never roll back (leave autoRollback out instead)"
            )


class DeploymentSpec(_Public, frozen=True, kw_only=True):
    replicas: Replicas = 1
    template: ContainerTemplate
    strategy: DeploymentStrategy = DEFAULT_STRATEGY
    # A new replica counts as available once Running for this long (Kubernetes' field).
    min_ready_seconds: Annotated[int, msgspec.Meta(ge=0, le=MAX_MIN_READY_SECONDS)] = 0
    # A paused Deployment does not roll out a changed template; scaling still applies.
    paused: bool = False
    # How many old templates the scheduler keeps for `corral rollout undo` besides the
    # current one (Kubernetes' field and default; corral_deployment_history).
    revision_history_limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_REVISION_HISTORY)] = 10
    # A rollout that makes no progress for this long is marked failed: the Progressing
    # condition turns False with reason ProgressDeadlineExceeded (Kubernetes' field and
    # default); it must exceed minReadySeconds.
    progress_deadline_seconds: Annotated[
        int, msgspec.Meta(ge=1, le=MAX_PROGRESS_DEADLINE_SECONDS)
    ] = DEFAULT_PROGRESS_DEADLINE_SECONDS
    # Opt-in: return to the last fully available revision on a missed deadline or a
    # crash loop (absent: never roll back by itself).
    auto_rollback: AutoRollback | None = None
    # When a node is lost: "Fast" places replacements after R (a cut-off node may run
    # its copies until it stops them at F, so two copies can overlap for F - R);
    # "AfterStop" never runs two copies: replacements wait until R' (past the cut-off
    # node's own stop), or until an operator releases the node. See docs/time-budget.md.
    # "Never": a placed replica is never moved (a bare Pod's semantics: `corral create
    # container`, docs/containers.md); it keeps its placement on a lost node, whose
    # status then shows it lost, and is replaced only when an operator releases the node.
    replacement: Literal["Fast", "AfterStop", "Never"] = "Fast"

    def __post_init__(self) -> None:
        if self.replacement == "Never" and self.replicas > 1:
            raise ValueError(
                f"`replicas` ({self.replicas}): at most 1 with replacement Never (a container "
                "placed once; never moved)"
            )
        if self.progress_deadline_seconds <= self.min_ready_seconds:
            raise ValueError(
                f"`progressDeadlineSeconds` ({self.progress_deadline_seconds}) must be greater "
                f"than `minReadySeconds` ({self.min_ready_seconds}), as Kubernetes requires"
            )


# The label of a Deployment that `corral create container` made (a Rancher container, a
# bare Pod's semantics): replicas 1, replacement "Never", the template's restartPolicy.
# `corral get containers` lists exactly these; the scheduler refuses to scale them;
# `corral get deployments` lists them too (they are Deployments). docs/containers.md.
CONTAINER_LABEL: Final = "corral.io/container"


def new_template_problem(template: ContainerTemplate) -> tuple[str, str] | None:
    """(field under `spec.template`, why) for what a template may no longer be given,
    though a record already stored with it still decodes (the rules came after it: a
    stored Placement or history revision refused on reading would be one a controller
    can neither stop nor keep). Checked where a Deployment is applied, never on decode."""
    if template.command and template.command[0] == "":
        return "command[0]", "`command[0]` names the program to run: it cannot be empty"
    first, slash, _ = template.image.partition("/")
    if slash and first != first.lower() and not ("." in first or ":" in first):
        # Docker reads a first part as a registry only when it has a '.' or a ':' (or is
        # localhost): any other is the name's own, which must be lowercase
        return "image", (
            f"`image` {template.image!r}: {first!r} is no registry (no '.' or ':') and a "
            "repository name must be lowercase"
        )
    for index, mount in enumerate(template.volume_mounts):
        trimmed = mount.mount_path.rstrip("/")
        if posixpath.normpath(trimmed) != trimmed or "//" in trimmed:
            # '/data/..' is '/' to the engine, '/data/../etc' is '/etc'
            return f"volumeMounts[{index}].mountPath", (
                f"`mountPath` {mount.mount_path!r} is not a normalised path (no '..', '.' or '//')"
            )
    return None


class Deployment(_Public, frozen=True, kw_only=True, tag_field="kind", tag="Deployment"):
    """N replicas of one container template, kept at N by the scheduler.

    A container (`corral create container`, docs/containers.md) is a Deployment too, not
    a kind of its own: one replica, `replacement: "Never"` and the label CONTAINER_LABEL,
    so it reuses placement, the agent, Services and status as they are."""

    api_version: Literal["corral/v1"] = "corral/v1"
    metadata: ObjectMeta
    spec: DeploymentSpec

    @property
    def key(self) -> str:
        """Its key in KV: <namespace>.<name> (corral.contract.names.object_key)."""
        return object_key(self.metadata.namespace, self.metadata.name)


class ScaleRequest(_Public, frozen=True):
    """Set the replica count of an existing object, like Kubernetes' scale subresource."""

    name: DnsLabel
    replicas: Replicas
    namespace: Namespace = "default"
    resource_version: ResourceVersion = 0

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)


class DeleteRequest(_Public, frozen=True):
    name: DnsLabel
    namespace: Namespace = "default"
    resource_version: ResourceVersion = 0

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)


class NodeReleaseRequest(_Public, frozen=True):
    """An operator's word that a node is gone for good (`corral node release NODE`):
    the scheduler replaces its replicas at once, "AfterStop" Deployments included,
    and forgets the node. Answered by the scheduler on corral.api.node.release.

    A node with replicas of "AfterStop" Deployments is released only after R' of
    silence (its agent, if merely cut off, may run them until then), unless `force`:
    the operator knows the node's containers are gone (docs/safety.md)."""

    name: DnsLabel
    force: bool = False


class NodeDecision(_Public, frozen=True):
    """An operator's decision about containers of another cluster on one node, sent to
    its agent on corral.node.<node>.adopt or .reset (`corral node adopt|reset NODE`).

    adopt: the agent accepts the store's cluster; containers of `clusterId` (default:
    the cluster the agent recorded before) become orphans it keeps until a Deployment
    of their name and template claims them. reset: the agent accepts the store's
    cluster and removes the containers of `clusterId` on its node.
    """

    node: DnsLabel
    cluster_id: Annotated[str, msgspec.Meta(pattern=CLUSTER_ID_PATTERN, max_length=16)] = ""
