"""`corral up` starts that cannot succeed end in an exit 1 naming the cause, with
everything it started stopped; and what a restarted or racing process meets."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from corral.client.local import supervisor
from corral.client.local.plan import ChildSpec, UpOptions, service_children
from corral.client.local.processes import ProcessRef, start_time
from corral.client.local.state_file import read_state
from tests.integration import test_local_up_down
from tests.integration.test_local_up_down import (
    UP_TIMEOUT,
    LocalCorral,
    _free_block,
    _status,
    _until,
)

local = test_local_up_down.local  # the fixture: a LocalCorral on free ports, downed after


def _children_of(pid: int) -> list[ProcessRef]:
    """Every process whose parent is pid (the supervisor's children, found from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid and (ref := ProcessRef.of(int(entry.name))) is not None:
            found.append(ref)
    return found


async def test_a_service_that_keeps_exiting_stops_everything_and_names_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = UpOptions(
        data_dir=tmp_path / "data",
        nats_port=_free_block(1),
        metrics_base_port=_free_block(4),
        runtime="hollow",
        node_name="crash-test",
    )

    def with_a_crashing_agent(
        options: UpOptions, *, agent_id: str | None = None
    ) -> list[ChildSpec]:
        children = service_children(options, agent_id=agent_id)
        return [
            ChildSpec(
                name=child.name,
                command=["sh", "-c", "echo 'agent: cannot start, bad flag' >&2; exit 4"],
                log=child.log,
                health_url=child.health_url,
                metrics_url=child.metrics_url,
            )
            if child.name == "node-agent"
            else child
            for child in children
        ]

    monkeypatch.setattr(supervisor, "service_children", with_a_crashing_agent)
    began = time.monotonic()
    with pytest.raises(supervisor.CannotStart) as caught:
        with anyio.fail_after(60):
            await supervisor.run_supervisor(options)
    message = str(caught.value)
    assert "node-agent exited 3 times" in message
    assert "agent: cannot start, bad flag" in message  # the end of ITS log
    assert str(options.layout.log_of("node-agent")) in message
    assert time.monotonic() - began < 40
    assert _children_of(os.getpid()) == []  # nats-server and every service stopped
    assert not options.layout.pid_file.exists()
    assert supervisor.read_failure(options.layout, os.getpid()) == message


def test_foreground_up_exits_1_when_a_service_never_becomes_healthy(local: LocalCorral) -> None:
    command = local.command("up", "--runtime", "docker", "--docker-host", "bogus://nowhere")
    began = time.monotonic()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT,
        env={**os.environ, "CORRAL_UP_TIMEOUT": "4"},
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    # the agent, and netmgr's node part beside it on the same engine
    unhealthy = re.search(r"no healthy /healthz within 4 s from: ([^;\n]*)", result.stderr)
    assert unhealthy is not None, result.stderr
    assert "node-agent" in unhealthy.group(1).split(", ")
    assert "Missing protocol scheme" in result.stderr  # the end of the agent's log
    assert "stopping services" in result.stderr and "stopping nats-server" in result.stderr
    assert result.stderr.index("stopping services") < result.stderr.index("stopping nats-server")
    assert time.monotonic() - began < 60
    assert read_state(local.layout) is None and not local.layout.pid_file.exists()


def test_a_killed_node_agent_recognises_its_own_record_on_restart(local: LocalCorral) -> None:
    record = local.up()
    agent = next(child for child in record.children if child.name == "node-agent")
    old = agent.ref()
    assert old is not None and agent.health_url is not None
    agent_id = local.layout.agent_id_file.read_text().strip()
    assert f"--agent-id\0{agent_id}".encode() in Path(f"/proc/{old.pid}/cmdline").read_bytes()
    os.kill(old.pid, signal.SIGKILL)

    def restarted_healthy() -> bool:
        now = read_state(local.layout)
        if now is None:
            return False
        child = next(child for child in now.children if child.name == "node-agent")
        ref = child.ref()
        return ref is not None and ref.pid != old.pid and _status(agent.health_url or "") == 200

    # Well within the 10 s a fresh heartbeat of ANOTHER agent would block it.
    _until(restarted_healthy, 8, "the restarted node agent's /healthz")
    now = read_state(local.layout)
    assert now is not None
    assert next(child for child in now.children if child.name == "node-agent").restarts == 1
    # The supervisor copies the child's output into its log as it comes: wait for it.
    _until(lambda: "this agent's own" in Path(agent.log).read_text(), 5, "the restart's log")
    assert "already run by another node agent" not in Path(agent.log).read_text()


def test_two_racing_detached_ups_on_one_data_dir_leave_one_running(local: LocalCorral) -> None:
    local.layout.data_dir.mkdir(parents=True)
    racers = [
        subprocess.Popen(
            local.command("up", "-d"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for racer in racers:
            out, err = racer.communicate(timeout=UP_TIMEOUT)
            outputs.append((racer.returncode, out + err))
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    codes = sorted(code for code, _ in outputs)
    assert codes == [0, 1], outputs
    loser = next(text for code, text in outputs if code == 1)
    assert "already running" in loser
    record = read_state(local.layout)
    assert record is not None and record.ready and record.ref().alive()
    assert start_time(record.pid) is not None
