"""The agent's proof of life on core NATS (docs/time-budget.md, "Liveness"): the
judges' acks drive its cut-off clock, an idle agent writes no record, an ack naming
a live successor displaces it, and a name whose agent heartbeats is refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from prometheus_client import REGISTRY

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import Heartbeat, HeartbeatAck
from corral.contract.state import Node, NodeCapacity, ReplicaState
from corral.natsio.kv import is_echo_key
from corral_node_agent.agent import NodeAgent, NodeNameTaken
from corral_node_agent.heartbeat_link import LateAcks, is_other_agent
from corral_node_agent.mode_events import ModeEventBudget
from corral_node_agent.node_record import NodeRecord, Takeover, stored_node
from corral_node_agent.safety import Mode
from tests.unit.agent_helpers import NODE, fast_settings, placement
from tests.unit.test_agent_loop import eventually, state_of
from tests.unit.test_agent_safety import (
    FlakyBucket,
    Rig,
    other_agents_node,
    passes_after,
    raised,
    running,
)


def entries(mode: str) -> float:
    """corral_agent_mode_entries_total{mode} (shared by every agent of the process)."""
    return REGISTRY.get_sample_value("corral_agent_mode_entries_total", {"mode": mode}) or 0.0


class TellingBucket(FlakyBucket):
    """A placements bucket that knows the newest revision of each node's keys, deletes
    included, as a scheduler's grouped mirror does (echo keys aside)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.newest: dict[str, int] = {}

    def _write(self, key: str, value: bytes | None) -> int:
        revision = super()._write(key, value)
        if not is_echo_key(key):
            self.newest[names.placement_node(key)] = revision
        return revision


class FakeJudges:
    """Judges as the agent meets them through its HeartbeatLink: each answers with
    the node's record as it sees it (read from the nodes bucket) and, given a
    TellingBucket (`tells`), the newest revision of the node's placements."""

    def __init__(self, nodes: FlakyBucket, tells: TellingBucket | None = None) -> None:
        self.nodes = nodes
        self.tells = tells
        self.answering = True
        self.judges = 1  # how many judges the acks say are alive
        self.answered_by = ("judge-1",)
        self.successor_live = False  # the judges hear the agent the record names
        self.other: Heartbeat | None = None  # another agent heartbeating on the subject
        self.sent: list[Heartbeat] = []
        self.late = False  # the acks come only after the beat's wait (to `late`)

    async def beat(
        self, heartbeat: Heartbeat, wait: float, late: LateAcks | None = None
    ) -> list[HeartbeatAck]:
        self.sent.append(heartbeat)  # the publish itself always succeeds here
        if not self.answering:
            return []
        if self.late:
            acks = self._acks(heartbeat)
            if late is not None:
                asyncio.get_running_loop().call_later(wait * 1.5, late, acks)  # after the wait
            return []
        return self._acks(heartbeat)

    def _acks(self, heartbeat: Heartbeat) -> list[HeartbeatAck]:
        entry = self.nodes.items.get(heartbeat.node)
        stored = stored_node(entry)
        return [
            HeartbeatAck(
                judge=judge,
                record_agent_id=stored.agent_id if stored else "",
                record_revision=entry.revision if entry else 0,
                record_engine_id=stored.engine_id if stored else "",
                record_agent_live=self.successor_live,
                judges=self.judges,
                placements_revision=-1
                if self.tells is None
                else self.tells.newest.get(heartbeat.node, 0),
            )
            for judge in self.answered_by
        ]

    async def other_agent(
        self, node: str, agent_id: str, engine_id: str, window: float
    ) -> Heartbeat | None:
        if self.other is not None:
            return self.other
        await anyio.sleep(window)
        return None

    async def beats(self, count: int) -> None:
        target = len(self.sent) + count
        await eventually(lambda: len(self.sent) >= target)


