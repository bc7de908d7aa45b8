"""What the answers to one multi_last direct get make (kv.SnapshotAnswers): a whole
snapshot, or none (the reader then uses a watch). A snapshot taken from answers that
do not make a whole one would make an agent remove replicas still placed."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.natsio.kv import Entry, Snapshot, SnapshotAnswers

STREAM = "KV_corral_placements"
PREFIX = "$KV.corral_placements."


@dataclass
class Answer:
    """A direct get's answer as nats-py gives it (headers and data)."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""


def entry(key: str, revision: int, pending: int = 0, stream: str = STREAM) -> Answer:
    return Answer(
        {
            "Nats-Stream": stream,
            "Nats-Subject": PREFIX + key,
            "Nats-Sequence": str(revision),
            "Nats-Num-Pending": str(pending),
        },
        key.encode(),
    )


def end(covered: int, pending: int = 0) -> Answer:
    return Answer(
        {
            "Status": "204",
            "Description": "EOB",
            "Nats-Num-Pending": str(pending),
            "Nats-UpTo-Sequence": str(covered),
        }
    )


def status(code: str, description: str) -> Answer:
    return Answer({"Status": code, "Description": description})


def read(answers: list[Answer], floor: int = 0) -> SnapshotAnswers:
    taken = SnapshotAnswers(STREAM, len(PREFIX), floor)
    for index, answer in enumerate(answers):
        done = taken.take(answer, answer.headers, answer.headers.get("Status"))
        assert done == (index == len(answers) - 1), f"answer {index} ended it: {done}"
    return taken


def test_entries_then_a_clean_end_make_the_snapshot_as_of_its_sequence() -> None:
    taken = read([entry("n1.a", 3, 1), entry("n1.b", 7, 0), end(9)], floor=7)
    assert taken.snapshot == Snapshot([Entry("n1.a", b"n1.a", 3), Entry("n1.b", b"n1.b", 7)], 9)


def test_no_results_is_an_empty_snapshot_only_for_a_reader_that_has_seen_nothing() -> None:
    assert read([status("404", "No Results")]).snapshot == Snapshot([], 0)
    refused = read([status("404", "No Results")], floor=5)
    assert refused.snapshot is None and "unknown sequence" in refused.refused


def test_a_404_after_entries_is_no_snapshot_not_an_empty_one() -> None:
    """nats-server answers "Message Not Found" when an entry it chose fails to load (a
    delete marker purged meanwhile): the entries sent before it are not all there are,
    and none at all is not the truth either."""
    taken = read([entry("n1.a", 3, 1), status("404", "Message Not Found")])
    assert taken.snapshot is None and "404" in taken.refused
    assert read([status("404", "Message Not Found")]).snapshot is None


def test_answers_that_do_not_make_a_whole_snapshot_refuse_it() -> None:
    cases = {
        "more than 1,024 keys": [status("413", "Too Many Results")],
        "a server without multi_last": [status("408", "Empty Request")],
        "bytes pending at the end": [entry("n1.a", 3, 0), end(9, pending=1)],
        "the last entry says more is to come": [entry("n1.a", 3, 1), end(9)],
        "a store older than the floor": [entry("n1.a", 3), end(9)],
        "entries out of order": [entry("n1.a", 7, 1), entry("n1.b", 3), end(9)],
        "a mirror answering": [entry("n1.a", 3, stream="KV_mirror"), end(9)],
        "no results after entries": [entry("n1.a", 3, 1), status("404", "No Results")],
        "an entry without its sequence": [Answer({"Nats-Subject": PREFIX + "n1.a"}), end(9)],
        "an end without a number": [
            entry("n1.a", 3),
            Answer({"Status": "204", "Nats-UpTo-Sequence": "x"}),
        ],
    }
    for case, answers in cases.items():
        floor = 10 if case == "a store older than the floor" else 0
        taken = SnapshotAnswers(STREAM, len(PREFIX), floor)
        done = False
        for answer in answers:
            done = taken.take(answer, answer.headers, answer.headers.get("Status"))
            if done:
                break
        assert done and taken.snapshot is None and taken.refused, case


def test_a_store_with_nothing_stored_yet_is_no_snapshot_at_sequence_zero() -> None:
    assert read([end(0)]).snapshot is None  # covered 0: the end of nothing
