"""Docker Swarm's `docker service create|update` flags, parsed and mapped to a corral
Deployment (and a NodePort Service for --publish): pure functions over JSON-able dicts,
each error naming the flag (click.BadParameter). The meaning of each flag is in
docs/swarm.md; `corral service` (swarm_commands.py) sends what these build."""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

import click

from corral.client.cli.options import parse_pairs
from corral.contract.specs import API_VERSION

# Docker's defaults for `service create` (docker/cli opts: health check and update config).
DOCKER_HEALTH_INTERVAL = 30.0
DOCKER_HEALTH_TIMEOUT = 30.0
DOCKER_HEALTH_RETRIES = 3
DOCKER_UPDATE_PARALLELISM = 1

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str, flag: str) -> float:
    """Docker's (Go's time.ParseDuration) syntax: 10s, 1m30s, 1.5h, 300ms; "0" alone
    needs no unit. Seconds; a negative one is refused."""
    value = text.strip()
    if value == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(value):
        match = _DURATION_PART.match(value, position)
        if match is None:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not value or position != len(value):
        raise click.BadParameter(
            f"{text!r} is not a duration like 10s, 1m30s or 500ms (a number and a unit: "
            "ns, us, ms, s, m, h)",
            param_hint=flag,
        )
    return total


def whole_seconds(text: str, flag: str, *, minimum: int = 0) -> int:
    """A duration rounded up to whole seconds (corral's fields count seconds)."""
    return max(minimum, math.ceil(parse_duration(text, flag) - 1e-9))


_MEMORY_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


def parse_memory(text: str, flag: str) -> str | int:
    """Docker's memory size (RAMInBytes: 64M, 1g, 512k, 1.5G; the units are 1024-based,
    either case, an optional trailing 'b') as a corral quantity: 64M -> "64Mi"."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([bkmgtpBKMGTP]?)[bB]?\s*", text)
    if match is None:
        raise click.BadParameter(
            f"{text!r} is not a memory size like 64M, 512k or 1g", param_hint=flag
        )
    number, unit = match.group(1), match.group(2).lower()
    size = float(number) * _MEMORY_UNITS[unit]
    if size != int(size):
        raise click.BadParameter(f"{text!r} is not a whole number of bytes", param_hint=flag)
    whole = int(size)
    for suffix, factor in (
        ("Pi", 2**50),
        ("Ti", 2**40),
        ("Gi", 2**30),
        ("Mi", 2**20),
        ("Ki", 2**10),
    ):
        if whole and whole % factor == 0:
            return f"{whole // factor}{suffix}"
    return whole


def parse_cpu(text: str, flag: str) -> str:
    """Docker's CPU count (a decimal number of CPUs: 0.5, 2) as a corral quantity."""
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+", text.strip()) is None:
        raise click.BadParameter(f"{text!r} is not a number of CPUs like 0.5 or 2", param_hint=flag)
    return text.strip()


@dataclass(frozen=True)
class Published:
    """One --publish: `published` is the node port (0: netmgr picks one of 30000-32767)."""

    target: int
    published: int
    protocol: str  # "TCP" | "UDP"

    def service_port(self) -> dict[str, Any]:
        port: dict[str, Any] = {"port": self.target, "protocol": self.protocol}
        if self.published:
            port["nodePort"] = self.published
        return port


