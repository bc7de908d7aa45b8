"""The work queue's two lanes: a key added `prompt` (a change in what runs) is not kept
waiting behind a burst of other work; while both lanes hold keys, the workers' time is
shared between them (time-fair, so neither starves); a key is queued once, in one lane."""

from __future__ import annotations

import anyio
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from corral.contract.codec import encode
from corral.natsio.controller import ChangeFeed, Controller, Result, owners
from corral.natsio.kv import Entry, MemoryBucket, Mirror
from corral.natsio.workqueue import WorkQueue
from tests.unit.test_controller_workqueue import FakeClock, unique_name


class Pod(msgspec.Struct, frozen=True):
    owner: str


async def take(queue: WorkQueue, clock: FakeClock, seconds: float) -> str:
    """A worker takes the next key and spends `seconds` of the clock on it."""
    key = await queue.get()
    clock.advance(seconds)
    queue.done(key)
    return key


async def test_a_prompt_key_is_taken_before_the_keys_queued_ahead_of_it() -> None:
    queue = WorkQueue(unique_name())
    queue.add_all(["burst-1", "burst-2", "burst-3"])
    queue.add("web", prompt=True)
    assert len(queue) == 4 and queue.prompt_waiting() == 1
    assert [await queue.get() for _ in range(4)] == ["web", "burst-1", "burst-2", "burst-3"]


async def test_cheap_prompt_keys_get_the_time_one_long_key_took_then_the_burst_goes_on() -> None:
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    queue.add_all(f"burst-{n}" for n in range(3))
    queue.add_all((f"status-{n}" for n in range(150)), prompt=True)
    assert await take(queue, clock, 0.01) == "status-0"  # even: the prompt lane first
    assert await take(queue, clock, 1.0) == "burst-0"  # placing a thousand replicas
    taken = [await take(queue, clock, 0.01) for _ in range(101)]
    # the second of the burst waits until the statuses have had that second too
    assert taken[:100] == [f"status-{n}" for n in range(1, 101)]
    assert taken[100] == "burst-1"


async def test_while_both_lanes_hold_long_keys_they_take_turns() -> None:
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    queue.add_all(["n1", "n2", "n3"])
    queue.add_all(["p1", "p2", "p3"], prompt=True)
    taken = [await take(queue, clock, 1.0) for _ in range(6)]
    assert taken == ["p1", "n1", "p2", "n2", "p3", "n3"]


async def test_a_prompt_lane_busy_all_along_leaves_the_other_lane_its_half() -> None:
    """A storm of status changes (each key added again as it is done) never starves the
    keys of the other lane."""
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    queue.add_all([f"n{n}" for n in range(5)])
    storm = [f"p{n}" for n in range(5)]
    queue.add_all(storm, prompt=True)
    normal_taken: list[str] = []
    for _ in range(40):
        key = await take(queue, clock, 0.5)
        if key in storm:
            queue.add(key, prompt=True)  # its status changed again
        else:
            normal_taken.append(key)
    assert normal_taken == [f"n{n}" for n in range(5)]


async def test_a_key_added_prompt_while_it_waits_in_the_other_lane_moves_to_the_prompt_lane() -> (
    None
):
    """In a busy cluster every Deployment waits in the normal lane for its own changes: a
    node lost must still get its Deployments decided at the next turn."""
    queue = WorkQueue(unique_name())
    queue.add_all(["a", "b", "c"])
    queue.add("b", prompt=True)  # moves
    queue.add("c")  # stays
    assert len(queue) == 3 and queue.prompt_waiting() == 1
    assert [await queue.get() for _ in range(3)] == ["b", "a", "c"]
    assert len(queue) == 0


async def test_a_key_in_the_prompt_lane_stays_there_when_added_without() -> None:
    queue = WorkQueue(unique_name())
    queue.add("a")
    queue.add("b", prompt=True)
    queue.add("b")
    assert len(queue) == 2 and queue.prompt_waiting() == 1
    assert [await queue.get(), await queue.get()] == ["b", "a"]


