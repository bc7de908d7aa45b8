"""The NATS side of every service: connecting, the streams and buckets corral
needs (their replicas, size limits and delete-marker purging), events, and serving
a kind's spec subjects (request/reply, and durable through CORRAL_SPECS)."""

from __future__ import annotations

import copy
import datetime
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import anyio
import msgspec
import nats
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js import errors as js_errors

from corral.contract import names, time_budget
from corral.contract.backoff import Backoff
from corral.contract.codec import encode
from corral.contract.events import (
    REASON_INTERNAL,
    REASON_INVALID,
    REASON_STORE_FULL,
    REASON_SUPERSEDED,
    Event,
    Reply,
)
from corral.contract.quantity import storage_bytes
from corral.contract.state import Cluster
from corral.natsio import api_metrics, nats_internals
from corral.natsio.cluster import (
    StateStoreLost,
    StoreInconsistent,
    cluster_buckets,
    ensure_cluster_identity,
    list_buckets,
    lost_buckets,
    read_cluster_identity,
)
from corral.natsio.config import nats_servers
from corral.natsio.kv import Bucket, NatsBucket, answered_by_its_leader
from corral.natsio.kv import bucket_stream as bucket_stream  # its home; said here too
from corral.natsio.spec_progress import advance, progress_key, recorded_progress, start_progress

log = logging.getLogger(__name__)

# A handler gets the raw payload of one verb and returns the reply; it never raises
# for bad input (that is a Reply with ok=False).
SpecHandler = Callable[[bytes], Awaitable[Reply]]


class DurableSpecHandler(Protocol):
    """A handler of durable specs also gets the CORRAL_SPECS stream sequence the spec
    came from (0 on the request path), so that it never applies an older spec over a
    newer stored one."""

    def __call__(self, raw: bytes, sequence: int = 0, /) -> Awaitable[Reply]: ...


# Between two tries of the same server after a disconnect (nats-py tries the others
# meanwhile), and the bound on one TCP connect: both well inside the failover goal.
RECONNECT_WAIT_SECONDS = 0.25
CONNECT_TIMEOUT_SECONDS = 1
# The bound on one JetStream API call (nats-py's default is 5 s): a call that went to
# a server that died meanwhile fails after this, and is retried through another.
JS_API_TIMEOUT_SECONDS = 2.0


async def connect(url: str | Sequence[str], name: str, *, startup_timeout: float = 60.0) -> NATS:
    """Connect to any of the servers in `url` (one URL, several comma-separated, or a
    list), retrying for `startup_timeout` at start (a service may start before NATS)
    and for ever after a disconnect, through every server of the cluster.

    The client pings its server every NATS_PING_SECONDS and drops a connection after
    NATS_MAX_OUTSTANDING_PINGS unanswered pings, so a dead (half-open) connection is
    noticed in seconds and the client moves to another server (docs/time-budget.md).
    """
    servers = nats_servers(url)
    delays = Backoff(first=0.1, most=2.0)
    with anyio.fail_after(startup_timeout):
        while True:
            try:
                return await nats.connect(
                    servers=servers,
                    name=name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT_SECONDS,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    ping_interval=time_budget.NATS_PING_SECONDS,
                    max_outstanding_pings=time_budget.NATS_MAX_OUTSTANDING_PINGS,
                    allow_reconnect=True,
                    error_cb=_log_nats_error,
                    disconnected_cb=_log_disconnect,
                    reconnected_cb=_log_reconnect,
                )
            except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as error:
                log.warning("NATS at %s not reachable (%s); retrying", ",".join(servers), error)
                await anyio.sleep(delays.next())


# Called with the subscription nats-py dropped messages of (a slow consumer): the
# scheduler's heartbeat judge takes its view as stale then (corral_scheduler.heartbeats).
SLOW_CONSUMER_HOOKS: list[Callable[[object], None]] = []


async def _log_nats_error(error: Exception) -> None:
    if isinstance(error, nats.errors.SlowConsumerError):
        for hook in list(SLOW_CONSUMER_HOOKS):
            hook(error.sub)
    log.warning("NATS: %s", str(error) or type(error).__name__)


async def _log_disconnect() -> None:
    log.info("NATS: disconnected")


async def _log_reconnect() -> None:
    log.info("NATS: reconnected")


# --- storage settings -----------------------------------------------------------------

MIB = 1024 * 1024
DAY = 24 * 3600.0


