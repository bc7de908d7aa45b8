"""A real partition of one node agent from NATS, on real Docker, with the timeline.

Node A's agent talks to NATS through a TCP proxy that the test cuts; node B's agent
talks to NATS directly. One replica runs on A. At t = 0 the proxy cuts A off, either
by closing its connections or by silently dropping its traffic (blackhole). Then,
on the time budget (corral.contract.time_budget, docs/time-budget.md):

    Fast       the scheduler replaces the replica on B after R; A removes its copy
               itself at F; two copies overlap for at most F - R
    AfterStop  A removes its copy at F; the replacement starts on B only after R',
               so there is never a moment with two copies

The moments come from the engine's own event log (container start and die times),
not from polling, and are printed as the timeline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from corral.contract import names, time_budget
from tests.agents import running_agent
from tests.conftest import NatsServer, free_port
from tests.e2e.conftest import remove_node_containers
from tests.e2e.test_deployment_lifecycle import corral, running_containers
from tests.integration.scheduler_harness import running_scheduler
from tests.partition_proxy import Mode, partition_proxy
from tests.waiting import eventually

pytestmark = pytest.mark.docker

F = time_budget.CUT_OFF_STOP_SECONDS
R = time_budget.NODE_LOST_SECONDS
R_AFTER_STOP = time_budget.NODE_LOST_AFTER_STOP_SECONDS
SLACK = 5.0  # detection, engine calls and a 1 s heartbeat on top of each budget line


@pytest.fixture
def two_nodes(test_image: str) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    nodes = (f"e2e-cut-a-{suffix}", f"e2e-cut-b-{suffix}")
    try:
        yield nodes
    finally:
        for node in nodes:
            remove_node_containers(node)


@dataclass(frozen=True)
class Moment:
    at: float  # seconds after the cut
    node: str
    event: str  # start or die


async def engine_timeline(deployment: str, since: float, cut_at: float) -> list[Moment]:
    """Starts and deaths of the Deployment's containers, from the engine's event log."""
    done = await anyio.run_process(
        [
            "docker",
            "events",
            "--since",
            f"{since:.3f}",
            "--until",
            f"{time.time():.3f}",
            "--filter",
            f"label={names.LABEL_DEPLOYMENT}={deployment}",
            "--filter",
            "event=start",
            "--filter",
            "event=die",
            "--format",
            "{{json .}}",
        ]
    )
    moments = []
    for line in done.stdout.decode().splitlines():
        event = json.loads(line)
        attributes = event.get("Actor", {}).get("Attributes", {})
        moments.append(
            Moment(
                at=event["timeNano"] / 1e9 - cut_at,
                node=attributes.get(names.LABEL_NODE, ""),
                event=event["Action"],
            )
        )
    return sorted(moments, key=lambda moment: moment.at)


def manifest(tmp_path: Path, name: str, image: str, replacement: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""apiVersion: corral/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  replacement: {replacement}
  template:
    image: {image}
    args: ["sleep", "3600"]
"""
    )
    return str(path)