async def test_a_moved_key_is_handed_out_once_even_when_added_again_after() -> None:
    """The entry a key left in the normal lane when it moved is void: taken from the
    prompt lane and added again, the key is handed out once more, not twice."""
    queue = WorkQueue(unique_name())
    queue.add_all(["a", "b"])
    queue.add("b", prompt=True)
    assert await queue.get() == "b"
    queue.done("b")
    queue.add("b")  # behind a
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]
    assert len(queue) == 0 and queue.head_age() == 0.0


async def test_a_prompt_key_added_while_processed_is_queued_again_in_the_prompt_lane() -> None:
    queue = WorkQueue(unique_name())
    queue.add("web")
    assert await queue.get() == "web"
    queue.add("burst")
    queue.add("web", prompt=True)
    assert queue.prompt_waiting() == 0  # not handed out twice while processed
    queue.done("web")
    assert queue.prompt_waiting() == 1
    assert await queue.get() == "web"


async def test_depth_and_head_age_count_both_lanes() -> None:
    clock = FakeClock()
    name = unique_name()
    queue = WorkQueue(name, clock=clock)
    queue.add("status", prompt=True)
    clock.advance(2.0)
    queue.add("burst")
    clock.advance(1.0)
    assert REGISTRY.get_sample_value("corral_workqueue_depth", {"name": name}) == 2
    assert REGISTRY.get_sample_value("corral_workqueue_prompt_depth", {"name": name}) == 1
    assert queue.head_age() == 3.0  # the prompt lane's head waited longest


async def test_a_feed_watched_prompt_queues_its_keys_in_the_prompt_lane() -> None:
    async def reconcile(key: str) -> None:
        return None

    controller = Controller(unique_name(), reconcile)
    statuses = Mirror(MemoryBucket("statuses"), Pod)
    specs = Mirror(MemoryBucket("specs"), Pod)
    controller.watch(ChangeFeed(statuses), owners(lambda key, pod: pod.owner), prompt=True)
    controller.watch(ChangeFeed(specs))
    specs.apply(Entry("burst", encode(Pod(owner="")), 1))
    statuses.apply(Entry("web-1", encode(Pod(owner="web")), 1))
    assert len(controller.queue) == 2 and controller.queue.prompt_waiting() == 1
    assert await controller.queue.get() == "web"
    controller.enqueue("burst-2", prompt=True)
    controller.enqueue_all(["burst-3"], prompt=True)
    assert controller.queue.prompt_waiting() == 2


# --- the property -----------------------------------------------------------------------

# One step of a single worker: keys added (which, in which lane), then the next key
# taken and processed for some time.
_steps = st.lists(
    st.tuples(
        st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=4),
        st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps=_steps)
async def test_every_key_is_taken_once_per_wait_and_the_lanes_share_the_time(
    steps: list[tuple[list[tuple[str, bool]], float]],
) -> None:
    """Whatever is added in whichever lane: a key waits once, in the prompt lane once
    added there; every key added is taken; while both lanes hold keys the prompt lane
    has the turn exactly when it is not ahead in time (its balance kept over the keys
    taken while both held keys, bounded by the longest of them)."""
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    waiting: set[str] = set()
    lane_of: dict[str, bool] = {}
    ahead = 0.0  # the prompt lane's seconds less the other's, as the rule keeps them
    longest = 0.0
    for adds, seconds in steps:
        for key, prompt in adds:
            if key not in waiting or prompt:  # a prompt add moves a waiting key
                lane_of[key] = prompt or (key in waiting and lane_of[key])
            waiting.add(key)
            queue.add(key, prompt=prompt)
        assert len(queue) == len(waiting)
        assert queue.prompt_waiting() == sum(lane_of[k] for k in waiting)
        if not waiting:
            continue
        both = queue.prompt_waiting() not in (0, len(queue))
        key = await queue.get()
        assert key in waiting
        waiting.discard(key)
        if both:
            assert lane_of[key] == (ahead <= 0)
        began = clock.now
        clock.advance(seconds)
        queue.done(key)
        took = clock.now - began  # as the queue reads it off the clock
        if both:  # a lane alone owes the other nothing
            longest = max(longest, took)
            ahead += took if lane_of[key] else -took
            ahead = max(-longest, min(longest, ahead))
    with anyio.fail_after(5):  # drained: every key added is handed out (a lost one hangs)
        while waiting:
            waiting.discard(await queue.get())
    assert len(queue) == 0