def heard_agent(rig: Rig, judges: FakeJudges, **settings: object) -> NodeAgent:
    return NodeAgent(
        fast_settings(state_dir=rig.state_dir, **settings),
        rig.runtime,
        placements=rig.placements,
        nodes=rig.nodes,
        statuses=rig.statuses,
        cluster=rig.cluster,
        events=rig.events,
        health=rig.health,
        heartbeats=judges,
    )


async def test_an_idle_agent_every_judge_hears_never_rewrites_its_record() -> None:
    rig = Rig()
    judges = FakeJudges(rig.nodes)
    async with running(heard_agent(rig, judges)) as agent:
        await rig.world().place(placement("web-a1"))
        await eventually(lambda: state_of(rig.world(), "web-a1") == ReplicaState.RUNNING)
        await judges.beats(3)
        revision = rig.nodes.items[NODE].revision
        acked = agent.record.last_acked
        await judges.beats(20)
        assert rig.nodes.items[NODE].revision == revision  # nothing written to say alive
        assert agent.record.last_acked is not None and acked is not None
        assert agent.record.last_acked > acked  # the acks drove the cut-off clock
        # The acks alone keep it Active: its record writes may fail meanwhile.
        rig.nodes.failing_writes = True
        await judges.beats(20)  # 20 x 50 ms: far past isolated_after (0.3 s)
        assert agent.mode == Mode.ACTIVE
        rig.nodes.failing_writes = False
        agent.record.update(labels={"zone": "b"})  # a change is written at the next beat
        await eventually(lambda: stored_node(rig.nodes.items[NODE]).labels == {"zone": "b"})  # type: ignore[union-attr]


async def test_acks_that_come_after_the_wait_keep_the_agent_heard() -> None:
    """A judge (or this agent's loop) slowed down: every ack comes after the beat's wait.
    The beat is not proven in time, so the record is written (here: failing), but the
    late acks still prove the agent heard from the beat's sending: it stays Active."""
    rig = Rig()
    judges = FakeJudges(rig.nodes)
    async with running(heard_agent(rig, judges)) as agent:
        await rig.world().place(placement("web-a1"))
        await eventually(lambda: state_of(rig.world(), "web-a1") == ReplicaState.RUNNING)
        judges.late = True
        rig.nodes.failing_writes = True
        isolated = entries("Isolated")
        await judges.beats(20)  # 20 x 50 ms: far past isolated_after (0.3 s)
        assert agent.mode == Mode.ACTIVE and entries("Isolated") == isolated
        assert agent.record.late_proofs >= 15
        assert state_of(rig.world(), "web-a1") == ReplicaState.RUNNING


async def test_a_flapping_agent_reports_a_burst_of_mode_changes_then_holds_and_counts_them() -> (
    None
):
    rig = Rig()
    judges = FakeJudges(rig.nodes)

    async def cut_off_and_back(agent: NodeAgent) -> None:
        judges.answering = False
        rig.nodes.failing_writes = True
        await eventually(lambda: agent.mode == Mode.ISOLATED)
        judges.answering = True
        rig.nodes.failing_writes = False
        await eventually(lambda: agent.mode == Mode.ACTIVE)

    async with running(heard_agent(rig, judges)) as agent:
        agent._mode_events = ModeEventBudget(burst=2, every=3_600.0)
        held = REGISTRY.get_sample_value("corral_agent_mode_events_held_total") or 0.0
        reported = len(rig.events.seen)
        await cut_off_and_back(agent)  # Isolated, Syncing (back from it): the burst
        assert rig.events.reasons()[reported:] == ["Isolated", "Syncing"]
        await cut_off_and_back(agent)  # held: logged, counted, not sent
        assert len(rig.events.seen) == reported + 2
        assert REGISTRY.get_sample_value("corral_agent_mode_events_held_total") == held + 2
        agent._mode_events.tokens = 1.0  # as 30 s of quiet would give back
        await cut_off_and_back(agent)
        _, reason, message = rig.events.seen[reported + 2]
        assert reason == "Isolated" and "(2 earlier mode changes not reported" in message


