"""The parts of `corral up` that need no running corral: back-off, pids, the plan."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from corral.client.cli import local_commands
from corral.client.cli.main import cli
from corral.client.local.child import ChildState, RestartBackoff, supervise_child
from corral.client.local.detach import SUPERVISOR_STOP_TIMEOUT, StopReport
from corral.client.local.layout import Layout
from corral.client.local.nats_server import NATS_SERVER_GOGC
from corral.client.local.plan import (
    UpOptions,
    agent_cleanup,
    local_node_name,
    nats_child,
    node_part_cleanup,
    service_children,
)
from corral.client.local.processes import ProcessRef
from corral.client.local.supervisor import (
    REPLICAS_CLEANUP_TIMEOUT,
    CleanupReport,
    Supervisor,
    read_report,
    write_report,
)
from tests.conftest import free_port
from tests.waiting import eventually


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
    assert list(children) == [
        "scheduler", "node-agent", "netmgr", "volmgr", "netmgr-node", "volmgr-node",
    ]  # fmt: skip
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
    volumes = children["volmgr-node"].command
    assert volumes[0].endswith("corral-volmgr") or volumes[-1] == "corral_volmgr"
    assert volumes[volumes.index("--node") + 1] == local_node_name()
    assert volumes[volumes.index("--volumes-dir") + 1] == str(tmp_path.resolve() / "volumes")


def test_the_node_part_runs_beside_real_containers_only_and_cleans_up_with_the_same_node(
    tmp_path: Path,
) -> None:
    hollow = UpOptions(data_dir=tmp_path, runtime="hollow")
    started = {child.name for child in service_children(hollow)}
    assert "netmgr-node" not in started and "volmgr-node" not in started
    options = UpOptions(data_dir=tmp_path, node_name="n1", docker_host="unix:///tmp/d.sock")
    cleanup = node_part_cleanup(options, "netmgr-node")
    assert cleanup[-1] == "--remove-all"
    assert cleanup[cleanup.index("--node") + 1] == "n1"
    assert cleanup[cleanup.index("--docker-host") + 1] == "unix:///tmp/d.sock"
    assert cleanup[cleanup.index("--nats") + 1] == options.nats_url
    assert "--delete-data" not in node_part_cleanup(options, "netmgr-node", delete_data=True)


def test_corral_down_keeps_the_volumes_data_unless_asked_to_delete_it(tmp_path: Path) -> None:
    options = UpOptions(data_dir=tmp_path, node_name="n1")
    keep = node_part_cleanup(options, "volmgr-node")
    assert keep[0].endswith("corral-volmgr") or "corral_volmgr" in keep
    assert keep[keep.index("--node") + 1] == "n1"
    assert keep[keep.index("--volumes-dir") + 1] == str(tmp_path.resolve() / "volumes")
    assert keep[-1] == "--remove-all" and "--delete-data" not in keep
    delete = node_part_cleanup(options, "volmgr-node", delete_data=True)
    assert delete[-2:] == ["--remove-all", "--delete-data"]


async def test_stopping_deletes_the_volumes_data_only_when_corral_down_asked_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[list[str]] = []

    async def run_process(command: list[str], check: bool) -> subprocess.CompletedProcess[bytes]:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0, b"", b"")

    monkeypatch.setattr(anyio, "run_process", run_process)
    supervisor = Supervisor(UpOptions(data_dir=tmp_path, node_name="n1"), "agent-1")
    supervisor.layout.create()
    await supervisor.clean_node()
    assert [command[-1] for command in ran] == ["--remove-all", "--remove-all"]
    assert any("--volumes-dir" in command for command in ran)
    ran.clear()
    supervisor.layout.delete_volumes_file.write_text("asked\n")
    await supervisor.clean_node()
    netmgr, volmgr = ran
    assert "--delete-data" not in netmgr and volmgr[-2:] == ["--remove-all", "--delete-data"]
    assert not supervisor.layout.delete_volumes_file.exists()  # asked once, done once


def test_corral_down_delete_volumes_without_a_running_corral_says_how_and_marks_nothing(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(cli, ["down", "--data-dir", str(tmp_path), "--delete-volumes"])
    assert result.exit_code == 1
    assert "corral is not running" in result.stderr and "corral up -d" in result.stderr
    assert not Layout.at(tmp_path).delete_volumes_file.exists()


async def test_the_supervisor_writes_what_the_node_part_did_with_the_volumes_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run_process(command: list[str], check: bool) -> subprocess.CompletedProcess[bytes]:
        if "--delete-data" in command:
            return subprocess.CompletedProcess(
                command, 1, b"removed Docker volume corral_pv_a_c\n", b"left pv-b: busy\n"
            )
        return subprocess.CompletedProcess(command, 0, b"", b"")

    monkeypatch.setattr(anyio, "run_process", run_process)
    supervisor = Supervisor(UpOptions(data_dir=tmp_path, node_name="n1"), "agent-1")
    supervisor.layout.create()
    await supervisor.clean_node()
    assert read_report(supervisor.layout.delete_volumes_file) is None  # not asked: no report
    supervisor.layout.delete_volumes_file.write_text("asked\n")
    await supervisor.clean_node()
    report = read_report(supervisor.layout.delete_volumes_file)
    assert report is not None and not report.ok
    assert report.exit_code == 1 and report.errors == ["left pv-b: busy"]
    assert report.output == ["removed Docker volume corral_pv_a_c"]


def test_the_agents_clean_up_names_its_node_engine_and_state_dir_and_needs_no_nats(
    tmp_path: Path,
) -> None:
    options = UpOptions(data_dir=tmp_path, node_name="n1", docker_host="unix:///tmp/d.sock")
    command = agent_cleanup(options)
    assert command[0].endswith("corral-node-agent") or "corral_node_agent" in command
    assert command[command.index("--node-name") + 1] == "n1"
    assert command[command.index("--runtime") + 1] == "docker"
    assert command[command.index("--state-dir") + 1] == str(tmp_path.resolve() / "node-agent")
    assert command[command.index("--docker-host") + 1] == "unix:///tmp/d.sock"
    assert "--remove-all" in command and "--nats" not in command
    # The agent's own flags take them: the same parser as the agent's.
    from corral_node_agent.main import build_parser

    args = build_parser().parse_args(command[command.index("--log-level") :])
    assert (
        args.remove_all
        and args.node_name == "n1"
        and args.state_dir == str(tmp_path.resolve() / "node-agent")
    )


async def test_stopping_removes_the_replicas_first_and_only_when_corral_down_asked_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[list[str]] = []

    async def run_process(command: list[str], check: bool) -> subprocess.CompletedProcess[bytes]:
        ran.append(command)
        out = b"removed corral-web-a (0123456789ab)\n" if "--node-name" in command else b""
        return subprocess.CompletedProcess(command, 0, out, b"")

    monkeypatch.setattr(anyio, "run_process", run_process)
    supervisor = Supervisor(UpOptions(data_dir=tmp_path, node_name="n1"), "agent-1")
    supervisor.layout.create()
    request = supervisor.layout.remove_replicas_file
    await supervisor.clean_node()
    assert not any("--node-name" in command for command in ran)  # not asked: kept running
    assert read_report(request) is None
    ran.clear()
    request.write_text("asked\n")
    await supervisor.clean_node()
    agent, netmgr, volmgr = ran  # the replicas first: then their networks and volumes go
    assert agent == agent_cleanup(supervisor.options)
    assert "--node" in netmgr and "--volumes-dir" in volmgr
    assert not request.exists()  # asked once, done once
    report = read_report(request)
    assert report is not None and report.ok
    assert report.output == ["removed corral-web-a (0123456789ab)"]


async def test_a_supervisor_forgets_requests_an_earlier_run_left_before_it_starts_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request file left behind (the earlier supervisor was killed before its stop, or
    a `corral down` raced its end) is not this run's: kept, the run's next ordinary stop
    would remove every replica and delete the volumes' data."""
    supervisor = Supervisor(UpOptions(data_dir=tmp_path, node_name="n1"), "agent-1")
    supervisor.layout.create()
    requests = (supervisor.layout.remove_replicas_file, supervisor.layout.delete_volumes_file)
    for request in requests:
        request.write_text("asked\n")
    seen: list[bool] = []

    class Started(Exception):
        pass

    async def first_start(*args: object, **kwargs: object) -> None:
        seen.extend(request.exists() for request in requests)
        raise Started

    monkeypatch.setattr(supervisor, "supervise", first_start)
    with pytest.raises(BaseExceptionGroup) as raised:
        await supervisor.run()
    assert raised.group_contains(Started)
    assert seen == [False, False]


