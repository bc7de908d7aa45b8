"""The scheduler judges liveness by heartbeats heard on core NATS, on its own clock,
and takes a heartbeat feed that misses messages (a late echo, sequence gaps across
many nodes, a slow consumer) as its own stale view, never as dead nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
from nats.aio.msg import Msg

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.events import Heartbeat, HeartbeatAck
from corral.contract.time_budget import NODE_LOST_SECONDS
from corral.natsio.kv import echo_key
from corral_scheduler.control_loop import TELL_LATE_SECONDS
from corral_scheduler.heartbeats import HeartbeatJudge
from tests.unit.test_scheduler_control_loop import Cluster, _value
from tests.waiting import current, eventually


class HeardCluster(Cluster):
    """A Cluster whose nodes beat on the judge instead of rewriting their records."""

    def __init__(self, placement_shards: int = 1) -> None:
        super().__init__(placement_shards)
        self.judge = self.loop.make_judge()
        self.loop.heartbeats = self.judge
        self.seq: dict[str, int] = {}
        self.acks: dict[str, HeartbeatAck | None] = {}

    def beat(self, name: str, *, missed: int = 0) -> None:
        """One heartbeat of `name` arrives; `missed` before it were dropped."""
        seq = self.seq.get(name, 0) + 1 + missed
        self.seq[name] = seq
        heartbeat = Heartbeat(node=name, agent_id=f"agent-{name}", seq=seq)
        self.acks[name] = self.judge.receive(heartbeat, self.clock.now)

    def echo_back(self) -> None:
        own = Heartbeat(node=names.HEARTBEAT_ECHO, agent_id=self.loop.owner, seq=1)
        assert self.judge.receive(own, self.clock.now) is None

    async def pass_seconds(
        self,
        seconds: float,
        *,
        beating: tuple[str, ...] = (),
        gapped: tuple[str, ...] = (),
        echo: bool = True,
    ) -> None:
        for _ in range(int(seconds)):
            self.clock.now += 1
            for name in beating:
                self.beat(name)
            for name in gapped:
                self.beat(name, missed=1)
            if echo:
                self.echo_back()
            await self.echo()
            await self.loop.run_pass()


@asynccontextmanager
async def heard_cluster(
    replicas: int, *nodes: str, placement_shards: int = 1
) -> AsyncIterator[HeardCluster]:
    """`nodes` registered once (a record each), then heard only by heartbeats; a
    Deployment of `replicas` placed on them."""
    cluster = HeardCluster(placement_shards)
    async with anyio.create_task_group() as tg:
        await cluster.loop.start(tg, echoes=False)
        try:
            for name in nodes:
                await cluster.heartbeat(name)  # the record: written once
            await cluster.apply("web", replicas)
            await cluster.pass_seconds(1, beating=nodes)
            await eventually(
                lambda: _value(len(cluster.loop.placements.items)), lambda n: n == replicas
            )
            yield cluster
        finally:
            tg.cancel_scope.cancel()


async def test_heartbeats_alone_keep_idle_nodes_alive_and_each_is_acknowledged() -> None:
    async with heard_cluster(2, "a", "b") as cluster:
        assert cluster.placed_on() == ["a", "b"]
        revision = cluster.nodes.items["a"].revision
        await cluster.pass_seconds(3 * NODE_LOST_SECONDS, beating=("a", "b"))
        assert cluster.nodes.items["a"].revision == revision  # no record written meanwhile
        assert cluster.placed_on() == ["a", "b"]  # heard: alive
        ack = cluster.acks["a"]
        assert ack is not None and ack.judge == cluster.loop.owner
        assert ack.record_revision == revision and ack.judges == 1
        # The newest revision of a's placements (its agent's watch must bring it).
        (key,) = [k for k in cluster.loop.placements.items if k.startswith("a.")]
        assert ack.placements_revision == cluster.loop.placements.revision(key) > 0
        await cluster.pass_seconds(NODE_LOST_SECONDS + 2, beating=("a",))  # b falls silent
        assert cluster.placed_on() == ["a", "a"]


async def test_while_its_own_heartbeat_echo_is_late_no_node_is_judged_lost_nor_acked() -> None:
    async with heard_cluster(2, "a", "b") as cluster:
        await cluster.pass_seconds(3 * NODE_LOST_SECONDS, echo=False)  # the feed stalled
        assert cluster.loop.feed_fresh_since is None
        assert cluster.placed_on() == ["a", "b"]
        cluster.beat("a")
        assert cluster.acks["a"] is None  # a stale judge vouches for nobody


async def test_gaps_in_many_nodes_heartbeats_make_the_view_stale_not_silent_nodes_lost() -> None:
    async with heard_cluster(4, "a", "b", "c", "d") as cluster:
        assert cluster.placed_on() == ["a", "b", "c", "d"]
        # Messages are dropped: a, b and c arrive with gaps, every one of d's is lost.
        await cluster.pass_seconds(3 * NODE_LOST_SECONDS, gapped=("a", "b", "c"))
        assert cluster.judge.late(cluster.clock.now) is not None
        assert cluster.loop.feed_fresh_since is None
        assert cluster.placed_on() == ["a", "b", "c", "d"]


async def test_a_gap_in_one_nodes_heartbeats_is_no_reason_to_distrust_the_view() -> None:
    async with heard_cluster(2, "a", "b") as cluster:
        await cluster.pass_seconds(3, beating=("a",), gapped=("b",))
        assert cluster.judge.late(cluster.clock.now) is None
        assert cluster.loop.feed_fresh_since is not None


async def test_a_slow_consumer_on_the_heartbeat_subscription_makes_the_view_stale() -> None:
    async with heard_cluster(2, "a", "b") as cluster:
        for _ in range(3 * int(NODE_LOST_SECONDS)):
            cluster.judge.slow_consumer(cluster.clock.now)  # nats-py dropped messages
            await cluster.pass_seconds(1, beating=("a",))
        assert cluster.loop.feed_fresh_since is None
        assert cluster.placed_on() == ["a", "b"]  # b's silence is not counted
        await cluster.pass_seconds(NODE_LOST_SECONDS + 5, beating=("a",))
        assert cluster.placed_on() == ["a", "a"]  # fresh again: b's silence now counts


async def test_a_decision_between_ticks_judges_losses_on_the_views_freshness_now() -> None:
    """Deployments are decided between the 1 s ticks too: a decision made after the
    feed stalled (no tick noticed it yet) must not find a node lost."""
    async with heard_cluster(2, "a", "b") as cluster:
        assert cluster.loop.feed_fresh_since is not None
        cluster.clock.now += NODE_LOST_SECONDS + 2  # no echo, no heartbeat, no tick
        await cluster.loop.reconcile("default.web")
        assert cluster.loop.feed_fresh_since is None
        assert cluster.placed_on() == ["a", "b"]


async def echo_only_in(cluster: HeardCluster, mirror_name: str) -> None:
    """A second passes; the scheduler's echo comes back through one watch only (the
    others lag), and the heartbeat feed's own echo comes back."""
    loop = cluster.loop
    mirror = {"nodes": loop.nodes, "placements": loop.placements.shards[0]}[mirror_name]
    cluster.clock.now += 1
    cluster.echo_back()
    key = echo_key(loop.owner)
    await mirror.bucket.put(key, encode(loop.wall_clock()))
    await eventually(lambda: _value(mirror.echo_age(key, cluster.clock.now)), lambda a: a == 0)
    loop.update_feed(cluster.clock.now)  # as the loop's passes do


