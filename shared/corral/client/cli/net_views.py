"""What `corral get|describe` shows of netmgr's kinds: networks, services, endpoints.

Each comes from one read of netmgr's buckets (docs/networking.md, "Records").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from corral.client.api import CorralClient, to_builtins
from corral.client.cli.describe import _fields, _mapping, _when, events_table
from corral.client.cli.kinds import not_found
from corral.client.cli.output import as_list, dump
from corral.client.cli.tables import NONE, age_since, object_table, render_table
from corral.contract.events import Event
from corral.contract.network_specs import HEADLESS, Network, Service
from corral.contract.network_state import Endpoints, NetworkSlice, NetworkStatus
from corral.contract.specs import (
    DEFAULT_NETWORK,
    Deployment,
    labels_match,
    replica_labels,
    replica_networks,
)

PENDING = "<pending>"
# `get endpoints` shows this many addresses, then "+ N more..." (as kubectl does).
ENDPOINTS_SHOWN = 3


@dataclass
class NetView:
    """One read of the networking buckets."""

    networks: dict[str, Network] = field(default_factory=dict)
    statuses: dict[str, NetworkStatus] = field(default_factory=dict)
    slices: list[NetworkSlice] = field(default_factory=list)
    services: dict[str, Service] = field(default_factory=dict)
    endpoints: dict[str, Endpoints] = field(default_factory=dict)
    # the Service's namespace's Deployments, read for `describe service` (why no endpoints)
    deployments: dict[str, Deployment] = field(default_factory=dict)


async def read_net(client: CorralClient, what: tuple[str, ...]) -> NetView:
    """Read the buckets named in `what` ("networks", "services", "endpoints") concurrently."""
    view = NetView()

    async def networks() -> None:
        view.networks = await client.networks()
        view.statuses = await client.network_statuses()
        view.slices = await client.network_slices()

    async def services() -> None:
        view.services = await client.services()

    async def endpoints() -> None:
        view.endpoints = await client.endpoints()

    readers = {"networks": networks, "services": services, "endpoints": endpoints}
    async with anyio.create_task_group() as tg:
        for name in sorted(set(what)):
            tg.start_soon(readers[name])
    return view


# --- networks -------------------------------------------------------------------------

NETWORK_HEADERS = ("NAME", "SUBNET", "SLICE", "NODES", "STATUS", "AGE")
NETWORK_WIDE_HEADERS = (*NETWORK_HEADERS, "LABELS", "MESSAGE")


def network_subnet(network: Network, status: NetworkStatus | None) -> str:
    """The range netmgr gave it (or the one asked for, until netmgr has)."""
    if status is not None and status.subnet:
        return status.subnet
    return network.spec.subnet or PENDING


def network_row(view: NetView, name: str, now: float, *, wide: bool) -> list[str]:
    network = view.networks[name]
    status = view.statuses.get(name)
    row = [
        name,
        network_subnet(network, status),
        f"/{network.spec.slice_prefix}",
        str(sum(1 for s in view.slices if s.network == name)),
        status.phase if status is not None else "Pending",
        age_since(network.metadata.creation_timestamp, now),
    ]
    if wide:
        labels = ",".join(f"{k}={v}" for k, v in sorted(network.metadata.labels.items()))
        row += [labels or NONE, (status.message if status is not None else "") or NONE]
    return row


def network_table(view: NetView, now: float, *, wide: bool) -> str:
    return object_table(
        "networks",
        view.networks,
        lambda name: network_row(view, name, now, wide=wide),
        NETWORK_HEADERS,
        NETWORK_WIDE_HEADERS,
        wide=wide,
    )


def network_object(view: NetView, name: str) -> dict[str, Any]:
    """The spec, netmgr's status, and each node's slice: what `network inspect` prints."""
    item: dict[str, Any] = to_builtins(view.networks[name])
    status = view.statuses.get(name)
    item["status"] = to_builtins(status) if status is not None else {}
    item["slices"] = [to_builtins(s) for s in view.slices if s.network == name]
    return item


def describe_network(view: NetView, name: str, events: list[Event], now: float) -> str:
    network = view.networks[name]
    status = view.statuses.get(name)
    lines = _fields(
        [
            ("Name", name),
            ("Created", _when(network.metadata.creation_timestamp, now)),
            ("Labels", _mapping(network.metadata.labels)),
            ("Subnet", network_subnet(network, status)),
            ("Slice", f"/{network.spec.slice_prefix} per node"),
            ("Status", status.phase if status is not None else "Pending"),
            ("Message", (status.message if status is not None else "") or NONE),
        ]
    )
    slices = [s for s in view.slices if s.network == name]
    if slices:
        table = render_table(
            ("NODE", "SUBNET", "GATEWAY"), [[s.node, s.subnet, s.gateway] for s in slices]
        )
        lines += ["Slices:", *("  " + line for line in table.splitlines())]
    else:
        lines.append("Slices:       <none>")
    lines += events_table(events, now)
    return "\n".join(lines)


# --- services -------------------------------------------------------------------------

SERVICE_HEADERS = ("NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE")
SERVICE_WIDE_HEADERS = (*SERVICE_HEADERS, "SELECTOR", "NETWORK")


def service_ports(service: Service) -> str:
    """kubectl's PORT(S): 80/TCP, or 80:30080/TCP for a node port; comma-joined."""
    parts = []
    for port in service.spec.ports:
        node = f":{port.node_port}" if port.node_port else ""
        parts.append(f"{port.port}{node}/{port.protocol}")
    return ",".join(parts) or NONE


