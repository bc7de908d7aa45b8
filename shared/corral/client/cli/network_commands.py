"""`corral network create|ls|inspect|rm` (Docker Swarm's words) and `corral create
network` (Rancher's). Networks are netmgr's (docs/networking.md): requests on
corral.api.network.*, reads from its buckets."""

from __future__ import annotations

import time
from typing import Any

import click

from corral.client.api import CorralClient, CorralError, find_kind
from corral.client.cli.net_requests import create_new, validated
from corral.client.cli.net_views import network_object, network_table, read_net
from corral.client.cli.options import parse_labels
from corral.client.cli.output import as_list, dump
from corral.client.cli.runner import run_with_client, settings_of
from corral.client.cli.write_commands import delete_each
from corral.contract.network_specs import DEFAULT_SLICE_PREFIX, Network
from corral.contract.specs import API_VERSION, DeleteRequest

_FLAGS = {
    "spec.subnet": "--subnet",
    "spec.slicePrefix": "--slice-prefix",
    "metadata.labels": "--label",
}


def _create(
    ctx: click.Context, name: str, subnet: str | None, slice_prefix: int, labels: tuple[str, ...]
) -> None:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = parse_labels(labels)
    spec: dict[str, Any] = {"slicePrefix": slice_prefix}
    if subnet:
        spec["subnet"] = subnet
    manifest = {"apiVersion": API_VERSION, "kind": "Network", "metadata": metadata, "spec": spec}
    raw = validated(manifest, Network, {**_FLAGS, "metadata.name": "NAME"})
    create_new(settings_of(ctx), "Network", name, raw)


def _create_options(function: Any) -> Any:
    """NAME and the flags of `network create` and `create network` (shown in this order)."""
    options = [
        click.argument("name"),
        click.option(
            "--subnet",
            metavar="CIDR",
            help="The network's whole range, e.g. 10.50.0.0/16 (default: a free /16 of "
            "10.128.0.0/9). Each node gets a slice of it.",
        ),
        click.option(
            "--slice-prefix",
            type=int,
            default=DEFAULT_SLICE_PREFIX,
            show_default=True,
            metavar="N",
            help="The prefix length of each node's slice (16-28; a /24 gives a node 253 "
            "addresses).",
        ),
        click.option(
            "--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable."
        ),
    ]
    for option in reversed(options):  # click lists the last decorator applied first
        function = option(function)
    return function


@click.group()
def network() -> None:
    """Networks spanning every node: create, ls, inspect, rm.

    Containers on one network reach each other by IP on any node; containers on
    different networks cannot reach each other. Deployments join networks through
    their template (`networks:`, or `corral create deployment --network`); a
    Deployment that names none joins `default`."""


@network.command("create")
@_create_options
@click.pass_context
def network_create(
    ctx: click.Context, name: str, subnet: str | None, slice_prefix: int, labels: tuple[str, ...]
) -> None:
    """Create network NAME: corral network create NAME [--subnet CIDR]."""
    _create(ctx, name, subnet, slice_prefix, labels)


@click.command("network")
@_create_options
@click.pass_context
def create_network(
    ctx: click.Context, name: str, subnet: str | None, slice_prefix: int, labels: tuple[str, ...]
) -> None:
    """Create network NAME (the same as corral network create)."""
    _create(ctx, name, subnet, slice_prefix, labels)


@network.command("ls")
@click.option(
    "-o", "--output", type=click.Choice(["table", "wide", "json", "yaml"]), default="table"
)
@click.pass_context
def network_ls(ctx: click.Context, output: str) -> None:
    """List networks (the same as corral get networks)."""

    async def fetch(client: CorralClient) -> str:
        view = await read_net(client, ("networks",))
        if output in ("json", "yaml"):
            return dump(as_list([network_object(view, n) for n in sorted(view.networks)]), output)
        return network_table(view, time.time(), wide=output == "wide")

    click.echo(run_with_client(settings_of(ctx), fetch))


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json")
@click.pass_context
def network_inspect(ctx: click.Context, names: tuple[str, ...], output: str) -> None:
    """Show networks in full: spec, status (its range) and each node's slice."""

    async def fetch(client: CorralClient) -> str:
        view = await read_net(client, ("networks",))
        missing = [name for name in names if name not in view.networks]
        if missing:
            raise CorralError(f"network {missing[0]!r} not found")
        items = [network_object(view, name) for name in names]
        return dump(items[0] if len(items) == 1 else as_list(items), output)

    click.echo(run_with_client(settings_of(ctx), fetch))


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def network_rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Delete networks; refused while a Deployment or a Service uses one (the error
    names them)."""
    kind = find_kind("Network")
    delete_each(
        ctx,
        [(kind, name) for name in names],
        lambda name: validated({"name": name}, DeleteRequest, {"name": "NAME"}),
    )
