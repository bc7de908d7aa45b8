"""`corral cluster-info`: what the cluster is, from its identity in corral_cluster.

    corral cluster-info [-o json|yaml]

Its id (the io.corral.cluster label on everything it makes), when it was made, the NATS
servers this client reached, and how its placements are kept (one bucket, or shards by
node: CORRAL_PLACEMENT_SHARDS when the cluster was made). A store no service has made
a cluster in yet is an error (exit 1).
"""

from __future__ import annotations

import time
from typing import Any

import click

from corral.client.api import CorralClient, CorralError
from corral.client.cli.output import API_VERSION, dump
from corral.client.cli.runner import run_with_client, settings_of
from corral.contract import names
from corral.contract.state import Cluster
from corral.natsio.cluster import cluster_buckets


def placements_line(shards: int) -> str:
    buckets = names.placements_buckets(shards)
    if shards == 1:
        return f"1 bucket ({buckets[0]})"
    return f"{shards} shards by node ({buckets[0]} ... {buckets[-1]})"


def identity_table(identity: Cluster, url: str) -> str:
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(identity.created_at))
    rows = [
        ("Cluster", identity.id),
        ("Made", made),
        ("NATS", url),
        ("Placements", placements_line(identity.placement_shards)),
        ("Buckets", str(len(cluster_buckets(identity.placement_shards)))),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label + ':':<{width}}{value}" for label, value in rows)


def identity_document(identity: Cluster, url: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Cluster",
        "id": identity.id,
        "createdAt": identity.created_at,
        "nats": url,
        "placementShards": identity.placement_shards,
        "placementBuckets": list(names.placements_buckets(identity.placement_shards)),
        "buckets": list(identity.buckets),
    }


@click.command("cluster-info")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.pass_context
def cluster_info(ctx: click.Context, output: str) -> None:
    """Show the cluster's id, when it was made, and how its placements are kept."""
    settings = settings_of(ctx)

    async def read(client: CorralClient) -> str:
        identity = await client.cluster_identity()
        if identity is None:
            raise CorralError(
                f"no cluster at {client.url} yet: no corral service has started there"
            )
        if output == "table":
            return identity_table(identity, client.url)
        return dump(identity_document(identity, client.url), output)

    click.echo(run_with_client(settings, read))