async def test_a_lane_whose_keys_come_one_at_a_time_does_not_starve_the_other() -> None:
    """Long prompt keys that arrive one at a time (the prompt lane empty after each)
    still leave the busy normal lane about half of the workers' time."""
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    queue.add_all(f"n{n}" for n in range(1000))
    spent = {True: 0.0, False: 0.0}
    for n in range(400):
        if queue.prompt_waiting() == 0 and n % 2 == 0:
            queue.add(f"p{n}", prompt=True)  # one at a time
        key = await queue.get()
        prompt = key.startswith("p")
        took = 10.0 if prompt else 0.1
        clock.advance(took)
        queue.done(key)
        spent[prompt] += took
    assert spent[False] >= 0.45 * (spent[True] + spent[False])


async def test_a_feed_may_queue_only_some_changes_in_the_prompt_lane() -> None:
    async def reconcile(key: str) -> None:
        return None

    controller = Controller(unique_name(), reconcile)
    statuses = Mirror(MemoryBucket("statuses"), Pod)
    controller.watch(
        ChangeFeed(statuses),
        owners(lambda key, pod: pod.owner),
        prompt=lambda key, old, new: new is not None and new.owner == "urgent",
    )
    statuses.apply(Entry("w-1", encode(Pod(owner="web")), 1))
    statuses.apply(Entry("u-1", encode(Pod(owner="urgent")), 2))
    assert len(controller.queue) == 2 and controller.queue.prompt_waiting() == 1
    assert await controller.queue.get() == "urgent"


async def test_a_prompt_keys_retry_and_requeue_go_back_to_the_prompt_lane() -> None:
    """A key taken from the prompt lane that fails (back-off) or asks to be looked at
    again (requeue_after) comes back in the prompt lane, not behind the burst."""
    clock = FakeClock()

    async def reconcile(key: str) -> Result | None:
        if key == "fails":
            raise RuntimeError("a conflict")
        if key == "deadline":  # a timer of its own: not urgent
            return Result(requeue_after=1.0, prompt=False)
        return Result(requeue_after=1.0)

    controller = Controller(unique_name(), reconcile, clock=clock)
    queue = controller.queue
    controller.enqueue("burst")
    controller.enqueue_all(["again", "fails", "deadline"], prompt=True)
    for _ in range(3):  # the prompt lane's first
        key = await queue.get()
        await controller.process(key)
        queue.done(key)
    clock.advance(60.0)  # every delay has passed
    taken = [await queue.get() for _ in range(4)]
    assert sorted(taken[:2]) == ["again", "fails"]
    assert sorted(taken[2:]) == ["burst", "deadline"]
    assert queue.prompt_waiting() == 0


async def test_a_lane_alone_saves_up_no_credit_against_the_other() -> None:
    """Long keys in one lane while the other is empty leave no debt behind: a key of the
    other lane that arrives later is not kept waiting for them."""
    clock = FakeClock()
    queue = WorkQueue(unique_name(), clock=clock)
    for n in range(3):  # the prompt lane alone, 30 s each
        queue.add(f"p{n}", prompt=True)
        assert await take(queue, clock, 30.0) == f"p{n}"
    queue.add_all(["n1", "n2"])
    queue.add("p3", prompt=True)
    assert await take(queue, clock, 1.0) == "p3"  # even: the prompt lane goes first
    assert await take(queue, clock, 1.0) == "n1"
