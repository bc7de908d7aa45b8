"""`corral create service` and `corral expose deployment` (Kubernetes' words).

Both build a Service (corral.contract.network_specs), check it as netmgr will, and send
it on corral.api.service.apply; a Service of that name that exists already is refused
(change one with corral apply -f)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click

from corral.client.api import CorralClient, CorralError
from corral.client.cli.container_commands import container_service_parts
from corral.client.cli.kinds import split_kind_name
from corral.client.cli.net_requests import create_new, validated
from corral.client.cli.options import parse_labels, parse_pairs, parse_service_port
from corral.client.cli.runner import run_with_client, settings_of
from corral.contract.network_specs import HEADLESS, Service
from corral.contract.specs import API_VERSION, Deployment, replica_labels, replica_networks
from corral.contract.state import ReplicaStatus

_FLAGS = {
    "spec.selector": "--selector",
    "spec.ports": "--port",
    "spec.type": "--type",
    "spec.clusterIP": "--cluster-ip",
    "spec.network": "--network",
    "metadata.labels": "--label",
    "metadata.name": "NAME",
}
_TYPES = click.Choice(["ClusterIP", "NodePort"], case_sensitive=False)
_TYPE_METAVAR = "ClusterIP|NodePort"
_PROTOCOLS = click.Choice(["TCP", "UDP"], case_sensitive=False)
_PROTOCOL_METAVAR = "TCP|UDP"


def _canonical(value: str | None, choices: click.Choice[str]) -> str | None:
    """'nodeport' -> 'NodePort' (the flags take any case, the spec one spelling)."""
    if value is None:
        return None
    return next(str(choice) for choice in choices.choices if choice.lower() == value.lower())


def parse_selector(items: Iterable[str]) -> dict[str, str]:
    """--selector app=web,tier=front (repeatable, comma-separated as kubectl's)."""
    pairs = [part.strip() for item in items for part in item.split(",") if part.strip()]
    return parse_pairs(pairs, "--selector")


def service_manifest(
    name: str,
    *,
    selector: dict[str, str],
    ports: list[dict[str, Any]],
    type_: str,
    node_port: int | None,
    protocol: str | None,
    cluster_ip: str | None = None,
    network: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Service as JSON-able data; several unnamed ports get names (tcp-80, ...)."""
    if node_port is not None:
        if type_ != "NodePort":
            raise click.BadParameter("a node port needs --type NodePort", param_hint="--node-port")
        if len(ports) != 1:
            raise click.BadParameter(
                "give --node-port with exactly one --port", param_hint="--node-port"
            )
        ports[0]["nodePort"] = node_port
    for port in ports:
        if protocol is not None:
            port["protocol"] = protocol
        if len(ports) > 1 and "name" not in port:
            port["name"] = f"{str(port.get('protocol', 'TCP')).lower()}-{port['port']}"
    spec: dict[str, Any] = {"selector": selector, "ports": ports, "type": type_}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    if network:
        spec["network"] = network
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": API_VERSION, "kind": "Service", "metadata": metadata, "spec": spec}


@click.command("service")
@click.argument("name")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    metavar="KEY=VALUE[,...]",
    help="The replicas' labels the Service balances over, e.g. app=my-app "
    "(a Deployment's replicas carry app=<deployment> unless its template has labels).",
)
@click.option(
    "--container",
    metavar="NAME",
    help="Instead of --selector: the container NAME (corral create container), on the "
    "ports it declares unless --port is given (docs/containers.md).",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="[NAME=]PORT[:TARGET]",
    help="PORT on the Service's IP to TARGET on the replicas (a number or a template "
    "port's name; default PORT), e.g. 80:8080. Repeatable.",
)
@click.option(
    "--type", "type_", type=_TYPES, default="ClusterIP", show_default=True, metavar=_TYPE_METAVAR
)
@click.option(
    "--node-port",
    type=click.IntRange(1, 65535),
    metavar="N",
    help="NodePort only: the port on every node (default: a free one of 30000-32767).",
)
@click.option(
    "--protocol",
    type=_PROTOCOLS,
    metavar=_PROTOCOL_METAVAR,
    help="TCP (default) or UDP, for every --port.",
)
@click.option(
    "--cluster-ip",
    metavar="IP|None",
    help="A virtual IP of the service range (default: netmgr picks one); None: headless "
    "(DNS answers with the replicas' own addresses).",
)
@click.option(
    "--network", metavar="NETWORK", help="The network of its replicas (default: default)."
)
@click.option("--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.pass_context
def create_service(
    ctx: click.Context,
    name: str,
    selectors: tuple[str, ...],
    container: str | None,
    ports: tuple[str, ...],
    type_: str,
    node_port: int | None,
    protocol: str | None,
    cluster_ip: str | None,
    network: str | None,
    labels: tuple[str, ...],
) -> None:
    """Create Service NAME: a stable virtual IP, DNS name (and with --type NodePort, a port
    on every node) balanced over the ready replicas that --selector matches."""
    selector: dict[str, str] | None = None
    service_ports: list[dict[str, Any]] | None = None
    if container is not None:
        if selectors:
            raise click.UsageError("give either --selector or --container, not both")
        wanted = container
        selector, service_ports, found_network = run_with_client(
            settings_of(ctx), lambda client: container_service_parts(client, wanted, ports)
        )
        network = network or found_network
    elif not selectors:
        raise click.UsageError("missing --selector KEY=VALUE (or --container NAME)")
    elif not ports and cluster_ip != HEADLESS:
        raise click.UsageError(
            "missing --port: e.g. --port 80:8080 (only a headless Service, "
            "--cluster-ip None, may have none)"
        )
    manifest = service_manifest(
        name,
        selector=parse_selector(selectors) if selector is None else selector,
        ports=[parse_service_port(port) for port in ports]
        if service_ports is None
        else service_ports,
        type_=_canonical(type_, _TYPES) or "ClusterIP",
        node_port=node_port,
        protocol=_canonical(protocol, _PROTOCOLS),
        cluster_ip=cluster_ip,
        network=network,
        labels=parse_labels(labels),
    )
    raw = validated(manifest, Service, _FLAGS)
    create_new(settings_of(ctx), "Service", name, raw)


# --- expose ---------------------------------------------------------------------------


def _image_ports(deployment: Deployment, statuses: Iterable[ReplicaStatus]) -> set[str] | None:
    """The image's EXPOSEd ports its replicas report ("8080/tcp"), those running the
    current template first; None when no replica has reported."""
    name, namespace = deployment.metadata.name, deployment.metadata.namespace
    mine = [s for s in statuses if s.deployment == name and s.namespace == namespace]
    if not mine:
        return None
    current = deployment.spec.template.template_hash()
    newest = [s for s in mine if s.template_hash == current] or mine
    return {port.lower() for s in newest for port in s.image_ports}


def declared_port(
    deployment: Deployment, statuses: Iterable[ReplicaStatus]
) -> tuple[int, str] | str:
    """The one port a Deployment listens on: the template's when it declares exactly one,
    else the image's EXPOSE when it has exactly one. A str: why there is none."""
    name = deployment.metadata.name
    ports = deployment.spec.template.ports
    if len(ports) == 1:
        return ports[0].container_port, ports[0].protocol
    if ports:
        listed = ", ".join(f"{p.container_port}/{p.protocol}" for p in ports)
        return f"deployment {name!r} declares several container ports ({listed})"
    exposed = _image_ports(deployment, statuses)
    if exposed is None:
        return (
            f"deployment {name!r} declares no container port, and none of its replicas has "
            "reported its image's exposed ports yet"
        )
    usable = sorted(p for p in exposed if p.partition("/")[2] in ("tcp", "udp"))
    if len(usable) == 1:
        number, _, protocol = usable[0].partition("/")
        return int(number), protocol.upper()
    if usable:
        return (
            f"deployment {name!r} declares no container port and its image exposes "
            f"several ({', '.join(usable)})"
        )
    return f"deployment {name!r} declares no container port and its image exposes none"


def exposed_ports(
    deployment: Deployment,
    statuses: Iterable[ReplicaStatus],
    port: int | None,
    target: int | str | None,
) -> tuple[int, int | str, str | None]:
    """(port, targetPort, protocol or None) for `corral expose`: from the flags, else the
    Deployment's one declared or exposed port. The target defaults to that port, else to
    --port; --port defaults to the target when it is a number."""
    found = declared_port(deployment, statuses)
    known = found if isinstance(found, tuple) else None
    if port is None and target is None:
        if known is None:
            raise CorralError(
                f"{found}: give --port (the Service's port) and --target-port "
                "(the container's, a number or a port name)"
            )
        return known[0], known[0], known[1]
    protocol = known[1] if known is not None else None
    if target is None:
        target = known[0] if known is not None else port
    if port is None:
        if not isinstance(target, int):
            raise CorralError(f"--target-port {target!r} is a name: give --port as well")
        port = target
    assert target is not None
    return port, target, protocol


def _target_port(text: str | None) -> int | str | None:
    if text is None or not text.isdigit():
        return text
    number = int(text)
    if not 1 <= number <= 65535:
        raise click.BadParameter(
            f"{text!r} is not a port number (1-65535)", param_hint="--target-port"
        )
    return number


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option(
    "--type", "type_", type=_TYPES, default="ClusterIP", show_default=True, metavar=_TYPE_METAVAR
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="The Service's port (default: the container's port).",
)
@click.option(
    "--target-port",
    metavar="PORT|NAME",
    help="The container's port, a number or a template port's name (default: the port "
    "the template declares or the image exposes, else --port).",
)
@click.option(
    "--node-port",
    type=click.IntRange(1, 65535),
    metavar="N",
    help="NodePort only: the port on every node (default: a free one of 30000-32767).",
)
@click.option("--name", "service_name", help="The Service's name (default: the deployment's).")
@click.option(
    "--protocol",
    type=_PROTOCOLS,
    metavar=_PROTOCOL_METAVAR,
    help="TCP or UDP (default: the port's, else TCP).",
)
@click.pass_context
def expose(
    ctx: click.Context,
    kind: str,
    name: str | None,
    type_: str,
    port: int | None,
    target_port: str | None,
    node_port: int | None,
    service_name: str | None,
    protocol: str | None,
) -> None:
    """Expose a Deployment as a Service: corral expose deployment NAME --type=NodePort.

    The Service selects the Deployment's replicas (their labels) on its first network.
    Its port is the container port the template declares when there is exactly one,
    else the one the image EXPOSEs; otherwise give --port and --target-port."""
    kind, name = split_kind_name(kind, name)
    if kind.lower() not in ("deployment", "deployments", "deploy"):
        raise click.BadParameter(f"corral exposes deployments, not {kind!r}", param_hint="KIND")
    if name is None:
        raise click.UsageError("missing NAME: corral expose deployment NAME")
    target = _target_port(target_port)
    type_name = _canonical(type_, _TYPES) or "ClusterIP"
    if node_port is not None and type_name != "NodePort":
        raise click.BadParameter("a node port needs --type NodePort", param_hint="--node-port")
    settings = settings_of(ctx)
    deployment_name = name

    async def build(client: CorralClient) -> dict[str, Any]:
        deployment = await client.deployment(deployment_name)
        if deployment is None:
            raise CorralError(f"deployment {deployment_name!r} not found")
        statuses = (await client.replica_statuses()).values()
        number, target_number, found_protocol = exposed_ports(deployment, statuses, port, target)
        service_port: dict[str, Any] = {"port": number}
        if target_number != number:
            service_port["targetPort"] = target_number
        template = deployment.spec.template
        return service_manifest(
            service_name or deployment_name,
            selector=replica_labels(deployment_name, template),
            ports=[service_port],
            type_=type_name,
            node_port=node_port,
            protocol=_canonical(protocol, _PROTOCOLS) or found_protocol,
            network=replica_networks(template)[0],
        )

    manifest = run_with_client(settings, build)
    flags = {**_FLAGS, "metadata.name": "--name", "spec.ports": "--port"}
    raw = validated(manifest, Service, flags)
    create_new(settings, "Service", manifest["metadata"]["name"], raw)
