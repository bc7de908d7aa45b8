"""Moves records stored before keys carried the namespace to their keys now.

Keys of namespaced objects became `<namespace>.<name>` and those of replicas
`<node>.<namespace>.<replica>` (corral.contract.names). Each owner moves its own
records when it starts, before it acts on them: the scheduler its Deployments,
their statuses and the placements; each node agent its replicas' statuses
(corral_node_agent.status_book). Readers accept both forms meanwhile, since the
records' values carry what the keys say.

A move is copy, then delete, both conditional: the copy is a create (when the new
key exists already, what is there is newer and is kept), the delete is on the
revision read (a record rewritten meanwhile under its old key is left for the next
start, with a warning). Nothing is ever lost: at worst a record exists twice for a
moment, under both keys, with the same value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from corral.contract import names
from corral.natsio.kv import Bucket, Conflict, is_echo_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyForm:
    """How to tell a key of before namespaces, and its key now."""

    is_legacy: Callable[[str], bool]
    new_key: Callable[[str], str]


OBJECT_KEYS = KeyForm(
    names.is_legacy_object_key,
    lambda key: names.object_key(*names.split_object_key(key)),
)
PLACEMENT_KEYS = KeyForm(
    names.is_legacy_placement_key,
    lambda key: names.placement_key(*names.split_placement_key(key)),
)

# What the scheduler owns, and the form of each bucket's keys. Placements from before
# namespaces are in corral_placements only: their clusters have one shard (a cluster of
# shards has no corral_placements bucket).
SCHEDULER_BUCKETS = {
    names.DEPLOYMENTS_BUCKET: OBJECT_KEYS,
    names.DEPLOYMENT_STATUS_BUCKET: OBJECT_KEYS,
    names.PLACEMENTS_BUCKET: PLACEMENT_KEYS,
}


async def move_legacy_keys(bucket: Bucket, form: KeyForm, prefix: str = ">") -> int:
    """Move every record of `bucket` (under `prefix`) whose key has the old form; the
    number moved."""
    legacy: list[tuple[str, bytes, int]] = []
    async for entry in bucket.watch(prefix):
        if entry is None:
            break
        if entry.value is None or is_echo_key(entry.key) or not form.is_legacy(entry.key):
            continue
        legacy.append((entry.key, entry.value, entry.revision))
    moved = 0
    for key, value, revision in legacy:
        new_key = form.new_key(key)
        try:
            await bucket.create(new_key, value)
        except Conflict:
            log.info("%s/%s exists already; %s is older and goes", bucket.name, new_key, key)
        try:
            await bucket.delete(key, revision)
        except Conflict:
            log.warning(
                "%s/%s changed while moving it to %s; the next start moves it",
                bucket.name,
                key,
                new_key,
            )
            continue
        moved += 1
    if moved:
        log.info("moved %d record(s) of %s to keys with their namespace", moved, bucket.name)
    return moved


__all__ = [
    "OBJECT_KEYS",
    "PLACEMENT_KEYS",
    "SCHEDULER_BUCKETS",
    "KeyForm",
    "move_legacy_keys",
]
