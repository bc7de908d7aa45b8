"""Every Reply carries a typed outcome (Reply.code: ok, invalid, not_found, conflict,
unavailable, internal) that callers branch on, never the words of its error."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from corral.contract.codec import encode
from corral.contract.events import (
    REASON_BUSY,
    REASON_CODES,
    REASON_CONFLICT,
    REASON_INTERNAL,
    REASON_INVALID,
    REASON_NOT_FOUND,
    REASON_STORE_FULL,
    REASON_SUPERSEDED,
    Reply,
)
from corral.contract.specs import NodeDecision
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.natsio.kv import MemoryBucket
from corral_node_agent.local_record import LocalRecord, LocalRecordFile
from corral_node_agent.membership import Membership
from corral_scheduler.node_api import NodeAPI
from tests.unit.agent_helpers import CLUSTER_ID, NODE, cluster_bucket
from tests.unit.test_scheduler_control_loop import placed_and_running, release, running

ROOT = Path(__file__).resolve().parents[2]


def test_each_reason_has_its_code_and_only_passing_ones_are_retryable() -> None:
    assert Reply(ok=True).code == "ok"
    assert Reply(ok=True, reason=REASON_SUPERSEDED).code == "ok"
    expected = {
        REASON_INVALID: ("invalid", False),
        REASON_NOT_FOUND: ("not_found", False),
        REASON_CONFLICT: ("conflict", False),
        REASON_BUSY: ("unavailable", True),
        REASON_STORE_FULL: ("unavailable", True),
        REASON_INTERNAL: ("internal", True),
    }
    assert set(REASON_CODES) == set(expected)
    for reason, (code, retryable) in expected.items():
        reply = Reply(ok=False, reason=reason)
        assert (reply.code, reply.retryable) == (code, retryable), reason
    assert Reply(ok=False).code == "internal"  # an owner that gave no reason
    assert Reply(ok=False, reason="SomethingNew").code == "internal"


def _refusals_without_reason(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Reply"):
            continue
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        ok = keywords.get("ok")
        if isinstance(ok, ast.Constant) and ok.value is True:
            continue
        if "reason" not in keywords:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_refusal_built_in_the_code_names_its_reason() -> None:
    sources = [*ROOT.joinpath("shared").rglob("*.py"), *ROOT.joinpath("services").rglob("*.py")]
    assert len(sources) > 20
    missing = [where for path in sources for where in _refusals_without_reason(path)]
    assert missing == [], f"a Reply(ok=False, ...) without reason= at {missing}"


# --- the node agent's answers to adopt and reset ---------------------------------------


async def _nothing_removed(cluster_id: str) -> tuple[int, list[str]]:
    return 0, []


async def _removals_fail(cluster_id: str) -> tuple[int, list[str]]:
    return 1, ["web-a2: engine refused"]


@pytest.mark.parametrize(
    ("verb", "payload", "code", "field"),
    [
        ("adopt", b"[[[", "invalid", ""),
        ("adopt", b'{"node": "Not_A_Label"}', "invalid", "node"),
        ("adopt", b'{"node": "other-node"}', "invalid", "node"),
        ("eject", b'{"node": "node-a"}', "invalid", ""),
        ("adopt", b'{"node": "node-a"}', "conflict", ""),  # nothing to adopt
        (
            "adopt",
            f'{{"node": "node-a", "clusterId": "{CLUSTER_ID}"}}'.encode(),
            "conflict",
            "clusterId",
        ),
        ("reset", b'{"node": "node-a", "clusterId": "0123456789abcdef"}', "conflict", "clusterId"),
    ],
)
async def test_a_refused_decision_says_why_in_its_code(
    tmp_path: Path, verb: str, payload: bytes, code: str, field: str
) -> None:
    membership = Membership(NODE, cluster_bucket(), LocalRecordFile(tmp_path))
    reply = await membership.decide(verb, payload, _nothing_removed)
    assert (reply.ok, reply.code, reply.field) == (False, code, field), reply


async def test_a_decision_before_the_store_has_an_identity_is_unavailable(tmp_path: Path) -> None:
    membership = Membership(NODE, MemoryBucket("cluster"), LocalRecordFile(tmp_path))
    reply = await membership.decide("adopt", encode(NodeDecision(node=NODE)), _nothing_removed)
    assert reply.code == "unavailable" and reply.retryable, reply


async def test_a_reset_whose_removals_fail_is_an_internal_error_worth_retrying(
    tmp_path: Path,
) -> None:
    old = "0123456789abcdef"  # the cluster the node belonged to; the store holds another
    LocalRecordFile(tmp_path).save(LocalRecord(node=NODE, cluster_id=old))
    membership = Membership(NODE, cluster_bucket(), LocalRecordFile(tmp_path))
    reply = await membership.decide(
        "reset", encode(NodeDecision(node=NODE, cluster_id=old)), _removals_fail
    )
    assert reply.code == "internal" and reply.retryable and "run reset again" in reply.error


# --- the scheduler's answers to a node release ------------------------------------------


async def test_a_refused_release_says_why_in_its_code() -> None:
    async with running() as cluster:
        await cluster.apply("db", 1, replacement="AfterStop")
        await placed_and_running(cluster, "a")
        alive = await release(cluster, "a")
        assert (alive.code, alive.field) == ("conflict", "name"), alive
        missing = await release(cluster, "nope")
        assert missing.code == "not_found", missing
        bad = await NodeAPI(cluster.loop, None).release(b'{"name": "Not_A_Label"}')
        assert (bad.code, bad.field) == ("invalid", "name"), bad

        await cluster.heartbeat("b")
        await cluster.tick(NODE_LOST_SECONDS + 2, beating=("b",))
        may_still_run = await release(cluster, "a")
        assert (may_still_run.code, may_still_run.field) == ("conflict", "force"), may_still_run

        cluster.nodes.stalled = True
        await cluster.tick(NODE_LOST_SECONDS + 2)
        stale = await release(cluster, "a")
        assert stale.code == "unavailable" and stale.retryable, stale