async def test_a_judge_whose_placements_watch_lags_still_acknowledges_heartbeats() -> None:
    # Acks read only the nodes watch: a placements watch behind a burst of placements
    # must not make every agent write its record each beat (the nodes watch would lag
    # too, and the view stay stale).
    async with heard_cluster(2, "a", "b") as cluster:
        for _ in range(4):
            await echo_only_in(cluster, "nodes")
            cluster.beat("a")
        assert not cluster.loop.update_feed(cluster.clock.now)  # stale: nothing judged lost
        assert cluster.acks["a"] is not None  # but "a" is told it was heard


async def test_a_judge_whose_nodes_watch_lags_acknowledges_nothing() -> None:
    # What an ack says of the node's record comes from the nodes watch: late, no ack.
    async with heard_cluster(2, "a", "b") as cluster:
        for _ in range(4):
            await echo_only_in(cluster, "placements")
            cluster.beat("a")
        assert cluster.acks["a"] is None


async def test_while_its_placements_echo_is_late_a_judge_acks_but_tells_no_revision() -> None:
    # Its newest revision may be behind another scheduler's writes: -1 leaves the agent
    # proving its watch by its own echo (docs/safety.md, "Placements must be current").
    async with heard_cluster(2, "a", "b") as cluster:
        cluster.placements.stalled = True  # the placements watch hears nothing
        await cluster.pass_seconds(TELL_LATE_SECONDS - 1, beating=("a", "b"))
        ack = cluster.acks["a"]
        assert ack is not None and ack.placements_revision > 0  # a little late: still told
        await cluster.pass_seconds(2, beating=("a", "b"))
        ack = cluster.acks["a"]
        assert ack is not None and ack.placements_revision == -1  # heard, vouched for
        cluster.placements.stalled = False
        await cluster.pass_seconds(2, beating=("a", "b"))  # the echo back, then a beat
        ack = cluster.acks["a"]
        assert ack is not None and ack.placements_revision > 0