def _port(text: str, what: str, flag: str, given: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise click.BadParameter(
            f"{what} {text!r} in {given!r} is not a port number (1-65535)", param_hint=flag
        )
    return int(text)


def _protocol(text: str, flag: str, given: str) -> str:
    if text.lower() not in ("tcp", "udp"):
        raise click.BadParameter(
            f"protocol {text!r} in {given!r}: corral publishes tcp or udp", param_hint=flag
        )
    return text.upper()


def parse_publish(text: str, flag: str = "--publish") -> Published:
    """Docker's two forms: `[PUBLISHED:]TARGET[/PROTOCOL]` and
    `published=P,target=T[,protocol=tcp|udp][,mode=ingress]`. A target is required (as
    Docker); `mode=host` (a port on the replica's node only) is refused."""
    if "=" in text:
        fields: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("published", "target", "protocol", "mode"):
                raise click.BadParameter(
                    f"{item!r} in {text!r}: expected published=, target=, protocol= or mode=",
                    param_hint=flag,
                )
            fields[key] = value.strip()
        if fields.get("mode", "ingress") != "ingress":
            raise click.BadParameter(
                f"mode={fields['mode']} in {text!r}: corral publishes in ingress mode only "
                "(the port on every node)",
                param_hint=flag,
            )
        if not fields.get("target"):
            raise click.BadParameter(
                f"{text!r} has no target: give target=PORT (the container's port)",
                param_hint=flag,
            )
        published = fields.get("published", "")
        return Published(
            target=_port(fields["target"], "target port", flag, text),
            published=_port(published, "published port", flag, text) if published else 0,
            protocol=_protocol(fields.get("protocol", "tcp"), flag, text),
        )
    ports, slash, protocol = text.partition("/")
    published, colon, target = ports.rpartition(":")
    if colon and not published:
        raise click.BadParameter(
            f"{text!r} has ':' but no published port before it", param_hint=flag
        )
    if not target:
        raise click.BadParameter(
            f"{text!r} has no target port: give PUBLISHED:TARGET, e.g. 8080:80", param_hint=flag
        )
    if ":" in published:
        raise click.BadParameter(
            f"{text!r}: corral publishes on every node's addresses; an IP before the port "
            "is not supported",
            param_hint=flag,
        )
    return Published(
        target=_port(target, "target port", flag, text),
        published=_port(published, "published port", flag, text) if published else 0,
        protocol=_protocol(protocol, flag, text) if slash else "TCP",
    )


@dataclass(frozen=True)
class Mount:
    volume: dict[str, Any]
    mount: dict[str, Any]


def _volume_name(text: str) -> str:
    """A template volume's name (a DNS label) for a mount target: /var/lib/data -> var-lib-data."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63].strip("-")
    return name or "root"


def parse_mount(text: str, flag: str = "--mount") -> Mount:
    """Docker's --mount: `type=volume,source=CLAIM,target=/path[,readonly]` mounts the
    PersistentVolumeClaim CLAIM; a volume without a source, and `type=tmpfs`, are a
    directory that lives with the replica (emptyDir; tmpfs: in memory, `tmpfs-size`).
    `type=bind` (a host path) is refused."""
    fields: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep and key in ("readonly", "ro"):
            value = "true"
        elif not sep:
            raise click.BadParameter(f"{item!r} in {text!r} is not KEY=VALUE", param_hint=flag)
        key = {"src": "source", "dst": "target", "destination": "target", "ro": "readonly"}.get(
            key, key
        )
        if key not in ("type", "source", "target", "readonly", "tmpfs-size"):
            raise click.BadParameter(
                f"{key!r} in {text!r} is not supported (corral takes type, source, target, "
                "readonly and tmpfs-size)",
                param_hint=flag,
            )
        fields[key] = value.strip()
    kind = fields.get("type", "volume").lower()
    if kind not in ("volume", "tmpfs"):
        raise click.BadParameter(
            f"type={kind} in {text!r}: corral mounts type=volume (a claim) or type=tmpfs, "
            "never a host path",
            param_hint=flag,
        )
    target = fields.get("target", "")
    if not target:
        raise click.BadParameter(f"{text!r} has no target=PATH", param_hint=flag)
    readonly = fields.get("readonly", "false").lower()
    if readonly not in ("true", "false", "1", "0"):
        raise click.BadParameter(
            f"readonly={readonly} in {text!r}: expected true or false", param_hint=flag
        )
    read_only = readonly in ("true", "1")
    source = fields.get("source", "")
    volume: dict[str, Any]
    if kind == "volume" and source:
        volume = {"name": source, "persistentVolumeClaim": {"claimName": source}}
        if read_only:
            volume["persistentVolumeClaim"]["readOnly"] = True
    else:
        if kind == "tmpfs" and source:
            raise click.BadParameter(f"{text!r}: a tmpfs mount has no source", param_hint=flag)
        empty: dict[str, Any] = {"medium": "Memory"} if kind == "tmpfs" else {}
        if "tmpfs-size" in fields:
            if kind != "tmpfs":
                raise click.BadParameter(f"{text!r}: tmpfs-size is for type=tmpfs", param_hint=flag)
            empty["sizeLimit"] = parse_memory(fields["tmpfs-size"], flag)
        volume = {"name": _volume_name(target), "emptyDir": empty}
    mount: dict[str, Any] = {"name": volume["name"], "mountPath": target}
    if read_only:
        mount["readOnly"] = True
    return Mount(volume, mount)


def parse_constraint(text: str, flag: str = "--constraint") -> tuple[str, str]:
    """Swarm's `node.labels.KEY==VALUE` as one nodeSelector pair; other constraints
    (`!=`, node.hostname, node.role, engine labels) are refused."""
    match = re.fullmatch(r"\s*node\.labels\.([^=!\s]+)\s*==\s*(\S*)\s*", text)
    if match is None:
        raise click.BadParameter(
            f"{text!r}: corral supports node.labels.KEY==VALUE constraints only (a node "
            "selector: nodes whose labels include every pair)",
            param_hint=flag,
        )
    return match.group(1), match.group(2)


def parse_constraints(items: Iterable[str], flag: str = "--constraint") -> dict[str, str]:
    selector: dict[str, str] = {}
    for item in items:
        key, value = parse_constraint(item, flag)
        if selector.get(key, value) != value:
            raise click.BadParameter(
                f"node.labels.{key} is constrained to both {selector[key]!r} and {value!r}",
                param_hint=flag,
            )
        selector[key] = value
    return selector


_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "WINCH", "KILL")
_SIGNAL_NUMBERS = {"15": "TERM", "2": "INT", "3": "QUIT", "1": "HUP", "10": "USR1", "12": "USR2"}


def parse_stop_signal(text: str, flag: str = "--stop-signal") -> str:
    """SIGTERM, TERM or 15 -> "SIGTERM" (the signals corral's stopSignal takes)."""
    name = text.strip().upper()
    name = _SIGNAL_NUMBERS.get(name, name)
    name = name.removeprefix("SIG")
    if name not in _SIGNALS:
        raise click.BadParameter(
            f"{text!r}: expected one of {', '.join('SIG' + s for s in _SIGNALS)}", param_hint=flag
        )
    return f"SIG{name}"


def health_probe(
    command: str,
    *,
    interval: str | None,
    timeout: str | None,
    retries: int | None,
    start_period: str | None,
) -> dict[str, Any]:
    """Docker's --health-cmd (run by a shell, as Docker's CMD-SHELL) and its timings, as a
    corral exec probe: interval -> periodSeconds, timeout -> timeoutSeconds, retries ->
    failureThreshold, start-period -> initialDelaySeconds; Docker's defaults (30s, 30s, 3)."""
    period = (
        whole_seconds(interval, "--health-interval", minimum=1)
        if interval
        else int(DOCKER_HEALTH_INTERVAL)
    )
    limit = (
        whole_seconds(timeout, "--health-timeout", minimum=1)
        if timeout
        else int(DOCKER_HEALTH_TIMEOUT)
    )
    probe: dict[str, Any] = {
        "exec": {"command": ["/bin/sh", "-c", command]},
        "periodSeconds": period,
        "timeoutSeconds": limit,
        "failureThreshold": DOCKER_HEALTH_RETRIES if retries is None else retries,
    }
    if start_period:
        probe["initialDelaySeconds"] = whole_seconds(start_period, "--health-start-period")
    return probe


def update_strategy(parallelism: int, order: str) -> dict[str, Any]:
    """--update-parallelism N with --update-order: stop-first (Docker's default) stops N
    old replicas before starting new ones (maxUnavailable N, maxSurge 0); start-first
    starts N new ones first (maxSurge N, maxUnavailable 0). N = 0: all at once (100%)."""
    step: int | str = parallelism if parallelism else "100%"
    if order == "start-first":
        rolling = {"maxSurge": step, "maxUnavailable": 0}
    else:
        rolling = {"maxSurge": 0, "maxUnavailable": step}
    return {"type": "RollingUpdate", "rollingUpdate": rolling}


def order_of(strategy: dict[str, Any]) -> tuple[int, str]:
    """(parallelism, order) back from a stored strategy (for `service update` changing one
    of the two, and `inspect --pretty`); Kubernetes-style bounds read as the closest."""
    rolling = strategy.get("rollingUpdate") or {}
    surge, unavailable = rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%")

    def count(value: Any) -> int:
        return 0 if value == "100%" else value if isinstance(value, int) else 1

    if unavailable in (0, "0%"):
        return count(surge), "start-first"
    return count(unavailable), "stop-first"


# Docker's `service create|update` flags corral does not take, with why (the error names
# the flag). Value: True when the flag takes a value.
UNSUPPORTED: dict[str, tuple[bool, str]] = {
    "--cap-add": (True, "corral does not change a container's capabilities"),
    "--cap-drop": (True, "corral does not change a container's capabilities"),
    "--config": (True, "corral has no configs"),
    "--secret": (True, "corral has no secrets"),
    "--container-label": (True, "replicas are labelled app=NAME, which the Service selects"),
    "--credential-spec": (True, "Windows only"),
    "--dns": (True, "replicas use corral's DNS server"),
    "--dns-option": (True, "replicas use corral's DNS server"),
    "--dns-search": (True, "replicas use corral's DNS server"),
    "--endpoint-mode": (True, "a published service always has a virtual IP"),
    "--entrypoint": (True, "give the command after IMAGE (it replaces the image's CMD)"),
    "--env-file": (True, "give each variable with --env"),
    "--generic-resource": (True, "corral schedules cpu and memory only"),
    "--group": (True, "corral does not set supplementary groups"),
    "--host": (True, "corral does not edit /etc/hosts"),
    "--hostname": (True, "a replica's hostname is its container's"),
    "--isolation": (True, "Windows only"),
    "--log-driver": (True, "the node's Docker engine logs as configured"),
    "--log-opt": (True, "the node's Docker engine logs as configured"),
    "--max-concurrent": (True, "jobs are not supported"),
    "--placement-pref": (True, "corral spreads replicas over nodes by itself"),
    "--replicas-max-per-node": (True, "corral spreads replicas over nodes by itself"),
    "--restart-condition": (True, "a replica is always restarted, with a back-off"),
    "--restart-delay": (True, "a replica is always restarted, with a back-off"),
    "--restart-max-attempts": (True, "a replica is always restarted, with a back-off"),
    "--restart-window": (True, "a replica is always restarted, with a back-off"),
    "--rollback-delay": (True, "a rollback rolls out as an update (the --update-* settings)"),
    "--rollback-failure-action": (True, "a rollback rolls out as an update"),
    "--rollback-max-failure-ratio": (True, "a rollback rolls out as an update"),
    "--rollback-monitor": (True, "a rollback rolls out as an update"),
    "--rollback-order": (True, "a rollback rolls out as an update"),
    "--rollback-parallelism": (True, "a rollback rolls out as an update"),
    "--sysctl": (True, "corral does not set sysctls"),
    "--ulimit": (True, "corral does not set ulimits"),
    "--update-max-failure-ratio": (True, "a rollout fails on its progress deadline instead"),
    "--update-monitor": (True, "a rollout fails on its progress deadline instead"),
    "--user": (True, "the image's USER runs the container"),
    "--workdir": (True, "the image's WORKDIR is used"),
    "--limit-pids": (True, "corral limits cpu and memory only"),
    "--health-start-interval": (True, "probes run every --health-interval"),
    "--init": (False, "the image's entrypoint is the container's first process"),
    "--no-healthcheck": (False, "corral never runs an image's HEALTHCHECK as a probe"),
    "--no-resolve-image": (False, "nodes resolve the image when they pull it"),
    "--read-only": (False, "corral does not make the root filesystem read-only"),
    "--tty": (False, "replicas run without a terminal"),
    "--with-registry-auth": (False, "nodes pull with their own engine's credentials"),
}
_SHORT_UNSUPPORTED = {"-u": "--user", "-w": "--workdir", "-t": "--tty"}


def refuse_unsupported(args: Iterable[str], valued: Container[str]) -> None:
    """A clear error for the first Docker flag corral does not take (before click, whose
    own error would only say "no such option"), up to the IMAGE argument. `valued`: the
    command's own options that take a value (the next argument is that value)."""
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        if arg == "--" or not arg.startswith("-") or arg == "-":
            return
        flag = arg.partition("=")[0]
        if flag in valued and "=" not in arg:
            skip_value = True
            continue
        flag = _SHORT_UNSUPPORTED.get(flag, flag)
        if flag in UNSUPPORTED:
            raise click.UsageError(f"{flag} is not supported by corral: {UNSUPPORTED[flag][1]}")


def env_pairs(items: Iterable[str], flag: str) -> dict[str, str]:
    return parse_pairs(items, flag)


def deployment_manifest(
    name: str,
    *,
    template: dict[str, Any],
    replicas: int,
    strategy: dict[str, Any],
    min_ready_seconds: int,
    auto_rollback: bool,
    labels: dict[str, str],
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    spec: dict[str, Any] = {"replicas": replicas, "template": template, "strategy": strategy}
    if min_ready_seconds:
        spec["minReadySeconds"] = min_ready_seconds
    if auto_rollback:
        spec["autoRollback"] = {}
    return {"apiVersion": API_VERSION, "kind": "Deployment", "metadata": metadata, "spec": spec}


# A field of the manifest `service create|update` builds -> the flag it came from (an
# error decoding it names the flag).
DEPLOYMENT_FLAGS = {
    "metadata.name": "--name",
    "metadata.labels": "--label",
    "spec.replicas": "--replicas",
    "spec.minReadySeconds": "--update-delay",
    "spec.strategy": "--update-parallelism",
    "spec.template.image": "IMAGE",
    "spec.template.args": "COMMAND",
    "spec.template.env": "--env",
    "spec.template.networks": "--network",
    "spec.template.volumes": "--mount",
    "spec.template.volumeMounts": "--mount",
    "spec.template.nodeSelector": "--constraint",
    "spec.template.resources.limits.cpu": "--limit-cpu",
    "spec.template.resources.limits.memory": "--limit-memory",
    "spec.template.resources.requests.cpu": "--reserve-cpu",
    "spec.template.resources.requests.memory": "--reserve-memory",
    "spec.template.resources": "--limit-cpu",
    "spec.template.readinessProbe": "--health-cmd",
    "spec.template.livenessProbe": "--health-cmd",
    "spec.template.terminationGracePeriodSeconds": "--stop-grace-period",
    "spec.template.stopSignal": "--stop-signal",
    "spec.progressDeadlineSeconds": "--update-delay",
}
SERVICE_FLAGS = {"spec.ports": "--publish", "metadata.name": "--name"}
