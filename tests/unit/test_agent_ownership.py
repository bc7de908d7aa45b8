"""Whose containers an agent may touch: cluster identity, a store it does not
recognise, operator decisions, hung engines, failing removals, renamed, refused and
displaced agents (docs/safety.md). Hollow runtime and in-memory buckets."""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import NodeDecision
from corral.contract.state import Node, NodeCapacity, ReplicaState
from corral_node_agent import main as main_module
from corral_node_agent.agent import NodeAgent
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.local_record import LocalRecord, LocalRecordFile
from corral_node_agent.main import REMOVE_ALL_MOST_GRACE, build_parser, remove_all
from corral_node_agent.node_record import NodeNameTaken
from corral_node_agent.offline import stop_if_never_started
from corral_node_agent.runtime import ENGINE_DEFAULT_GRACE_SECONDS, ContainerSpec
from corral_node_agent.safety import Budget, Mode
from tests.unit.agent_helpers import CLUSTER_ID, NODE, cluster_bucket, placement
from tests.unit.test_agent_loop import IMAGE, eventually, state_of
from tests.unit.test_agent_safety import Rig, keep_writing, passes_after, raised, running

OLD_CLUSTER = "0123456789abcdef"


async def made_by(
    runtime: HollowRuntime,
    replica: str,
    *,
    cluster: str = CLUSTER_ID,
    node: str = NODE,
    deployment: str = "web",
) -> str:
    """A running container as an agent of `cluster` and `node` made it."""
    p = placement(replica, deployment=deployment)
    container_id = await runtime.create_container(
        ContainerSpec(
            name=f"made-{cluster}-{node}-{replica}",
            image=IMAGE,
            labels={
                names.LABEL_MANAGED: "true",
                names.LABEL_CLUSTER: cluster,
                names.LABEL_NODE: node,
                names.LABEL_DEPLOYMENT: deployment,
                names.LABEL_REPLICA: replica,
                names.LABEL_TEMPLATE_HASH: p.template_hash,
            },
        )
    )
    await runtime.start_container(container_id)
    return container_id


def belonging_to(tmp_path: Path, cluster_id: str) -> Path:
    """A state dir whose local record says this node belongs to `cluster_id`."""
    LocalRecordFile(tmp_path).save(LocalRecord(node=NODE, cluster_id=cluster_id))
    return tmp_path


def stored_node(rig: Rig) -> Node:
    node = rig.world().node()
    assert node is not None
    return node


# Cluster identity.


async def test_containers_of_another_cluster_on_the_engine_are_left_alone_and_counted() -> None:
    rig = Rig()
    theirs = await made_by(rig.runtime, "web-zz", cluster=OLD_CLUSTER)
    async with running(rig.agent()) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        await passes_after(agent)
        await eventually(lambda: stored_node(rig).foreign_containers == 1)
    assert theirs in rig.runtime.containers and rig.runtime.removes == 0


async def test_the_first_store_an_agent_reads_becomes_its_cluster(tmp_path: Path) -> None:
    rig = Rig(state_dir=tmp_path)
    async with running(rig.agent()) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
    record = LocalRecordFile(tmp_path).load()
    assert record is not None and record.cluster_id == CLUSTER_ID


async def test_a_store_of_another_cluster_holds_the_agent_and_nothing_is_touched(
    tmp_path: Path,
) -> None:
    # The store was lost and made anew: its cluster id is not the one this node recorded.
    rig = Rig(state_dir=belonging_to(tmp_path, OLD_CLUSTER))
    ours = await made_by(rig.runtime, "web-a1", cluster=OLD_CLUSTER)
    await rig.world().place(placement("web-b2"))
    async with running(rig.agent()) as agent:
        await eventually(lambda: agent.mode == Mode.HELD)
        await passes_after(agent)
        node = stored_node(rig)
        assert node.mode == "Held" and not node.ready
        assert "corral node adopt" in node.message and OLD_CLUSTER in node.message
        assert "Held" in rig.events.reasons()
    assert ours in rig.runtime.containers
    assert rig.runtime.removes == 0 and rig.runtime.creates == 1  # only made_by's


