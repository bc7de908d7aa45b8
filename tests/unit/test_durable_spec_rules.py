"""The rules that keep durable specs from going backwards, on in-memory buckets:
every stored Deployment records the stream sequence it came from, a request records
the stream's newest sequence, and a request's delete is remembered until the stream
has been applied past it."""

from __future__ import annotations

import msgspec
import pytest
from nats.js import api as js_api

from corral.contract.codec import decode, encode
from corral.contract.events import (
    REASON_BUSY,
    REASON_INTERNAL,
    REASON_INVALID,
    REASON_STORE_FULL,
    REASON_SUPERSEDED,
    Reply,
)
from corral.contract.specs import CHANGE_CAUSE_ANNOTATION, Deployment
from corral.natsio.bus import consumer_start
from corral.natsio.kv import MemoryBucket
from corral.natsio.spec_progress import (
    SpecProgress,
    advance,
    progress_key,
    read_progress,
    recorded_progress,
    remember_delete,
    start_progress,
)
from corral_scheduler.deployment_api import DeploymentAPI
from tests.integration.scheduler_harness import deployment_json


class Stream:
    """The CORRAL_SPECS position a request-path write sees."""

    def __init__(self) -> None:
        self.newest = 0

    async def position(self) -> int:
        return self.newest


def api() -> tuple[DeploymentAPI, MemoryBucket, MemoryBucket, Stream]:
    deployments, leases, stream = MemoryBucket("deployments"), MemoryBucket("leases"), Stream()
    return DeploymentAPI(deployments, leases, stream.position), deployments, leases, stream


async def replicas(deployments: MemoryBucket, name: str = "web") -> int | None:
    entry = await deployments.get(f"default.{name}")
    return (
        None
        if entry is None or entry.value is None
        else decode(entry.value, Deployment).spec.replicas
    )


async def test_a_request_write_records_the_streams_newest_sequence_so_older_specs_are_skipped() -> (
    None
):
    handler, deployments, _, stream = api()
    stream.newest = 7  # specs 1..7 were published before this request
    assert (await handler.apply(deployment_json("web", 5))).ok
    entry = await deployments.get("default.web")
    assert entry is not None and entry.value is not None
    assert decode(entry.value, Deployment).metadata.spec_sequence == 7
    for verb, payload in (
        (handler.apply, deployment_json("web", 2)),
        (handler.scale, encode({"name": "web", "replicas": 1})),
        (handler.delete, encode({"name": "web"})),
    ):
        reply = await verb(payload, 6)
        assert reply.ok and reply.reason == REASON_SUPERSEDED and "sequence 7" in reply.message
    assert await replicas(deployments) == 5
    # A newer durable spec applies, and records its own sequence.
    assert (await handler.scale(encode({"name": "web", "replicas": 3}), 9)).ok
    assert await replicas(deployments) == 3
    assert (await handler.apply(deployment_json("web", 4), 9)).reason == REASON_SUPERSEDED


async def test_a_redelivered_spec_at_the_stored_sequence_is_not_applied_twice() -> None:
    handler, deployments, _, _ = api()
    assert (await handler.apply(deployment_json("web", 2), 4)).ok
    assert (await handler.scale(encode({"name": "web", "replicas": 8}))).ok  # a request: position 0
    again = await handler.apply(deployment_json("web", 2), 4)
    assert again.reason == REASON_SUPERSEDED and await replicas(deployments) == 8


async def test_a_request_delete_is_remembered_so_an_older_waiting_spec_cannot_bring_it_back() -> (
    None
):
    handler, deployments, leases, stream = api()
    assert (await handler.apply(deployment_json("web", 2), 3)).ok
    await advance(leases, "Deployment", 3)
    stream.newest = 5  # spec 4 and 5 (an apply of web) still wait in the stream
    assert (await handler.delete(encode({"name": "web"}))).ok
    progress, _ = await read_progress(leases, "Deployment")
    assert progress == SpecProgress(applied=3, deleted={"default.web": 5})
    skipped = await handler.apply(deployment_json("web", 2), 5)
    assert skipped.reason == REASON_SUPERSEDED and "deleted since" in skipped.message
    assert await replicas(deployments) is None
    other = await handler.apply(deployment_json("api", 1), 4)  # another name is not held back
    assert other.ok and other.generation == 1
    # A spec published after the delete is newer: it creates the Deployment again.
    assert (await handler.apply(deployment_json("web", 1), 6)).ok
    # Once the stream is handled past the delete, the memory of it goes.
    assert (await advance(leases, "Deployment", 6)).deleted == {}


