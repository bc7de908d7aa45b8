"""The cluster's identity: a random id made when the cluster's state is first created.

Every container (and later network and volume) corral makes carries it in the
label io.corral.cluster, so that nothing ever acts on another cluster's objects,
and a node agent can tell a state store it knows from one that was lost and made
anew (docs/safety.md).

The identity also lists the buckets the cluster's state has. A listed bucket that
is missing was lost: corral never makes it again empty (an empty placements bucket
would make every agent remove every replica), it refuses to start (StateStoreLost).
A bucket a newer corral adds is made, then listed (compare-and-set).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from typing import Final

import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.state import Cluster
from corral.natsio.kv import Bucket, Conflict


class UnreadableIdentity(Exception):
    """The stored identity does not decode: nothing may act until an operator looks."""


# Every bucket existed when an identity without `buckets` was made (the corral of
# that time made them all first): such an identity lists these.
BUCKETS_BEFORE_THE_LIST: Final = (
    "corral_deployments",
    "corral_deployment_status",
    "corral_nodes",
    "corral_placements",
    "corral_replica_status",
    "corral_leases",
    "corral_cluster",
)

CAS_ATTEMPTS = 10
# A placements shard's bucket (names.placements_buckets with more than one shard).
_SHARD_BUCKET: Final = re.compile(rf"{names.PLACEMENTS_BUCKET}_[0-9]+")


class StateStoreLost(Exception):
    """Buckets the cluster's state has are missing from the store: corral refuses to
    make them again empty."""

    def __init__(self, cluster_id: str, lost: Sequence[str]) -> None:
        self.cluster_id = cluster_id
        self.lost = tuple(lost)
        which = f"bucket {lost[0]}" if len(lost) == 1 else "buckets " + ", ".join(lost)
        super().__init__(
            f"the state store lost {which} of cluster {cluster_id}: corral will not "
            "recreate it empty, which would remove every replica; restore it from a "
            "backup, or start a new cluster with an empty store"
        )


class StoreInconsistent(Exception):
    """The store holds what the cluster's identity says it cannot (corral_placements in
    a cluster of shards, with records in it): corral refuses to start on it."""


def listed_buckets(identity: Cluster) -> tuple[str, ...]:
    """The buckets the cluster's state has, as its identity lists them."""
    return tuple(identity.buckets) if identity.buckets else BUCKETS_BEFORE_THE_LIST


def lost_buckets(identity: Cluster, missing: Sequence[str]) -> list[str]:
    """Which of the `missing` buckets the cluster had (lost), in the order given: those
    its identity lists, and every shard of its placements whether listed or not."""
    listed = set(listed_buckets(identity)) | set(
        names.placements_buckets(identity.placement_shards)
    )
    return [bucket for bucket in missing if bucket in listed]


async def list_buckets(bucket: Bucket, present: Sequence[str]) -> Cluster | None:
    """Make the identity list `present` too (buckets made since it was made, or an
    identity from before the list): compare-and-set, so two services starting at
    once both end with every bucket listed. None: there is no identity (yet)."""
    for _ in range(CAS_ATTEMPTS):
        entry = await bucket.leader_get(names.CLUSTER_KEY)  # the revision a CAS needs
        if entry is None or entry.value is None:
            return None
        identity = _decode(bucket, entry.value)
        listed = listed_buckets(identity)
        wanted = [*listed, *(name for name in present if name not in listed)]
        if list(identity.buckets) == wanted:
            return identity
        extended = msgspec.structs.replace(identity, buckets=wanted)
        try:
            await bucket.update(names.CLUSTER_KEY, encode(extended), entry.revision)
        except Conflict:
            continue  # another service listed them meanwhile: read again
        return extended
    raise RuntimeError("the cluster identity kept changing while its buckets were listed")


def _decode(bucket: Bucket, raw: bytes) -> Cluster:
    try:
        identity = decode(raw, Cluster)
        names.check_placement_shards(identity.placement_shards)
        if identity.placement_shards == 1 and any(
            _SHARD_BUCKET.fullmatch(listed) for listed in identity.buckets
        ):
            # Rewritten by a corral from before shards, which drops the number it does
            # not know: read as one shard, the cluster's placements would be missed.
            raise ValueError("it lists placement shards' buckets but says one shard")
    except (msgspec.DecodeError, ValueError) as error:
        raise UnreadableIdentity(
            f"{bucket.name}/{names.CLUSTER_KEY} cannot be read: {error}"
        ) from None
    return identity


def cluster_buckets(placement_shards: int) -> tuple[str, ...]:
    """Every bucket of a cluster whose placements are in `placement_shards` shards (what
    its services open); its identity lists names.PLACEMENTS_FENCE too (listed_buckets)."""
    shards = names.placements_buckets(placement_shards)
    if placement_shards == 1:
        return names.ALL_BUCKETS
    others = (bucket for bucket in names.ALL_BUCKETS if bucket != names.PLACEMENTS_BUCKET)
    return (*others, *shards)


def buckets_to_list(placement_shards: int) -> tuple[str, ...]:
    """What a new identity lists: the cluster's buckets, and for a cluster of shards the
    fence (names.PLACEMENTS_FENCE) that a corral from before shards finds missing."""
    made = cluster_buckets(placement_shards)
    return made if placement_shards == 1 else (*made, names.PLACEMENTS_FENCE)


def new_cluster_id() -> str:
    return secrets.token_hex(8)


async def read_cluster_identity(bucket: Bucket, *, from_leader: bool = False) -> Cluster | None:
    """The stored identity (None: there is none). `from_leader`: never from a replica
    behind the stream's leader (corral_cluster is read with direct gets)."""
    entry = await (bucket.leader_get if from_leader else bucket.get)(names.CLUSTER_KEY)
    if entry is None or entry.value is None:
        return None
    return _decode(bucket, entry.value)


async def ensure_cluster_identity(bucket: Bucket, placement_shards: int = 1) -> Cluster:
    """The stored identity; made (compare-and-set create) when the state has none yet,
    with `placement_shards` and listing every bucket (cluster_buckets): call it after
    corral.natsio.bus.open_buckets made them (buckets first, then the identity that says
    they exist). An identity found has its own number of shards, whatever is asked."""
    names.check_placement_shards(placement_shards)
    for _ in range(5):
        found = await read_cluster_identity(bucket, from_leader=True)
        if found is not None:
            return found
        made = Cluster(
            id=new_cluster_id(),
            created_at=time.time(),
            buckets=list(buckets_to_list(placement_shards)),
            placement_shards=placement_shards,
        )
        try:
            await bucket.create(names.CLUSTER_KEY, encode(made))
        except Conflict:
            continue  # another service made it first: read theirs
        return made
    raise RuntimeError("the cluster identity kept changing while being created")