@pytest.mark.parametrize(
    ("replacement", "cut"),
    [("Fast", Mode.CLOSED), ("AfterStop", Mode.BLACKHOLE)],
    ids=["fast-closed", "after-stop-blackhole"],
)
async def test_a_cut_off_agent_stops_its_replica_at_f_and_it_is_replaced_on_budget(
    nats_server: NatsServer,
    two_nodes: tuple[str, str],
    test_image: str,
    tmp_path: Path,
    replacement: str,
    cut: Mode,
) -> None:
    node_a, node_b = two_nodes
    name = f"cut-{replacement.lower()}-{uuid.uuid4().hex[:6]}"
    nats_url = nats_server.url
    flags = ("--runtime", "docker")
    async with (
        running_scheduler(nats_url),
        partition_proxy(nats_server.port) as proxy,
        running_agent(proxy.url, node_a, *flags),
    ):
        await corral(nats_url, "apply", "-f", manifest(tmp_path, name, test_image, replacement))
        await eventually(
            lambda: running_containers(node_a, name), lambda ids: len(ids) == 1, within=60
        )
        async with running_agent(nats_url, node_b, *flags):
            await eventually(
                lambda: corral(nats_url, "get", "nodes"),
                lambda done: (
                    f"{node_b}" in done.stdout
                    and "NotReady" not in done.stdout.split(node_b, 1)[1].split("\n", 1)[0]
                ),
                within=30,
            )
            since = time.time() - 1
            cut_at = time.time()
            proxy.cut(cut)
            await eventually(
                lambda: running_containers(node_b, name),
                lambda ids: len(ids) == 1,
                within=R_AFTER_STOP + 2 * SLACK,
                interval=0.2,
            )
            await eventually(
                lambda: running_containers(node_a, name), lambda ids: ids == [], within=F + SLACK
            )
            timeline = await engine_timeline(name, since, cut_at)
            proxy.heal()

    print(f"\n{replacement} replacement, partition by {cut.value}: timeline after the cut")
    for moment in timeline:
        print(f"  t={moment.at:6.2f}s  {moment.event:5}  {moment.node}")
    a_died = [m.at for m in timeline if m.node == node_a and m.event == "die" and m.at > 0]
    b_started = [m.at for m in timeline if m.node == node_b and m.event == "start" and m.at > 0]
    assert a_died and b_started, timeline
    # The cut-off agent stops its copy at F, never before (a NATS failover must not
    # stop healthy work), and not much later.
    assert F - time_budget.HEARTBEAT_SECONDS - 0.5 <= a_died[0] <= F + SLACK, timeline
    # The judge counts R and R' from the last beat it heard, which may have been sent up
    # to a heartbeat before the cut, as the agent counts F from its last proof (above).
    earliest = time_budget.HEARTBEAT_SECONDS + 0.5
    if replacement == "Fast":
        assert R - earliest <= b_started[0] <= R + SLACK, timeline
        assert a_died[0] - b_started[0] <= F - R + SLACK  # the overlap is bounded
    else:
        assert b_started[0] >= R_AFTER_STOP - earliest, timeline
        assert b_started[0] > a_died[0], "two copies ran at once"


async def test_an_agent_process_started_without_nats_stops_its_replicas_at_f(
    node_name: str, test_image: str, tmp_path: Path
) -> None:
    """A restarted agent during a partition: it never gets as far as NATS, and still
    removes its node's replicas at F after its own start (another cluster's stay)."""
    cluster, other = "c0ffee00c0ffee00", "0123456789abcdef"

    def labelled(cluster_id: str) -> str:
        done = subprocess.run(
            [
                "docker", "run", "-d",
                "--label", f"{names.LABEL_MANAGED}=true",
                "--label", f"{names.LABEL_CLUSTER}={cluster_id}",
                "--label", f"{names.LABEL_NODE}={node_name}",
                "--label", f"{names.LABEL_REPLICA}=web-{cluster_id[:4]}",
                "--label", f"{names.LABEL_DEPLOYMENT}=web",
                test_image, "sleep", "3600",
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    ours, theirs = labelled(cluster), labelled(other)
    state = tmp_path / "agent"
    state.mkdir()
    (state / "cluster.json").write_text(f'{{"node":"{node_name}","clusterId":"{cluster}"}}')
    nowhere = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    agent = await anyio.open_process(
        [
            str(Path(sys.executable).parent / "corral-node-agent"),
            *("--nats", nowhere, "--runtime", "docker", "--node-name", node_name),
            *("--state-dir", str(state), "--metrics-port", "0"),
        ]
    )
    started = time.time()
    try:
        await eventually(
            lambda: running_containers(node_name, "web"),
            lambda ids: not any(ours.startswith(i) for i in ids),
            within=F + SLACK,
            interval=0.2,
        )
        stopped_after = time.time() - started
    finally:
        agent.terminate()
        await agent.wait()
    print(f"\nagent without NATS removed its replica {stopped_after:.2f}s after it started")
    assert stopped_after >= F - 1.0  # not before F: NATS may just be failing over
    assert any(theirs.startswith(i) for i in await running_containers(node_name, "web"))