class FailingLeases(MemoryBucket):
    """A progress bucket whose writes fail (NATS away), and a deployments bucket that
    notes what the progress record held when each delete came."""

    fail = True

    async def create(self, key: str, value: bytes) -> int:
        if self.fail:
            raise ConnectionError("NATS is away")
        return await super().create(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        if self.fail:
            raise ConnectionError("NATS is away")
        return await super().update(key, value, revision)


class WatchedDeployments(MemoryBucket):
    def __init__(self, leases: MemoryBucket) -> None:
        super().__init__("deployments")
        self.leases = leases
        self.remembered_at_delete: list[dict[str, int]] = []

    async def delete(self, key: str, revision: int | None = None) -> int:
        progress, _ = await read_progress(self.leases, "Deployment")
        self.remembered_at_delete.append(dict(progress.deleted))
        return await super().delete(key, revision)


async def test_a_request_delete_that_cannot_be_remembered_deletes_nothing_and_may_be_retried() -> (
    None
):
    leases, stream = FailingLeases("leases"), Stream()
    deployments = WatchedDeployments(leases)
    handler = DeploymentAPI(deployments, leases, stream.position)
    assert (await handler.apply(deployment_json("web", 2), 3)).ok
    stream.newest = 5  # an older apply of web still waits in the stream
    refused = await handler.delete(encode({"name": "web"}))
    assert not refused.ok and refused.retryable and refused.reason == REASON_INTERNAL
    assert "'web' was not deleted: the delete could not be recorded" in refused.error
    assert "NATS is away" in refused.error and "try again" in refused.error
    assert await replicas(deployments) == 2  # nothing deleted
    assert deployments.remembered_at_delete == []
    leases.fail = False  # the retry works, and the memory comes before the delete
    assert (await handler.delete(encode({"name": "web"}))).ok
    assert deployments.remembered_at_delete == [{"default.web": 5}]
    assert await replicas(deployments) is None
    skipped = await handler.apply(deployment_json("web", 2), 4)
    assert skipped.reason == REASON_SUPERSEDED and await replicas(deployments) is None


async def test_a_delete_needs_no_memory_when_the_stream_has_nothing_waiting() -> None:
    handler, _, leases, stream = api()
    stream.newest = 4
    await advance(leases, "Deployment", 4)
    assert (await handler.apply(deployment_json("web", 1))).ok
    assert (await handler.delete(encode({"name": "web"}))).ok
    assert (await read_progress(leases, "Deployment"))[0].deleted == {}


async def test_progress_never_goes_back_and_remembers_only_deletes_it_does_not_cover() -> None:
    leases = MemoryBucket()
    assert (await advance(leases, "Deployment", 10)).applied == 10
    assert (await advance(leases, "Deployment", 4)).applied == 10
    await remember_delete(leases, "Deployment", "web", 9)  # covered already
    assert (await read_progress(leases, "Deployment"))[0].deleted == {}
    await remember_delete(leases, "Deployment", "web", 12)
    progress = (await read_progress(leases, "Deployment"))[0]
    assert progress.superseded_by("web", 12) == 12
    assert progress.superseded_by("web", 13) == 0
    assert progress.superseded_by("api", 11) == 0
    assert progress.superseded_by("api", 10) == 10


def test_only_passing_failures_are_retryable() -> None:
    assert Reply(ok=False, reason=REASON_INTERNAL).retryable
    assert Reply(ok=False, reason=REASON_BUSY).retryable
    assert Reply(ok=False, reason=REASON_STORE_FULL).retryable
    assert not Reply(ok=False, reason=REASON_INVALID).retryable
    assert not Reply(ok=False, error="internal error: but no reason").retryable
    assert not Reply(ok=True).retryable


# --- where a lost durable consumer starts ------------------------------------------------

NEW, ALL, AFTER = (
    js_api.DeliverPolicy.NEW,
    js_api.DeliverPolicy.ALL,
    js_api.DeliverPolicy.BY_START_SEQUENCE,
)


@pytest.mark.parametrize(
    ("applied", "recorded", "lost", "objects_written", "policy", "after"),
    [
        # progress known: after the last spec handled, whatever else
        (41, True, True, True, AFTER, 41),
        (41, True, False, True, AFTER, 41),
        (0, True, True, True, ALL, 0),  # recorded: nothing handled yet
        # the kind's first start: every spec published before the owner first ran
        (None, False, False, False, ALL, 0),
        # progress unknown: only new specs, never a replay of old ones
        (None, False, True, False, NEW, 0),  # lost while running, record missing
        (None, False, False, True, NEW, 0),  # both gone at a restart: the owner ran before
        (None, True, False, False, NEW, 0),  # the record cannot be read
        (None, True, True, True, NEW, 0),
    ],
)
def test_a_missing_consumer_replays_nothing_unless_it_knows_what_was_applied(
    applied: int | None,
    recorded: bool,
    lost: bool,
    objects_written: bool,
    policy: js_api.DeliverPolicy,
    after: int,
) -> None:
    start = consumer_start(applied, recorded=recorded, lost=lost, objects_written=objects_written)
    assert (start.policy, start.after) == (policy, after)


async def test_the_progress_record_is_made_with_the_consumer_and_an_unreadable_one_replaced() -> (
    None
):
    leases = MemoryBucket()
    assert await recorded_progress(leases, "Deployment") == (None, False)
    assert await start_progress(leases, "Deployment", 0) == SpecProgress()
    assert await recorded_progress(leases, "Deployment") == (SpecProgress(), True)
    await leases.put(progress_key("Deployment"), b"{not json")
    assert await recorded_progress(leases, "Deployment") == (None, True)
    assert (await start_progress(leases, "Deployment", 17)).applied == 17
    await remember_delete(leases, "Deployment", "web", 20)
    kept = await start_progress(leases, "Deployment", 18)  # never lowers, keeps deletes
    assert kept == SpecProgress(applied=18, deleted={"web": 20})
    assert await start_progress(leases, "Deployment", 3) == kept


MOUNTED = {"volumes": [{"name": "d", "emptyDir": {}}]}


@pytest.mark.parametrize(
    ("image", "extra", "field", "words"),
    [
        ("UPPER/app:1", {}, "spec.template.image", "repository name must be lowercase"),
        ("busybox", {"command": [""]}, "spec.template.command[0]", "cannot be empty"),
        (
            "busybox",
            {**MOUNTED, "volumeMounts": [{"name": "d", "mountPath": "/data/.."}]},
            "spec.template.volumeMounts[0].mountPath",
            "not a normalised path",
        ),
        (
            "busybox",
            {**MOUNTED, "volumeMounts": [{"name": "d", "mountPath": "/srv//x"}]},
            "spec.template.volumeMounts[0].mountPath",
            "not a normalised path",
        ),
    ],
)
async def test_a_template_the_engine_would_refuse_is_refused_at_apply_yet_one_stored_still_reads(
    image: str, extra: dict[str, object], field: str, words: str
) -> None:
    """Checked where a Deployment is applied, not in the decode type: a record stored
    before these rules (a Deployment, its Placements, its history) still decodes, so the
    controllers can stop what it runs."""
    handler, deployments, _, _ = api()
    raw = deployment_json("web", 1, image, **extra)
    reply = await handler.apply(raw)
    assert not reply.ok and reply.reason == REASON_INVALID and reply.field == field, reply
    assert words in reply.error
    assert await deployments.get("default.web") is None  # nothing changed
    assert decode(raw, Deployment).spec.template.image == image  # a stored one reads


async def test_a_registry_with_capitals_localhost_and_a_trailing_slash_are_applied() -> None:
    handler, *_ = api()
    for image in ("Registry.Example.com:5000/team/app:1", "localhost/app:1", "app:1"):
        mount = {**MOUNTED, "volumeMounts": [{"name": "d", "mountPath": "/data/"}]}
        assert (await handler.apply(deployment_json("web", 1, image, **mount))).ok


ROLLED_BACK = "automatic rollback from revision 2 to the template of revision 1: x"


def with_cause(replicas: int, image: str) -> bytes:
    """A Deployment as `get -o yaml` gives one an automatic rollback wrote back."""
    return encode(
        {
            "apiVersion": "corral/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {CHANGE_CAUSE_ANNOTATION: ROLLED_BACK}},
            "spec": {"replicas": replicas, "template": {"image": image}},
        }
    )


async def stored_web(deployments: MemoryBucket) -> Deployment:
    entry = await deployments.get("default.web")
    assert entry is not None and entry.value is not None
    return decode(entry.value, Deployment)


async def test_a_rollbacks_cause_read_back_with_the_spec_is_dropped_with_a_new_template() -> None:
    """`get -o yaml`, edit the template, apply: the automatic rollback's change cause came
    along; kept, the new template would pass for a rollback's own and never be rolled
    back. It is dropped; on the same template it stays."""
    handler, deployments, _, _ = api()
    assert (await handler.apply(with_cause(1, "app:1"))).ok  # a new Deployment: dropped
    stored = await stored_web(deployments)
    assert CHANGE_CAUSE_ANNOTATION not in stored.metadata.annotations
    # The scheduler's own rollback write (straight to the store) puts it on the template.
    rolled = msgspec.structs.replace(
        stored,
        metadata=msgspec.structs.replace(
            stored.metadata, annotations={CHANGE_CAUSE_ANNOTATION: ROLLED_BACK}
        ),
    )
    entry = await deployments.get("default.web")
    assert entry is not None
    await deployments.update("default.web", encode(rolled), entry.revision)
    assert (await handler.apply(with_cause(3, "app:1"))).ok  # scaled, the same template
    kept = await stored_web(deployments)
    assert kept.metadata.annotations[CHANGE_CAUSE_ANNOTATION] == ROLLED_BACK
    assert (await handler.apply(with_cause(3, "app:2"))).ok  # the user's own template
    edited = await stored_web(deployments)
    assert edited.spec.template.image == "app:2"
    assert CHANGE_CAUSE_ANNOTATION not in edited.metadata.annotations
