"""Rancher's containers (docs/containers.md): a Deployment of one replica with
replacement "Never" keeps its placement on a lost node (a "Fast" one is placed again),
the agent honours the template's restartPolicy, and the contract's rules."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.specs import (
    CONTAINER_LABEL,
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    ObjectMeta,
)
from corral.contract.state import Node, NodeCapacity, Placement, ReplicaState
from corral.contract.time_budget import ENGINE_DOWN_EVICTION_SECONDS, NODE_LOST_AFTER_STOP_SECONDS
from corral_node_agent.backoff import restarts_after_exit
from corral_node_agent.diff import StartContainer, plan_actions
from corral_node_agent.replica_status import replica_status
from corral_node_agent.runtime import ContainerState
from corral_scheduler.decide import Usage, schedule, schedule_deployment
from corral_scheduler.snapshot import PlacedReplica, Snapshot
from tests.unit.agent_helpers import container

NOW = 1000.0
GiB = 2**30


def spec(replacement: str, policy: str = "Always") -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="web", generation=1, labels={CONTAINER_LABEL: "true"}),
        spec=DeploymentSpec(
            replicas=1,
            replacement=replacement,  # type: ignore[arg-type]
            template=ContainerTemplate(image="app:1", restart_policy=policy),  # type: ignore[arg-type]
        ),
    )


def placed(d: Deployment, node: str) -> Placement:
    template = d.spec.template
    return Placement(
        replica="web-1",
        deployment="web",
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


def lost_node_view(d: Deployment, *, released: bool = False, engine_down: bool = False) -> Snapshot:
    nodes = {
        name: Node(
            name=name,
            capacity=NodeCapacity(cpu_millis=4000, memory_bytes=GiB),
            ready=not (engine_down and name == "dead"),
        )
        for name in ("dead", "alive")
    }
    now = NOW + (ENGINE_DOWN_EVICTION_SECONDS + 1 if engine_down else 0)
    silent_since = now - 1 if engine_down else NOW - NODE_LOST_AFTER_STOP_SECONDS - 5
    p = placed(d, "dead")
    return Snapshot(
        deployments={d.key: d},
        nodes=nodes,
        node_last_seen={"dead": silent_since, "alive": now - 1},
        node_not_ready_since={"dead": NOW - 1} if engine_down else {},
        placements={p.key: PlacedReplica(placement=p, revision=1)},
        released=frozenset({"dead"}) if released else frozenset(),
    )


def whole(view: Snapshot, now: float = NOW) -> tuple[list[str], list[str]]:
    counter = itertools.count()
    plan = schedule(view, now, wall_time=5.0, new_suffix=lambda: f"{next(counter):05d}")
    return [s.key for s in plan.stop], [p.node for p in plan.place]


def one(view: Snapshot, now: float = NOW) -> tuple[list[str], list[str]]:
    counter = itertools.count()
    plan = schedule_deployment(
        view,
        "default.web",
        now,
        usage={"dead": Usage(pods=1), "alive": Usage()},
        taken_names={"web-1"},
        ready_nodes={"alive"},
        wall_time=5.0,
        new_suffix=lambda: f"{next(counter):05d}",
    )
    return [s.key for s in plan.stop], [p.node for p in plan.place]


@pytest.mark.parametrize("decide", [whole, one])
def test_a_never_replica_on_a_lost_node_keeps_its_placement_and_is_not_placed_again(
    decide: object,
) -> None:
    assert callable(decide)
    assert decide(lost_node_view(spec("Never"))) == ([], [])


@pytest.mark.parametrize("decide", [whole, one])
def test_a_fast_replica_on_a_lost_node_is_stopped_and_placed_on_another_node(
    decide: object,
) -> None:
    assert callable(decide)
    assert decide(lost_node_view(spec("Fast"))) == (["dead.default.web-1"], ["alive"])


def test_a_never_replica_stays_on_a_node_whose_engine_is_down() -> None:
    now = NOW + ENGINE_DOWN_EVICTION_SECONDS + 1
    assert whole(lost_node_view(spec("Never"), engine_down=True), now) == ([], [])
    assert whole(lost_node_view(spec("Fast"), engine_down=True), now)[0] == ["dead.default.web-1"]


def test_a_never_replica_moves_only_when_an_operator_releases_its_node() -> None:
    assert whole(lost_node_view(spec("Never"), released=True)) == (
        ["dead.default.web-1"],
        ["alive"],
    )


def test_replacement_never_allows_at_most_one_replica_naming_the_field() -> None:
    raw = msgspec.json.encode(
        {
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 2, "replacement": "Never", "template": {"image": "app:1"}},
        }
    )
    with pytest.raises(InvalidPayload) as refused:
        decode_payload(raw, Deployment)
    assert "replicas" in refused.value.message


def test_a_bad_restart_policy_is_refused_naming_the_field() -> None:
    raw = msgspec.json.encode({"image": "app:1", "restartPolicy": "Sometimes"})
    with pytest.raises(InvalidPayload) as refused:
        decode_payload(raw, ContainerTemplate)
    assert "restartPolicy" in f"{refused.value.field} {refused.value.message}"


def test_the_default_restart_policy_leaves_a_template_hash_as_it_was() -> None:
    assert (
        ContainerTemplate(image="app:1").template_hash()
        == ContainerTemplate(image="app:1", restart_policy="Always").template_hash()
    )
    assert b"restartPolicy" not in msgspec.json.encode(ContainerTemplate(image="app:1"))


@pytest.mark.parametrize(
    ("policy", "exit_code", "restarted"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 1, True),
        ("Never", 0, False),
        ("Never", 1, False),
    ],
)
def test_the_agent_restarts_an_exited_container_as_its_restart_policy_says(
    policy: str, exit_code: int, restarted: bool
) -> None:
    assert restarts_after_exit(policy, exit_code) is restarted  # type: ignore[arg-type]
    p = placed(spec("Never", policy), "node-1")
    exited = container(
        "web-1",
        state=ContainerState.EXITED,
        exit_code=exit_code,
        template_hash=p.template_hash,
        started_at=990.0,
        finished_at=999.0,
    )
    plan = plan_actions({"web-1": p}, [exited], {}, set(), NOW)
    if restarted:
        assert plan.actions == [StartContainer("web-1", p, exited.id, restart=True)]
        return
    assert plan.actions == []
    assert plan.wake_at is None  # no back-off runs: nothing is due
    track = plan.tracks["web-1"]
    assert (track.restarts, track.exit_code) == (0, exit_code)
    # Later passes, the same exit seen again: still nothing, still Exited (no crash loop).
    later = plan_actions({"web-1": p}, [exited], plan.tracks, set(), NOW + 120)
    assert later.actions == [] and later.wake_at is None
    status = replica_status(p, later.kept["web-1"], later.tracks["web-1"], NOW + 120)
    assert status.state == ReplicaState.EXITED
    assert status.exit_code == exit_code
    assert f"restartPolicy {policy}" in status.message
