"""Volume-aware placement: the pure rules of docs/volumes.md ("Replicas with volumes").

A template's claims each constrain where its new replicas may go, in order:

    claim                                  new replicas
    does not exist                         none: 'persistentvolumeclaim "data" not found'
    Terminating                            none: '... "data" is being deleted'
    Pending, not waitForFirstConsumer      none: '... "data" is not bound: <its message>'
    Pending, waitForFirstConsumer          nodes whose volume manager is ready with
                                           `requestBytes` of room; then all on that node
    Bound, its volume Deleting             none: '... "data"'s volume is being deleted'
    Bound, `node` set                      only that node
    Bound, no source, `node` empty         where a replica already uses it, else one node
                                           whose volume manager is ready with its size of room
    Bound, node-local, `node` empty        where a replica already uses it, else one node
    Bound, ReadWriteOnce dockerVolume      where a replica already uses it, else one node
    ReadWriteOncePod                       one replica in the cluster, once none uses it

`VolumeView` holds what the caller knows (control_loop.py keeps it per change, for the
claims of the Deployment decided only); `VolumeFit` applies the rules to one decision,
counting what that decision itself takes (the nodes it pins a claim to, the room it
takes for claims waiting for their first consumer) in a `VolumeTakes` the decision owns.
Nothing here does I/O or reads a clock. A template without claims never gets here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.contract.names import object_key
from corral.contract.specs import ContainerTemplate, claim_names
from corral.contract.volume_specs import single_node
from corral.contract.volume_state import (
    CLAIM_BOUND,
    CLAIM_PENDING,
    CLAIM_TERMINATING,
    ClaimStatus,
    NodeVolumes,
)

READ_WRITE_ONCE_POD = "ReadWriteOncePod"

# Why a node cannot take a replica, in Kubernetes' words (counted in "0/N nodes are
# available: ..." next to the resource reasons).
AFFINITY_CONFLICT = "node(s) had volume node affinity conflict"
NOT_ENOUGH_STORAGE = "node(s) did not have enough free storage"
NO_VOLUME_MANAGER = "node(s) had no volume manager running"


def in_use_elsewhere(volume: str) -> str:
    return f'node(s) had volume "{volume}" in use elsewhere (ReadWriteOnce)'


@dataclass(frozen=True)
class ClaimFacts:
    """What the scheduler knows of one claim (key <namespace>.<claim>)."""

    exists: bool = True  # a record in corral_claims (readable or not)
    access_modes: tuple[str, ...] = ()  # the claim spec's ("" : unknown)
    status: ClaimStatus | None = None
    # The bound volume lives on one node (True when its spec is not known: the safe side).
    node_local: bool = True
    # The placements that use it: node -> replica name -> how many placements.
    users: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # The bound volume's record is Deleting (VolumeStatus.phase): never placed with.
    volume_deleting: bool = False
    # The bound volume has no source (an image corral makes on the node of its first use)
    # and no node yet: its size, the room its first replica's node must offer (0: none).
    first_use_bytes: int = 0

    @property
    def exclusive(self) -> bool:
        """ReadWriteOncePod, as the claim asks or as its bound volume says."""
        if READ_WRITE_ONCE_POD in self.access_modes:
            return True
        return self.status is not None and READ_WRITE_ONCE_POD in self.status.access_modes


@dataclass(frozen=True)
class VolumeView:
    """The storage facts a decision reads (read only)."""

    claims: Mapping[str, ClaimFacts] = field(default_factory=dict)  # by claim key
    node_volumes: Mapping[str, NodeVolumes] = field(default_factory=dict)  # by node
    # Bytes of each node's room already taken: the volumes corral made there (VolumeStatus.
    # sizeBytes with countsRoom) and the claims whose first replica is placed there whose
    # volume is not made there yet (waiting for their first consumer, or bound to a volume
    # with no source and no node yet).
    storage_taken: Mapping[str, int] = field(default_factory=dict)

    def copied(self) -> VolumeView:
        """A copy a decision in another thread may read while the caller changes its own."""
        return VolumeView(
            claims={
                key: ClaimFacts(
                    facts.exists,
                    facts.access_modes,
                    facts.status,
                    facts.node_local,
                    {node: dict(replicas) for node, replicas in facts.users.items()},
                    facts.volume_deleting,
                    facts.first_use_bytes,
                )
                for key, facts in self.claims.items()
            },
            node_volumes=dict(self.node_volumes),
            storage_taken=dict(self.storage_taken),
        )


NO_VOLUMES = VolumeView()


def uses_exclusive_claim(view: VolumeView, namespace: str, template: ContainerTemplate) -> bool:
    """The template names a ReadWriteOncePod claim (its rollouts stop before they place)."""
    for claim in claim_names(template):
        facts = view.claims.get(object_key(namespace, claim))
        if facts is not None and facts.exclusive:
            return True
    return False


@dataclass
class VolumeTakes:
    """What one decision (or one whole pass) took so far: the replicas it placed per claim
    and node, and the room it took per node."""

    # claim key -> node -> replicas
    users: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    room: dict[str, int] = field(default_factory=dict)  # node -> bytes


@dataclass
class _Rule:
    claim: str  # its name in the template
    key: str  # <namespace>.<claim>
    facts: ClaimFacts
    # "node": only `node`; "one": one node for every replica (where it is used, else the
    # first picked); "room": as "one", the first picked with `need` bytes of room (waiting
    # for its first consumer, or bound to a volume with no source and no node yet); "": any.
    kind: str
    node: str = ""
    need: int = 0  # "room": the bytes the first node must offer
    conflict: str = AFFINITY_CONFLICT  # the reason for the nodes it excludes
    used: set[str] = field(default_factory=set)  # the nodes where placements use it

    def __post_init__(self) -> None:
        self.used = {node for node, replicas in self.facts.users.items() if replicas}


class VolumeFit:
    """The rules for one Deployment's new replicas (the claims of its template, in order).

    `block`: why none can be placed at all ("" : some may); `misfit(node)`: why a node
    cannot take the next one ("" : it can); `took(node, replica)`: count a placement.
    """

    def __init__(
        self, view: VolumeView, namespace: str, claims: list[str], takes: VolumeTakes
    ) -> None:
        self.view = view
        self.takes = takes
        self.block = ""
        self.rules: list[_Rule] = []
        for claim in claims:
            key = object_key(namespace, claim)
            facts = view.claims.get(key) or ClaimFacts(exists=False)
            reason = self._add(claim, key, facts)
            if reason:
                self.block = reason
                return
        for rule in self.rules:
            rule.used.update(takes.users.get(rule.key, ()))
        self._refresh_exclusive()

    def _add(self, claim: str, key: str, facts: ClaimFacts) -> str:
        """Add the rule for one claim; or the reason nothing can be placed."""
        what = f'persistentvolumeclaim "{claim}"'
        if not facts.exists:
            return f"{what} not found"
        status = facts.status
        phase = "" if status is None else status.phase
        if phase == CLAIM_TERMINATING:
            return f"{what} is being deleted"
        if status is not None and phase == CLAIM_PENDING and status.wait_for_first_consumer:
            self.rules.append(_Rule(claim, key, facts, "room", need=status.request_bytes))
        elif status is None or phase != CLAIM_BOUND:
            message = "" if status is None else status.message
            return f"{what} is not bound" + (f": {message}" if message else "")
        elif facts.volume_deleting:
            return f"{what}'s volume is being deleted"
        elif status.node:
            self.rules.append(_Rule(claim, key, facts, "node", node=status.node))
        elif facts.node_local and facts.first_use_bytes:
            self.rules.append(_Rule(claim, key, facts, "room", need=facts.first_use_bytes))
        elif facts.node_local:
            self.rules.append(_Rule(claim, key, facts, "one"))
        elif single_node(status.access_modes):
            conflict = in_use_elsewhere(status.volume)
            self.rules.append(_Rule(claim, key, facts, "one", conflict=conflict))
        elif facts.exclusive:
            self.rules.append(_Rule(claim, key, facts, ""))
        return ""

    def _refresh_exclusive(self) -> None:
        """ReadWriteOncePod: no new replica while any placement (or this decision's) uses it."""
        for rule in self.rules:
            if not rule.facts.exclusive:
                continue
            users = sorted(
                replica
                for replicas in rule.facts.users.values()
                for replica, count in replicas.items()
                if count
            )
            for replicas in self.takes.users.get(rule.key, {}).values():
                users += replicas
            if users:
                self.block = (
                    f'persistentvolumeclaim "{rule.claim}" is in use by replica {users[0]} '
                    "(ReadWriteOncePod)"
                )
                return

    def misfit(self, node: str) -> str:
        """Why `node` cannot take one more replica, or ""."""
        need = 0
        for rule in self.rules:
            if rule.kind == "node":
                if node != rule.node:
                    return rule.conflict
            elif rule.kind:
                if rule.used:
                    if node not in rule.used:
                        return rule.conflict
                elif rule.kind == "room":
                    need += rule.need
        if need:
            offered = self.view.node_volumes.get(node)
            if offered is None or not offered.ready:
                return NO_VOLUME_MANAGER
            taken = self.view.storage_taken.get(node, 0) + self.takes.room.get(node, 0)
            if offered.capacity_bytes - taken < need:
                return NOT_ENOUGH_STORAGE
        return ""

    def took(self, node: str, replica: str) -> None:
        """A replica of this Deployment placed on `node`: the claims it uses are used there
        now (a claim waiting for its first consumer, or bound to a volume with no source
        and no node yet, takes its room there, once)."""
        for rule in self.rules:
            if rule.kind == "room" and not rule.used:
                self.takes.room[node] = self.takes.room.get(node, 0) + rule.need
            rule.used.add(node)
            per_node = self.takes.users.setdefault(rule.key, {})
            per_node.setdefault(node, []).append(replica)
        self._refresh_exclusive()