def cluster_ip(service: Service) -> str:
    return service.spec.cluster_ip or PENDING


def selector_text(selector: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items())) or NONE


def service_row(service: Service, now: float, *, wide: bool) -> list[str]:
    row = [
        service.metadata.name,
        service.spec.type,
        cluster_ip(service),
        service_ports(service),
        age_since(service.metadata.creation_timestamp, now),
    ]
    if wide:
        row += [selector_text(service.spec.selector), service.spec.network or "default"]
    return row


def service_table(view: NetView, now: float, *, wide: bool) -> str:
    return object_table(
        "services",
        view.services,
        lambda name: service_row(view.services[name], now, wide=wide),
        SERVICE_HEADERS,
        SERVICE_WIDE_HEADERS,
        wide=wide,
    )


def service_object(view: NetView, name: str) -> dict[str, Any]:
    item: dict[str, Any] = to_builtins(view.services[name])
    endpoints = view.endpoints.get(name)
    item["endpoints"] = to_builtins(endpoints) if endpoints is not None else {}
    return item


# --- endpoints ------------------------------------------------------------------------

ENDPOINT_HEADERS = ("NAME", "ENDPOINTS", "AGE")


def endpoint_pairs(endpoints: Endpoints) -> list[str]:
    """kubectl's ENDPOINTS: ip:targetPort of every ready address and port (headless
    without ports: the addresses alone)."""
    ready = [a for a in endpoints.addresses if a.ready]
    if not endpoints.ports:
        return [a.ip for a in ready]
    return [f"{a.ip}:{p.target_port}" for a in ready for p in endpoints.ports]


def endpoints_text(endpoints: Endpoints | None, *, every: bool = False) -> str:
    pairs = endpoint_pairs(endpoints) if endpoints is not None else []
    if not pairs:
        return NONE
    if every or len(pairs) <= ENDPOINTS_SHOWN:
        return ",".join(pairs)
    return ",".join(pairs[:ENDPOINTS_SHOWN]) + f" + {len(pairs) - ENDPOINTS_SHOWN} more..."


def endpoints_table(view: NetView, now: float, *, wide: bool) -> str:
    """One row per Service (its Endpoints may not be written yet: <none>)."""
    names = sorted(set(view.services) | set(view.endpoints))
    if not names:
        return "No endpoints."
    rows = []
    for name in names:
        service = view.services.get(name)
        created = service.metadata.creation_timestamp if service is not None else 0.0
        rows.append(
            [name, endpoints_text(view.endpoints.get(name), every=wide), age_since(created, now)]
        )
    return render_table(ENDPOINT_HEADERS, rows)


def endpoints_object(view: NetView, name: str) -> dict[str, Any]:
    endpoints = view.endpoints.get(name)
    return to_builtins(endpoints) if endpoints is not None else {"service": name}


def describe_service(view: NetView, name: str, events: list[Event], now: float) -> str:
    """kubectl describe service: selector, type, IP, ports, endpoints, events."""
    service = view.services[name]
    spec = service.spec
    endpoints = view.endpoints.get(name)
    lines = _fields(
        [
            ("Name", name),
            ("Namespace", service.metadata.namespace),
            ("Created", _when(service.metadata.creation_timestamp, now)),
            ("Labels", _mapping(service.metadata.labels)),
            ("Selector", selector_text(spec.selector)),
            ("Type", spec.type),
            ("IP", "None (headless)" if spec.cluster_ip == HEADLESS else cluster_ip(service)),
            ("Network", spec.network or "default"),
        ]
    )
    resolved = {(p.port, p.protocol): p for p in (endpoints.ports if endpoints else [])}
    ready = [a for a in endpoints.addresses if a.ready] if endpoints else []
    for port in spec.ports:
        label = port.name or "<unset>"
        lines.append(f"Port:         {label}  {port.port}/{port.protocol}")
        found = resolved.get((port.port, port.protocol))
        target = str(port.target)  # a name netmgr has not resolved (no replica yet)
        if found is not None and found.target_port:
            named = isinstance(port.target, str)
            target = f"{found.target_port} ({port.target})" if named else str(found.target_port)
        lines.append(f"TargetPort:   {target}/{port.protocol}")
        if port.node_port:
            lines.append(f"NodePort:     {label}  {port.node_port}/{port.protocol}")
        pairs = [f"{a.ip}:{found.target_port}" for a in ready] if found else []
        lines.append(f"Endpoints:    {','.join(pairs) or NONE}")
    if not spec.ports:
        lines.append(f"Endpoints:    {','.join(a.ip for a in ready) or NONE}")
    why = "" if ready else why_no_endpoints(view, service)
    if why:
        lines.append(f"Why none:     {why}")
    not_ready = [a for a in endpoints.addresses if not a.ready] if endpoints else []
    if not_ready:
        lines.append(f"NotReady:     {','.join(a.ip for a in not_ready)}")
    if ready:
        table = render_table(
            ("ADDRESS", "REPLICA", "NODE"), [[a.ip, a.replica, a.node] for a in ready]
        )
        lines += ["Addresses:", *("  " + line for line in table.splitlines())]
    lines += events_table(events, now)
    return "\n".join(lines)