async def test_a_store_without_an_identity_holds_the_agent(tmp_path: Path) -> None:
    rig = Rig(state_dir=belonging_to(tmp_path, CLUSTER_ID))
    ours = await made_by(rig.runtime, "web-a1")
    await rig.cluster.delete(names.CLUSTER_KEY)  # purged: an empty store says "remove all"
    # A lost identity is believed after three reads (about 1 s): F must be well above
    # that, as the real one (20 s) is; the unit tests' 1 s is not.
    async with running(rig.agent(budget=Budget(isolated_after=0.3, stop_after=5.0))) as agent:
        await eventually(lambda: agent.mode == Mode.HELD)
        await passes_after(agent)
        await eventually(lambda: "no cluster identity" in stored_node(rig).message)
    assert ours in rig.runtime.containers and rig.runtime.removes == 0


async def test_a_store_swapped_under_a_running_agent_holds_it(tmp_path: Path) -> None:
    rig = Rig(state_dir=tmp_path)
    world = rig.world()
    await world.place(placement("web-a1"))
    async with running(rig.agent()) as agent:
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        # The store is lost and made anew: a new identity, no placements.
        await rig.cluster.put(
            names.CLUSTER_KEY, cluster_bucket(OLD_CLUSTER).items[names.CLUSTER_KEY].value or b""
        )
        await eventually(lambda: agent.mode == Mode.HELD)
        await world.unplace("web-a1")
        await passes_after(agent)
    assert len(rig.runtime.running(NODE)) == 1 and rig.runtime.removes == 0


# Operator decisions.


async def test_adopt_keeps_the_old_containers_as_orphans_until_a_placement_claims_them(
    tmp_path: Path,
) -> None:
    rig = Rig(state_dir=belonging_to(tmp_path, OLD_CLUSTER))
    world = rig.world()
    kept = await made_by(rig.runtime, "web-a1", cluster=OLD_CLUSTER)
    async with running(rig.agent()) as agent:
        await eventually(lambda: agent.mode == Mode.HELD)
        reply = await agent.decide("adopt", encode(NodeDecision(node=NODE)))
        assert reply.ok, reply.error
        assert OLD_CLUSTER in reply.message and "orphans" in reply.message
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        await eventually(lambda: [o.replica for o in stored_node(rig).orphans] == ["web-a1"])
        assert kept in rig.runtime.containers  # not placed, and still not removed

        await world.place(placement("web-a1"))  # a Deployment claims it
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        await eventually(lambda: stored_node(rig).orphans == [])
        status = world.status("web-a1")
        assert status is not None and status.container_id == kept  # the same container
    record = LocalRecordFile(tmp_path).load()
    assert record is not None and record.cluster_id == CLUSTER_ID
    assert record.adopted == [OLD_CLUSTER]


async def test_reset_removes_the_old_clusters_containers_and_resumes(tmp_path: Path) -> None:
    rig = Rig(state_dir=belonging_to(tmp_path, OLD_CLUSTER))
    world = rig.world()
    old = await made_by(rig.runtime, "web-a1", cluster=OLD_CLUSTER)
    foreign = await made_by(rig.runtime, "web-zz", cluster="fedcba9876543210")
    await world.place(placement("web-b2"))
    async with running(rig.agent()) as agent:
        await eventually(lambda: agent.mode == Mode.HELD)
        reply = await agent.decide("reset", encode(NodeDecision(node=NODE)))
        assert reply.ok and "removed 1 containers" in reply.message
        await eventually(lambda: state_of(world, "web-b2") == ReplicaState.RUNNING)
    assert old not in rig.runtime.containers and foreign in rig.runtime.containers