REPLICAS = ("--remove-replicas", "remove_replicas_file", "the replicas removed")
VOLUMES = ("--delete-volumes", "delete_volumes_file", "the volumes' data deleted")


@pytest.mark.parametrize(
    "asked, report, exit_code, words",
    [
        (REPLICAS, CleanupReport(0, ["removed corral-web-a (0123)"], []), 0, "corral-web-a"),
        (REPLICAS, CleanupReport(0, [], []), 0, "(none ran)"),
        (REPLICAS, CleanupReport(1, [], ["not removed: corral-web-b"]), 1, "NOT all removed"),
        (REPLICAS, CleanupReport(None, [], [], "it did not finish within 90 s"), 1, "finish"),
        (REPLICAS, None, 1, "did not report"),
        (VOLUMES, CleanupReport(0, ["deleted /v/c/pv-a.img"], []), 0, "deleted /v/c/pv-a.img"),
        (VOLUMES, CleanupReport(1, [], ["left pv-b: busy"]), 1, "NOT all deleted"),
        (VOLUMES, CleanupReport(None, [], [], "it did not finish within 30 s"), 1, "finish"),
        (VOLUMES, None, 1, "did not report"),
    ],
)
def test_corral_down_says_what_the_clean_up_it_asked_for_did_not_a_fixed_done(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    asked: tuple[str, str, str],
    report: CleanupReport | None,
    exit_code: int,
    words: str,
) -> None:
    flag, request_file, done = asked
    layout = Layout.at(tmp_path)
    layout.create()
    request: Path = getattr(layout, request_file)
    waited: list[float] = []

    def stopped(layout: Layout, timeout: float) -> StopReport:
        assert request.exists()  # asked before stopping
        waited.append(timeout)
        if report is not None:
            write_report(request, report)
        return StopReport(True, 4242, [], [])

    monkeypatch.setattr(local_commands, "running_supervisor", lambda layout: object())
    monkeypatch.setattr(local_commands, "stop", stopped)
    result = CliRunner().invoke(cli, ["down", "--data-dir", str(tmp_path), flag])
    assert result.exit_code == exit_code, result.output
    assert "corral stopped (supervisor pid 4242)" in result.stdout
    said = result.stdout if exit_code == 0 else result.stderr
    assert words in said, result.output
    assert (exit_code == 0) == (done in result.stdout)
    # Long enough for the replicas' stops too, beside the rest of the stop.
    extra = REPLICAS_CLEANUP_TIMEOUT if flag == "--remove-replicas" else 0.0
    assert waited == [SUPERVISOR_STOP_TIMEOUT + extra]


