"""What an idle node agent costs, and what it watches: its guard decides when something
changed or a time limit is due (not four times a second), its echo (written only while
no judge's ack tells its placements' revision: no judge answers here) is written a few
times per staleness window (not every heartbeat), and its placements watch covers
only its own keys (names.placement_prefix), so other nodes' placements never reach it.
These are what let thousands of hollow nodes share one process (hollow_cluster)."""

from __future__ import annotations

import anyio

from corral.contract import names
from corral.contract.codec import encode
from corral.natsio.kv import is_echo_key
from corral_node_agent.safety import Budget, Mode
from tests.unit.agent_helpers import NODE, placement
from tests.unit.test_agent_loop import eventually
from tests.unit.test_agent_safety import FlakyBucket, Rig, running

QUIET = {
    "budget": Budget(isolated_after=2.0, stop_after=5.0),
    "stale_watch_after": 4.0,
    "identity_check_seconds": 30.0,
}


class CountingBucket(FlakyBucket):
    """Records every watch's prefix and every echo written."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.prefixes: list[str] = []
        self.echo_writes = 0

    async def put(self, key: str, value: bytes) -> int:
        if is_echo_key(key):
            self.echo_writes += 1
        return await super().put(key, value)

    def watch(self, prefix: str = ">"):  # type: ignore[no-untyped-def]
        self.prefixes.append(prefix)
        return super().watch(prefix)


async def test_an_idle_active_agent_decides_once_per_isolation_window_not_four_times_a_second() -> (
    None
):
    rig = Rig()
    async with running(rig.agent(**QUIET)) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        looks = agent.guard_looks
        await anyio.sleep(2.0)
        # Before: a look every 250 ms (8 here). Now: when a limit could be due (no
        # acknowledged write for 2 s, the echo 4 s late), or when woken.
        assert agent.guard_looks - looks <= 3
        assert agent.mode == Mode.ACTIVE


async def test_a_woken_guard_still_isolates_a_cut_off_agent_on_time() -> None:
    rig = Rig()
    async with running(rig.agent(**QUIET)) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        rig.nodes.failing_writes = True  # no heartbeat is acknowledged from now on
        cut_off = anyio.current_time()
        await eventually(lambda: agent.mode == Mode.ISOLATED, within=4)
        # At isolated_after after the last acknowledged write (at most a heartbeat
        # before the cut), not a look later.
        assert anyio.current_time() - cut_off <= 2.0 + 0.3
        rig.nodes.failing_writes = False
        await eventually(lambda: agent.mode == Mode.ACTIVE, within=4)


async def test_the_echo_is_written_a_few_times_per_staleness_window_not_every_heartbeat() -> None:
    rig = Rig(placements=CountingBucket("placements"))
    placements = rig.placements
    assert isinstance(placements, CountingBucket)
    settings = {"stale_watch_after": 1.0}  # heartbeat 0.05 s (fast_settings)
    async with running(rig.agent(**settings)) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        before, watches = placements.echo_writes, agent.watches
        await anyio.sleep(2.0)
        # Every 1.0 / 2.5 = 0.4 s: about 5 in 2 s (40 at one per heartbeat before) ...
        assert 3 <= placements.echo_writes - before <= 7
        # ... and still often enough that the watch never counts as stalled.
        assert agent.watches == watches and agent.mode == Mode.ACTIVE


async def test_an_agent_watches_only_its_own_placements() -> None:
    rig = Rig(placements=CountingBucket("placements"))
    placements = rig.placements
    assert isinstance(placements, CountingBucket)
    others = [placement(f"web-o{i}", node="node-b") for i in range(3)]
    for other in others[:2]:  # there before the agent starts ...
        await placements.put(names.placement_key("node-b", "default", other.replica), encode(other))
    async with running(rig.agent()) as agent:
        own = placement("web-a1")
        await placements.put(names.placement_key(NODE, "default", own.replica), encode(own))
        later = others[2]  # ... and written while it runs
        await placements.put(names.placement_key("node-b", "default", later.replica), encode(later))
        await eventually(lambda: len(rig.runtime.running(NODE)) == 1)
        assert placements.prefixes and set(placements.prefixes) == {names.placement_prefix(NODE)}
        assert list(agent.placements.items) == [names.placement_key(NODE, "default", "web-a1")]
        assert not rig.runtime.running("node-b")