async def test_unheard_by_the_judges_and_its_writes_failing_it_isolates_then_stops() -> None:
    rig = Rig()
    judges = FakeJudges(rig.nodes)
    async with running(heard_agent(rig, judges)) as agent:
        await rig.world().place(placement("web-a1"))
        await eventually(lambda: state_of(rig.world(), "web-a1") == ReplicaState.RUNNING)
        judges.answering = False  # the heartbeats go out (publishes succeed), no judge hears
        rig.nodes.failing_writes = True
        sent = len(judges.sent)
        isolated, stopping = entries("Isolated"), entries("Stopping")
        await eventually(lambda: agent.mode == Mode.ISOLATED)
        await eventually(lambda: agent.mode == Mode.STOPPING)
        assert (entries("Isolated"), entries("Stopping")) == (isolated + 1, stopping + 1)
        await eventually(lambda: not rig.runtime.containers)
        assert len(judges.sent) > sent + 10  # it kept heartbeating all along
        judges.answering = True
        await eventually(lambda: agent.mode == Mode.ACTIVE)


async def test_acks_of_only_some_judges_are_no_proof_and_the_record_is_written() -> None:
    rig = Rig()
    judges = FakeJudges(rig.nodes)
    judges.judges = 2  # two judges alive, only one of them hears this agent
    async with running(heard_agent(rig, judges)) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        writes = agent.record.writes
        await judges.beats(10)
        assert agent.record.writes >= writes + 8  # the other judge sees these
        rig.nodes.failing_writes = True
        await eventually(lambda: agent.mode == Mode.ISOLATED)
        judges.answered_by = ("judge-1", "judge-2")  # both hear it now
        await eventually(lambda: agent.mode == Mode.ACTIVE)


async def test_a_judge_hearing_the_successor_the_record_names_displaces_this_agent() -> None:
    rig = Rig()
    judges = FakeJudges(rig.nodes)
    async with running(heard_agent(rig, judges)) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        await judges.beats(3)
        # A successor wrote the record once, and from then on only heartbeats.
        await rig.nodes.put(NODE, other_agents_node(time.time()))
        judges.successor_live = True
        await eventually(lambda: agent.mode == Mode.HANDED_OVER)
        assert rig.health["node_name"] is False
        sent = len(judges.sent)
        await rig.world().place(placement("web-a1"))
        await agent.reconcile_once()
        assert rig.runtime.creates == 0
        assert stored_node(rig.nodes.items[NODE]).agent_id == "someone-else"  # type: ignore[union-attr]
        assert len(judges.sent) <= sent + 1  # a displaced agent stops heartbeating


async def test_a_record_naming_an_agent_no_judge_hears_is_taken_back() -> None:
    rig = Rig()
    judges = FakeJudges(rig.nodes)
    async with running(heard_agent(rig, judges)) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        await rig.nodes.put(NODE, other_agents_node(time.time()))  # a restored backup
        await eventually(
            lambda: stored_node(rig.nodes.items[NODE]).agent_id == agent.agent_id  # type: ignore[union-attr]
        )
        assert agent.record.displaced_by is None
        await eventually(lambda: agent.mode == Mode.ACTIVE)


async def test_a_name_whose_agent_heartbeats_is_refused_though_its_record_never_changes() -> None:
    rig = Rig()
    await rig.nodes.put(NODE, other_agents_node(time.time()))  # written once, idle since
    judges = FakeJudges(rig.nodes)
    judges.other = Heartbeat(node=NODE, agent_id="someone-else", seq=7)
    with pytest.raises(BaseException) as caught:
        async with running(heard_agent(rig, judges)):
            pass
    error = raised(caught.value, NodeNameTaken)
    assert error is not None, caught.value
    assert "heartbeat was heard" in str(error) and "--node-name" in str(error)
    assert rig.runtime.creates == 0 and rig.runtime.removes == 0
    assert stored_node(rig.nodes.items[NODE]).agent_id == "someone-else"  # type: ignore[union-attr]


