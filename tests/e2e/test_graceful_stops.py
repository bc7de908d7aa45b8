"""Graceful stops against the local Docker engine (docs/rollouts.md, "Graceful stops"):
the template's stopSignal and terminationGracePeriodSeconds reach the container, no
signal is sent before the replica's drain record, a trap that exits within the grace is
not killed, one that ignores the signal is killed once the grace has passed.

The container's shell traps the signal and exits with a code of its own (the marker);
what the engine did is read back from its events (`kill` with the signal, `die` with
the exit code), kept by the engine after the container is removed."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.network_state import ReplicaDrain
from corral.contract.specs import ContainerTemplate
from corral.contract.state import Placement, ReplicaState
from corral.natsio.kv import NatsBucket
from corral.natsio.lease import LeaseRecord, lease_key
from tests.e2e.conftest import AgentFactory
from tests.e2e.test_agent_docker import (
    containers_of,
    docker,
    eventually,
    passes_after,
    place,
    running_ids,
    state_is,
    unique,
)

pytestmark = pytest.mark.docker

INT_EXIT, TERM_EXIT = 42, 43


def trapping(node: str, replica: str, image: str, *, on_int: str, grace: int) -> Placement:
    """A shell that traps SIGINT (its stop signal) with `on_int`, and TERM with exit 43."""
    script = f"trap '{on_int}' INT; trap 'exit {TERM_EXIT}' TERM; sleep 3600 & wait; wait"
    template = ContainerTemplate(
        image=image,
        command=["sh", "-c"],
        args=[script],
        termination_grace_period_seconds=grace,
        stop_signal="SIGINT",
    )
    return Placement(
        replica=replica,
        deployment="web",
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


def engine_events(container_id: str, since: float) -> list[dict[str, Any]]:
    """The engine's kill and die events of the container since `since` (wall clock)."""
    out = docker(
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        f"container={container_id}",
        "--format",
        "{{json .}}",
    )
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in events if e.get("Action") in ("kill", "die")]


def kills(events: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [
        (e["Actor"]["Attributes"].get("signal", ""), e["timeNano"] / 1e9)
        for e in events
        if e["Action"] == "kill"
    ]


def died(events: list[dict[str, Any]]) -> tuple[str, float]:
    [die] = [e for e in events if e["Action"] == "die"]
    return die["Actor"]["Attributes"].get("exitCode", ""), die["timeNano"] / 1e9


@pytest.fixture
async def netmgr_lease(buckets: dict[str, NatsBucket]) -> AsyncIterator[None]:
    """netmgr's lease, held (a record in corral_leases): the agent's stops wait for
    their drain record, as in a cluster where netmgr runs (without it they stop at once)."""
    lease = LeaseRecord(holder="netmgr-e2e", renewed_at=time.time())
    await buckets[names.LEASES_BUCKET].put(lease_key("netmgr"), encode(lease))
    yield
    await buckets[names.LEASES_BUCKET].delete(lease_key("netmgr"))


async def write_drain(buckets: dict[str, NatsBucket], node: str, replica: str) -> None:
    record = ReplicaDrain(node=node, replica=replica, endpoints_revision=1, nodes=1)
    await buckets[names.REPLICA_DRAINS_BUCKET].put(record.key, encode(record))


async def test_the_stop_signal_comes_only_after_the_drain_and_a_prompt_exit_is_never_killed(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    netmgr_lease: None,
) -> None:
    replica = unique("web")
    p = trapping(node_name, replica, test_image, on_int=f"sleep 1; exit {INT_EXIT}", grace=6)
    since = time.time() - 1
    async with agent_running("--drain-timeout", "60", "--resync-seconds", "0.5"):
        await place(buckets, p)
        await eventually(lambda: replica in running_ids(node_name))
        container_id = running_ids(node_name)[replica]
        [made] = containers_of(node_name)
        assert made["Config"]["StopSignal"] == "SIGINT"
        assert made["Config"]["StopTimeout"] == 6
        await buckets[names.PLACEMENTS_BUCKET].delete(p.key)
        await eventually(state_is(buckets, node_name, replica, ReplicaState.TERMINATING))
        await passes_after(3)  # passes go on; the replica waits for its drain record
        assert replica in running_ids(node_name)
        assert engine_events(container_id, since) == []  # no signal at all yet
        drained = time.time()
        await write_drain(buckets, node_name, replica)
        await eventually(lambda: containers_of(node_name) == [])
    events = engine_events(container_id, since)
    signals = kills(events)
    assert [signal for signal, _ in signals] == ["2"]  # SIGINT, never SIGKILL
    assert signals[0][1] >= drained - 0.05
    code, at = died(events)
    assert code == str(INT_EXIT)  # its trap ran
    assert 0.9 <= at - signals[0][1] < 6  # it took its second, within the grace


async def test_a_replica_ignoring_its_stop_signal_is_killed_when_its_grace_ends(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    netmgr_lease: None,
) -> None:
    replica = unique("web")
    p = trapping(node_name, replica, test_image, on_int="", grace=2)  # INT ignored
    since = time.time() - 1
    async with agent_running("--drain-timeout", "60"):
        await place(buckets, p)
        await eventually(lambda: replica in running_ids(node_name))
        container_id = running_ids(node_name)[replica]
        await buckets[names.PLACEMENTS_BUCKET].delete(p.key)
        await eventually(state_is(buckets, node_name, replica, ReplicaState.TERMINATING))
        await write_drain(buckets, node_name, replica)
        await eventually(lambda: containers_of(node_name) == [])
    events = engine_events(container_id, since)
    signals = kills(events)
    assert [signal for signal, _ in signals] == ["2", "9"]  # SIGINT, then SIGKILL
    assert 1.9 <= signals[1][1] - signals[0][1] < 4  # after the grace of 2 s
    code, _ = died(events)
    assert code == "137"