@pytest.mark.parametrize(
    ("verb", "payload", "error"),
    [
        ("adopt", b"{}", "node"),
        ("adopt", b'{"node": "other-node"}', "not 'other-node'"),
        ("adopt", b'{"node": "node-a", "clusterId": "nope"}', "clusterId"),
        ("adopt", b"[[[", "invalid NodeDecision"),
        ("eject", b'{"node": "node-a"}', "unknown decision"),
        ("adopt", b'{"node": "node-a"}', "already belongs"),
        ("reset", b'{"node": "node-a", "clusterId": "0123456789abcdef"}', "never touches"),
    ],
)
async def test_a_bad_decision_is_refused_and_changes_nothing(
    verb: str, payload: bytes, error: str
) -> None:
    rig = Rig()
    ours = await made_by(rig.runtime, "web-a1", cluster=OLD_CLUSTER)
    async with running(rig.agent()) as agent:
        await eventually(lambda: agent.mode == Mode.ACTIVE)
        reply = await agent.decide(verb, payload)
        assert not reply.ok and error in reply.error
    assert ours in rig.runtime.containers and agent.adopted == frozenset()


# The engine and removals.


async def test_heartbeats_never_wait_on_a_hanging_engine() -> None:
    class HangingRuntime(HollowRuntime):
        async def ping(self) -> None:
            await anyio.sleep_forever()

    rig = Rig(runtime=HangingRuntime(images={IMAGE}))
    async with running(rig.agent()) as agent:
        first = agent.record.revision or 0
        await eventually(lambda: (agent.record.revision or 0) >= first + 5)
        assert agent.mode != Mode.ISOLATED


async def test_a_container_that_cannot_be_removed_does_not_stop_the_node() -> None:
    rig = Rig()
    world = rig.world()
    stuck = await made_by(rig.runtime, "old-x1")
    rig.runtime.unremovable.add(stuck)
    await world.place(placement("web-a1"))
    async with running(rig.agent()) as agent:
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        await eventually(lambda: stored_node(rig).failing_removals == 1)
        removes = rig.runtime.removes
        await passes_after(agent, 3)
        rig.runtime.unremovable.clear()
        await eventually(lambda: stuck not in rig.runtime.containers)
        await eventually(lambda: stored_node(rig).failing_removals == 0)
    assert removes == 0


# Renamed, refused and displaced agents.


def node_record(agent_id: str, engine_id: str, name: str = NODE) -> bytes:
    return encode(
        Node(
            name=name,
            capacity=NodeCapacity(cpu_millis=1000, memory_bytes=2**30),
            agent_id=agent_id,
            engine_id=engine_id,
        )
    )


async def test_leftovers_of_a_node_that_ran_on_this_engine_before_are_removed() -> None:
    rig = Rig()
    renamed = await made_by(rig.runtime, "web-r1", node="old-name")
    await rig.nodes.put("old-name", node_record("gone", rig.runtime.engine_id, "old-name"))
    elsewhere = await made_by(rig.runtime, "web-e1", node="shared-engine")
    await rig.nodes.put("shared-engine", node_record("x", "another-engine", "shared-engine"))
    alive = await made_by(rig.runtime, "web-l1", node="live-one")
    released = await made_by(rig.runtime, "web-x1", node="released-one")  # no record
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            keep_writing,
            rig.nodes,
            node_record("live", rig.runtime.engine_id, "live-one"),
            "live-one",
        )
        async with running(rig.agent()) as agent:
            with anyio.fail_after(5):
                while {renamed, released} & set(rig.runtime.containers):  # R' is 0.5 s here
                    await passes_after(agent)
        tg.cancel_scope.cancel()
    assert elsewhere in rig.runtime.containers and alive in rig.runtime.containers