# --- the same agent id on two engines is two agents (docs/safety.md) -----------------


class SameIdJudges:
    """One judge that hears an agent "a" on engine E1 heartbeating node n1."""

    def __init__(self, nodes: FlakyBucket) -> None:
        self.nodes = nodes

    async def beat(
        self, heartbeat: Heartbeat, wait: float, late: LateAcks | None = None
    ) -> list[HeartbeatAck]:
        entry = self.nodes.items.get(heartbeat.node)
        stored = stored_node(entry)
        return [
            HeartbeatAck(
                judge="j1",
                record_agent_id=stored.agent_id if stored else "",
                record_revision=entry.revision if entry else 0,
                record_engine_id=stored.engine_id if stored else "",
                record_agent_live=True,
                judges=1,
            )
        ]

    async def other_agent(
        self, node: str, agent_id: str, engine_id: str, window: float
    ) -> Heartbeat | None:
        heard = Heartbeat(node=node, agent_id="a", engine_id="E1", seq=1)
        if is_other_agent(heard.agent_id, heard.engine_id, agent_id, engine_id):
            return heard
        await anyio.sleep(window)
        return None


def same_id_node(engine: str) -> Node:
    capacity = NodeCapacity(cpu_millis=1000, memory_bytes=1 << 30)
    return Node(name="n1", agent_id="a", engine_id=engine, ready=True, capacity=capacity)


async def test_an_agent_with_the_same_id_on_another_engine_is_refused_while_the_first_beats() -> (
    None
):
    nodes = FlakyBucket("nodes")
    judges = SameIdJudges(nodes)
    first = NodeRecord(nodes, same_id_node("E1"), link=judges, takeover_window=0.3)
    await first.beat(0.1)
    await first.beat(0.1)  # idle and proven: its record no longer changes
    second = NodeRecord(nodes, same_id_node("E2"), link=judges, takeover_window=0.3)
    with pytest.raises(NodeNameTaken):
        await second.beat(0.1)


async def test_an_agent_whose_record_names_its_id_on_another_engine_is_displaced() -> None:
    """While this agent (a@E1) was cut off, a@E2 took the node over: the judges' acks
    name a@E2, heard alive, so this one hands over instead of running on as owner."""
    nodes = FlakyBucket("nodes")
    judges = SameIdJudges(nodes)
    first = NodeRecord(nodes, same_id_node("E1"), link=judges, takeover_window=0.3)
    await first.beat(0.1)
    await nodes.put("n1", encode(same_id_node("E2")))  # the successor's record
    await first.beat(0.1)
    assert first.displaced_by is not None
    assert stored_node(nodes.items["n1"]).engine_id == "E2"  # type: ignore[union-attr]


async def test_a_claim_whose_listen_fails_is_refused_not_taken_over() -> None:
    """An idle agent proven by acks never rewrites its record: when the heartbeats
    cannot be listened to, the claim cannot tell it is dead, so it is refused."""

    class Deaf(SameIdJudges):
        async def other_agent(
            self, node: str, agent_id: str, engine_id: str, window: float
        ) -> Heartbeat | None:
            raise ConnectionError("no NATS")

    nodes = FlakyBucket("nodes")
    await nodes.put("n1", encode(same_id_node("E1")))
    second = NodeRecord(nodes, same_id_node("E2"), link=Deaf(nodes), takeover_window=0.3)
    with pytest.raises(NodeNameTaken, match="could not be listened to"):
        await second.beat(0.1)


# The placements watch proven by the judges' acks (corral_node_agent.watch_proof).


def echo_writes(bucket: FlakyBucket) -> int:
    """Echo keys in the bucket now (the agent deletes its echo when it stops)."""
    return sum(1 for key in bucket.items if is_echo_key(key))


