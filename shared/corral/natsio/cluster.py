"""The cluster's identity: a random id made when the cluster's state is first created.

Every container (and later network and volume) corral makes carries it in the
label io.corral.cluster, so that nothing ever acts on another cluster's objects,
and a node agent can tell a state store it knows from one that was lost and made
anew (docs/safety.md).
"""

from __future__ import annotations

import secrets
import time

import msgspec

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.state import Cluster
from corral.natsio.kv import Bucket, Conflict


class UnreadableIdentity(Exception):
    """The stored identity does not decode: nothing may act until an operator looks."""


def new_cluster_id() -> str:
    return secrets.token_hex(8)


async def read_cluster_identity(bucket: Bucket) -> Cluster | None:
    entry = await bucket.get(names.CLUSTER_KEY)
    if entry is None or entry.value is None:
        return None
    try:
        return decode(entry.value, Cluster)
    except msgspec.DecodeError as error:
        raise UnreadableIdentity(
            f"{bucket.name}/{names.CLUSTER_KEY} cannot be read: {error}"
        ) from None


async def ensure_cluster_identity(bucket: Bucket) -> Cluster:
    """The stored identity; made (compare-and-set create) when the state has none yet."""
    for _ in range(5):
        found = await read_cluster_identity(bucket)
        if found is not None:
            return found
        made = Cluster(id=new_cluster_id(), created_at=time.time())
        try:
            await bucket.create(names.CLUSTER_KEY, encode(made))
        except Conflict:
            continue  # another service made it first: read theirs
        return made
    raise RuntimeError("the cluster identity kept changing while being created")