def test_corral_down_remove_replicas_without_a_running_corral_says_how_and_marks_nothing(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        cli, ["down", "--data-dir", str(tmp_path), "--remove-replicas", "--delete-volumes"]
    )
    assert result.exit_code == 1
    assert "corral down --remove-replicas --delete-volumes" in result.stderr
    layout = Layout.at(tmp_path)
    assert not layout.remove_replicas_file.exists() and not layout.delete_volumes_file.exists()


async def _environment_of_supervised_nats(tmp_path: Path, port: int) -> dict[str, str]:
    """Start the plan's nats-server child as `corral up` does, read its environment from
    /proc, stop it."""
    spec = nats_child(UpOptions(data_dir=tmp_path, nats_port=port))
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    state = ChildState(spec)
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_child, state, lambda: None)
        assert state.pid is not None
        proc = anyio.Path(f"/proc/{state.pid}")

        async def program() -> str:
            return Path(await (proc / "exe").readlink()).name

        # Until the child has exec'd nats-server, /proc shows the environment this
        # process started with (without what the test set since, or what the plan adds).
        await eventually(program, lambda name: name == "nats-server")
        raw = await (proc / "environ").read_bytes()
        tg.cancel_scope.cancel()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def test_nats_server_runs_with_corrals_gogc_unless_the_operator_set_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOGC", raising=False)
    environment = await _environment_of_supervised_nats(tmp_path / "a", free_port())
    assert environment["GOGC"] == NATS_SERVER_GOGC == "50"
    assert environment["PATH"] == os.environ["PATH"]  # added to, not replaced

    monkeypatch.setenv("GOGC", "80")
    environment = await _environment_of_supervised_nats(tmp_path / "b", free_port())
    assert environment["GOGC"] == "80"


def test_a_down_that_did_not_stop_corral_leaves_no_request_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request left behind would be carried out by the next stop, which nobody asked
    it of (a plain `corral down`, a Ctrl-C in the foreground)."""
    layout = Layout.at(tmp_path)
    layout.create()

    def refused(layout: Layout, timeout: float) -> StopReport:
        raise PermissionError("signal refused")

    monkeypatch.setattr(local_commands, "running_supervisor", lambda layout: object())
    monkeypatch.setattr(local_commands, "stop", refused)
    flags = ["--remove-replicas", "--delete-volumes"]
    result = CliRunner().invoke(cli, ["down", "--data-dir", str(tmp_path), *flags])
    assert isinstance(result.exception, PermissionError)
    assert not layout.remove_replicas_file.exists() and not layout.delete_volumes_file.exists()

    def gone_meanwhile(layout: Layout, timeout: float) -> StopReport:
        return StopReport(False, None, [], [])

    monkeypatch.setattr(local_commands, "stop", gone_meanwhile)
    result = CliRunner().invoke(cli, ["down", "--data-dir", str(tmp_path), "--remove-replicas"])
    assert result.exit_code == 1
    assert "--remove-replicas: not done, corral had stopped meanwhile" in result.stderr
    assert not layout.remove_replicas_file.exists()