@asynccontextmanager
async def told_agent() -> AsyncIterator[tuple[NodeAgent, Rig, FakeJudges, TellingBucket]]:
    """An agent whose judges tell its placements' revision (stale_watch_after 0.5 s)."""
    placements = TellingBucket("placements")
    rig = Rig(placements=placements)
    judges = FakeJudges(rig.nodes, tells=placements)
    async with running(heard_agent(rig, judges, stale_watch_after=0.5)) as agent:
        yield agent, rig, judges, placements


async def test_told_its_placements_revision_an_agent_writes_no_echo_and_restarts_no_watch() -> None:
    async with told_agent() as (agent, rig, judges, placements):
        world = rig.world()
        for n in range(6):  # placements written while the acks tell their revisions
            await world.place(placement(f"web-a{n}"))
            await judges.beats(2)
        await eventually(lambda: len(rig.runtime.running(NODE)) == 6)
        before = placements.revision
        await judges.beats(30)  # 30 x 50 ms: three times the staleness limit
        assert placements.revision == before  # nothing written to prove the watch
        assert echo_writes(placements) == 0
        assert agent.watches == 1  # a current watch is never taken for a stalled one


async def test_a_stalled_watch_is_read_afresh_once_a_told_revision_does_not_come() -> None:
    async with told_agent() as (agent, rig, judges, placements):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        placements.stalled = True  # connected, the acks come, the watch delivers nothing
        await judges.beats(20)
        assert agent.watches == 1  # nothing owed: a stalled watch that misses nothing
        await world.unplace("web-a1")  # told at the next beat, never delivered
        await world.place(placement("web-b2"))
        await eventually(lambda: agent.watches >= 2)  # read afresh: the replay brought both
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)
        await eventually(lambda: len(rig.runtime.running(NODE)) == 1)  # web-a1 stopped
        assert echo_writes(placements) == 0


async def test_judges_that_stop_telling_the_revision_leave_the_agent_echoing_again() -> None:
    async with told_agent() as (agent, rig, judges, placements):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        assert echo_writes(placements) == 0
        judges.tells = None  # an older scheduler: its acks do not say
        await eventually(lambda: echo_writes(placements) == 1)
        placements.stalled = True  # the echo stops coming back: read afresh
        watches = agent.watches
        await world.place(placement("web-b2"))
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)
        assert agent.watches > watches
        judges.tells = placements  # telling again: the echo key goes
        placements.stalled = False
        await eventually(lambda: echo_writes(placements) == 0)


def test_revisions_told_of_another_store_are_forgotten_when_the_agent_changes_store() -> None:
    agent = Rig().agent()
    agent.watch_proof.told(50, now=1.0)  # told by the judges of the store before
    agent.executor.cluster_id = "another-store"  # adopted into a new one (membership)
    agent._membership_changed()
    assert agent.watch_proof.mark() == 0  # its revisions start low again: all are owed
    agent.watch_proof.told(7, now=2.0)
    agent._membership_changed()  # the same store: nothing forgotten
    assert agent.watch_proof.mark() == 7


# Back from an isolation: the watch kept when the acks prove it current.


async def isolate(agent: NodeAgent, rig: Rig, judges: FakeJudges) -> None:
    judges.answering = False  # no judge hears the beats, the record writes fail
    rig.nodes.failing_writes = True
    await eventually(lambda: agent.mode == Mode.ISOLATED)


def end_isolation(rig: Rig, judges: FakeJudges) -> None:
    judges.answering = True
    rig.nodes.failing_writes = False


def watches_counted(how: str) -> float:
    return REGISTRY.get_sample_value("corral_placement_watches_total", {"how": how}) or 0.0


