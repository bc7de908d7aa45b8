"""The commands that only read: get, describe, events, schema.

They read the KV buckets and the events stream directly; -o json / -o yaml give
the same data for scripts, -o wide adds columns to get.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from corral.client.api import CorralClient, CorralError, NotFound, find_kind, to_builtins
from corral.client.cli.container_commands import describe_container, render_containers
from corral.client.cli.describe import (
    deployment_description,
    describe_deployment,
    describe_node,
    describe_replica,
    events_table,
    node_description,
    with_events,
)
from corral.client.cli.kinds import (
    CLAIMS,
    CONTAINERS,
    DEPLOYMENTS,
    NETWORKING,
    NETWORKS,
    NODES,
    REPLICAS,
    SERVICES,
    SINGULAR,
    STORAGE,
    STORAGE_CLASSES,
    VOLUMES,
    not_found,
    read_kind,
    split_kind_name,
)
from corral.client.cli.kube_output import as_kube_list, kubernetes_form, read_objects
from corral.client.cli.namespaces import (
    NAMESPACE_KINDS,
    NAMESPACED_READS,
    all_namespaces_table,
    in_namespace,
    join_tables,
    namespaces_in_use,
    render_namespaces,
    split_table,
)
from corral.client.cli.net_views import (
    NET_NEEDS,
    describe_network,
    describe_service,
    network_object,
    read_net,
    render_net_get,
    service_description,
)
from corral.client.cli.options import all_namespaces
from corral.client.cli.output import as_list, dump
from corral.client.cli.runner import run_with_client, settings_of
from corral.client.cli.tables import age_since, render_table
from corral.client.cli.views import (
    NODE_HEADERS,
    NODE_WIDE_HEADERS,
    REPLICA_HEADERS,
    REPLICA_WIDE_HEADERS,
    Allocation,
    ClusterView,
    allocations,
    deployment_table,
    node_object,
    node_row,
    read_cluster,
    replica_lines,
    replica_object,
    replica_row,
)
from corral.client.cli.vol_views import VOL_NEEDS, describe_storage, read_vol, render_vol_get
from corral.contract.events import Event
from corral.contract.schema import PUBLIC_PAYLOADS, find_payload, schema_of
from corral.contract.specs import check_dns_label

_NEEDS: dict[str, tuple[str, ...]] = {
    DEPLOYMENTS: ("deployments", "statuses"),
    REPLICAS: ("deployments", "statuses", "placements", "replica_statuses"),
    NODES: ("nodes", "placements"),
    CONTAINERS: ("deployments", "statuses", "placements", "replica_statuses", "nodes"),
}


def render_get(
    view: ClusterView,
    kind: str,
    name: str | None,
    output: str,
    now: float,
    node: str | None = None,
) -> str:
    """The text of `corral get KIND [NAME] -o OUTPUT` for one read of the cluster."""
    wide = output == "wide"
    machine = output in ("json", "yaml")
    if kind == CONTAINERS:
        return render_containers(view, name, output, now)
    if kind == DEPLOYMENTS:
        if name is not None and name not in view.deployments:
            raise not_found(kind, name)
        if name is not None:
            view = ClusterView(
                deployments={name: view.deployments[name]},
                statuses={k: v for k, v in view.statuses.items() if k == name},
            )
        if machine:
            # apps/v1, as kubectl prints it: `corral apply -f` takes it back unchanged.
            items = [
                kubernetes_form(view.deployments[key], view.statuses.get(key))
                for key in sorted(view.deployments)
            ]
            return dump(items[0] if name is not None else as_kube_list(items), output)
        headers, rows = deployment_table(view, now, wide=wide)
        return render_table(headers, rows) if rows else "No deployments."
    if kind == REPLICAS:
        lines = replica_lines(view)
        if node is not None:  # pending replicas are on no node
            lines = [line for line in lines if line.node == node]
        if name is not None:
            lines = [line for line in lines if line.name == name]
            if not lines:
                raise not_found(kind, name)
        if machine:
            items = [replica_object(line) for line in lines]
            return dump(items[0] if name is not None else as_list(items), output)
        if not lines:
            return "No replicas."
        headers = REPLICA_WIDE_HEADERS if wide else REPLICA_HEADERS
        return render_table(headers, [replica_row(line, now, wide=wide) for line in lines])
    nodes = view.nodes
    if name is not None:
        if name not in nodes:
            raise not_found(kind, name)
        nodes = {name: nodes[name]}
    allocated = allocations(view.placements)
    if machine:
        items = [
            node_object(nodes[key], allocated.get(key, Allocation()), now) for key in sorted(nodes)
        ]
        return dump(items[0] if name is not None else as_list(items), output)
    if not nodes:
        return "No nodes."
    rows = [
        node_row(nodes[key], allocated.get(key, Allocation()), now, wide=wide)
        for key in sorted(nodes)
    ]
    return render_table(NODE_WIDE_HEADERS if wide else NODE_HEADERS, rows)


# The kinds `get -o yaml|json` prints as manifests `corral apply -f` takes back
# (corral.client.cli.kube_output; docs/manifests.md).
_MANIFEST_KINDS: dict[str, str] = {
    DEPLOYMENTS: "Deployment",
    NETWORKS: "Network",
    SERVICES: "Service",
    VOLUMES: "PersistentVolume",
    CLAIMS: "PersistentVolumeClaim",
    STORAGE_CLASSES: "StorageClass",
}


# What `get` shows of one name (None: all of the kind) in an output format, from what
# it read once for every name.
Render = Callable[[str | None, str], str]


def manifests_from(found: dict[str, Any], read: str) -> Render:
    """`get KIND [NAME...] -o yaml|json` of what read_objects found: the stored objects
    as manifests, a List when several."""

    def render(name: str | None, output: str) -> str:
        if name is not None and name not in found:
            raise not_found(read, name)
        chosen = list(found.values()) if name is None else [found[name]]
        items = [kubernetes_form(obj, status) for obj, status in chosen]
        return dump(items[0] if name is not None else as_kube_list(items), output)

    return render


@click.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@click.option(
    "-o", "--output", type=click.Choice(["table", "wide", "json", "yaml"]), default="table"
)
@click.option(
    "--node",
    metavar="NODE",
    help="replicas: only those placed on NODE (read from that node's keys alone).",
)
@click.pass_context
def get(
    ctx: click.Context, kind: str, names: tuple[str, ...], output: str, node: str | None
) -> None:
    """List deployments, replicas, nodes, networks, services, endpoints, pv (persistent
    volumes), pvc (claims), storageclasses or namespaces (or show those NAMES)."""
    if "/" in kind and names:
        raise click.UsageError(f"give either {kind!r} or a KIND and NAMES, not both")
    kind, name = split_kind_name(kind, names[0] if len(names) == 1 else None)
    wanted: list[str] = list(names) if len(names) > 1 else [] if name is None else [name]
    if len(set(wanted)) < len(wanted):
        raise click.UsageError("a NAME is given twice")
    namespaces = kind.lower() in NAMESPACE_KINDS
    read = "namespaces" if namespaces else read_kind(kind)
    everywhere = not namespaces and all_namespaces(ctx) and read in NAMESPACED_READS
    if everywhere and wanted:
        raise click.UsageError("-A/--all-namespaces lists a kind: give no NAME")
    if node is not None and not namespaces:
        if read != REPLICAS:
            raise click.UsageError("--node applies to `get replicas` only")
        try:
            check_dns_label("node", node)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--node") from None

    async def reader(client: CorralClient, output: str = output) -> Render:
        """Read what `get` shows of the client's namespace, once for every name."""
        if namespaces:
            in_use = await namespaces_in_use(client)
            return lambda name, output: render_namespaces(in_use, name, output)
        if output in ("json", "yaml") and read in _MANIFEST_KINDS:
            found = await read_objects(client, find_kind(_MANIFEST_KINDS[read]), wanted or None)
            return manifests_from(found, read)
        if read in NETWORKING:
            net = await read_net(client, NET_NEEDS[read])
            now = time.time()  # ages from when the read is done, as always
            return lambda name, output: render_net_get(net, read, name, output, now)
        if read in STORAGE:
            vol = await read_vol(client, VOL_NEEDS[read])
            now = time.time()
            return lambda name, output: render_vol_get(vol, read, name, output, now)
        view = await read_cluster(client, what=_NEEDS[read], node=node)
        if read != NODES:
            view = in_namespace(view, client.namespace)
        now = time.time()
        return lambda name, output: render_get(view, read, name, output, now, node)

    async def fetch(client: CorralClient) -> tuple[str, list[str]]:
        if not everywhere:
            render = await reader(client)
            if len(wanted) <= 1:  # as it always was: a missing one is the command's error
                return render(wanted[0] if wanted else None, output), []
            return several(render, wanted, output, read)
        spaces = list(await namespaces_in_use(client))
        if output in ("json", "yaml"):
            items: list[Any] = []
            for namespace in spaces:
                client.namespace = namespace
                found = json.loads((await reader(client, "json"))(None, "json"))
                for item in found.get("items", []):
                    if isinstance(item, dict) and "metadata" not in item:
                        item.setdefault("namespace", namespace)  # a replica's
                    items.append(item)
            listed = as_kube_list(items) if read in _MANIFEST_KINDS else as_list(items)
            return dump(listed, output), []

        async def table(client: CorralClient) -> str:
            return (await reader(client))(None, output)

        nothing = f"No {read} in any namespace."
        return await all_namespaces_table(client, spaces, table, nothing), []

    shown, missing = run_with_client(settings_of(ctx), fetch)
    if shown:
        click.echo(shown)
    for refusal in missing:
        click.echo(f"Error (NotFound): {refusal}", err=True)
    if missing:
        ctx.exit(1)


