"""Logs, piece by piece: --since parsing, targets, prefixing, the agent's chunking,
Docker's multiplexed stream, the hollow engine's tail, the request's validation."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from corral.client.api import CorralError
from corral.client.cli.logs_commands import Printer, ReplicaRef, parse_since, split_target
from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.logs import MAX_LOG_CHUNK_BYTES, LogChunk, LogPiece, LogRequest
from corral.contract.names import logs_subject, node_subject
from corral_node_agent.docker_runtime import FrameDecoder, log_params
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.logs import ChunkPacker, pick_container, serving_cluster
from corral_node_agent.runtime import ContainerSpec, ContainerState, LogFrame, ObservedContainer
from corral_node_agent.safety import Identity

NOW = 1_764_400_000.0


def test_since_takes_go_durations_and_times_with_a_zone() -> None:
    assert parse_since("10s", NOW) == NOW - 10
    assert parse_since("1h30m", NOW) == NOW - 5400
    assert parse_since("250ms", NOW) == pytest.approx(NOW - 0.25)
    moment = datetime(2026, 11, 29, 7, 0, tzinfo=UTC).timestamp()
    assert parse_since("2026-11-29T07:00:00Z", NOW) == moment
    assert parse_since("2026-11-29T08:00:00+01:00", NOW) == moment


@pytest.mark.parametrize("text", ["yesterday", "10", "5d", "-5m", "2026-11-29T07:00:00", ""])
def test_an_unparsable_since_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(text, NOW)


def test_targets_are_a_deployment_or_a_replica_and_other_kinds_are_named() -> None:
    assert split_target("deployment/web") == ("deployment", "web")
    assert split_target("deploy/web") == ("deployment", "web")
    assert split_target("web-abc12") == ("replica", "web-abc12")
    assert split_target("pod/web-abc12") == ("replica", "web-abc12")
    with pytest.raises(CorralError, match="unknown kind 'svc'"):
        split_target("svc/web")


def test_lines_are_prefixed_with_their_replica_even_when_split_across_pieces() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = Printer(out, err, prefixed=True)
    one, two = ReplicaRef("web-a", "n1", "default"), ReplicaRef("web-b", "n2", "default")
    printer.write(one, LogPiece(text="hel"))
    printer.write(one, LogPiece(text="lo\nwor"))
    printer.write(two, LogPiece(text="x\n"))
    printer.write(one, LogPiece(text="ld\n"))
    printer.write(one, LogPiece(text="bad\n", stream="stderr"))
    assert out.getvalue() == "[web-a] hello\n[web-a] wor[web-b] x\nld\n"
    assert err.getvalue() == "[web-a] bad\n"
    docker = Printer(out := io.StringIO(), err, prefixed=True, style="docker")
    docker.write(two, LogPiece(text="a\nb\n"))
    assert out.getvalue() == "web-b@n2    | a\nweb-b@n2    | b\n"
    plain = Printer(out := io.StringIO(), err, prefixed=False)
    plain.write(one, LogPiece(text="a\nb\n"))
    assert out.getvalue() == "a\nb\n"


def test_chunks_hold_at_most_64_kib_of_text_and_keep_characters_whole() -> None:
    packer = ChunkPacker()
    big = ("é" * 50_000 + "\n").encode()  # 100 001 bytes
    packer.add(LogFrame("stdout", big[:3]))  # a character cut in two by the engine
    packer.add(LogFrame("stdout", big[3:]))
    packer.add(LogFrame("stderr", b"oops\n"))
    packer.finish()
    chunks = [packer.take() for _ in range(len(packer.full))]
    assert len(chunks) == 2 and packer.take() == []
    assert sum(len(p.text.encode()) for p in chunks[0]) == MAX_LOG_CHUNK_BYTES
    for pieces in chunks:
        assert sum(len(p.text.encode()) for p in pieces) <= MAX_LOG_CHUNK_BYTES
        assert len(encode(LogChunk(seq=0, pieces=pieces))) < 1024 * 1024  # NATS' max payload
    texts = [(p.stream, p.text) for pieces in chunks for p in pieces]
    assert "".join(t for s, t in texts if s == "stdout") == big.decode()
    assert [t for s, t in texts if s == "stderr"] == ["oops\n"]
    small = ChunkPacker(limit=3)
    small.add(LogFrame("stdout", ("aé" * 3).encode()))
    small.finish()
    assert [[p.text for p in small.take()] for _ in range(3)] == [["aé"]] * 3


def test_docker_multiplexed_frames_are_decoded_as_they_come_with_their_stream() -> None:
    def frame(kind: int, data: bytes) -> bytes:
        return struct.pack(">BxxxL", kind, len(data)) + data

    raw = frame(1, b"out 1\n") + frame(2, b"err 1\n") + frame(1, b"") + frame(1, b"out 2\n")
    decoder = FrameDecoder()
    got = []
    for index in range(0, len(raw), 5):  # in awkward pieces, headers split
        got += decoder.feed(raw[index : index + 5])
    assert got == [
        LogFrame("stdout", b"out 1\n"),
        LogFrame("stderr", b"err 1\n"),
        LogFrame("stdout", b"out 2\n"),
    ]
    assert decoder.pending == 0
    # all at once: consecutive frames of one stream come as one
    raw += frame(1, b"out 3\n") + frame(2, b"err 2\n") + struct.pack(">BxxxL", 1, 10) + b"out"
    assert decoder.feed(raw) == [
        LogFrame("stdout", b"out 1\n"),
        LogFrame("stderr", b"err 1\n"),
        LogFrame("stdout", b"out 2\nout 3\n"),
        LogFrame("stderr", b"err 2\n"),
    ]
    assert decoder.pending == 8 + 3  # the last frame's header and what came of it
    assert FrameDecoder(tty=True).feed(b"raw\n") == [LogFrame("stdout", b"raw\n")]
    assert log_params(follow=True, tail=None, since=None, timestamps=False)["tail"] == "all"
    assert log_params(follow=False, tail=2, since=1.5, timestamps=True) == {
        "stdout": "1",
        "stderr": "1",
        "follow": "0",
        "timestamps": "1",
        "tail": "2",
        "since": "1.500000000",
    }


async def test_a_hollow_containers_log_is_what_the_test_wrote_tail_since_and_follow() -> None:
    runtime = HollowRuntime(images={"img"})
    container = await runtime.create_container(ContainerSpec(name="c", image="img"))
    await runtime.start_container(container)
    runtime.write_log(container, "a\nb\n")
    runtime.write_log(container, "c\n", stream="stderr")

    async def read(**flags: object) -> list[LogFrame]:
        options = {"follow": False, "tail": None, "since": None, "timestamps": False, **flags}
        return [f async for f in runtime.container_logs(container, **options)]  # type: ignore[arg-type]

    assert await read() == [LogFrame("stdout", b"a\nb\n"), LogFrame("stderr", b"c\n")]
    assert await read(tail=2) == [LogFrame("stdout", b"b\n"), LogFrame("stderr", b"c\n")]
    assert await read(tail=0) == []
    assert await read(since=runtime.containers[container].log[-1][0] + 1) == []
    [stamped, _] = await read(timestamps=True)
    assert stamped.data.count(b"Z a\n") == 1 and stamped.data.count(b"Z b\n") == 1
    runtime.crash(container)  # a stopped container's follow ends after its log
    assert len(await read(follow=True)) == 2


def test_a_log_request_is_validated_naming_the_field() -> None:
    assert decode_payload(b'{"replica":"web-1"}', LogRequest) == LogRequest(replica="web-1")
    for raw, field in (
        (b'{"replica":"web-1","tail":-1}', "tail"),
        (b'{"replica":"Web_1"}', "replica"),
        (b'{"replica":"web-1","since":-3}', "since"),
        (b'{"replica":"web-1","containerId":"../x"}', "containerId"),
        (b'{"replica":"web-1","lines":3}', ""),
    ):
        with pytest.raises(InvalidPayload) as refused:
            decode_payload(raw, LogRequest)
        assert refused.value.field == field or "unknown field" in refused.value.message


def seen(
    id: str, node: str, state: ContainerState, started: float, cluster: str = "c1"
) -> ObservedContainer:
    return ObservedContainer(
        id=id,
        name=id,
        replica="web-1",
        deployment="web",
        template_hash="h",
        state=state,
        started_at=started,
        node=node,
        cluster=cluster,
    )


def test_the_agent_picks_the_replicas_running_container_on_its_own_node() -> None:
    containers = [
        seen("old", "n1", ContainerState.EXITED, 5.0),
        seen("live", "n1", ContainerState.RUNNING, 1.0),
        seen("elsewhere", "n2", ContainerState.RUNNING, 9.0),
    ]
    picked = pick_container(containers, LogRequest(replica="web-1"), "n1", "c1")
    assert picked is not None and picked.id == "live"
    asked = pick_container(containers, LogRequest(replica="web-1", container_id="ol"), "n1", "c1")
    assert asked is not None and asked.id == "old"
    assert pick_container(containers, LogRequest(replica="web-2"), "n1", "c1") is None
    assert (
        pick_container(containers, LogRequest(replica="web-1", namespace="x"), "n1", "c1") is None
    )


def test_the_agent_never_picks_another_clusters_container_on_its_engine() -> None:
    theirs = seen("theirs", "n1", ContainerState.RUNNING, 9.0, cluster="c2")
    unlabelled = seen("unlabelled", "n1", ContainerState.RUNNING, 8.0, cluster="")
    ours = seen("ours", "n1", ContainerState.EXITED, 1.0)
    request = LogRequest(replica="web-1")
    by_id = LogRequest(replica="web-1", container_id="theirs")
    assert pick_container([theirs, unlabelled], request, "n1", "c1") is None
    assert pick_container([theirs, unlabelled], by_id, "n1", "c1") is None
    # this cluster's stopped container over another's running one, even asked by id
    assert pick_container([theirs, unlabelled, ours], request, "n1", "c1") is ours
    assert pick_container([theirs, unlabelled, ours], by_id, "n1", "c1") is ours
    # an adopted cluster's container is this node's
    assert pick_container([theirs, ours], by_id, "n1", "c1", {"c2"}) is theirs
    # no cluster id known: nothing at all, not even containers without the label
    assert pick_container([theirs, unlabelled, ours], request, "n1", "") is None
    assert pick_container([unlabelled], request, "n1", "", {""}) is None


@dataclass
class Membership:
    identity: Identity
    cluster_id: str
    adopted: frozenset[str] = frozenset()


def test_logs_are_served_only_once_the_agent_recognised_its_cluster() -> None:
    assert serving_cluster(Membership(Identity.RECOGNISED, "c1")) == "c1"
    for identity in Identity:
        if identity != Identity.RECOGNISED:
            # its local record may name a cluster: not the store's (Mismatch), or not
            # known to be (Unknown, Lost, Unreadable)
            assert serving_cluster(Membership(identity, "c1")) == "", identity
    assert serving_cluster(Membership(Identity.UNKNOWN, "")) == ""


def test_the_logs_subject_is_outside_the_agents_decision_wildcard() -> None:
    assert logs_subject("n1") == "corral.logs.n1"
    assert not logs_subject("n1").startswith(node_subject("n1", ""))