async def test_back_from_isolation_a_watch_the_acks_prove_current_is_kept() -> None:
    kept = watches_counted("kept_by_acks")
    async with told_agent() as (agent, rig, judges, _placements):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        await isolate(agent, rig, judges)
        # Meanwhile the scheduler moved web-a1 away and placed web-b2 here: the watch,
        # still running, delivers both.
        await world.unplace("web-a1")
        await world.place(placement("web-b2"))
        await passes_after(agent)
        assert rig.runtime.creates == 1  # nothing started while isolated
        end_isolation(rig, judges)
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        assert agent.watches == 1  # no new watch was made: the acks proved this one
        assert agent.watches_kept == {"acks": 1, "echo": 0}
        assert watches_counted("kept_by_acks") == kept + 1  # corral_placement_watches_total
        # The echo written while no judge told (cut off) goes once they tell again.
        await eventually(lambda: echo_writes(rig.placements) == 0)
        assert rig.placements.watches == 1
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)
        await eventually(lambda: len(rig.runtime.running(NODE)) == 1)  # web-a1 removed


async def test_back_from_isolation_a_kept_watch_that_missed_a_change_is_read_afresh() -> None:
    """The watch stalled while the agent was cut off, and missed that web-a1 moved
    away (after its container died). Trusting the kept watch would start web-a1 again
    here while it runs elsewhere; the acks name the delete, the watch owes it, so the
    placements are read afresh first."""
    async with told_agent() as (agent, rig, judges, placements):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        (container,) = rig.runtime.running(NODE)
        await isolate(agent, rig, judges)
        placements.stalled = True  # connected again later, but this watch delivers nothing
        rig.runtime.crash(container.id)
        await world.unplace("web-a1")  # moved away: never delivered by this watch
        starts = rig.runtime.starts
        end_isolation(rig, judges)
        await eventually(lambda: agent.watches == 2)  # not proven: a new watch
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        assert agent.watches_kept == {"acks": 0, "echo": 0}
        await passes_after(agent)
        assert rig.runtime.starts == starts  # web-a1 was never started again
        assert not rig.runtime.running(NODE)


async def test_back_from_isolation_without_a_judge_telling_its_echo_proves_the_kept_watch() -> None:
    """No judge names a revision after the outage (each says -1 while its own view
    catches up): the agent writes its echo key once, and the kept watch delivering it
    proves it missed nothing before it."""
    async with told_agent() as (agent, rig, judges, placements):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        await isolate(agent, rig, judges)
        await world.unplace("web-a1")  # moved away meanwhile: the watch delivers it
        judges.tells = None  # back, heard, but no judge names a revision
        end_isolation(rig, judges)
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        assert agent.watches == 1
        assert agent.watches_kept == {"acks": 0, "echo": 1}
        assert placements.watches == 1
        await eventually(lambda: not rig.runtime.running(NODE))


async def test_acks_during_an_isolation_from_only_some_judges_prove_nothing() -> None:
    """Two judges alive, only one answers: its acks (naming a revision) come all through
    the isolation, but a judge that does not hear the agent may have moved its
    replicas: only the echo proves the kept watch."""
    async with told_agent() as (agent, rig, judges, _placements):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        judges.judges = 2  # a second judge is alive and never answers
        rig.nodes.failing_writes = True
        await eventually(lambda: agent.mode == Mode.ISOLATED)
        await judges.beats(3)  # judge-1 answers these, naming the revision
        rig.nodes.failing_writes = False  # heard again through the record
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        assert agent.watches == 1
        assert agent.watches_kept == {"acks": 0, "echo": 1}


def test_only_a_beat_every_judge_answered_with_a_revision_can_prove_a_kept_watch() -> None:
    agent = Rig().agent()

    def ack(judge: str, revision: int) -> HeartbeatAck:
        return HeartbeatAck(judge=judge, judges=2, placements_revision=revision)

    agent._told([ack("a", 5)], 1.0)  # one judge of two
    assert agent.watch_proof.acked_at is None
    agent._told([ack("a", 5), ack("b", -1)], 2.0)  # one of them does not say
    assert agent.watch_proof.acked_at is None
    agent._told([ack("a", 5), ack("b", 3)], 3.0)
    assert agent.watch_proof.acked_at == 3.0


