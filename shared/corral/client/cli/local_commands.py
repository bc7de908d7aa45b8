"""`corral up` and `corral down`: run corral on this machine (see corral.client.local).

The CLI registers them with `cli.add_command(up)` and `cli.add_command(down)`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import click

from corral.client.local.detach import (
    SUPERVISOR_STOP_TIMEOUT,
    DetachFailed,
    start_detached,
    stop,
)
from corral.client.local.layout import ENV_DATA_DIR, Layout, default_data_dir
from corral.client.local.nats_server import NatsServerNotFound
from corral.client.local.plan import (
    DEFAULT_METRICS_BASE_PORT,
    DEFAULT_NATS_PORT,
    UpOptions,
    local_node_name,
)
from corral.client.local.state_file import SupervisorRecord, running_supervisor
from corral.client.local.summary import describe
from corral.client.local.supervisor import (
    REPLICAS_CLEANUP_TIMEOUT,
    CannotStart,
    CleanupReport,
    read_report,
    report_file,
    run_supervisor,
)
from corral.natsio.bus import StoreSettings

_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where state, logs and the pid file live (default ${ENV_DATA_DIR}, else ./.corral).",
)


@click.command()
@click.option("-d", "--detach", is_flag=True, help="Run in the background; `corral down` stops.")
@_data_dir_option
@click.option(
    "--nats-port", type=click.IntRange(1, 65535), default=DEFAULT_NATS_PORT, show_default=True
)
@click.option(
    "--metrics-base-port",
    type=click.IntRange(1, 65530),
    default=DEFAULT_METRICS_BASE_PORT,
    show_default=True,
    help="scheduler on it, node-agent +1, netmgr +2, volmgr +3, netmgr's node part +4, "
    "volmgr's node part +5.",
)
@click.option("--node-name", default="", help="The local node's name (default: the host name).")
@click.option(
    "--runtime",
    type=click.Choice(["docker", "hollow"]),
    default="docker",
    show_default=True,
    help="The node agent's container runtime (hollow: simulated containers).",
)
@click.option("--docker-host", default=None, help="The Docker engine (default: the local one).")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def up(
    detach: bool,
    data_dir: Path | None,
    nats_port: int,
    metrics_base_port: int,
    node_name: str,
    runtime: str,
    docker_host: str | None,
    log_level: str,
) -> None:
    """Run corral here: nats-server with JetStream, the scheduler, a node agent, netmgr, volmgr.

    In the foreground, Ctrl-C stops it (the replicas keep running, as with `corral
    down`). With -d it runs in the background and returns once every service answers
    /healthz. A start that fails (a port taken, a service that keeps exiting or never
    answers) stops what it started and exits 1.
    """
    try:
        StoreSettings.from_env()  # every service reads these: a bad one named once, here
    except ValueError as error:
        raise click.ClickException(f"{error}; nothing was started") from None
    layout = Layout.at(data_dir or default_data_dir())
    before = node_run_before(layout)
    running = node_name or local_node_name()  # as the agent is started (plan)
    if before is not None and before != running:
        click.echo(
            f"warning: this data dir ran node {before!r} before; its replicas stay on this "
            f"engine with no agent running them until `corral up --node-name {before}` (or "
            f"`corral down --remove-replicas` from it), and node {running!r} starts beside "
            "them",
            err=True,
        )
    options = UpOptions(
        data_dir=layout.data_dir,
        nats_port=nats_port,
        metrics_base_port=metrics_base_port,
        node_name=node_name,
        runtime=runtime,
        docker_host=docker_host,
        log_level=log_level.upper(),
    )
    if detach:
        try:
            record = start_detached(options)
        except DetachFailed as error:
            raise click.ClickException(str(error)) from None
        click.echo(describe(record, detached=True))
        return

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s corral-up %(levelname)s %(message)s",
        stream=sys.stderr,
    )

    def on_ready(record: SupervisorRecord) -> None:
        click.echo(describe(record, detached=False))

    try:
        anyio.run(lambda: run_supervisor(options, on_ready=on_ready))
    except (CannotStart, NatsServerNotFound) as error:
        raise click.ClickException(str(error)) from None


def node_run_before(layout: Layout) -> str | None:
    """The node the local agent of this data dir last recorded it belongs to (its
    cluster.json), or None (none yet, or unreadable: the agent says so itself)."""
    try:
        record = json.loads((layout.agent_state_dir / "cluster.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    node = record.get("node") if isinstance(record, dict) else None
    return node if isinstance(node, str) and node else None


@click.command()
@_data_dir_option
@click.option(
    "--remove-replicas",
    is_flag=True,
    help="Also stop and remove this node's replica containers (each with its stop grace "
    "period, at most 60 s), so nothing of corral's runs or stays mounted. Without it they "
    "keep running. The Deployments stay stored: `corral up` runs them again.",
)
@click.option(
    "--delete-volumes",
    is_flag=True,
    help="Also delete the data of every volume corral provisioned on this node (their "
    "image files and folders). Without it the data stays, and `corral up` mounts it again. "
    "With replicas still running on those volumes, add --remove-replicas.",
)
def down(data_dir: Path | None, remove_replicas: bool, delete_volumes: bool) -> None:
    """Stop what `corral up` started from this data dir. Replicas keep running and volumes
    keep their data, unless asked."""
    layout = Layout.at(data_dir or default_data_dir())
    asked = [
        (cleanup, request)
        for cleanup, request, wanted in (
            (REMOVE_REPLICAS, layout.remove_replicas_file, remove_replicas),
            (DELETE_VOLUMES, layout.delete_volumes_file, delete_volumes),
        )
        if wanted
    ]
    if asked and running_supervisor(layout) is None:
        flags = " ".join(cleanup.flag for cleanup, _ in asked)
        raise click.ClickException(
            f"corral is not running from {layout.data_dir}: {flags} is carried out as "
            "corral stops (what is corral's is found through the cluster's id); start it "
            f"(corral up -d), then corral down {flags}"
        )
    for _, request in asked:
        report_file(request).unlink(missing_ok=True)  # only this run's is read
        request.write_text("asked by corral down\n")
    timeout = SUPERVISOR_STOP_TIMEOUT + (REPLICAS_CLEANUP_TIMEOUT if remove_replicas else 0.0)
    try:
        report = stop(layout, timeout)
    except BaseException:
        # Not stopped (Ctrl-C, a signal refused): a request left behind would be carried
        # out by a later stop nobody asked it of.
        for _, request in asked:
            request.unlink(missing_ok=True)
        raise
    if not report.was_running:
        for cleanup, request in asked:
            request.unlink(missing_ok=True)
            click.echo(f"{cleanup.flag}: not done, corral had stopped meanwhile", err=True)
        extra = f" (stopped leftovers: {', '.join(report.leftovers)})" if report.leftovers else ""
        click.echo(f"corral is not running from {layout.data_dir}{extra}")
        if asked:
            raise click.exceptions.Exit(1)
        return
    forced = f" (had to kill: {', '.join(report.killed)})" if report.killed else ""
    click.echo(f"corral stopped (supervisor pid {report.supervisor_pid}){forced}")
    failed = False
    for cleanup, request in asked:
        done = read_report(request)
        report_file(request).unlink(missing_ok=True)
        click.echo(cleanup.outcome(done), err=done is None or not done.ok)
        failed = failed or done is None or not done.ok
    if failed:
        raise click.exceptions.Exit(1)


@dataclass(frozen=True)
class Cleanup:
    """A clean-up `corral down` can ask for, as its outcome is told."""

    flag: str
    what: str  # "the replicas"
    was: str  # "were"
    done: str  # "removed"
    who: str  # "the node agent's clean-up"
    none: str  # said when it did nothing

    def outcome(self, report: CleanupReport | None) -> str:
        """What it did, in words: what `who` reported (its lines and exit code), never
        more."""
        not_done = f"{self.what} {self.was} NOT {self.done}"
        if report is None:
            return (
                f"{not_done}, or not all: {self.who} did not report (the supervisor was "
                "stopped before its clean-up ended); run corral up -d, then corral down "
                f"{self.flag} again"
            )
        if report.problem:
            return f"{not_done}, or not all: {self.who} {report.problem}"
        lines = "".join(f"\n  {line}" for line in report.output)
        if report.ok:
            return f"{self.what} {self.done}; {self.who}:" + (lines or f"\n  ({self.none})")
        errors = " / ".join(report.errors) or "no message"
        return (
            f"{self.what} {self.was} NOT all {self.done}: {self.who} exited "
            f"{report.exit_code} ({errors})" + (f"; it did:{lines}" if lines else "")
        )


REMOVE_REPLICAS = Cleanup(
    "--remove-replicas", "the replicas", "were", "removed", "the node agent's clean-up", "none ran"
)
DELETE_VOLUMES = Cleanup(
    "--delete-volumes", "the volumes' data", "was", "deleted", "volmgr's node part", "nothing"
)


@click.group()
def local_cli() -> None:
    """`python -m corral.client.local up|down`: the same commands without the rest of the CLI."""


local_cli.add_command(up)
local_cli.add_command(down)
