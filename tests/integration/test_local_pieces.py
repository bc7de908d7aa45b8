"""The parts of `corral up` that need no running corral: back-off, pids, the plan."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from corral.client.local.child import RestartBackoff
from corral.client.local.plan import (
    UpOptions,
    local_node_name,
    node_part_cleanup,
    service_children,
)
from corral.client.local.processes import ProcessRef


def test_backoff_doubles_up_to_a_ceiling_and_resets_after_a_stable_run() -> None:
    backoff = RestartBackoff(first=0.5, most=4, stable_after=30)
    delays = [backoff.after_exit(ran_for=1) for _ in range(6)]
    assert delays == [0.5, 1, 2, 4, 4, 4]
    assert backoff.after_exit(ran_for=60) == 0.5


def test_a_process_that_exited_is_gone_even_as_a_zombie() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    ref = ProcessRef.of(process.pid)
    try:
        # Not waited for: once it exits it is a zombie, which must count as gone.
        deadline = time.monotonic() + 10
        while ref is not None and ref.alive():
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert process.returncode is None  # still a zombie: nobody waited yet
    finally:
        process.wait()


def test_a_reused_pid_is_not_taken_for_ours() -> None:
    ref = ProcessRef.of(os.getpid())
    assert ref is not None and ref.alive()
    assert not ProcessRef(ref.pid, ref.started + 1).alive()


def test_each_service_gets_nats_its_port_and_its_log(tmp_path: Path) -> None:
    options = UpOptions(data_dir=tmp_path, nats_port=14222, metrics_base_port=19100)
    children = {child.name: child for child in service_children(options)}
    assert list(children) == ["scheduler", "node-agent", "netmgr", "volmgr", "netmgr-node"]
    for offset, child in enumerate(children.values()):
        command = child.command
        assert command[command.index("--nats") + 1] == "nats://127.0.0.1:14222"
        assert command[command.index("--metrics-port") + 1] == str(19100 + offset)
        assert child.health_url == f"http://127.0.0.1:{19100 + offset}/healthz"
        assert child.log == tmp_path.resolve() / "logs" / f"{child.name}.log"
    agent = children["node-agent"].command
    assert agent[agent.index("--node-name") + 1] == local_node_name()
    assert "." not in local_node_name()
    node_part = children["netmgr-node"].command
    assert node_part[0].endswith("corral-netmgr") or node_part[-1] == "corral_netmgr"
    assert node_part[node_part.index("--node") + 1] == local_node_name()


def test_the_node_part_runs_beside_real_containers_only_and_cleans_up_with_the_same_node(
    tmp_path: Path,
) -> None:
    hollow = UpOptions(data_dir=tmp_path, runtime="hollow")
    assert "netmgr-node" not in {child.name for child in service_children(hollow)}
    options = UpOptions(data_dir=tmp_path, node_name="n1", docker_host="unix:///tmp/d.sock")
    cleanup = node_part_cleanup(options)
    assert cleanup[-1] == "--remove-all"
    assert cleanup[cleanup.index("--node") + 1] == "n1"
    assert cleanup[cleanup.index("--docker-host") + 1] == "unix:///tmp/d.sock"
    assert cleanup[cleanup.index("--nats") + 1] == options.nats_url
