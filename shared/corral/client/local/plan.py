"""Which processes `corral up` runs: nats-server, then the four services, and netmgr's
and volmgr's node parts beside the node agent (docs/networking.md, docs/volumes.md).

Each service gets `--nats` and its own metrics port, counted from a base port
(9101 scheduler, 9102 node-agent, 9103 netmgr, 9104 volmgr, 9105 netmgr's node part,
9106 volmgr's node part by default).
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from corral.client.local.layout import Layout
from corral.client.local.nats_server import nats_server_command, nats_server_env

DEFAULT_NATS_PORT = 4222
DEFAULT_METRICS_BASE_PORT = 9101
HOST = "127.0.0.1"

# Service name -> offset from the metrics base port. Order is start order.
SERVICES: dict[str, int] = {
    "scheduler": 0,
    "node-agent": 1,
    "netmgr": 2,
    "volmgr": 3,
    "netmgr-node": 4,
    "volmgr-node": 5,
}
# The program each runs: a node part is its service's program with `--node NAME`.
NODE_PARTS = {"netmgr-node": "netmgr", "volmgr-node": "volmgr"}
_MODULES = {
    "scheduler": "corral_scheduler",
    "node-agent": "corral_node_agent",
    "netmgr": "corral_netmgr",
    "volmgr": "corral_volmgr",
}


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path
    nats_port: int = DEFAULT_NATS_PORT
    metrics_base_port: int = DEFAULT_METRICS_BASE_PORT
    node_name: str = ""  # "" means this machine's host name
    runtime: str = "docker"
    docker_host: str | None = None
    log_level: str = "INFO"

    @property
    def layout(self) -> Layout:
        return Layout.at(self.data_dir)

    @property
    def nats_url(self) -> str:
        return f"nats://{HOST}:{self.nats_port}"

    def metrics_port(self, service: str) -> int:
        return self.metrics_base_port + SERVICES[service]


@dataclass(frozen=True)
class ChildSpec:
    """One process the supervisor keeps running."""

    name: str
    command: list[str]
    log: Path
    health_url: str | None = None  # None: not an HTTP service (nats-server)
    metrics_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def local_node_name() -> str:
    """The host name made a DNS label (node names appear in keys, so never a dot)."""
    label = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:63]
    return label.strip("-") or "local"


def service_command(service: str) -> list[str]:
    """The console script beside this interpreter, else on PATH, else through this interpreter."""
    service = NODE_PARTS.get(service, service)
    script = f"corral-{service}"
    beside = Path(sys.executable).parent / script
    if beside.exists():
        return [str(beside)]
    found = shutil.which(script)
    if found:
        return [found]
    return [sys.executable, "-m", _MODULES[service]]  # its __main__, as the script runs it


def nats_child(options: UpOptions) -> ChildSpec:
    layout = options.layout
    return ChildSpec(
        name="nats",
        command=nats_server_command(HOST, options.nats_port, layout.nats_store),
        log=layout.log_of("nats"),
        env=nats_server_env(),
    )


def service_children(options: UpOptions, *, agent_id: str | None = None) -> list[ChildSpec]:
    """The services' commands; agent_id (one per data dir) stays the node agent's id."""
    layout = options.layout
    children = []
    for service in SERVICES:
        if service in NODE_PARTS and not runs_node_part(options):
            continue
        port = options.metrics_port(service)
        command = [
            *service_command(service),
            "--nats",
            options.nats_url,
            "--metrics-host",
            HOST,
            "--metrics-port",
            str(port),
            "--log-level",
            options.log_level,
        ]
        if service == "node-agent":
            command += ["--node-name", options.node_name or local_node_name()]
            command += ["--runtime", options.runtime]
            command += ["--state-dir", str(layout.agent_state_dir)]
            command += ["--networks", "on"]  # netmgr runs beside it (docs/networking.md)
            if options.docker_host:
                command += ["--docker-host", options.docker_host]
            if agent_id:
                command += ["--agent-id", agent_id]
        if service in NODE_PARTS:
            command += node_part_flags(options, service)
        base = f"http://{HOST}:{port}"
        children.append(
            ChildSpec(
                name=service,
                command=command,
                log=layout.log_of(service),
                health_url=f"{base}/healthz",
                metrics_url=f"{base}/metrics",
            )
        )
    return children


def runs_node_part(options: UpOptions) -> bool:
    """The node parts run beside an agent of real containers (not a hollow one)."""
    return options.runtime == "docker"


def node_part_flags(options: UpOptions, part: str) -> list[str]:
    """A node part's own flags: its node, its engine, and for volmgr's the folder of this
    data dir where provisioned volumes live (their images stay across `corral down`)."""
    flags = ["--node", options.node_name or local_node_name()]
    if options.docker_host:
        flags += ["--docker-host", options.docker_host]
    if part == "volmgr-node":
        flags += ["--volumes-dir", str(options.layout.volumes_dir)]
    return flags


def node_part_cleanup(options: UpOptions, part: str, *, delete_data: bool = False) -> list[str]:
    """The command that removes what a node part made on this host (run by the supervisor
    after the services stop, while nats-server still runs): netmgr's chains, routes and
    Docker networks; volmgr's unused Docker volumes, mounts and loop devices (the images
    and their data stay unless `delete_data`: `corral down --delete-volumes`)."""
    command = [
        *service_command(part),
        "--nats",
        options.nats_url,
        "--metrics-host",
        HOST,
        "--metrics-port",
        "0",
        "--log-level",
        options.log_level,
        *node_part_flags(options, part),
        "--remove-all",
    ]
    if delete_data and part == "volmgr-node":
        command.append("--delete-data")
    return command


def agent_cleanup(options: UpOptions) -> list[str]:
    """The command that stops and removes this node's replica containers (run by the
    supervisor after the services stop, before the node parts' clean-up, when `corral
    down --remove-replicas` asked for it): the node agent's `--remove-all`, which finds
    them through the cluster its state dir records."""
    command = [
        *service_command("node-agent"),
        "--log-level",
        options.log_level,
        "--node-name",
        options.node_name or local_node_name(),
        "--runtime",
        options.runtime,
        "--state-dir",
        str(options.layout.agent_state_dir),
        "--remove-all",
    ]
    if options.docker_host:
        command += ["--docker-host", options.docker_host]
    return command


def wanted_ports(options: UpOptions) -> dict[str, int]:
    """Each process' port: nats-server's, then each service's metrics port."""
    return {"nats": options.nats_port, **{s: options.metrics_port(s) for s in SERVICES}}


def port_problem(options: UpOptions) -> str | None:
    """Why these ports can never work (out of range, or one port for two processes), or None."""
    ports = wanted_ports(options)
    out_of_range = [f"{name} {port}" for name, port in ports.items() if not 0 < port < 65536]
    if out_of_range:
        return f"port(s) out of range 1-65535: {', '.join(out_of_range)}"
    owners: dict[int, list[str]] = {}
    for name, port in ports.items():
        owners.setdefault(port, []).append(name)
    shared = [f"{port} ({' and '.join(names)})" for port, names in owners.items() if len(names) > 1]
    if shared:
        return (
            f"port(s) wanted twice: {', '.join(shared)}; the services use --metrics-base-port "
            f"to +{max(SERVICES.values())}, so keep --nats-port outside that range"
        )
    return None


def busy_ports(options: UpOptions) -> list[int]:
    """The ports `corral up` needs that something else already listens on."""
    busy = []
    for port in wanted_ports(options).values():
        with socket.socket() as sock:
            # As the services and nats-server bind: a port whose only sockets are closed
            # connections (TIME_WAIT, e.g. after a `corral down`) is free to them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                busy.append(port)
    return busy