def why_no_endpoints(view: NetView, service: Service) -> str:
    """What the Deployments of the Service's namespace say of its having no endpoints,
    as netmgr chooses them (labels the selector matches, on the Service's network): none
    selected, or those selected not on its network; "" when neither explains it (replicas
    not ready or not placed yet), or the Deployments were not read."""
    selector = service.spec.selector
    if not selector or not view.deployments:
        return ""
    network = service.spec.network or DEFAULT_NETWORK
    selected = {
        name: replica_networks(deployment.spec.template)
        for name, deployment in sorted(view.deployments.items())
        if labels_match(selector, replica_labels(name, deployment.spec.template))
    }
    if not selected:
        return (
            f"no Deployment in namespace {service.metadata.namespace} has replicas the "
            f"selector {selector_text(selector)} matches"
        )
    if all(network not in networks for networks in selected.values()):
        joined = "; ".join(
            f"deployment/{name} joins {', '.join(networks)}" for name, networks in selected.items()
        )
        return f"the replicas the selector matches are not on network {network} ({joined})"
    named = {  # the port names of the replicas on its network, by Deployment
        name: sorted(p.name for p in view.deployments[name].spec.template.ports if p.name)
        for name, networks in selected.items()
        if network in networks
    }
    for index, port in enumerate(service.spec.ports):
        wanted = port.target_port
        if not isinstance(wanted, str):
            continue
        if all(wanted not in names_ for names_ in named.values()):
            listed = "; ".join(
                f"deployment/{name} names {', '.join(names_) or 'no port'}"
                for name, names_ in named.items()
            )
            return (
                f"`ports[{index}].targetPort` {wanted!r} is no port name of the replicas "
                f"the selector matches ({listed})"
            )
    return ""


def service_description(view: NetView, name: str, events: list[Event]) -> dict[str, Any]:
    item = service_object(view, name)
    item["events"] = [to_builtins(event) for event in events]
    return item


# --- get --------------------------------------------------------------------------------

# The buckets each kind's `get` reads.
NET_NEEDS: dict[str, tuple[str, ...]] = {
    "networks": ("networks",),
    "services": ("services", "endpoints"),
    "endpoints": ("services", "endpoints"),
}


def render_net_get(view: NetView, kind: str, name: str | None, output: str, now: float) -> str:
    """The text of `corral get networks|services|endpoints [NAME] -o OUTPUT`."""
    wide = output == "wide"
    known: set[str]
    if kind == "networks":
        known = set(view.networks)
    elif kind == "services":
        known = set(view.services)
    else:
        known = set(view.services) | set(view.endpoints)
    if name is not None and name not in known:
        raise not_found(kind, name)
    selected = sorted(known) if name is None else [name]
    if output in ("json", "yaml"):
        objects = [_object(view, kind, key) for key in selected]
        return dump(objects[0] if name is not None else as_list(objects), output)
    if name is not None:
        view = _only(view, kind, name)
    if kind == "networks":
        return network_table(view, now, wide=wide)
    if kind == "services":
        return service_table(view, now, wide=wide)
    return endpoints_table(view, now, wide=wide)


def _object(view: NetView, kind: str, name: str) -> dict[str, Any]:
    if kind == "networks":
        return network_object(view, name)
    if kind == "services":
        return service_object(view, name)
    return endpoints_object(view, name)


def _only(view: NetView, kind: str, name: str) -> NetView:
    if kind == "networks":
        return NetView(
            networks={name: view.networks[name]},
            statuses={k: v for k, v in view.statuses.items() if k == name},
            slices=[s for s in view.slices if s.network == name],
        )
    return NetView(
        services={k: v for k, v in view.services.items() if k == name},
        endpoints={k: v for k, v in view.endpoints.items() if k == name},
    )