def _env_number(
    name: str,
    default: float,
    minimum: float,
    maximum: float,
    *,
    parse: Callable[[str], float] = float,
    expected: str = "",
) -> float:
    """$name read with `parse` (default: `default`); a value it refuses, or outside
    minimum..maximum, is a ValueError naming it ("must be `expected`")."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except (ValueError, OverflowError):
        value = float("nan")
    if not minimum <= value <= maximum:  # NaN fails this too
        wanted = expected or f"a number from {minimum:g} to {maximum:g}"
        raise ValueError(f"{name} must be {wanted}, not {raw!r}")
    return value


def _size(raw: str) -> float:
    """Bytes, or a quantity (320Mi, 2Gi), as the docs write sizes; a number as it was read
    before quantities (1e9, 1_000_000) too."""
    try:
        return storage_bytes(raw)
    except ValueError:
        return int(float(raw))


def kv_replicas() -> int:
    """How many NATS servers keep each bucket and stream: $CORRAL_KV_REPLICAS (1 to 5),
    3 on a 3-server cluster (R3), 1 on a single server (the default)."""
    raw = os.environ.get("CORRAL_KV_REPLICAS", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 5:
        raise ValueError(f"CORRAL_KV_REPLICAS must be a whole number from 1 to 5, not {raw!r}")
    return int(raw)


def placement_shards_setting() -> int:
    """$CORRAL_PLACEMENT_SHARDS (1 to names.MAX_PLACEMENT_SHARDS; default 1)."""
    raw = os.environ.get("CORRAL_PLACEMENT_SHARDS", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= names.MAX_PLACEMENT_SHARDS:
        raise ValueError(
            f"CORRAL_PLACEMENT_SHARDS must be a whole number from 1 to "
            f"{names.MAX_PLACEMENT_SHARDS}, not {raw!r}"
        )
    return int(raw)


@dataclass(frozen=True)
class StoreSettings:
    """How corral's streams and buckets are kept (docs/api.md, "Limits and retention").

    A setting is a floor, never a ceiling: a service never lowers the replicas or the
    size limit of a stream or bucket that already has more (it logs the difference);
    it raises them to its own setting.
    """

    replicas: int = 1  # CORRAL_KV_REPLICAS
    bucket_max_bytes: int = 256 * MIB  # CORRAL_KV_MAX_BYTES, each bucket
    specs_max_bytes: int = 256 * MIB  # CORRAL_SPECS_MAX_BYTES
    events_max_bytes: int = 512 * MIB  # CORRAL_EVENTS_MAX_BYTES
    specs_max_age: float = (
        7 * DAY
    )  # CORRAL_SPECS_MAX_AGE_SECONDS: an unapplied spec is kept this long
    events_max_age: float = 1 * DAY
    # CORRAL_KV_MARKER_RETENTION_SECONDS: a delete marker older than this is purged.
    marker_retention: float = 1 * DAY
    # CORRAL_PLACEMENT_SHARDS: how many buckets the placements of a cluster made now
    # are split into (names.placement_shard); a cluster keeps the number it was made with.
    placement_shards: int = 1

    @property
    def specs_expiry_margin(self) -> float:
        """An unapplied spec older than specs_max_age minus this is warned about."""
        return self.specs_max_age / 7

    @property
    def purge_interval(self) -> float:
        return min(max(self.marker_retention / 4, 0.2), 600.0)

    @classmethod
    def from_env(cls) -> StoreSettings:
        def size(name: str, default: int) -> int:
            return int(
                _env_number(
                    name,
                    default,
                    1024,
                    2**50,
                    parse=_size,
                    expected="a size from 1Ki to 1Pi (bytes, or a quantity such as 320Mi or 2Gi)",
                )
            )

        return cls(
            replicas=kv_replicas(),
            bucket_max_bytes=size("CORRAL_KV_MAX_BYTES", cls.bucket_max_bytes),
            specs_max_bytes=size("CORRAL_SPECS_MAX_BYTES", cls.specs_max_bytes),
            events_max_bytes=size("CORRAL_EVENTS_MAX_BYTES", cls.events_max_bytes),
            specs_max_age=_env_number(
                "CORRAL_SPECS_MAX_AGE_SECONDS", cls.specs_max_age, 1, 365 * DAY
            ),
            marker_retention=_env_number(
                "CORRAL_KV_MARKER_RETENTION_SECONDS", cls.marker_retention, 0.1, 365 * DAY
            ),
            placement_shards=placement_shards_setting(),
        )


async def ensure_streams(js: JetStreamContext, settings: StoreSettings | None = None) -> None:
    """Create the streams corral needs, or bring existing ones to `settings`, never
    lowering their replicas or size limit."""
    settings = settings or StoreSettings.from_env()
    await _ensure_stream(
        js,
        js_api.StreamConfig(
            name=names.SPEC_STREAM,
            subjects=[f"{names.SPEC_PREFIX}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=settings.specs_max_age,
            max_msg_size=names.MAX_SPEC_BYTES * 2,  # larger ones are rejected at the server
            max_bytes=settings.specs_max_bytes,
            # Full: new specs are refused (the publisher is told), never old unapplied
            # ones dropped.
            discard=js_api.DiscardPolicy.NEW,
            allow_direct=True,  # the owner reads positions from any replica
            storage=js_api.StorageType.FILE,
            num_replicas=settings.replicas,
        ),
    )
    await _ensure_stream(
        js,
        js_api.StreamConfig(
            name=names.EVENTS_STREAM,
            subjects=[f"{names.EVENTS_PREFIX}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=settings.events_max_age,
            max_msgs_per_subject=100,
            max_bytes=settings.events_max_bytes,
            discard=js_api.DiscardPolicy.OLD,  # events are history: the oldest go first
            # Said, not left unset: the server stores False, and an unset (None) one
            # differed from it, so every service's start updated the stream.
            allow_direct=False,
            storage=js_api.StorageType.FILE,
            num_replicas=settings.replicas,
        ),
    )


def _floor(name: str, what: str, stored: int | None, wanted: int, setting: str) -> int:
    """The larger of a stored and a wanted setting (unset or -1 stored: unlimited,
    which takes the wanted limit); logs when the stored one is kept."""
    if stored is None or stored < 0:
        return wanted
    if stored > wanted:
        # Info, not a warning: once raised, every later start of a service set lower says
        # it (a line per bucket and process), and nothing is wrong.
        log.info(
            "%s keeps %s %d: this service is set to %d (%s), and never lowers it",
            name,
            what,
            stored,
            wanted,
            setting,
        )
        return stored
    return wanted


async def _ensure_stream(js: JetStreamContext, wanted: js_api.StreamConfig) -> None:
    name = wanted.name or ""
    try:
        info = await js.stream_info(name)
    except js_errors.NotFoundError:
        try:
            await js.add_stream(wanted)
            return
        except js_errors.BadRequestError:
            info = await js.stream_info(name)  # another service made it meanwhile
    stored = info.config
    replicas = _floor(
        f"stream {name}",
        "replicas",
        stored.num_replicas,
        wanted.num_replicas or 1,
        "CORRAL_KV_REPLICAS",
    )
    max_bytes = _floor(
        f"stream {name}",
        "max_bytes",
        stored.max_bytes,
        wanted.max_bytes or -1,
        "its _MAX_BYTES setting",
    )
    config = js_api.StreamConfig.from_response(wanted.as_dict())
    config.num_replicas = replicas
    config.max_bytes = max_bytes
    if any(getattr(stored, f) != getattr(config, f) for f in _MANAGED_STREAM_FIELDS):
        await js.update_stream(config)


_MANAGED_STREAM_FIELDS = (
    "subjects",
    "max_age",
    "max_msg_size",
    "max_msgs_per_subject",
    "max_bytes",
    "discard",
    "allow_direct",
    "num_replicas",
)


async def open_buckets(
    js: JetStreamContext,
    settings: StoreSettings | None = None,
    *,
    made: list[str] | None = None,
    uses: Callable[[int], Collection[str]] | None = None,
) -> dict[str, NatsBucket]:
    """Open every corral bucket by name, creating missing ones, and bring existing ones
    up to `settings` (replicas, size limit), never lowering them.

    A missing bucket is made only when the cluster's state never had it: when the
    store has a cluster identity (corral.natsio.cluster) that lists a missing bucket, that
    bucket was lost, and this raises StateStoreLost before anything is made (an
    empty placements or deployments bucket would remove every replica). A bucket
    the identity does not list yet (one a newer corral added) is made, then listed.
    A store without an identity (new, or wholly wiped) gets every bucket; the
    identity is made after them (corral.natsio.cluster.ensure_cluster_identity).
    `made`: the names of the buckets this call made are appended to it. `uses`: the
    buckets the caller reads, given the cluster's number of placement shards (a node
    agent: a few, and its own shard of the placements); when the store's identity lists
    every bucket already (nothing to make or list), only those are opened, checked and
    raised, and the others are left to the services that use them.
    """
    settings = settings or StoreSettings.from_env()
    found: dict[str, js_api.StreamConfig] = {}  # one stream info per bucket, no more
    missing: list[str] = []

    async def look_for(bucket: str) -> None:
        try:
            config = (await js.stream_info(bucket_stream(bucket))).config
        except js_errors.NotFoundError:
            missing.append(bucket)
            return
        # A stream of that name that is no bucket is refused here, before anything is
        # made or raised (as js.key_value refuses it).
        nats_internals.key_value_from_config(js, bucket, config)
        found[bucket] = config

    await look_for(names.CLUSTER_BUCKET)
    identity = None
    if names.CLUSTER_BUCKET in found:
        cluster_bucket = NatsBucket(
            nats_internals.key_value_from_config(
                js, names.CLUSTER_BUCKET, found[names.CLUSTER_BUCKET]
            ),
            names.CLUSTER_BUCKET,
            stream=found[names.CLUSTER_BUCKET],
        )
        # From the leader: a replica behind could miss a bucket listed since, and a lost
        # bucket would then look new (made again, empty).
        identity = await read_cluster_identity(cluster_bucket, from_leader=True)
    # The placements' shards: the cluster's, or for a new one the setting.
    shards = settings.placement_shards if identity is None else identity.placement_shards
    if identity is None and shards > 1:
        await _refuse_placements_without_identity(js, shards)
    every_bucket = cluster_buckets(shards)
    complete = identity is not None and set(every_bucket) <= set(identity.buckets)
    every_bucket = _buckets_used(every_bucket, identity, uses)
    for bucket in every_bucket:
        if bucket != names.CLUSTER_BUCKET:
            await look_for(bucket)
    if identity is not None:
        lost = lost_buckets(identity, missing)
        if lost:
            raise StateStoreLost(identity.id, lost)
    buckets: dict[str, NatsBucket] = {}
    for bucket in every_bucket:
        config = found.get(bucket)
        if config is None:
            log.info("making bucket %s (not in the cluster's state yet)", bucket)
            try:
                await js.create_key_value(
                    bucket=bucket,
                    history=5,
                    storage=js_api.StorageType.FILE,
                    replicas=settings.replicas,
                    max_bytes=settings.bucket_max_bytes,
                )
                if made is not None:
                    made.append(bucket)
            except js_errors.BadRequestError as error:
                if error.err_code != _STREAM_NAME_IN_USE:
                    raise
                # Another service made it meanwhile (services start together on a new
                # store), and raised its limits already: the same bucket, read below.
        try:
            config = await _raise_bucket(js, bucket, settings, config)
        except js_errors.NotFoundError:
            # Removed meanwhile: made by this process for a number of placement shards
            # that the cluster another process made meanwhile does not have (open_cluster).
            log.info("bucket %s was removed meanwhile: not the cluster's", bucket)
            continue
        kv = nats_internals.key_value_from_config(js, bucket, config)
        if _read_by_agents(bucket) and not answered_by_its_leader(config):
            # Direct gets are for the agents' reads of their own keys (NatsBucket.snapshot,
            # NatsBucket.follow); a single key is read from the leader, as before, but on
            # a stream of one replica, whose one server is its leader, with direct gets.
            kv = nats_internals.key_value_through_api(kv)
        buckets[bucket] = NatsBucket(kv, bucket, stream=config)
    if identity is not None and not complete:
        # Made first, listed after: a crash between the two leaves an unlisted
        # bucket, listed at the next start.
        await list_buckets(buckets[names.CLUSTER_BUCKET], every_bucket)
    return buckets


def _buckets_used(
    every: Sequence[str], identity: Cluster | None, uses: Callable[[int], Collection[str]] | None
) -> tuple[str, ...]:
    """`every` bucket; or, when the caller says which it reads (`uses`) and the store's
    identity lists every one already (nothing to make or list), those and the cluster's."""
    if uses is None or identity is None or not set(every) <= set(identity.buckets):
        return tuple(every)
    used = {*uses(identity.placement_shards), names.CLUSTER_BUCKET}
    return tuple(bucket for bucket in every if bucket in used)