async def test_refused_by_a_live_agent_on_another_engine_it_removes_its_copies() -> None:
    rig = Rig()
    copy = await made_by(rig.runtime, "web-a1")
    with pytest.raises(BaseException) as caught:
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_writing, rig.nodes, node_record("other", "another-engine"))
            async with running(rig.agent()):
                pass
    assert raised(caught.value, NodeNameTaken) is not None
    assert copy not in rig.runtime.containers


async def test_displaced_by_an_agent_on_another_engine_it_removes_its_copies() -> None:
    rig = Rig()
    world = rig.world()
    await world.place(placement("web-a1"))
    async with running(rig.agent()) as agent:
        await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
        async with anyio.create_task_group() as tg:  # the other agent lives
            tg.start_soon(keep_writing, rig.nodes, node_record("other", "another-engine"))
            await eventually(lambda: agent.mode == Mode.RETIRED)
            await eventually(lambda: not rig.runtime.containers)
            tg.cancel_scope.cancel()


async def test_a_restarted_agent_that_never_reaches_nats_stops_its_replicas_at_f(
    tmp_path: Path,
) -> None:
    rig = Rig(state_dir=belonging_to(tmp_path, CLUSTER_ID))
    ours = await made_by(rig.runtime, "web-a1")
    foreign = await made_by(rig.runtime, "web-zz", cluster=OLD_CLUSTER)
    rig.cluster.failing_gets = True  # every read and write times out
    rig.nodes.failing_gets = True
    rig.nodes.failing_writes = True
    async with anyio.create_task_group() as tg:
        agent = rig.agent()
        tg.start_soon(agent.run)
        await eventually(lambda: agent.mode == Mode.STOPPING)
        await eventually(lambda: ours not in rig.runtime.containers)
        tg.cancel_scope.cancel()
    assert foreign in rig.runtime.containers


async def claimed_after_adopt(rig: Rig, agent: NodeAgent, kept: str) -> None:
    world = rig.world()
    await eventually(lambda: agent.mode == Mode.HELD)
    assert (await agent.decide("adopt", encode(NodeDecision(node=NODE)))).ok
    await world.place(placement("web-a1"))
    await eventually(lambda: state_of(world, "web-a1") == ReplicaState.RUNNING)
    await eventually(lambda: kept in agent.membership.claimed)


async def test_a_claimed_adopted_container_goes_when_it_is_unplaced(tmp_path: Path) -> None:
    rig = Rig(state_dir=belonging_to(tmp_path, OLD_CLUSTER))
    kept = await made_by(rig.runtime, "web-a1", cluster=OLD_CLUSTER)
    async with running(rig.agent()) as agent:
        await claimed_after_adopt(rig, agent, kept)
        await rig.world().unplace("web-a1")  # scaled down: no orphan again, gone
        await eventually(lambda: kept not in rig.runtime.containers)


async def test_a_claimed_adopted_container_is_stopped_at_f_like_any_own(tmp_path: Path) -> None:
    rig = Rig(state_dir=belonging_to(tmp_path, OLD_CLUSTER))
    kept = await made_by(rig.runtime, "web-a1", cluster=OLD_CLUSTER)
    async with running(rig.agent()) as agent:
        await claimed_after_adopt(rig, agent, kept)
        rig.nodes.failing_writes = True
        await eventually(lambda: agent.mode == Mode.STOPPING)
        await eventually(lambda: kept not in rig.runtime.containers)
    record = LocalRecordFile(tmp_path).load()
    assert record is not None and record.claimed == [kept]


async def test_an_agent_that_never_reaches_nats_stops_its_own_replicas_at_f(
    tmp_path: Path,
) -> None:
    runtime = HollowRuntime(images={IMAGE})
    ours = await made_by(runtime, "web-a1")
    foreign = await made_by(runtime, "web-zz", cluster=OLD_CLUSTER)
    local = LocalRecordFile(belonging_to(tmp_path, CLUSTER_ID))
    never = anyio.Event()
    removed = await stop_if_never_started(
        runtime, local, NODE, never, stop_after=0.2, counting_from=time.monotonic()
    )
    assert removed == 1
    assert ours not in runtime.containers and foreign in runtime.containers