def several(render: Render, names: Sequence[str], output: str, read: str) -> tuple[str, list[str]]:
    """`get KIND NAME NAME...`: each one as `get KIND NAME` shows it, together (a table's
    rows under one header, a List of the objects), as kubectl shows several; and what is
    said of those not found, each on a line of its own after the others are shown (exit
    1), as kubectl says it. Only "not found" is said so: any other failure is the
    command's."""
    machine = output in ("json", "yaml")
    items: list[Any] = []
    tables: list[tuple[Sequence[str], tuple[list[str], list[list[str]]]]] = []
    missing: list[str] = []
    for name in names:
        try:
            shown = render(name, "json" if machine else output)
        except NotFound as error:
            missing.append(str(error))
            continue
        if machine:
            items.append(json.loads(shown))
        else:
            table = split_table(shown)
            if table is not None:
                tables.append(((), table))
    if machine:
        listed = as_kube_list(items) if read in _MANIFEST_KINDS else as_list(items)
        return dump(listed, output), missing
    return join_tables(tables) or "", missing


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text")
@click.option(
    "--events",
    "event_limit",
    type=int,
    default=20,
    show_default=True,
    help="How many recent events to show.",
)
@click.pass_context
def describe(
    ctx: click.Context, kind: str, name: str | None, output: str, event_limit: int
) -> None:
    """Show one deployment, replica, node, service, network, pv, pvc or storageclass in
    full: spec, status, recent events."""
    kind, name = split_kind_name(kind, name)
    read = read_kind(kind)
    if name is None:
        raise click.UsageError(f"missing NAME: corral describe {SINGULAR[read]} NAME")
    if read == "endpoints":
        raise click.BadParameter(
            "describe shows deployments, replicas, nodes, services, networks, pv, pvc and "
            "storageclasses",
            param_hint="KIND",
        )
    target = name
    if read in STORAGE:
        # a volume's and a claim's description say who uses them
        users = () if read == STORAGE_CLASSES else ("attachments", "placements")

        async def fetch_vol(client: CorralClient) -> str:
            view = await read_vol(client, (*VOL_NEEDS[read], *users))
            events = await client.events(SINGULAR[read], target, event_limit)
            return describe_storage(view, read, target, events, output, time.time())

        click.echo(run_with_client(settings_of(ctx), fetch_vol))
        return
    if read in NETWORKING:

        async def fetch_net(client: CorralClient) -> str:
            view = await read_net(client, NET_NEEDS[read])
            known = view.networks if read == NETWORKS else view.services
            if target not in known:
                raise not_found(read, target)
            events = await client.events(SINGULAR[read], target, event_limit)
            now = time.time()
            if read == NETWORKS:
                if output == "text":
                    return describe_network(view, target, events, now)
                return dump(with_events(network_object(view, target), events), output)
            if output == "text":
                namespace = view.services[target].metadata.namespace
                view.deployments = await client.deployments(namespace)
                return describe_service(view, target, events, now)
            return dump(service_description(view, target, events), output)

        click.echo(run_with_client(settings_of(ctx), fetch_net))
        return

    async def fetch(client: CorralClient) -> str:
        view = await read_cluster(client)
        if read != NODES:
            view = in_namespace(view, client.namespace)
        now = time.time()
        if read == CONTAINERS:
            if output == "text":
                return describe_container(view, target, now)
            return render_containers(view, target, output, now)
        if read == DEPLOYMENTS:
            if target not in view.deployments:
                raise not_found(read, target)
            events = await client.events("deployment", target, event_limit)
            if output == "text":
                return describe_deployment(view, target, events, now)
            return dump(deployment_description(view, target, events), output)
        if read == REPLICAS:
            found = [line for line in replica_lines(view) if line.name == target]
            if not found or found[0].placement is None:
                raise not_found(read, target)
            line = found[0]
            # The agent's events are its Deployment's; describe keeps those naming it.
            events = await client.events("deployment", line.deployment, event_limit)
            if output == "text":
                return describe_replica(view, target, events, now)
            naming = [event for event in events if target in event.message]
            return dump(with_events(replica_object(line), naming), output)
        if target not in view.nodes:
            raise not_found(read, target)
        events = await client.events("node", target, event_limit)
        if output == "text":
            return describe_node(view, target, events, now)
        return dump(node_description(view, target, events, now), output)

    click.echo(run_with_client(settings_of(ctx), fetch))