async def open_cluster(
    js: JetStreamContext,
    settings: StoreSettings | None = None,
    *,
    made: list[str] | None = None,
    opened: Mapping[str, NatsBucket] | None = None,
    uses: Callable[[int], Collection[str]] | None = None,
) -> tuple[dict[str, NatsBucket], Cluster]:
    """The cluster's buckets and its identity: made when the store has none (buckets
    first, then the identity that lists them; open_buckets). When another process made
    the cluster meanwhile with other placement shards, its buckets are opened, and those
    this process made for its own number (`made`: also by an open_buckets before this
    call) are removed while unused. A CORRAL_PLACEMENT_SHARDS other than the cluster's
    is logged: a cluster keeps the number it was made with. `opened`: what an
    open_buckets call returned just before (through a JetStream context for setting
    up): used through `js`, not opened again (a service's start asks the server once
    per bucket; bench/bench_agent_start.py). `uses`: as open_buckets'; only those
    buckets are returned when the identity lists every one."""
    settings = settings or StoreSettings.from_env()
    made = [] if made is None else made
    buckets = (
        {name: bucket.through(js) for name, bucket in opened.items()}
        if opened is not None
        else await open_buckets(js, settings, made=made, uses=uses)
    )
    cluster = await ensure_cluster_identity(
        buckets[names.CLUSTER_BUCKET], settings.placement_shards
    )
    theirs = cluster_buckets(cluster.placement_shards)
    needed = _buckets_used(theirs, cluster, uses)
    if not set(needed) <= set(buckets):
        buckets = await open_buckets(js, settings, made=made, uses=uses)
    # Made for another number of shards than the cluster's (this process lost the race
    # to make the cluster): not the cluster's buckets, removed while unused.
    for bucket in made:
        if bucket not in theirs and await _remove_if_unused(js, bucket, cluster):
            log.warning("bucket %s is not cluster %s's, and is in use: left", bucket, cluster.id)
    if cluster.placement_shards > 1:
        await _keep_fence(js, cluster)
    if (
        "CORRAL_PLACEMENT_SHARDS" in os.environ
        and settings.placement_shards != cluster.placement_shards
    ):
        log.warning(
            "CORRAL_PLACEMENT_SHARDS is %d, but cluster %s keeps its placements in %d "
            "shard(s), chosen when it was made: the cluster's number is used",
            settings.placement_shards,
            cluster.id,
            cluster.placement_shards,
        )
    return {bucket: buckets[bucket] for bucket in needed}, cluster