async def test_an_agent_that_reached_nats_in_time_leaves_the_stopping_to_its_guard(
    tmp_path: Path,
) -> None:
    runtime = HollowRuntime(images={IMAGE})
    ours = await made_by(runtime, "web-a1")
    started = anyio.Event()
    started.set()
    local = LocalRecordFile(belonging_to(tmp_path, CLUSTER_ID))
    removed = await stop_if_never_started(
        runtime, local, NODE, started, stop_after=0.2, counting_from=time.monotonic()
    )
    assert removed == 0 and ours in runtime.containers


# --- corral down --remove-replicas: the agent's --remove-all ---------------------------------


def remove_all_args(state_dir: Path) -> argparse.Namespace:
    flags = ["--node-name", NODE, "--runtime", "hollow", "--state-dir", str(state_dir)]
    return build_parser().parse_args([*flags, "--remove-all"])


async def test_remove_all_stops_each_own_replica_with_its_own_grace_and_leaves_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`corral down --remove-replicas`: this node's containers of its cluster go, each
    stopped with its own grace period (not the fenced cap; at most REMOVE_ALL_MOST_GRACE);
    another cluster's on the same engine, another node's and a container corral never
    made stay. Nothing is written in the state dir."""
    runtime = HollowRuntime(images={IMAGE})
    ours = await made_by(runtime, "web-a1")
    patient = await runtime.create_container(
        ContainerSpec(
            name="corral-db-b2",
            image=IMAGE,
            stop_timeout=3600,
            labels={
                names.LABEL_MANAGED: "true",
                names.LABEL_CLUSTER: CLUSTER_ID,
                names.LABEL_NODE: NODE,
                names.LABEL_DEPLOYMENT: "db",
                names.LABEL_REPLICA: "db-b2",
                names.LABEL_TEMPLATE_HASH: "h",
            },
        )
    )
    await runtime.start_container(patient)
    exited = await made_by(runtime, "web-c3")
    await runtime.kill_container(exited)
    other_cluster = await made_by(runtime, "web-zz", cluster=OLD_CLUSTER)
    other_node = await made_by(runtime, "web-yy", node="node-b")
    stranger = await runtime.create_container(ContainerSpec(name="someones-db", image=IMAGE))
    state_dir = belonging_to(tmp_path, CLUSTER_ID)
    written = sorted(state_dir.iterdir())
    monkeypatch.setattr(main_module, "build_runtime", lambda args: runtime)
    going = {i: runtime.containers[i].spec.name for i in (ours, patient, exited)}
    out = io.StringIO()
    assert await remove_all(remove_all_args(state_dir), out) == 0
    assert sorted(out.getvalue().splitlines()) == sorted(
        f"removed {name} ({i[:12]})" for i, name in going.items()
    )
    assert set(runtime.containers) == {other_cluster, other_node, stranger}
    assert sorted(state_dir.iterdir()) == written  # no agent id made, nothing else
    # Each running one got its stop signal and its own grace, not the fenced 2 s; an
    # hour's capped.
    assert sorted((replica, grace) for replica, _, grace in runtime.stops) == [
        ("db-b2", REMOVE_ALL_MOST_GRACE),
        ("web-a1", float(ENGINE_DEFAULT_GRACE_SECONDS)),  # made without a StopTimeout
    ]


async def test_remove_all_without_a_cluster_removes_nothing_and_an_unreadable_record_fails(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    assert await remove_all(remove_all_args(tmp_path / "never"), out) == 0
    assert out.getvalue() == f"node {NODE} never belonged to a cluster: no container is its own\n"
    broken = tmp_path / "broken"
    belonging_to(broken, CLUSTER_ID)
    for record in broken.iterdir():
        record.write_text("{not json")
    assert await remove_all(remove_all_args(broken), io.StringIO()) == 1