async def test_a_kept_watch_that_went_on_from_a_new_consumer_is_read_afresh() -> None:
    """While the agent was cut off its watch was re-made from after the last entry it
    delivered: delete markers purged in between would have been skipped."""
    async with told_agent() as (agent, rig, judges, placements):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        await isolate(agent, rig, judges)
        placements.resets = 1
        await world.place(placement("web-b2"))  # comes through the new consumer
        end_isolation(rig, judges)
        await eventually(lambda: agent.watches == 2)
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        assert agent.watches_kept == {"acks": 0, "echo": 0}
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)


async def test_a_kept_watch_of_a_store_that_went_back_is_read_afresh() -> None:
    """Restored from a backup under the same identity while the agent was cut off: the
    echo's revision is not past what the watch had delivered, so it proves nothing."""
    async with told_agent() as (agent, rig, judges, placements):
        world = rig.world()
        for n in range(4):
            await world.place(placement(f"web-a{n}"))
        await eventually(lambda: len(rig.runtime.running(NODE)) == 4)
        await isolate(agent, rig, judges)
        judges.tells = None
        placements.revision = 1  # the store's sequence went back
        end_isolation(rig, judges)
        await eventually(lambda: agent.watches == 2)
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        assert agent.watches_kept == {"acks": 0, "echo": 0}


async def test_an_active_watch_that_went_on_from_a_new_consumer_is_read_afresh() -> None:
    """Not cut off for long enough to be Isolated, but bytes were lost and the watch
    went on from a new consumer: a purged delete marker could have been skipped, and
    no later proof would tell, so the placements are read afresh."""
    async with told_agent() as (agent, rig, _judges, placements):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        placements.resets = 1
        await world.place(placement("web-b2"))
        await eventually(lambda: agent.watches == 2)
        assert agent.watch_resets == 1
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)


async def test_a_new_watchs_snapshot_is_never_of_a_store_older_than_what_the_agent_saw() -> None:
    """`--placements-watch reads`: each new watch's snapshot, and each statuses load, asks
    for a store at least as new as the newest revision of the node's keys the agent was
    told or read, or wrote (Bucket.snapshot's floor): a store that went back is not
    acted on."""
    placements = TellingBucket("placements")
    rig = Rig(placements=placements)
    judges = FakeJudges(rig.nodes, tells=placements)
    agent = heard_agent(rig, judges, stale_watch_after=0.5, placements_watch="reads")
    async with running(agent):
        world = rig.world()
        await world.place(placement("web-a1"))
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        seen = max(agent.placements.delivered, agent.watch_proof.mark())
        wrote = max(revision for _, revision in agent.statuses.written.values())
        placements.resets = 1  # the watch went on from a new consumer: read afresh
        await world.place(placement("web-b2"))
        await eventually(lambda: agent.watches == 2)
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)
    assert placements.floors[0] == 0 and seen > 0
    assert placements.floors[1] >= seen
    assert rig.statuses.floors[0] == 0 and rig.statuses.floors[1] >= wrote > 0


# --- acks that come after the wait: the proof is the beat's sending -------------------


class LateLink:
    """Answers nothing within the wait; keeps each beat's `late` for the test to call."""

    def __init__(self) -> None:
        self.late: list[LateAcks] = []

    async def beat(
        self, heartbeat: Heartbeat, wait: float, late: LateAcks | None = None
    ) -> list[HeartbeatAck]:
        assert late is not None
        self.late.append(late)
        return []

    async def other_agent(
        self, node: str, agent_id: str, engine_id: str, window: float
    ) -> Heartbeat | None:
        return None


def ack(judge: str = "j1", judges: int = 1, agent: str = "a", engine: str = "E1") -> HeartbeatAck:
    return HeartbeatAck(judge=judge, record_agent_id=agent, record_engine_id=engine, judges=judges)