async def _remove_if_unused(js: JetStreamContext, bucket: str, cluster: Cluster) -> bool:
    """Delete `bucket`, not one of `cluster`'s, when it was never written and nothing
    watches it; True when it is in use (left as it is). A bucket emptied by purges
    still has its sequence: in use."""
    try:
        info = await js.stream_info(bucket_stream(bucket))
    except js_errors.NotFoundError:
        return False
    if info.state.last_seq or info.state.consumer_count:
        return True
    try:
        await js.delete_stream(bucket_stream(bucket))
    except js_errors.NotFoundError:
        return False
    log.info("removed bucket %s: cluster %s does not have it", bucket, cluster.id)
    return False


async def _refuse_placements_without_identity(js: JetStreamContext, shards: int) -> None:
    """A store with no identity but placements in corral_placements was a cluster of one
    shard that lost its identity: made again with `shards`, its placements would be in
    no shard (and the fence refuses the store from then on). Refused before anything is
    made."""
    try:
        info = await js.stream_info(bucket_stream(names.PLACEMENTS_BUCKET))
    except js_errors.NotFoundError:
        return
    if info.state.last_seq:
        raise StoreInconsistent(
            f"the store has no cluster identity but has placements in "
            f"{names.PLACEMENTS_BUCKET} (a cluster of one shard): corral will not make a "
            f"cluster of {shards} shards on it; start without CORRAL_PLACEMENT_SHARDS to "
            "make it a cluster of one shard again, or start on an empty store"
        )


async def _keep_fence(js: JetStreamContext, cluster: Cluster) -> None:
    """A cluster of shards has no corral_placements (names.PLACEMENTS_FENCE): a corral
    from before shards finds it missing and refuses the store. One made and never used
    by a service that lost the race to make the cluster is removed, at every start; one
    written to or watched is in use by something that reads placements there: refused."""
    if await _remove_if_unused(js, names.PLACEMENTS_FENCE, cluster):
        raise StoreInconsistent(
            f"cluster {cluster.id} keeps its placements in {cluster.placement_shards} "
            f"shards, but the store has a bucket {names.PLACEMENTS_FENCE} that was written "
            "to or is watched (by a corral from before shards?): corral will not start on "
            "it; stop every older corral, and remove that bucket once its records are "
            "known to be of no use"
        )


# JetStream's answer when a stream of that name exists with another configuration.
_STREAM_NAME_IN_USE: Final = 10058

# Consumers a bucket's stream may have at once (watches: one per node agent and
# service, and short-lived reads); never lowered.
BUCKET_MAX_CONSUMERS: Final = 100_000


# Buckets read with direct gets (allow_direct: any replica answers, without a JetStream
# API request). The cluster identity: every agent reads it every 5 s, 200 reads a second
# at 1,001 nodes. A replica may be behind its leader, for as long as it is cut off from
# it: an agent takes its answer only to confirm what it holds already, and the reads it
# acts on go to the leader (NatsBucket.leader_get, corral_node_agent.membership).
DIRECT_READ_BUCKETS: Final = frozenset({names.CLUSTER_BUCKET})


def _read_by_agents(bucket: str) -> bool:
    """A bucket of which each node agent reads its own keys with direct gets: at once or
    in order (NatsBucket.snapshot, NatsBucket.follow: no consumer on the server), the
    placements and the replica statuses; and its Node record, one key read at its start,
    at each write that conflicts and around an isolation. A single key of them is read
    from the stream's leader: through the API when the stream has more replicas, with a
    direct get when it has one (kv.answered_by_its_leader)."""
    return names.is_placements_bucket(bucket) or bucket in (
        names.REPLICA_STATUS_BUCKET,
        names.NODES_BUCKET,
    )


async def _raise_bucket(
    js: JetStreamContext,
    bucket: str,
    settings: StoreSettings,
    config: js_api.StreamConfig | None = None,
) -> js_api.StreamConfig:
    """Bring a bucket's stream to `settings`; returns its configuration now. `config`:
    the stream's, read already at this start (else it is read here). A change is made
    from the configuration read just before it: another service may have raised the
    stream since the earlier read, and that is never written back lower."""
    stream = bucket_stream(bucket)
    read_before = config is not None
    if config is None:
        config = (await js.stream_info(stream)).config
    change = _bucket_change(bucket, config, settings)
    if change is not None and read_before:
        config = (await js.stream_info(stream)).config
        change = _bucket_change(bucket, config, settings)
    if change is None:
        return config
    replicas, max_bytes, consumers, direct, republish = change
    told = _told_writes(config.republish)
    log.info(
        "bucket %s: replicas %s -> %d, max_bytes %s -> %d, max_consumers %s -> %d, "
        "allow_direct %s -> %s, writes told %s -> %s",
        bucket,
        config.num_replicas,
        replicas,
        config.max_bytes,
        max_bytes,
        config.max_consumers,
        consumers,
        bool(config.allow_direct),
        direct,
        told is not None,
        republish is not None,
    )
    config = copy.copy(config)  # the caller's is left as it was read
    config.num_replicas = replicas
    config.max_bytes = max_bytes
    config.max_consumers = consumers
    config.allow_direct = direct
    if republish is not None and told is None:
        config.republish = js_api.RePublish(
            src=f"$KV.{bucket}.>",
            dest=names.kv_written_subject(bucket, ">"),
            headers_only=True,
        )
    return (await js.update_stream(config)).config


def _bucket_change(
    bucket: str, config: js_api.StreamConfig, settings: StoreSettings
) -> tuple[int, int, int, bool, str | None] | None:
    """What a bucket's stream should have (replicas, max_bytes, max_consumers,
    allow_direct, the bucket whose writes it tells), or None when it has it."""
    replicas = _floor(
        f"bucket {bucket}", "replicas", config.num_replicas, settings.replicas, "CORRAL_KV_REPLICAS"
    )
    max_bytes = _floor(
        f"bucket {bucket}",
        "max_bytes",
        config.max_bytes,
        settings.bucket_max_bytes,
        "CORRAL_KV_MAX_BYTES",
    )
    # Unset (-1), the server's default caps a stream at 1,000 consumers: every node's
    # agent watches its own placements (a consumer each), so a cluster would stop at
    # about 1,000 nodes.
    consumers = config.max_consumers
    if consumers is None or consumers < 0 or consumers < BUCKET_MAX_CONSUMERS:
        consumers = BUCKET_MAX_CONSUMERS
    stored = bool(config.allow_direct)
    placements = names.is_placements_bucket(bucket)
    direct = stored or bucket in DIRECT_READ_BUCKETS or _read_by_agents(bucket)  # never off
    told = _told_writes(config.republish)
    republish = told or (bucket if placements else None)
    current = (config.num_replicas, config.max_bytes, config.max_consumers, stored, told)
    wanted = (replicas, max_bytes, consumers, direct, republish)
    return None if wanted == current else wanted