EVENT_HEADERS = ("AGE", "TYPE", "REASON", "OBJECT", "FROM", "MESSAGE")


def event_row(event: Event, now: float) -> list[str]:
    return [
        age_since(event.time, now),
        event.type,
        event.reason,
        f"{event.object_kind.lower()}/{event.object_name}",
        event.source,
        event.message,
    ]


def _follow_line(event: Event, output: str) -> str:
    if output == "json":
        return json.dumps(to_builtins(event))
    when = time.strftime("%H:%M:%S", time.localtime(event.time))
    object_ = f"{event.object_kind.lower()}/{event.object_name}"
    return f"{when}  {event.type:<8} {event.reason:<20} {object_:<30} {event.message}"


# Events are told about the API kinds, nodes, and rejected specs (corral.events.rejected.<kind>).
_EVENT_KINDS = ("node", "rejected")


def _event_object(for_object: str) -> tuple[str, str | None]:
    """'deployment/my-app' -> ('deployment', 'my-app'); 'deploy' -> ('deployment', None)."""
    kind_text, slash, name = for_object.partition("/")
    if kind_text.lower() in _EVENT_KINDS:
        kind = kind_text.lower()
    else:
        try:
            kind = find_kind(kind_text).subject_kind
        except CorralError as error:
            raise click.BadParameter(f"{error}, node or rejected", param_hint="--for") from None
    if not slash:
        return kind, None
    try:
        check_dns_label("name", name)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--for") from None
    return kind, name


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come.")
@click.option("--for", "for_object", metavar="KIND[/NAME]", help="Only this object (or kind).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="How many past events.",
)
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.pass_context
def events(
    ctx: click.Context, follow: bool, for_object: str | None, limit: int, output: str
) -> None:
    """Show recent events (corral.events.>), oldest first; --follow streams new ones."""
    kind: str | None = None
    name: str | None = None
    if for_object:
        kind, name = _event_object(for_object)
    if follow and output == "yaml":
        raise click.UsageError("--follow prints a table or JSON lines; -o yaml does not stream")

    async def fetch(client: CorralClient) -> str:
        if follow:
            if output == "table":
                click.echo(f"{'TIME':<9} {'TYPE':<8} {'REASON':<20} {'OBJECT':<30} MESSAGE")
            async for event in client.follow_events(kind, name, limit):
                click.echo(_follow_line(event, output))
            return ""
        found = await client.events(kind, name, limit)
        if output != "table":
            return dump(as_list([to_builtins(event) for event in found]), output)
        if not found:
            return "No events."
        now = time.time()
        return render_table(EVENT_HEADERS, [event_row(event, now) for event in found])

    try:
        text = run_with_client(settings_of(ctx), fetch)
    except KeyboardInterrupt:  # the way to stop --follow
        return
    if text:
        click.echo(text)


@click.command()
@click.argument("kind", required=False)
def schema(kind: str | None) -> None:
    """Print the JSON Schema of a public payload (all of them without KIND)."""
    if kind is None:
        everything: dict[str, Any] = {name: schema_of(name) for name in PUBLIC_PAYLOADS}
        click.echo(json.dumps(everything, indent=2, sort_keys=True))
        return
    try:
        name = find_payload(kind)
    except KeyError:
        known = ", ".join(PUBLIC_PAYLOADS)
        raise click.ClickException(
            f"unknown kind {kind!r}: corral's payloads are {known}"
        ) from None
    click.echo(json.dumps(schema_of(name), indent=2, sort_keys=True))


__all__ = ["describe", "events", "events_table", "get", "schema"]