async def test_a_lagging_shard_of_the_placements_stops_telling_its_own_nodes_only() -> None:
    # Each node is told the newest revision of its keys in its own shard, while that
    # shard's watch is current: another shard's revisions say nothing of its keys.
    in_0, in_1 = "d", "a"  # names.placement_shard: 0 and 1 of 2
    assert [names.placement_shard(n, 2) for n in (in_0, in_1)] == [0, 1]
    async with heard_cluster(2, in_0, in_1, placement_shards=2) as cluster:
        loop = cluster.loop
        await cluster.pass_seconds(2, beating=(in_0, in_1))
        for node, shard in ((in_0, 0), (in_1, 1)):
            (key,) = [k for k in loop.placements.items if k.startswith(f"{node}.")]
            ack = cluster.acks[node]
            revision = loop.placements.shards[shard].revision(key)
            assert ack is not None and ack.placements_revision == revision
            assert revision is not None and revision > 0
        cluster.buckets[names.placements_buckets(2)[1]].stalled = True
        await cluster.pass_seconds(TELL_LATE_SECONDS + 1, beating=(in_0, in_1))
        acks = cluster.acks
        assert acks[in_1] is not None and acks[in_1].placements_revision == -1
        assert acks[in_0] is not None and acks[in_0].placements_revision > 0


def test_the_revision_told_to_a_node_counts_only_keys_its_agent_watches() -> None:
    # An agent watches <node>.> (names.placement_prefix): a key without a '.' (written
    # by hand into the bucket) is no node's, so no agent is told a revision it never sees.
    assert names.placement_node("n1.default.web-abcde") == "n1"
    assert names.placement_node("n1.web-abcde") == "n1"  # from before namespaces
    assert names.placement_node("n1") == ""


class _Subscription:
    """A heartbeat subscription fed by the test."""

    def __init__(self) -> None:
        self.send, receive = anyio.create_memory_object_stream[Msg](100)
        self.messages = receive

    async def unsubscribe(self) -> None:
        pass


class _Connection:
    """What HeartbeatJudge.run uses of a NATS client; counts the event loop's turns so
    a test can tell acks published in one go (nats-py's flusher then writes them at
    once) from acks published one by one."""

    def __init__(self) -> None:
        self.subscription = _Subscription()
        self.turn = 0
        self.published: list[tuple[str, int]] = []  # (reply subject, turn)

    async def subscribe(self, subject: str, **_: object) -> _Subscription:
        return self.subscription

    async def flush(self) -> None:
        """The server has the subscription (corral.natsio.bus.flush_subscriptions)."""

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append((subject, self.turn))

    async def count_turns(self) -> None:
        while True:
            self.turn += 1
            await anyio.lowlevel.checkpoint()


async def test_acks_made_within_a_batch_window_are_published_in_one_go() -> None:
    # One socket write per batch instead of one per ack (a third of the heartbeat
    # thread's time at 1,001 nodes, bench/README.md): on the old code each ack was
    # published as its beat was read, a turn of the event loop apart.
    judge = HeartbeatJudge(
        "scheduler-test",
        on_heard=lambda node, at: None,
        record_of=lambda node: (None, None),
        judges=lambda: 1,
        may_ack=lambda: True,
        ack_batch_seconds=0.5,
    )
    nc = _Connection()
    async with anyio.create_task_group() as tg:
        tg.start_soon(nc.count_turns)
        await tg.start(judge.run, nc)
        for seq in range(1, 21):
            beat = Heartbeat(node=f"n{seq}", agent_id="agent", seq=seq)
            msg = Msg(nc, names.heartbeat_subject(beat.node), f"_INBOX.x.{seq}", encode(beat))  # type: ignore[arg-type]
            await nc.subscription.send.send(msg)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()  # the beat is read before the next arrives
        assert nc.published == []  # none sent before the window closes
        await eventually(lambda: current(len(nc.published)), lambda n: n == 20)
        replies = sorted(reply for reply, _ in nc.published)
        assert replies == sorted(f"_INBOX.x.{seq}" for seq in range(1, 21))
        assert len({turn for _, turn in nc.published}) == 1  # in one go
        tg.cancel_scope.cancel()