def _told_writes(republish: js_api.RePublish | None) -> str | None:
    """The bucket whose writes a stream's `republish` tells on corral.kv-written
    (names.kv_written_subject, headers only); None when it tells none that way."""
    if republish is None or not republish.headers_only or not republish.dest:
        return None
    prefix = f"{names.KV_WRITTEN_PREFIX}."
    if not (republish.dest.startswith(prefix) and republish.dest.endswith(".>")):
        return None
    bucket = republish.dest[len(prefix) : -2]
    return bucket if republish.src == f"$KV.{bucket}.>" else None


# JetStream's answers when a stream or bucket (or the server's store) is full.
_STORE_FULL_CODES = frozenset({10077, 10047, 10023})


def is_store_full(error: BaseException) -> bool:
    """The write failed because a stream or bucket reached its size limit."""
    if not isinstance(error, js_errors.APIError):
        return False
    description = (error.description or "").lower()
    return error.err_code in _STORE_FULL_CODES or "maximum bytes" in description


def store_full_reply(error: BaseException) -> Reply:
    detail = getattr(error, "description", "") or str(error)
    return Reply(
        ok=False,
        reason=REASON_STORE_FULL,
        error=(
            f"corral's state store is full ({detail}); nothing was changed. Delete "
            "objects no longer needed, or raise the limit (CORRAL_KV_MAX_BYTES; see "
            "docs/api.md, limits)"
        ),
    )


# --- delete markers -------------------------------------------------------------------


async def purge_delete_markers(js: JetStreamContext, bucket: str, older_than: float) -> int:
    """Purge the delete markers of `bucket` older than `older_than` seconds, with the
    history before them; returns how many. A value written after a marker is kept
    (the purge stops at the marker's sequence), so this never races a new write."""
    kv = await js.key_value(bucket)
    watcher = await kv.watchall(meta_only=True)
    old: list[tuple[str, int]] = []
    now = datetime.datetime.now(datetime.UTC)
    try:
        async for entry in watcher:
            if entry is None:
                break  # the current entries are in (nats-py may say so early: next time)
            deleted = entry.operation in ("DEL", "PURGE")
            created = entry.created
            if deleted and isinstance(created, datetime.datetime) and entry.revision:
                if (now - created).total_seconds() >= older_than:
                    old.append((entry.key, entry.revision))
    finally:
        with anyio.CancelScope(shield=True):
            await _quietly(watcher.stop())  # type: ignore[no-untyped-call]
    for key, revision in old:
        await js.purge_stream(
            bucket_stream(bucket), subject=f"$KV.{bucket}.{key}", seq=revision + 1
        )
    return len(old)


