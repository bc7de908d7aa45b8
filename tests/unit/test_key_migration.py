"""Keys from before namespaces: read as the default namespace's, moved by their owner."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.state import ReplicaState, ReplicaStatus
from corral.natsio.key_migration import OBJECT_KEYS, PLACEMENT_KEYS, move_legacy_keys
from corral.natsio.kv import MemoryBucket, echo_key
from corral.natsio.spec_progress import SpecProgress
from corral_node_agent.status_book import StatusBook


def test_keys_of_before_namespaces_read_as_the_default_namespaces() -> None:
    assert names.split_object_key("web") == ("default", "web")
    assert names.split_object_key("default.web") == ("default", "web")
    assert names.split_placement_key("n1.web-abcde") == ("n1", "default", "web-abcde")
    assert names.split_placement_key("n1.default.web-abcde") == ("n1", "default", "web-abcde")
    assert names.placement_key("n1", "default", "web-abcde") == "n1.default.web-abcde"
    assert names.is_legacy_placement_key("n1.web-abcde")
    assert not names.is_legacy_placement_key("n1.default.web-abcde")


async def test_legacy_records_move_to_their_new_keys_and_nothing_else_changes() -> None:
    bucket = MemoryBucket("corral_deployments")
    await bucket.put("web", b"old-web")
    await bucket.put("default.api", b"api")
    await bucket.put("db", b"old-db")
    await bucket.put("default.db", b"newer-db")  # written since: the newer one stays
    await bucket.put(echo_key("scheduler-1"), b"1.0")
    assert await move_legacy_keys(bucket, OBJECT_KEYS) == 2
    stored = {key: entry.value for key, entry in bucket.items.items() if entry.value is not None}
    assert stored == {
        "default.web": b"old-web",
        "default.api": b"api",
        "default.db": b"newer-db",
        echo_key("scheduler-1"): b"1.0",
    }


async def test_placements_move_under_their_node_and_namespace() -> None:
    bucket = MemoryBucket("corral_placements")
    await bucket.put("n1.web-bbbbb", b"p")
    await bucket.put(echo_key("agent", prefix="n1."), b"1.0")  # n1._echo.agent: not a record
    assert await move_legacy_keys(bucket, PLACEMENT_KEYS) == 1
    live = {key for key, entry in bucket.items.items() if entry.value is not None}
    assert live == {"n1.default.web-bbbbb", echo_key("agent", prefix="n1.")}


async def test_an_agent_moves_its_own_statuses_when_it_loads_them() -> None:
    bucket = MemoryBucket("corral_replica_status")
    status = ReplicaStatus(replica="web-b", deployment="web", node="n1", state=ReplicaState.RUNNING)
    await bucket.put("n1.web-b", encode(status))
    await bucket.put("n2.web-c", encode(status))  # another node's: not this agent's to move
    book = StatusBook(bucket, "n1")
    await book.load()
    live = {key for key, entry in bucket.items.items() if entry.value is not None}
    assert live == {"n1.default.web-b", "n2.web-c"}
    assert book.replicas() == ["web-b"]
    await book.delete("web-b")
    assert {k for k, e in bucket.items.items() if e.value is not None} == {"n2.web-c"}


def test_a_delete_remembered_by_bare_name_still_supersedes_older_specs() -> None:
    progress = SpecProgress(applied=3, deleted={"web": 9})
    assert progress.superseded_by("default.web", 7) == 9
    assert progress.superseded_by("default.web", 10) == 0
    assert SpecProgress(applied=3, deleted={"default.web": 9}).superseded_by("default.web", 8)