async def test_late_acks_prove_the_agent_heard_from_the_beats_sending_never_later_or_back() -> None:
    now = [100.0]
    link = LateLink()
    nodes = FlakyBucket("nodes")
    record = NodeRecord(nodes, same_id_node("E1"), monotonic=lambda: now[0], link=link)
    await record.claim()
    nodes.failing_writes = True  # no proof but the late acks
    for sent in (100.0, 101.0):
        now[0] = sent
        with pytest.raises(ConnectionError):
            await record.beat(wait=0.5)  # unanswered: its record write fails
    assert record.last_acked is None
    now[0] = 102.4  # the acks of both come now, the second beat's first
    link.late[1]([ack()])
    assert record.last_acked == 101.0  # its sending, not 102.4
    link.late[0]([ack()])
    assert record.last_acked == 101.0  # an older beat never moves the clock back
    assert record.late_proofs == 1


async def test_late_acks_of_too_few_judges_or_naming_another_agent_prove_nothing() -> None:
    link = LateLink()
    nodes = FlakyBucket("nodes")
    record = NodeRecord(nodes, same_id_node("E1"), monotonic=lambda: 5.0, link=link)
    await record.claim()
    nodes.failing_writes = True  # no proof but the late acks
    for _ in range(4):
        with pytest.raises(ConnectionError):
            await record.beat(wait=0.5)
    before = record.last_acked
    assert before is None
    link.late[0]([ack(judges=2)])  # one of two judges
    link.late[1]([ack(agent="b")])  # the record names another agent
    link.late[2]([ack(engine="E2")])  # the same id on another engine: another agent
    assert record.last_acked == before and record.late_proofs == 0
    record.displaced_by = Takeover(agent_id="b", same_engine=True)
    link.late[3]([ack()])
    assert record.last_acked == before and record.late_proofs == 0


class HangingLink:
    """A link whose first beat never returns (a connection hung mid-publish); the
    beats after it come back unanswered at once."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def beat(
        self, heartbeat: Heartbeat, wait: float, late: LateAcks | None = None
    ) -> list[HeartbeatAck]:
        self.sent.append(heartbeat.seq)
        if len(self.sent) == 1:
            await asyncio.Event().wait()
        return []

    async def other_agent(
        self, node: str, agent_id: str, engine_id: str, window: float
    ) -> Heartbeat | None:
        return None


def record_on(link: HangingLink, agent_id: str) -> NodeRecord:
    capacity = NodeCapacity(cpu_millis=1000, memory_bytes=2**30)
    node = Node(name=NODE, agent_id=agent_id, capacity=capacity)
    return NodeRecord(FlakyBucket(names.NODES_BUCKET), node, link=link)


async def test_a_hung_beat_is_cut_at_its_bound_the_next_goes_out_and_a_stop_still_ends_it() -> None:
    """The heartbeat's bound (asyncio's own timeout inside anyio's task group) cuts a
    beat that hangs, so the next beat is not held up; cancelling the task group ends
    the loop, whether it is in a beat or between two."""
    link = HangingLink()
    record = record_on(link, "agent-1")
    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(record.heartbeat, 0.2)  # bound: max(0.4, 1.0) = 1 s
        await eventually(lambda: len(link.sent) >= 3, within=10)
        assert time.monotonic() - began >= 1.0  # the first beat held on to its bound
        tg.cancel_scope.cancel()
    assert link.sent[:3] == [1, 2, 3]
    with anyio.fail_after(5):  # and a stop while a beat hangs ends it too
        async with anyio.create_task_group() as tg:
            hung = HangingLink()
            tg.start_soon(record_on(hung, "agent-2").heartbeat, 0.2)
            await eventually(lambda: len(hung.sent) == 1)
            tg.cancel_scope.cancel()
    assert hung.sent == [1]
