"""What the judges' acks say of the placements watch (corral_node_agent.watch_proof):
a revision told is owed until the watch delivers it, revisions told before a new
watch started are in its replay, and the oldest owed keeps its time."""

from __future__ import annotations

from corral_node_agent.watch_proof import MOST_OWED, WatchProof


def test_a_told_revision_is_owed_from_when_it_was_told_until_delivered() -> None:
    proof = WatchProof()
    assert proof.owed_since(0) is None
    assert proof.told(7, now=10.0)  # the first owed: the guard should look
    assert not proof.told(9, now=11.0)  # owed already
    assert proof.owed_since(6) == 10.0
    assert proof.owed_since(7) == 11.0  # 7 came; 9 is owed since it was told
    assert proof.owed_since(9) is None
    assert proof.owed_since(0) is None  # delivered is forgotten


def test_an_older_or_unsaid_revision_is_not_owed_but_a_said_one_counts_as_telling() -> None:
    proof = WatchProof()
    assert not proof.telling(5.0, within=2.0)
    assert not proof.told(-1, now=5.0)  # a judge that does not say
    assert not proof.telling(5.0, within=2.0)
    proof.told(4, now=6.0)
    # A judge behind, or a store gone back: nothing owed, and not telling either (the
    # agent echoes until the revisions told pass the newest again).
    assert not proof.told(3, now=6.5)
    assert proof.owed_since(0) == 6.0
    assert proof.telling(7.9, within=2.0) and not proof.telling(8.1, within=2.0)  # from 6.0
    assert not proof.told(4, now=7.0)  # the same again: owed already, but telling
    assert proof.telling(8.9, within=2.0)


def test_revisions_told_before_a_new_watch_started_are_in_its_replay() -> None:
    proof = WatchProof()
    proof.told(5, now=1.0)
    mark = proof.mark()
    proof.told(8, now=2.0)  # told while the new watch started: still owed
    proof.restarted(mark)
    assert proof.owed_since(0) == 2.0
    proof.restarted(proof.mark())
    assert proof.owed_since(0) is None
    # A revision purged before the watch started (an old delete marker) is never owed
    # again, though judges keep telling it.
    assert not proof.told(8, now=3.0)
    assert proof.owed_since(0) is None


def test_many_owed_revisions_fold_into_the_newest_keeping_the_oldest_time() -> None:
    proof = WatchProof()
    for revision in range(1, 3 * MOST_OWED):
        proof.told(revision, now=float(revision))
    assert proof.owed_since(0) == 1.0
    # The newest folded into the last place, with that place's time: owed until it comes.
    assert proof.owed_since(3 * MOST_OWED - 2) == float(MOST_OWED)
    assert proof.owed_since(3 * MOST_OWED - 1) is None


def test_a_kept_watch_is_proven_only_by_an_ack_to_a_beat_sent_after_the_doubt_began() -> None:
    proof = WatchProof(told_at=0.0)  # a reset (another store) proves nothing
    assert not proof.proves(since=0.0, delivered=0)
    proof.told(4, now=1.0, sent=0.9)  # told before the isolation began at 2.0
    assert not proof.proves(since=2.0, delivered=4)
    proof.told(6, now=3.2, sent=3.0)  # answering a beat sent after it
    assert not proof.proves(since=2.0, delivered=4)  # revision 6 not delivered yet
    assert proof.proves(since=2.0, delivered=6)
    late = WatchProof()
    late.told(6, now=2.5, sent=1.5)  # received after 2.0, but for a beat sent before it
    assert not late.proves(since=2.0, delivered=6)
    late.told(-1, now=3.5, sent=3.4)  # a judge that does not say proves nothing
    assert not late.proves(since=2.0, delivered=6)