async def keep_purging_delete_markers(
    js: JetStreamContext,
    buckets: Sequence[str] = names.ALL_BUCKETS,
    settings: StoreSettings | None = None,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Purge old delete markers of every bucket, for ever, so that a watch replays a
    bounded history (run by the scheduler, the owner of most buckets)."""
    settings = settings or StoreSettings.from_env()
    task_status.started()
    while True:
        for bucket in buckets:
            try:
                purged = await purge_delete_markers(js, bucket, settings.marker_retention)
                if purged:
                    log.info("purged %d delete marker(s) from %s", purged, bucket)
            except Exception:
                log.warning("purging delete markers of %s failed", bucket, exc_info=True)
        await anyio.sleep(settings.purge_interval)


# --- failover -------------------------------------------------------------------------


async def keep_leaders_elsewhere(
    nc: NATS,
    js: JetStreamContext,
    streams: Sequence[str],
    consumers: Sequence[tuple[str, str]] = (),
    *,
    interval: float = 2.0,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Ask the Raft leader of each of `streams` and `consumers` ((stream, durable)) to
    step down while it is the server this client is connected to.

    When that server dies, the client moves to another in well under a second, but a
    Raft group whose leader died elects a new one only after nats-server's election
    timeout (4 to 9 s, not configurable). With the leaders elsewhere, the death of
    this client's server costs it only the reconnect (docs/time-budget.md).
    """
    task_status.started()
    while True:
        await anyio.sleep(interval)
        info = nats_internals.server_info(nc) if nc.is_connected else {}
        server = info.get("server_name")
        if not server or not info.get("cluster"):
            continue  # a single server: no other could lead
        for stream in streams:
            await _step_down_if_led_by(nc, js, server, stream, None)
        for stream, consumer in consumers:
            await _step_down_if_led_by(nc, js, server, stream, consumer)


async def _step_down_if_led_by(
    nc: NATS, js: JetStreamContext, server: str, stream: str, consumer: str | None
) -> None:
    try:
        if consumer is None:
            cluster = (await js.stream_info(stream)).cluster
            subject = f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
        else:
            cluster = (await js.consumer_info(stream, consumer)).cluster
            subject = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"
        if cluster is None or cluster.leader != server:
            return
        if not any(peer.current for peer in cluster.replicas or []):
            return  # no other replica could take over now
        await nc.request(subject, b"", timeout=JS_API_TIMEOUT_SECONDS)
        log.info(
            "asked %s%s to move its leader off %s",
            stream,
            f"/{consumer}" if consumer else "",
            server,
        )
    except Exception:
        log.debug("leader check of %s failed", stream, exc_info=True)


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EventPublisher:
    """Publishes Events; a failure to publish one is logged, never raised."""

    nc: NATS
    source: str

    async def emit(
        self,
        object_kind: str,
        object_name: str,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        namespace: str | None = None,
    ) -> None:
        """`namespace`: the object's; for a namespaced kind (names.NAMESPACED_KINDS) the
        default namespace when not given."""
        if namespace is None and object_kind.lower() in names.NAMESPACED_KINDS and object_name:
            namespace = names.DEFAULT_NAMESPACE
        event = Event(
            time=time.time(),
            type="Warning" if warning else "Normal",
            reason=reason,
            object_kind=object_kind,
            object_name=object_name,
            object_namespace=namespace or "",
            message=message,
            source=self.source,
        )
        # Events about the durable specs of a kind rather than one object (a spec
        # whose name could not be read) go where rejections go.
        subject = (
            names.rejected_subject(object_kind)
            if reason == "Rejected" or not object_name
            else names.event_subject(object_kind, object_name, namespace)
        )
        try:
            await self.nc.publish(subject, encode(event))
        except Exception:
            log.warning("could not publish event %s %s", reason, subject, exc_info=True)


# --- serving specs --------------------------------------------------------------------


async def _answer(handler: Callable[..., Awaitable[Reply]], subject: str, *args: object) -> Reply:
    try:
        return await handler(*args)
    except Exception as error:  # a service never dies of a message
        if is_store_full(error):
            log.warning("handler for %s: store full (%s)", subject, error)
            return store_full_reply(error)
        log.exception("handler for %s failed", subject)
        return Reply(
            ok=False,
            reason=REASON_INTERNAL,
            error=f"internal error: {type(error).__name__}: {error}",
        )


MAX_CONCURRENT_REQUESTS = 16


async def flush_subscriptions(nc: NATS) -> None:
    """Return once the server this connection is on has every subscription it made so
    far: a request from another connection to that server right after finds them (a
    cluster's other servers learn of them a moment later). While disconnected, nats-py's
    flush returns at once; the subscriptions are made again on reconnecting.

    `nc.flush()` alone does not prove it: nats-py (2.16) writes flush's PING straight to
    the socket, ahead of the commands still in its pending buffer, such as the SUB of a
    subscription just made, so the server can answer PONG before it has read that SUB
    and serve another connection's request first: no responders (seen in CI, right
    after a service started). While the first flush waits for its PONG, nats-py's
    flusher task, woken when the SUB was queued, writes it (it runs before any PONG can
    be read, and a flusher waiting on a full socket writes it as soon as the PING has
    left); the second flush's PING then follows it, and its PONG comes only once the
    server has read the SUB. tests/integration/test_flush_subscriptions.py pins the
    order."""
    await nc.flush()
    await nc.flush()


async def serve_spec_requests(
    nc: NATS,
    kind: str,
    handlers: Mapping[str, SpecHandler],
    *,
    queue: str,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer requests on corral.api.<kind>.<verb>, in a queue group shared by replicas.

    Requests are answered concurrently (up to MAX_CONCURRENT_REQUESTS; writes are
    compare-and-set), so one stuck on a server that just died holds no other up.
    """
    subscription = await nc.subscribe(f"{names.API_PREFIX}.{kind.lower()}.*", queue=queue)
    # Started once the server has the subscription, not once it is queued to be sent: a
    # request right after must find a responder.
    await flush_subscriptions(nc)
    limiter = anyio.CapacityLimiter(MAX_CONCURRENT_REQUESTS)

    async def answer(msg: Msg, received: float) -> None:
        async with limiter:
            verb = msg.subject.rsplit(".", 1)[-1]
            handler = handlers.get(verb)
            if handler is None:
                reply = Reply(
                    ok=False,
                    kind=kind,
                    reason=REASON_INVALID,
                    error=f"unknown verb {verb!r} for {kind}: expected one of {sorted(handlers)}",
                )
            else:
                reply = await _answer(handler, msg.subject, msg.data)
            if msg.reply:
                await _quietly(msg.respond(encode(reply)))
            api_metrics.observe(
                kind,
                verb if handler is not None else api_metrics.UNKNOWN_VERB,
                reply,
                time.perf_counter() - received,
            )

    task_status.started()
    try:
        async with anyio.create_task_group() as tg:
            async for msg in subscription.messages:
                received = time.perf_counter()  # its wait for a place is part of its time
                await limiter.acquire()  # back-pressure: wait for a free place first
                limiter.release()
                tg.start_soon(answer, msg, received)
    finally:
        with anyio.CancelScope(shield=True):
            await _quietly(subscription.unsubscribe())


async def unsubscribe_quietly(subscription: Any) -> None:
    """End a subscription, shielded from cancellation (it runs in `finally` blocks); a
    failure (the connection already gone) is logged, never raised."""
    with anyio.CancelScope(shield=True):
        try:
            await subscription.unsubscribe()
        except Exception:
            log.debug("unsubscribe failed", exc_info=True)


async def close_quietly(nc: NATS) -> None:
    """Close a connection, shielded from cancellation (it runs in `finally` blocks),
    without draining: its subsystems are cancelled by then (a watch whose reader is gone
    would hold a drain until its timeout). A failure is logged, never raised."""
    with anyio.CancelScope(shield=True):
        try:
            await nc.close()
        except Exception:
            log.debug("close failed", exc_info=True)


async def spec_stream_position(js: JetStreamContext, kind: str) -> int:
    """The CORRAL_SPECS sequence of the newest durable spec of `kind` (0: none), read
    from any replica. A request-path write records it: every durable spec at or below
    it was published before the write, so is older."""
    try:
        newest = await js.get_msg(
            names.SPEC_STREAM, subject=f"{names.SPEC_PREFIX}.{kind.lower()}.>", direct=True
        )
    except js_errors.NotFoundError:
        return 0
    return newest.seq or 0


@dataclass(frozen=True)
class RetryPolicy:
    """How long a durable spec that fails for a passing reason (Reply.retryable) is
    retried in place before it is given up on: `attempts` tries, the waits between
    doubling from `first_delay` to `max_delay`. The default spans about 23 s, longer
    than the worst NATS failover."""

    attempts: int = 8
    first_delay: float = 0.5
    max_delay: float = 5.0


@dataclass(frozen=True)
class ConsumerStart:
    """Where a durable consumer of specs that is missing is made to start."""

    policy: js_api.DeliverPolicy
    after: int = 0  # BY_START_SEQUENCE: the last spec handled

    def describe(self) -> str:
        if self.policy == js_api.DeliverPolicy.BY_START_SEQUENCE:
            return f"from stream sequence {self.after + 1}"
        if self.policy == js_api.DeliverPolicy.NEW:
            return "delivering only new specs"
        return "delivering every spec in the stream"


def consumer_start(
    applied: int | None, *, recorded: bool, lost: bool, objects_written: bool
) -> ConsumerStart:
    """Where a missing durable consumer of specs starts (docs/api.md, "Durable specs").

    applied: the last spec handled, as the progress record says (None: the record is
    missing or unreadable). recorded: a record is stored, readable or not. lost: the
    consumer was seen gone while running. objects_written: the kind's objects bucket
    was written before (its owner ran).

    - known progress: after the last spec handled (everything when none was);
    - the kind's first start (no record, not lost, no object ever written): every
      spec in the stream, published before the owner first ran;
    - otherwise progress is unknown (the record was lost with the consumer, or
      cannot be read): only new specs. Replaying old ones could bring back deleted
      objects; the caller warns that unapplied older ones, if any, are skipped.
    """
    if applied is not None:
        if applied:
            return ConsumerStart(js_api.DeliverPolicy.BY_START_SEQUENCE, applied)
        return ConsumerStart(js_api.DeliverPolicy.ALL)
    if not recorded and not lost and not objects_written:
        return ConsumerStart(js_api.DeliverPolicy.ALL)
    return ConsumerStart(js_api.DeliverPolicy.NEW)


@dataclass
class _SpecConsumer:
    js: JetStreamContext
    kind: str
    handlers: Mapping[str, DurableSpecHandler]
    events: EventPublisher
    durable: str
    progress: Bucket
    retry: RetryPolicy
    settings: StoreSettings
    fetch_wait: float
    expiry_check_every: float
    # The bucket of the kind's objects: written ever means the owner ran before.
    objects_bucket: str | None = None
    applied: int = 0  # every spec at or below was handled (as stored in `progress`)
    subscription: JetStreamContext.PullSubscription | None = None
    _idle_checked_at: float = 0.0
    _warned_expiring: int = 0

    @property
    def subject(self) -> str:
        return f"{names.SPEC_PREFIX}.{self.kind.lower()}.>"

    async def subscribe(self, *, lost: bool = False) -> None:
        """Bind to the durable consumer, making it where it is missing (`lost`: it was
        seen gone while running). Where it starts is consumer_start's rule: after the
        last spec handled, so nothing handled is replayed; only new specs when how far
        specs were handled is unknown; everything at the kind's first start."""
        stored, recorded = await recorded_progress(self.progress, self.kind)
        if stored is not None:
            self.applied = max(self.applied, stored.applied)
        config = js_api.ConsumerConfig(ack_wait=30, max_ack_pending=64)
        try:
            bound: js_api.ConsumerInfo | None = await self.js.consumer_info(
                names.SPEC_STREAM, self.durable
            )
        except js_errors.NotFoundError:
            bound = None
        start: ConsumerStart | None = None
        if bound is None:
            written = False
            if stored is None and not recorded and not lost:
                written = await self._objects_written()
            start = consumer_start(
                None if stored is None else self.applied,
                recorded=recorded,
                lost=lost,
                objects_written=written,
            )
            config.deliver_policy = start.policy
            if start.policy == js_api.DeliverPolicy.BY_START_SEQUENCE:
                config.opt_start_seq = start.after + 1
            log.info("making the durable consumer %s: %s", self.durable, start.describe())
            if start.policy == js_api.DeliverPolicy.ALL:
                # Made with the consumer: from now on a missing record means a lost one.
                await start_progress(self.progress, self.kind, 0)
        if self.subscription is not None:
            await _quietly(self.subscription.unsubscribe())
        self.subscription = await self.js.pull_subscribe(
            self.subject, durable=self.durable, stream=names.SPEC_STREAM, config=config
        )
        if bound is not None:
            if stored is None:  # a consumer that knows how far it got, without a record
                floor = bound.ack_floor.stream_seq if bound.ack_floor else 0
                self.applied = (await start_progress(self.progress, self.kind, floor)).applied
            return
        assert start is not None
        if start.policy == js_api.DeliverPolicy.NEW:
            await self._skipped_old_specs(recorded)
        elif recorded or lost:
            await self.events.emit(
                self.kind,
                "",
                "ConsumerRecreated",
                f"the durable consumer {self.durable} was lost; made again from "
                f"stream sequence {self.applied + 1} (nothing applied is replayed)",
                warning=True,
            )

    async def _objects_written(self) -> bool:
        """Whether the kind's objects bucket was ever written (its stream's sequence
        never goes back): the kind's owner ran before."""
        if self.objects_bucket is None:
            return False
        info = await self.js.stream_info(bucket_stream(self.objects_bucket))
        return bool(info.state.last_seq)

    async def _skipped_old_specs(self, recorded: bool) -> None:
        """The consumer was made delivering only new specs: record where they start,
        and say that older ones (if any were unapplied) are skipped, and why."""
        info = await self.js.consumer_info(names.SPEC_STREAM, self.durable)
        boundary = info.delivered.stream_seq if info.delivered else 0
        self.applied = (await start_progress(self.progress, self.kind, boundary)).applied
        record = f"{self.progress.name}/{progress_key(self.kind)}"
        why = "cannot be read" if recorded else "is missing"
        message = (
            f"the durable consumer {self.durable} was lost and the record of how far "
            f"{self.kind} specs were applied ({record}) {why}: it was made again "
            f"delivering only new specs (after stream sequence {boundary}). Older "
            f"{self.kind} specs not applied yet, if any, are skipped: replaying them "
            f"could bring back deleted objects or undo newer changes. Publish again any "
            "you still want applied"
        )
        log.warning("%s", message)
        await self.events.emit(self.kind, "", "SpecsSkipped", message, warning=True)

    async def consumer_lost(self) -> bool:
        try:
            await self.js.consumer_info(names.SPEC_STREAM, self.durable)
        except js_errors.NotFoundError:
            return True
        except Exception:
            return False  # NATS away: not a lost consumer
        return False

    async def run(self) -> None:
        delays = Backoff(first=0.5, most=5.0)
        while True:
            assert self.subscription is not None
            try:
                batch: list[Msg] = await self.subscription.fetch(batch=32, timeout=self.fetch_wait)
            except (nats.errors.TimeoutError, TimeoutError):
                await self._when_idle()
                continue
            except Exception as error:  # a disconnect, a JetStream hiccup, a lost consumer
                if await self.consumer_lost():
                    log.warning("the durable consumer %s is gone; making it again", self.durable)
                    try:
                        await self.subscribe(lost=True)
                        delays.reset()
                        continue
                    except Exception:
                        log.warning("making the consumer failed; retrying", exc_info=True)
                else:
                    log.warning("fetching specs failed (%s); retrying", error)
                await anyio.sleep(delays.next())
                continue
            delays.reset()
            for msg in batch:
                await self.handle(msg)

    async def handle(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        if sequence <= self.applied:
            log.debug("spec #%d was handled before; skipped", sequence)
            await _quietly(msg.ack())
            return
        reply = await self.apply(msg, sequence)
        if not reply.name:  # the handler failed before it said: tell it with the spec's name
            reply = msgspec.structs.replace(reply, name=_spec_name(msg.data))
        described = f"spec #{sequence} ({msg.subject})"
        if reply.reason == REASON_SUPERSEDED:
            await self.events.emit(
                self.kind, reply.name, "Superseded", f"{described} skipped: {reply.message}"
            )
        elif not reply.ok and reply.retryable:
            await self.events.emit(
                self.kind,
                reply.name,
                "SpecFailed",
                f"{described} given up after {self.retry.attempts} attempts: {reply.error} "
                f"(it stays in {names.SPEC_STREAM}; publish it again to retry)",
                warning=True,
            )
        elif not reply.ok:
            await self.events.emit(
                self.kind, reply.name, "Rejected", f"{described}: {reply.error}", warning=True
            )
        try:
            self.applied = (await advance(self.progress, self.kind, sequence)).applied
        except Exception:
            # The stored objects' own sequences still keep a replay from going back.
            log.warning("recording spec #%d as handled failed", sequence, exc_info=True)
            self.applied = max(self.applied, sequence)
        if not reply.ok and reply.retryable:
            await _quietly(msg.term())  # never delivered again; kept in the stream
        else:
            await _quietly(msg.ack())

    async def apply(self, msg: Msg, sequence: int) -> Reply:
        """Apply one spec, retrying it in place (so that no later spec overtakes it)
        while the failure may pass, at most retry.attempts times."""
        verb = msg.subject.rsplit(".", 1)[-1]
        handler = self.handlers.get(verb)
        if handler is None:
            return Reply(
                ok=False,
                kind=self.kind,
                reason=REASON_INVALID,
                error=f"unknown verb {verb!r} for {self.kind}",
            )
        delays = Backoff(first=self.retry.first_delay, most=self.retry.max_delay)
        attempt = 0
        while True:
            attempt += 1
            reply = await _answer(handler, msg.subject, msg.data, sequence)
            if not reply.retryable or attempt >= self.retry.attempts:
                return reply
            if attempt == 3:
                await self.events.emit(
                    self.kind,
                    reply.name,
                    "Retrying",
                    f"spec #{sequence} ({msg.subject}): {reply.error}",
                    warning=True,
                )
            await _quietly(msg.in_progress())  # keep JetStream from delivering it again meanwhile
            await anyio.sleep(delays.next())

    async def _when_idle(self) -> None:
        """Caught up: record the stream's newest spec of this kind as handled, so that
        progress (and the deletes it remembers) keeps up with request-path writes."""
        now = time.monotonic()
        if now - self._idle_checked_at < 5 * self.fetch_wait:
            return
        self._idle_checked_at = now
        try:
            newest = await spec_stream_position(self.js, self.kind)
            if newest <= self.applied:
                return
            info = await self.js.consumer_info(names.SPEC_STREAM, self.durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                self.applied = (await advance(self.progress, self.kind, newest)).applied
        except Exception:
            log.debug("idle progress check failed", exc_info=True)

    async def watch_expiry(self) -> None:
        """Warn (an event) when the oldest unapplied spec of this kind is about to
        leave the stream unapplied (older than its max age minus a margin)."""
        while True:
            try:
                await self._check_expiry()
            except Exception:
                log.debug("expiry check failed", exc_info=True)
            await anyio.sleep(self.expiry_check_every)

    async def _check_expiry(self) -> None:
        try:
            oldest = await self.js.get_msg(
                names.SPEC_STREAM,
                seq=self.applied + 1,
                next=True,
                subject=self.subject,
                direct=True,
            )
        except js_errors.NotFoundError:
            return
        if oldest.time is None or oldest.seq is None or oldest.seq == self._warned_expiring:
            return
        age = time.time() - oldest.time.timestamp()
        if age < self.settings.specs_max_age - self.settings.specs_expiry_margin:
            return
        self._warned_expiring = oldest.seq
        left = max(0.0, self.settings.specs_max_age - age)
        await self.events.emit(
            self.kind,
            "",
            "SpecExpiring",
            f"spec #{oldest.seq} ({oldest.subject}) is still unapplied after {age:.0f} s; "
            f"{names.SPEC_STREAM} keeps specs {self.settings.specs_max_age:.0f} s, so it "
            f"is dropped unapplied in {left:.0f} s unless the {self.kind} owner applies it",
            warning=True,
        )


async def consume_spec_stream(
    js: JetStreamContext,
    kind: str,
    handlers: Mapping[str, DurableSpecHandler],
    events: EventPublisher,
    *,
    durable: str,
    progress: Bucket,
    retry: RetryPolicy = RetryPolicy(),
    settings: StoreSettings | None = None,
    fetch_wait: float = 1.0,
    expiry_check_every: float = 60.0,
    objects_bucket: str | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Apply what was published on corral.spec.<kind>.<verb>, even while this owner was down.

    Specs are applied one at a time, in stream order, each handler given the spec's
    stream sequence. A rejected spec is acknowledged (retrying cannot fix it) and told
    as a Warning event on corral.events.rejected.<kind>. A passing failure is retried
    in place per `retry`, then given up on: terminated (never redelivered, kept in the
    stream) and told as a SpecFailed Warning naming its sequence. How far specs were
    handled is kept in `progress` (corral.natsio.spec_progress): a redelivered spec is skipped,
    and a lost durable consumer is made again after the last one handled, or, when
    that is unknown, delivering only new specs (a SpecsSkipped Warning says so).
    `objects_bucket` (the bucket the kind's objects are stored in) tells the kind's
    first start (everything in the stream is delivered) from a consumer lost with
    its record (the bucket was written before).
    """
    consumer = _SpecConsumer(
        js=js,
        kind=kind,
        handlers=handlers,
        events=events,
        durable=durable,
        progress=progress,
        retry=retry,
        settings=settings or StoreSettings.from_env(),
        fetch_wait=fetch_wait,
        expiry_check_every=expiry_check_every,
        objects_bucket=objects_bucket,
    )
    await consumer.subscribe()
    task_status.started()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.watch_expiry)
        await consumer.run()


def _spec_name(raw: bytes) -> str:
    """The object name a spec payload names (metadata.name, or name), if it is a DNS
    label; else "" (its events then go to corral.events.rejected.<kind>)."""
    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return ""
    if not isinstance(document, dict):
        return ""
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else document.get("name")
    if isinstance(name, str) and _DNS_LABEL.fullmatch(name):
        return name
    return ""


_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")


async def _quietly(operation: Awaitable[object]) -> None:
    try:
        await operation
    except Exception:
        log.debug("ignored failure", exc_info=True)
