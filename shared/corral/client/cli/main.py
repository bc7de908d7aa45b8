"""`corral`: the command line. A client like any other: requests to the owners,
reads from KV and the events stream (see corral.client.api)."""

from __future__ import annotations

import sys

import click

from corral.client.cli.cluster_commands import cluster_info
from corral.client.cli.container_commands import create_container
from corral.client.cli.local_commands import down, up
from corral.client.cli.logs_commands import logs
from corral.client.cli.network_commands import create_network, network
from corral.client.cli.node_commands import node
from corral.client.cli.options import add_namespace_options
from corral.client.cli.read_commands import describe, events, get, schema
from corral.client.cli.rollout_commands import rollout
from corral.client.cli.runner import DEFAULT_TIMEOUT, Settings
from corral.client.cli.service_commands import create_service, expose
from corral.client.cli.set_commands import set_group
from corral.client.cli.stack_commands import stack
from corral.client.cli.swarm_commands import service as swarm_service
from corral.client.cli.volume_commands import (
    create_claim,
    create_storage_class,
    create_volume,
    volume,
)
from corral.client.cli.write_commands import apply, create, delete, diff, scale


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--nats",
    "nats_url",
    metavar="URL",
    multiple=True,
    help="NATS URL; several comma-separated or --nats repeated for a cluster (default: "
    "$CORRAL_NATS_URL, else the config file, else nats://127.0.0.1:4222).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for NATS and for an owner's answer.",
)
@click.pass_context
def cli(ctx: click.Context, nats_url: tuple[str, ...], timeout: float) -> None:
    """corral: a container orchestrator on NATS."""
    # A repeated --nats is one list of servers; it travels comma-joined (corral.natsio.config).
    ctx.obj = Settings(",".join(nats_url) or None, timeout)


for command in (create, apply, scale, delete, get, describe, events, schema, expose):
    cli.add_command(command)
create.add_command(create_network)
create.add_command(create_service)
create.add_command(create_container)  # Rancher's containers (docs/containers.md)
for command in (create_volume, create_claim, create_storage_class):
    create.add_command(command)
cli.add_command(network)
cli.add_command(rollout)
cli.add_command(set_group)
cli.add_command(volume)
cli.add_command(swarm_service)  # Docker Swarm's `service` commands
cli.add_command(stack)  # Compose projects, Swarm's `stack` words (docs/compose.md)

cli.add_command(node)
cli.add_command(up)
cli.add_command(down)
cli.add_command(diff)
cli.add_command(logs)  # containers' logs from their nodes (docs/api.md, "Logs")
cli.add_command(cluster_info)

# Keep this after every add_command: -n/--namespace on each namespaced command, -A on
# the reads of several (corral.client.cli.options; README, "Namespaces").
add_namespace_options(
    cli,
    namespaced=(
        "create deployment",
        "create service",
        "create pvc",
        "create container",
        "apply",
        "diff",
        "delete",
        "scale",
        "get",
        "describe",
        "events",
        "expose",
        "logs",
        "rollout",
        "set",
        "service",
    ),
    all_namespaces_on=("get",),
)


def main() -> None:
    try:
        cli.main(prog_name="corral")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
