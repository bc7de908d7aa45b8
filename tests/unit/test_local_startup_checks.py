"""`corral up`'s refusals that need no running corral: impossible options, an
uncreatable data dir, a second supervisor of one data dir, a child that keeps
exiting, and which processes a dead supervisor's leftovers stop first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from corral.client.cli.local_commands import local_cli
from corral.client.local import supervisor
from corral.client.local.child import ChildState, RestartBackoff, supervise_child
from corral.client.local.detach import DetachFailed, _failed, start_detached
from corral.client.local.layout import Layout
from corral.client.local.plan import (
    ChildSpec,
    UpOptions,
    local_node_name,
    port_problem,
    service_children,
)
from corral.client.local.processes import ProcessRef
from corral.client.local.state_file import ChildRecord, SupervisorRecord, write_state
from corral.client.local.supervisor import CannotStart, create_layout, read_failure, take_lock


def test_overlapping_ports_are_refused_at_once(tmp_path: Path) -> None:
    options = UpOptions(data_dir=tmp_path, nats_port=19232, metrics_base_port=19231)
    problem = port_problem(options)
    assert problem is not None and "19232 (nats and node-agent)" in problem
    assert (
        port_problem(UpOptions(data_dir=tmp_path, nats_port=19230, metrics_base_port=19231)) is None
    )

    began = time.monotonic()
    result = CliRunner().invoke(
        local_cli,
        ["up", "--data-dir", str(tmp_path), "--nats-port", "19232", "--metrics-base-port", "19231"],
    )
    assert result.exit_code == 1
    assert "19232 (nats and node-agent)" in result.output
    with pytest.raises(DetachFailed, match="wanted twice"):
        start_detached(options)
    assert time.monotonic() - began < 5


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--log-level", "bogus"], "--log-level"),
        (["--nats-port", "99999"], "--nats-port"),
        (["--nats-port", "0"], "--nats-port"),
        (["--metrics-base-port", "65533"], "--metrics-base-port"),
    ],
)
def test_impossible_options_are_usage_errors(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    result = CliRunner().invoke(local_cli, ["up", "--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert complaint in result.output
    assert not isinstance(result.exception, OverflowError)


def test_a_data_dir_under_a_regular_file_is_refused_with_its_cause(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CannotStart, match=r"cannot create data dir .*file/sub: Not a directory"):
        create_layout(Layout.at(blocker / "sub"))
    options = UpOptions(data_dir=blocker / "sub", nats_port=19230, metrics_base_port=19231)
    with pytest.raises(DetachFailed, match="cannot create data dir"):
        start_detached(options)
    result = CliRunner().invoke(
        local_cli,
        ["up", "--data-dir", str(blocker / "sub"), "--nats-port", "19230"],
    )
    assert result.exit_code == 1 and "cannot create data dir" in result.output


def test_the_agent_id_is_made_once_per_data_dir_and_passed_to_the_node_agent(
    tmp_path: Path,
) -> None:
    layout = Layout.at(tmp_path)
    first = create_layout(layout)
    assert first and create_layout(layout) == first
    assert layout.agent_id_file.read_text().strip() == first
    assert create_layout(Layout.at(tmp_path / "other")) != first
    children = {
        child.name: child
        for child in service_children(UpOptions(data_dir=tmp_path), agent_id=first)
    }
    agent = children["node-agent"].command
    assert agent[agent.index("--agent-id") + 1] == first
    assert "--agent-id" not in children["scheduler"].command


def test_only_one_supervisor_holds_a_data_dirs_lock(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    layout.create()
    held = take_lock(layout)
    try:
        with pytest.raises(CannotStart, match="already running"):
            take_lock(layout)
    finally:
        os.close(held)
    os.close(take_lock(layout))  # free again once released


async def test_a_child_that_keeps_exiting_before_it_was_healthy_is_given_up(
    tmp_path: Path,
) -> None:
    spec = ChildSpec(
        name="crashy",
        command=["sh", "-c", "echo 'crashy: cannot bind' >&2; exit 3"],
        log=tmp_path / "crashy.log",
    )
    state = ChildState(spec)
    given_up: list[ChildState] = []
    with anyio.fail_after(20):
        await supervise_child(
            state,
            lambda: None,
            backoff=RestartBackoff(first=0.01, most=0.05),
            on_give_up=given_up.append,
        )
    assert given_up == [state] and state.gave_up
    assert state.restarts == 3 and state.last_exit == 3
    assert "crashy: cannot bind" in spec.log.read_text()
    assert "giving up" in spec.log.read_text()


def test_detach_shows_the_failing_childs_log_from_the_supervisors_word(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    layout.create()
    layout.failure_file.write_text("4242\nnode-agent exited 3 times\n--- end ---\nboom\n")
    assert read_failure(layout, 4242) == "node-agent exited 3 times\n--- end ---\nboom"
    assert read_failure(layout, 1) is None  # another (earlier) supervisor's word
    assert "boom" in str(_failed(layout, 4242, 0))
    layout.supervisor_log.write_text("old run\nError: new run failed\n")
    message = str(_failed(layout, 1, len("old run\n")))
    assert "new run failed" in message and "old run" not in message


def test_leftovers_stop_the_services_first_and_nats_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = Layout.at(tmp_path)
    layout.create()
    sleepers = {
        name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        for name in ("nats", "scheduler", "node-agent")
    }
    try:
        refs = {name: ProcessRef.of(p.pid) for name, p in sleepers.items()}
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead_ref = ProcessRef.of(dead.pid)
        dead.wait()
        assert dead_ref is not None
        write_state(
            layout,
            SupervisorRecord(
                pid=dead_ref.pid,
                started=dead_ref.started,
                data_dir=str(tmp_path),
                nats_url="nats://127.0.0.1:1",
                children=[
                    ChildRecord(name=name, pid=ref.pid, started=ref.started)
                    for name, ref in refs.items()
                    if ref is not None
                ],
            ),
        )
        order: list[list[int]] = []
        real = supervisor.stop_processes

        def recording(stopping: list[ProcessRef], timeout: float) -> list[ProcessRef]:
            order.append(sorted(ref.pid for ref in stopping))
            return real(stopping, timeout)

        monkeypatch.setattr(supervisor, "stop_processes", recording)
        assert supervisor.stop_leftovers(layout) == ["nats", "node-agent", "scheduler"]
        assert order == [
            sorted([sleepers["scheduler"].pid, sleepers["node-agent"].pid]),
            [sleepers["nats"].pid],
        ]
    finally:
        for process in sleepers.values():
            process.kill()
            process.wait()


def test_a_bad_store_setting_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every service reads the store's settings from the environment: a bad one made each
    of them exit until the supervisor gave up, with a traceback. Named once, at `up`."""
    monkeypatch.setenv("CORRAL_KV_MAX_BYTES", "lots")
    result = CliRunner().invoke(local_cli, ["up", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "CORRAL_KV_MAX_BYTES must be a size from 1Ki to 1Pi" in result.output
    assert "nothing was started" in result.output
    assert not (tmp_path / "d").exists()


def test_a_data_dir_that_ran_another_node_is_warned_of(tmp_path: Path) -> None:
    """`corral up --node-name vm2` on a data dir that ran `vm`: vm's replicas stay on the
    engine with no agent, and vm2's are made beside them; said, not silently."""
    (tmp_path / "node-agent").mkdir()
    (tmp_path / "node-agent" / "cluster.json").write_text(
        '{"node": "vm", "clusterId": "c1"}', encoding="utf-8"
    )
    refused = ["--nats-port", "19232", "--metrics-base-port", "19231"]  # stops at once
    base = ["up", "--data-dir", str(tmp_path), *refused]
    result = CliRunner().invoke(local_cli, [*base, "--node-name", "vm2"])
    assert "warning: this data dir ran node 'vm' before" in result.output
    assert "`corral up --node-name vm`" in result.output
    result = CliRunner().invoke(local_cli, [*base, "--node-name", "vm"])
    assert "warning" not in result.output
    # without --node-name the host's name is the node's, as the agent is started
    (tmp_path / "node-agent" / "cluster.json").write_text(
        f'{{"node": "{local_node_name()}", "clusterId": "c1"}}', encoding="utf-8"
    )
    assert "warning" not in CliRunner().invoke(local_cli, base).output
