"""The client library: what `corral` (the CLI), the tests and the benchmark use.

Writes are requests on corral.api.<kind>.<verb> answered by the kind's owner;
reads come straight from the KV buckets and the events stream, as any NATS
client could. Every wait on the outside world is bounded, and every failure a
user can cause surfaces as a CorralError whose message says what to do.

    async with await CorralClient.connect("nats://127.0.0.1:4222") as client:
        reply = await client.apply(deployment)
        for node in await client.nodes():
            ...
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio
import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js import api as js_api
from nats.js import errors as js_errors

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.events import Event, Reply
from corral.contract.network_specs import Network, Service
from corral.contract.network_state import Endpoints, NetworkSlice, NetworkStatus
from corral.contract.specs import DeleteRequest, Deployment, ScaleRequest
from corral.contract.state import Cluster, DeploymentStatus, Node, Placement, ReplicaStatus
from corral.contract.time_budget import (
    NATS_MAX_OUTSTANDING_PINGS,
    NATS_PING_SECONDS,
    NODE_STALE_SECONDS,
)
from corral.contract.volume_specs import (
    PersistentVolume,
    PersistentVolumeClaim,
    StorageClass,
    VolumeReleaseRequest,
)
from corral.contract.volume_state import (
    ClaimStatus,
    NodeVolumes,
    VolumeAttachment,
    VolumeStatus,
)
from corral.natsio.bus import unsubscribe_quietly
from corral.natsio.cluster import UnreadableIdentity, read_cluster_identity
from corral.natsio.config import nats_servers
from corral.natsio.kv import NatsBucket, is_echo_key

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT: Final = 3.0
DEFAULT_REQUEST_TIMEOUT: Final = 5.0
NO_RESPONDER_RETRY: Final = 0.2


class CorralError(Exception):
    """A failure to tell the user as is: the message says what is wrong."""


class NotFound(CorralError):
    """No object of the kind and name asked for (a read's answer, not a failure to read)."""


class RequestRejected(CorralError):
    """The owner answered, and said no."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.error or "rejected")
        self.reply = reply


class Unanswered(Exception):
    """`ask` had no answer in time. `no_responders`: nobody was subscribed at the last
    try (as against a responder that did not answer)."""

    def __init__(self, no_responders: bool) -> None:
        super().__init__("no responders" if no_responders else "timed out")
        self.no_responders = no_responders


async def ask(nc: NATS, subject: str, payload: bytes, within: float, answerer: str) -> Reply:
    """A request on `subject`, its Reply (from `answerer`, as the errors name it) within
    `within` seconds, else Unanswered.

    "No responders" is tried again until the deadline: a responder that is just
    starting, or reconnecting, or whose subscription the client's NATS server of a
    cluster has not learnt of yet, gets its chance. Nobody received such a request, so
    sending it again repeats nothing. CorralError for any other NATS failure."""
    deadline = time.monotonic() + within
    no_responders = False
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            msg = await nc.request(subject, payload, timeout=remaining)
        except nats.errors.NoRespondersError:
            no_responders = True
            await anyio.sleep(min(NO_RESPONDER_RETRY, max(0.0, deadline - time.monotonic())))
            continue
        except nats.errors.TimeoutError:
            raise Unanswered(no_responders=False) from None
        except nats.errors.Error as error:
            raise CorralError(f"request on {subject} failed: {error}") from None
        try:
            return decode(msg.data, Reply)
        except msgspec.DecodeError as error:
            raise CorralError(f"the {answerer} answered on {subject} with {error}") from None
    raise Unanswered(no_responders)


@dataclass(frozen=True)
class ApiKind:
    """A kind a client may declare: its payload type and the service that owns it."""

    kind: str  # as in manifests: "Deployment"
    spec_type: type[msgspec.Struct]
    owner: str  # the service answering corral.api.<kind>.*
    plural: str
    aliases: tuple[str, ...] = ()

    @property
    def subject_kind(self) -> str:
        return self.kind.lower()


# The kinds corral accepts in manifests and requests. A new kind is one line here.
API_KINDS: Final[dict[str, ApiKind]] = {
    kind.kind: kind
    for kind in (
        ApiKind("Deployment", Deployment, "scheduler", "deployments", ("deploy",)),
        ApiKind("Network", Network, "netmgr", "networks", ("net",)),
        ApiKind("Service", Service, "netmgr", "services", ("svc",)),
        ApiKind("PersistentVolume", PersistentVolume, "volmgr", "persistentvolumes", ("pv",)),
        ApiKind(
            "PersistentVolumeClaim",
            PersistentVolumeClaim,
            "volmgr",
            "persistentvolumeclaims",
            ("pvc",),
        ),
        ApiKind("StorageClass", StorageClass, "volmgr", "storageclasses", ("sc",)),
    )
}


def find_kind(name: str) -> ApiKind:
    """'Deployment', 'deployment', 'deployments', 'deploy' -> the Deployment ApiKind."""
    wanted = name.lower()
    for kind in API_KINDS.values():
        if wanted in (kind.kind.lower(), kind.plural, *kind.aliases):
            return kind
    known = ", ".join(sorted(API_KINDS))
    raise CorralError(f"unknown kind {name!r}: corral knows {known}")


def node_is_ready(node: Node, now: float) -> bool:
    """Ready, as well as a reader can tell: the agent says so and its last heartbeat
    (`heartbeat_at`: the agent's wall clock at its last record write, or the reader's
    own when the reader heard it heartbeat: corral.client.cli.views.read_cluster) is
    within NODE_STALE_SECONDS of `now` (the reader's wall clock). This compares two
    hosts' clocks, so it is only a display: the scheduler judges liveness by its own
    clock, from the heartbeats it hears (corral_scheduler.snapshot), and a heartbeat
    from the future (a clock ahead) counts as fresh rather than hiding a live node."""
    return node.ready and now - node.heartbeat_at <= NODE_STALE_SECONDS


async def _ignore_error(_: Exception) -> None:
    """nats-py's default error callback logs every failed attempt; the client reports instead."""


class CorralClient:
    def __init__(self, nc: NATS, url: str, *, request_timeout: float) -> None:
        self.nc = nc
        self.url = url
        self.js = nc.jetstream()
        self.request_timeout = request_timeout
        self._buckets: dict[str, NatsBucket | None] = {}
        self._placement_shards: int | None = None  # the cluster's, once read
        # The namespace this client works in (the CLI's -n, $CORRAL_NAMESPACE): the
        # reads of namespaced kinds default to it, and a request of a namespaced kind
        # that names none is sent in it (as kubectl's context namespace).
        self.namespace: str = names.DEFAULT_NAMESPACE

    @classmethod
    async def connect(
        cls,
        url: str,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,  # noqa: ASYNC109 - a bound on connecting
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        name: str = "corral-cli",
    ) -> CorralClient:
        """Connect once, within `timeout` seconds, or raise CorralError (no retrying for ever)."""
        nc = NATS()
        failure: BaseException | None = None
        try:
            # Several addresses (a cluster) reach nats-py as a list, never comma-joined.
            servers = nats_servers(url)
            with anyio.fail_after(timeout):
                await nc.connect(
                    servers=servers,
                    name=name,
                    ping_interval=NATS_PING_SECONDS,  # type: ignore[arg-type]
                    max_outstanding_pings=NATS_MAX_OUTSTANDING_PINGS,
                    connect_timeout=max(1, int(timeout)),
                    allow_reconnect=False,
                    # nats-py tries each server until it failed more than this many
                    # times (0 would mean for ever), pausing reconnect_time_wait between.
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,  # type: ignore[arg-type]
                    error_cb=_ignore_error,
                )
        except Exception as error:  # OSError, TimeoutError, nats errors, a bad URL
            failure = error
        if failure is not None or not nc.is_connected:
            with anyio.CancelScope(shield=True):
                await _close_quietly(nc)
            detail = f" ({type(failure).__name__}: {failure})" if str(failure or "") else ""
            raise CorralError(f"cannot reach NATS at {url}: is corral running? (corral up){detail}")
        return cls(nc, url, request_timeout=request_timeout)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await _close_quietly(self.nc)

    async def __aenter__(self) -> CorralClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- writes: requests answered by the kind's owner -------------------------------

    def scope(self, namespace: str | None) -> str:
        """`namespace`, else the client's own."""
        return self.namespace if namespace is None else namespace

    def in_namespace(self, kind: ApiKind, verb: str, payload: bytes) -> bytes:
        """A request of a namespaced kind that names no namespace, in the client's (an
        object made with the default namespace leaves it out of its JSON). An object's
        own metadata.namespace, or a request's namespace, is never changed."""
        if (
            self.namespace == names.DEFAULT_NAMESPACE
            or kind.subject_kind not in names.NAMESPACED_KINDS
            or verb not in ("apply", "scale", "delete")
        ):
            return payload
        try:
            document = json.loads(payload)
        except ValueError:
            return payload  # the owner answers what is wrong with it
        if not isinstance(document, dict):
            return payload
        holder = document.get("metadata") if verb == "apply" else document
        if not isinstance(holder, dict) or "namespace" in holder:
            return payload
        holder["namespace"] = self.namespace
        return json.dumps(document).encode()

    async def request(self, kind: ApiKind, verb: str, payload: bytes) -> Reply:
        """Send raw bytes on corral.api.<kind>.<verb>; return the Reply, ok or not.
        A request of a namespaced kind naming no namespace goes in the client's."""
        payload = self.in_namespace(kind, verb, payload)
        subject = names.api_subject(kind.subject_kind, verb)
        timeout = self.request_timeout
        try:
            return await ask(self.nc, subject, payload, timeout, kind.owner)
        except Unanswered:
            raise CorralError(
                f"no {kind.owner} answered on {subject} within {timeout:g} s: is it running?"
            ) from None

    async def _checked(self, kind: ApiKind, verb: str, payload: bytes) -> Reply:
        reply = await self.request(kind, verb, payload)
        if not reply.ok:
            raise RequestRejected(reply)
        return reply

    async def apply(self, spec: msgspec.Struct) -> Reply:
        """Create or update an object (Deployment, ...). Raises RequestRejected on a no."""
        kind = find_kind(type(spec).__name__)
        return await self._checked(kind, "apply", encode(spec))

    async def scale(
        self,
        name: str,
        replicas: int,
        kind: str = "Deployment",
        namespace: str | None = None,
    ) -> Reply:
        request = ScaleRequest(name=name, replicas=replicas, namespace=self.scope(namespace))
        return await self._checked(find_kind(kind), "scale", encode(request))

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> Reply:
        """`namespace`: of a namespaced kind (names.NAMESPACED_KINDS); others have none."""
        api_kind = find_kind(kind)
        namespaced = api_kind.subject_kind in names.NAMESPACED_KINDS
        scope = self.scope(namespace) if namespaced else names.DEFAULT_NAMESPACE
        request = DeleteRequest(name=name, namespace=scope)
        return await self._checked(api_kind, "delete", encode(request))

    async def release_volume(self, name: str, node: str) -> Reply:
        """An operator's word that `node` is gone for good: volmgr forgets the volume's
        attachment there (corral.api.persistentvolume.release; docs/volumes.md)."""
        request = VolumeReleaseRequest(name=name, node=node)
        return await self._checked(find_kind("PersistentVolume"), "release", encode(request))

    # --- reads: straight from KV --------------------------------------------------

    async def _bucket(self, name: str) -> NatsBucket | None:
        if name not in self._buckets:
            try:
                kv = await self.js.key_value(name)
            except js_errors.BucketNotFoundError:
                return None  # nothing has run yet; not cached, it may appear
            except (nats.errors.Error, js_errors.Error) as error:
                raise CorralError(f"cannot read bucket {name} at {self.url}: {error}") from None
            self._buckets[name] = NatsBucket(kv, name)
        return self._buckets[name]

    async def read_bucket(
        self, name: str, kind: type[T], prefix: str = ">"
    ) -> dict[str, tuple[T, int]]:
        """Every current record of a bucket (under `prefix`: a subject filter, read by
        the server), by key, with its revision. Bad records are skipped."""
        bucket = await self._bucket(name)
        records: dict[str, tuple[T, int]] = {}
        if bucket is None:
            return records
        with anyio.fail_after(self.request_timeout + 5):
            async for entry in bucket.watch(prefix):
                if entry is None:
                    break
                if is_echo_key(entry.key):
                    continue  # a service's proof that its watch is current, not a record
                if entry.value is None:
                    records.pop(entry.key, None)
                    continue
                try:
                    records[entry.key] = (decode(entry.value, kind), entry.revision)
                except msgspec.DecodeError as error:
                    log.warning("skipping %s/%s: %s", name, entry.key, error)
        return records

    async def follow_record(self, name: str, kind: type[T], key: str) -> AsyncIterator[T | None]:
        """One record of a bucket as it changes: its current value (None: there is
        none), then each new one, until the caller stops reading (a KV watch, no polling)."""
        bucket = await self._bucket(name)
        if bucket is None:
            yield None
            return
        seen = False
        async for entry in bucket.watch(key):
            if entry is None:  # the end of the current values
                if not seen:
                    yield None  # there was none
                seen = True
                continue
            seen = True
            if entry.value is None:
                yield None
                continue
            try:
                yield decode(entry.value, kind)
            except msgspec.DecodeError as error:
                log.warning("skipping %s/%s: %s", name, key, error)

    async def _values(self, name: str, kind: type[T], prefix: str = ">") -> dict[str, T]:
        records = await self.read_bucket(name, kind, prefix)
        return {key: value for key, (value, _) in records.items()}

    async def deployments(self, namespace: str | None = None) -> dict[str, Deployment]:
        """The Deployments of one namespace, by name."""
        stored = await self._values(names.DEPLOYMENTS_BUCKET, Deployment)
        scope = self.scope(namespace)
        return {d.metadata.name: d for d in stored.values() if d.metadata.namespace == scope}

    async def deployment(self, name: str, namespace: str | None = None) -> Deployment | None:
        bucket = await self._bucket(names.DEPLOYMENTS_BUCKET)
        entry = (
            None
            if bucket is None
            else await bucket.get(names.object_key(self.scope(namespace), name))
        )
        if entry is None or not entry.value:
            return None
        return decode(entry.value, Deployment)

    async def deployment_statuses(
        self, namespace: str | None = None
    ) -> dict[str, DeploymentStatus]:
        """The statuses of one namespace's Deployments, by name."""
        stored = await self._values(names.DEPLOYMENT_STATUS_BUCKET, DeploymentStatus)
        scope = self.scope(namespace)
        return {s.name: s for s in stored.values() if s.namespace == scope}

    async def nodes(self) -> dict[str, Node]:
        return await self._values(names.NODES_BUCKET, Node)

    async def heard_nodes(self, expected: set[str], window: float) -> set[str]:
        """The nodes whose agents' heartbeats (core NATS, corral.heartbeat.<node>) this
        client hears within `window`, returning early once every node of `expected` was
        heard. An idle agent no longer rewrites its record to say it is alive
        (docs/time-budget.md, "Liveness"), so this is what a reader knows of it now."""
        heard: set[str] = set()
        if not expected:
            return heard
        subscription = await self.nc.subscribe(names.heartbeat_subject("*"))
        try:
            with anyio.move_on_after(window):
                async for msg in subscription.messages:
                    node = msg.subject.rsplit(".", 1)[-1]
                    if node != names.HEARTBEAT_ECHO:
                        heard.add(node)
                    if expected <= heard:
                        break
        finally:
            await unsubscribe_quietly(subscription)
        return heard

    async def placements(self, node: str | None = None) -> dict[str, Placement]:
        """By key <node>.<namespace>.<replica> (names.placement_key), from every shard of
        the placements; of one node only (a subject-filtered read of its shard: the
        server sends that node's records alone)."""
        shards = await self.placement_shards()
        if node is not None:
            shard = names.placements_bucket_of(node, shards)
            return await self._values(shard, Placement, names.placement_prefix(node))
        found: dict[str, Placement] = {}
        for name in names.placements_buckets(shards):
            for key, placed in (await self._values(name, Placement)).items():
                # One in another node's shard is no placement (no agent watches it there).
                if names.placements_bucket_of(names.placement_node(key), shards) == name:
                    found[key] = placed
        return found

    async def cluster_identity(self) -> Cluster | None:
        """The cluster's identity (corral_cluster): its id, when it was made, its buckets
        and its placements' shards; None before a service has made the cluster."""
        bucket = await self._bucket(names.CLUSTER_BUCKET)
        try:
            return None if bucket is None else await read_cluster_identity(bucket)
        except UnreadableIdentity as error:
            raise CorralError(str(error)) from None
        except (nats.errors.Error, js_errors.Error) as error:
            raise CorralError(f"cannot read the cluster identity at {self.url}: {error}") from None

    async def placement_shards(self) -> int:
        """How many shards the cluster's placements are in (its identity; 1 before it
        has one)."""
        if self._placement_shards is None:
            identity = await self.cluster_identity()
            if identity is None:
                return 1  # not cached: the cluster is not made yet
            self._placement_shards = identity.placement_shards
        return self._placement_shards

    async def replica_statuses(self, node: str | None = None) -> dict[str, ReplicaStatus]:
        """By key <node>.<namespace>.<replica>, the same key as the Placement."""
        prefix = ">" if node is None else names.placement_prefix(node)
        return await self._values(names.REPLICA_STATUS_BUCKET, ReplicaStatus, prefix)

    async def networks(self) -> dict[str, Network]:
        """Every Network (cluster-wide), by name."""
        stored = await self._values(names.NETWORKS_BUCKET, Network)
        return {network.metadata.name: network for network in stored.values()}

    async def network_statuses(self) -> dict[str, NetworkStatus]:
        return await self._values(names.NETWORK_STATUS_BUCKET, NetworkStatus)

    async def network_slices(self, network: str | None = None) -> list[NetworkSlice]:
        """Each node's slice of every network (or of one: a subject-filtered read)."""
        prefix = ">" if network is None else f"{network}.>"
        stored = await self._values(names.NETWORK_SLICES_BUCKET, NetworkSlice, prefix)
        return sorted(stored.values(), key=lambda s: (s.network, s.node))

    async def services(self, namespace: str | None = None) -> dict[str, Service]:
        """The Services of one namespace, by name."""
        stored = await self._values(names.SERVICES_BUCKET, Service)
        scope = self.scope(namespace)
        return {s.metadata.name: s for s in stored.values() if s.metadata.namespace == scope}

    async def endpoints(self, namespace: str | None = None) -> dict[str, Endpoints]:
        """The Endpoints of one namespace's Services, by Service name."""
        stored = await self._values(names.ENDPOINTS_BUCKET, Endpoints)
        scope = self.scope(namespace)
        return {e.service: e for e in stored.values() if e.namespace == scope}

    async def volumes(self) -> dict[str, PersistentVolume]:
        """Every PersistentVolume (cluster-wide), by name."""
        stored = await self._values(names.VOLUMES_BUCKET, PersistentVolume)
        return {volume.metadata.name: volume for volume in stored.values()}

    async def volume_statuses(self) -> dict[str, VolumeStatus]:
        return await self._values(names.VOLUME_STATUS_BUCKET, VolumeStatus)

    async def claims(self, namespace: str | None = None) -> dict[str, PersistentVolumeClaim]:
        """The PersistentVolumeClaims of one namespace, by name."""
        stored = await self._values(names.CLAIMS_BUCKET, PersistentVolumeClaim)
        scope = self.scope(namespace)
        return {c.metadata.name: c for c in stored.values() if c.metadata.namespace == scope}

    async def claim_statuses(self, namespace: str | None = None) -> dict[str, ClaimStatus]:
        """The statuses of one namespace's claims, by claim name."""
        stored = await self._values(names.CLAIM_STATUS_BUCKET, ClaimStatus)
        scope = self.scope(namespace)
        return {s.name: s for s in stored.values() if s.namespace == scope}

    async def storage_classes(self) -> dict[str, StorageClass]:
        stored = await self._values(names.STORAGE_CLASSES_BUCKET, StorageClass)
        return {sc.metadata.name: sc for sc in stored.values()}

    async def volume_attachments(self) -> list[VolumeAttachment]:
        """Every node's attachments of volumes, by (volume, node)."""
        stored = await self._values(names.VOLUME_ATTACHMENTS_BUCKET, VolumeAttachment)
        return sorted(stored.values(), key=lambda a: (a.volume, a.node))

    async def node_volumes(self) -> dict[str, NodeVolumes]:
        """What each node's volmgr part reports, by node."""
        return await self._values(names.NODE_VOLUMES_BUCKET, NodeVolumes)

    # --- events: the CORRAL_EVENTS stream ----------------------------------------------

    async def events(
        self,
        kind: str | None = None,
        name: str | None = None,
        limit: int = 100,
        namespace: str | None = None,
    ) -> list[Event]:
        """The last `limit` events, oldest first; of one kind, or of one object (of
        `namespace` when its kind is namespaced)."""
        found: collections.deque[Event] = collections.deque(maxlen=max(limit, 0) or None)
        async for event in self._event_stream(kind, name, limit, follow=False, namespace=namespace):
            found.append(event)
        return list(found)

    async def follow_events(
        self,
        kind: str | None = None,
        name: str | None = None,
        limit: int = 10,
        namespace: str | None = None,
    ) -> AsyncIterator[Event]:
        """The last `limit` events, then every new one as it comes, until cancelled."""
        backlog: collections.deque[Event] = collections.deque(maxlen=max(limit, 0) or None)
        caught_up = False
        async for event in self._event_stream(kind, name, limit, follow=True, namespace=namespace):
            if event is _CAUGHT_UP:
                caught_up = True
                for old in backlog:
                    yield old
                backlog.clear()
            elif caught_up:
                yield event
            else:
                backlog.append(event)

    async def _event_stream(
        self,
        kind: str | None,
        name: str | None,
        limit: int,
        *,
        follow: bool,
        namespace: str | None = None,
    ) -> AsyncIterator[Event]:
        """Events matching, through an ordered consumer; with follow, _CAUGHT_UP marks the end
        of the backlog and the stream goes on."""
        subject = _events_filter(kind, name, self.scope(namespace))
        try:
            info = await self.js.stream_info(names.EVENTS_STREAM)
        except js_errors.NotFoundError:
            if follow:
                raise CorralError(
                    f"no events stream {names.EVENTS_STREAM} at {self.url}: is corral running?"
                ) from None
            return
        except (nats.errors.Error, js_errors.Error) as error:
            raise CorralError(f"cannot read events at {self.url}: {error}") from None
        config = js_api.ConsumerConfig(inactive_threshold=30.0)
        deliver = js_api.DeliverPolicy.ALL
        last_seq = info.state.last_seq
        if subject == f"{names.EVENTS_PREFIX}.>" and limit > 0 and last_seq - limit + 1 > 1:
            deliver = js_api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(info.state.first_seq, last_seq - limit + 1)
        subscription = await self.js.subscribe(
            subject,
            stream=names.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=deliver,
            config=config,
        )
        try:
            consumer = await subscription.consumer_info()
            pending = consumer.num_pending or 0
            delivered = consumer.delivered.consumer_seq if consumer.delivered else 0
            backlog_done = pending == 0 and not delivered
            if backlog_done and follow:
                yield _CAUGHT_UP
            while not (backlog_done and not follow):
                msg = await subscription.next_msg(timeout=None)
                event = _decode_event(msg.data)
                if event is not None:
                    yield event
                if not backlog_done and msg.metadata.num_pending == 0:
                    backlog_done = True
                    if follow:
                        yield _CAUGHT_UP
        finally:
            await unsubscribe_quietly(subscription)


_CAUGHT_UP: Final = Event(
    time=0.0, reason="", object_kind="", object_name="", message="", source=""
)


def _events_filter(kind: str | None, name: str | None, namespace: str) -> str:
    if kind is None:
        return f"{names.EVENTS_PREFIX}.>"
    namespaced = kind.lower() in names.NAMESPACED_KINDS
    if name is None:
        return f"{names.EVENTS_PREFIX}.{kind.lower()}.{'>' if namespaced else '*'}"
    return names.event_subject(kind, name, namespace if namespaced else None)


def _decode_event(raw: bytes) -> Event | None:
    try:
        return decode(raw, Event)
    except msgspec.DecodeError:
        log.warning("skipping an event that does not decode: %r", raw[:200])
        return None


async def _close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception:
        log.debug("close failed", exc_info=True)


def to_builtins(value: Any) -> Any:
    """A Struct (or a structure of them) as plain JSON-able data, camelCase keys."""
    return msgspec.to_builtins(value)
