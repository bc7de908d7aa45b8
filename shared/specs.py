"""What a client declares: the public spec payloads, one home for each type.

Every payload here travels as JSON on a public subject (see corral.names), so any
NATS client can drive corral. Field names are camelCase on the wire, as in
Kubernetes manifests. Validation happens while decoding (corral.codec): a
payload that fails it is rejected whole, with an error that names the field.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

import msgspec

from corral.quantity import cpu_millis, memory_bytes

API_VERSION = "corral/v1"
MAX_REPLICAS = 10_000

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# The grammar of github.com/distribution/reference, without the IPv6 host form.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IMAGE_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
MAX_IMAGE_REFERENCE = 255


def check_dns_label(field: str, value: str) -> None:
    if not _DNS_LABEL.match(value):
        raise ValueError(
            f"`{field}` {value!r} is not a DNS label: use at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )


def check_image_reference(value: str) -> None:
    if len(value) > MAX_IMAGE_REFERENCE or not _IMAGE_REFERENCE.match(value):
        raise ValueError(
            f"`image` {value!r} is not a valid image reference "
            "(expected [registry/]name[:tag][@sha256:digest], lowercase name)"
        )


class _Public(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    rename="camel",
):
    """Base of every public payload: immutable, camelCase on the wire, strict.

    Defaults are omitted when encoding, so adding a field with a default later
    changes neither the stored bytes nor a template's hash.
    Validation errors raised in __post_init__ start with the offending field in
    backquotes, relative to the struct; corral.codec joins it to the path.
    """


class ObjectMeta(_Public, frozen=True, kw_only=True):
    name: str
    labels: dict[str, str] = {}
    namespace: Literal["default"] = "default"
    # Set by the owner when it stores the object; ignored when a client sends them.
    generation: int = 0
    uid: str = ""
    creation_timestamp: float = 0.0

    def __post_init__(self) -> None:
        check_dns_label("name", self.name)


class ResourceList(_Public, frozen=True):
    cpu: str | int | float | None = None
    memory: str | int | float | None = None

    def __post_init__(self) -> None:
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
    """requests: what the scheduler reserves on a node; limits: what the engine enforces."""

    requests: ResourceList = ResourceList()
    limits: ResourceList = ResourceList()

    def __post_init__(self) -> None:
        if self.limits.cpu_millis and self.requests.cpu_millis > self.limits.cpu_millis:
            raise ValueError("`requests.cpu` is larger than `limits.cpu`")
        if self.limits.memory_bytes and self.requests.memory_bytes > self.limits.memory_bytes:
            raise ValueError("`requests.memory` is larger than `limits.memory`")


class ContainerTemplate(_Public, frozen=True):
    """The container every replica of a Deployment runs."""

    image: str
    command: list[str] | None = None  # replaces the image's entrypoint
    args: list[str] | None = None  # replaces the image's cmd
    env: dict[str, str] = {}
    resources: Resources = Resources()

    def __post_init__(self) -> None:
        check_image_reference(self.image)
        for key in self.env:
            if not _ENV_NAME.match(key):
                raise ValueError(f"`env` name {key!r} is not a valid environment variable name")

    def template_hash(self) -> str:
        """A short stable digest: replicas whose hash differs run an older template."""
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()[:10]


class DeploymentSpec(_Public, frozen=True, kw_only=True):
    replicas: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)] = 1
    template: ContainerTemplate
    # When a node is lost: "Fast" places replacements after R (a cut-off node may run
    # its copies until it stops them at F, so two copies can overlap for F - R);
    # "AfterStop" never runs two copies: replacements wait until R' (past the cut-off
    # node's own stop), or until an operator releases the node. See docs/time-budget.md.
    replacement: Literal["Fast", "AfterStop"] = "Fast"


class Deployment(_Public, frozen=True, kw_only=True, tag_field="kind", tag="Deployment"):
    """N replicas of one container template, kept at N by the scheduler."""

    api_version: Literal["corral/v1"] = "corral/v1"
    metadata: ObjectMeta
    spec: DeploymentSpec


class ScaleRequest(_Public, frozen=True):
    """Set the replica count of an existing object, like Kubernetes' scale subresource."""

    name: str
    replicas: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)]

    def __post_init__(self) -> None:
        check_dns_label("name", self.name)


class DeleteRequest(_Public, frozen=True):
    name: str

    def __post_init__(self) -> None:
        check_dns_label("name", self.name)


class NodeReleaseRequest(_Public, frozen=True):
    """An operator's word that a node is gone for good (`corral node release NODE`):
    the scheduler replaces its replicas at once, "AfterStop" Deployments included,
    and forgets the node. Answered by the scheduler on corral.api.node.release."""

    name: str

    def __post_init__(self) -> None:
        check_dns_label("name", self.name)


class NodeDecision(_Public, frozen=True):
    """An operator's decision about containers of another cluster on one node, sent to
    its agent on corral.node.<node>.adopt or .reset (`corral node adopt|reset NODE`).

    adopt: the agent accepts the store's cluster; containers of `clusterId` (default:
    the cluster the agent recorded before) become orphans it keeps until a Deployment
    of their name and template claims them. reset: the agent accepts the store's
    cluster and removes the containers of `clusterId` on its node.
    """

    node: str
    cluster_id: str = ""

    def __post_init__(self) -> None:
        check_dns_label("node", self.node)
        if self.cluster_id and not re.fullmatch(r"[0-9a-f]{16}", self.cluster_id):
            raise ValueError(f"`clusterId` {self.cluster_id!r} is not a cluster id (16 hex digits)")
