"""Compose files (the Compose Specification) as corral objects (docs/compose.md).

A Compose file is told by its shape: a top-level `services:` mapping and no
`apiVersion`/`kind`. It is read as Compose reads it (YAML with anchors and merge keys,
`${VAR}` interpolation from the environment and a `.env` file beside it), validated
against the official Compose Specification JSON Schema (compose_spec.json, vendored
from github.com/compose-spec/compose-spec, Apache-2.0), then translated: each service a
Deployment (and a Service of its name), each network of the file a corral Network
`<project>-<network>`, each named volume a PersistentVolumeClaim, all in the project's
namespace. Every object is then decoded exactly as a manifest is
(corral.client.cli.manifests.parse_document), so the whole file is checked before
anything is sent. Keys corral does not support are collected into one warning; keys
whose loss would change what the file means are refused, naming the key.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from corral.client.api import CorralError
from corral.client.cli.manifests import (
    BoundedLoader,
    Manifest,
    check_unique_objects,
    parse_document,
)
from corral.client.cli.swarm_flags import (
    DOCKER_HEALTH_INTERVAL,
    DOCKER_HEALTH_RETRIES,
    DOCKER_HEALTH_TIMEOUT,
    parse_constraint,
    parse_cpu,
    parse_duration,
    parse_memory,
    parse_stop_signal,
    update_strategy,
)
from corral.contract.specs import API_VERSION, check_dns_label

SCHEMA_FILE = Path(__file__).with_name("compose_spec.json")

# The labels Docker Compose puts on what it makes; corral puts the same on every object
# of a project (`corral stack` finds a project's objects by them).
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NETWORK_LABEL = "com.docker.compose.network"
VOLUME_LABEL = "com.docker.compose.volume"

# A named volume's claim size when the file gives none (`driver_opts: {size: ...}`).
DEFAULT_CLAIM_SIZE = "1Gi"
# Compose's network for services that name none.
DEFAULT_COMPOSE_NETWORK = "default"
# At most this many values in a Compose file once its aliases are followed (a few
# hundred bytes of nested aliases would otherwise expand without bound: "billion laughs").
MAX_COMPOSE_NODES = 100_000

PROJECT_ENV = "COMPOSE_PROJECT_NAME"


class ComposeError(CorralError):
    """A Compose file corral cannot run as it is: the message names the file and key."""


# --- reading ---------------------------------------------------------------------------


class _ComposeLoader(BoundedLoader):
    """YAML as Compose files use it: anchors, aliases and merge keys (`<<: *common`)
    allowed (their expansion is bounded by MAX_COMPOSE_NODES after loading); nesting and
    integers bounded as for manifests."""

    what = "a Compose file"


def is_compose(document: Any) -> bool:
    """A Compose file's shape: a mapping with a `services:` mapping and no apiVersion/kind."""
    return (
        isinstance(document, dict)
        and isinstance(document.get("services"), dict)
        and "apiVersion" not in document
        and "kind" not in document
    )


def _count_nodes(value: Any, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ComposeError(f"more than {MAX_COMPOSE_NODES} values once its aliases are expanded")
    if isinstance(value, dict):
        for key, item in value.items():
            _count_nodes(key, budget)
            _count_nodes(item, budget)
    elif isinstance(value, list):
        for item in value:
            _count_nodes(item, budget)


def read_compose(text: str, source: str, *, strict: bool = False) -> dict[str, Any] | None:
    """The Compose file in `text` as plain data, or None when it is not one (a manifest:
    corral.client.cli.manifests reads it). Text that is not YAML is None too (the
    manifest reader reports it, as it always did), or with `strict` a ComposeError."""
    try:
        documents = [d for d in yaml.load_all(text, Loader=_ComposeLoader) if d is not None]
    except (yaml.YAMLError, ValueError) as error:
        if strict:
            raise ComposeError(f"{source}: not valid YAML: {error}") from None
        return None
    if len(documents) != 1 or not is_compose(documents[0]):
        return None
    document: dict[str, Any] = documents[0]
    try:
        _count_nodes(document, [MAX_COMPOSE_NODES])
    except ComposeError as error:
        raise ComposeError(f"{source}: {error}") from None
    return document


# --- interpolation (Compose's ${VAR} syntax) -------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_env_file(path: Path) -> dict[str, str]:
    """A `.env` / `env_file` file: KEY=VALUE lines (`export ` allowed, quotes stripped,
    `#` comments and blank lines skipped); a bare KEY takes its value from the
    environment (left out when unset), as Compose does."""
    found: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            if key in os.environ:
                found[key] = os.environ[key]
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        found[key] = value
    return found


def _substitute(text: str, env: Mapping[str, str], path: str) -> str:
    """One string with $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error}, ${VAR:+other}, ${VAR+other} replaced and $$ made $."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                if text.startswith("${", j):
                    depth += 1
                    j += 2
                    continue
                if text[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise ComposeError(f"`{path}`: {text!r} has an unclosed '${{'")
            out.append(_expression(text[i + 2 : j - 1], env, path))
            i = j
            continue
        match = _NAME.match(text, i + 1)
        if match is None:
            out.append("$")
            i += 1
            continue
        out.append(env.get(match.group(), ""))
        i = match.end()
    return "".join(out)


def _expression(inner: str, env: Mapping[str, str], path: str) -> str:
    match = _NAME.match(inner)
    if match is None:
        raise ComposeError(f"`{path}`: '${{{inner}}}' is not a variable reference")
    name, rest = match.group(), inner[match.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(operator):
            word = rest[len(operator) :]
            unset = value is None or (operator.startswith(":") and value == "")
            kind = operator[-1]
            if kind == "-":
                return _substitute(word, env, path) if unset else str(value)
            if kind == "+":
                return "" if unset else _substitute(word, env, path)
            if unset:
                why = _substitute(word, env, path) or f"{name} is not set"
                raise ComposeError(f"`{path}`: required variable {name}: {why}")
            return str(value)
    raise ComposeError(f"`{path}`: '${{{inner}}}': unknown operator after {name}")


def interpolate(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Every string value of the file interpolated (keys are not, as in Compose); each
    error names the key it is in."""
    if isinstance(value, str):
        return _substitute(value, env, path or "(top level)")
    if isinstance(value, dict):
        return {key: interpolate(item, env, _join(path, str(key))) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, f"{path}[{index}]") for index, item in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- validation (the Compose Specification's schema) ------------------------------------


@cache
def _validator() -> Any:
    import jsonschema  # type: ignore[import-untyped]  # only for Compose files

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema)


def _schema_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path or "(top level)"


def validate(document: dict[str, Any], source: str) -> None:
    """The file against the Compose Specification's JSON Schema: the first error (the
    one nearest the top of the file), naming its key."""
    errors = sorted(_validator().iter_errors(document), key=lambda e: (len(e.path), str(e.path)))
    if errors:
        error = errors[0]
        raise ComposeError(
            f"{source}: `{_schema_path(error.absolute_path)}`: {error.message} "
            "(the Compose Specification)"
        )


# --- the project name -------------------------------------------------------------------


def normalize_project_name(text: str) -> str:
    """As Compose normalizes a folder's name: lowercase, only a-z 0-9 _ -, no leading
    _ or -."""
    return re.sub(r"[^a-z0-9_-]", "", text.lower()).lstrip("_-")


def project_name(explicit: str | None, document: Mapping[str, Any], source: str) -> str:
    """The stack name or -p, else $COMPOSE_PROJECT_NAME, else the file's top-level
    `name:`, else the name of the file's folder normalized as Compose does (stdin: the
    current folder). corral uses it as the project's namespace, so it must be a DNS
    label (Compose also allows '_', which no namespace may have)."""
    given: str | None = explicit or os.environ.get(PROJECT_ENV) or None
    where = "the project name (-p or STACK)" if explicit else f"${PROJECT_ENV}"
    if given is None and isinstance(document.get("name"), str) and document["name"]:
        given, where = document["name"], f"{source}: `name`"
    if given is None:
        folder = Path.cwd() if source == "<stdin>" else Path(source).resolve().parent
        given = normalize_project_name(folder.name)
        where = f"the project name from the folder of {source} ({folder.name!r})"
        if not given:
            raise ComposeError(f"{where}: nothing is left of it; give one with -p or `name:`")
    try:
        check_dns_label("project name", given)
    except ValueError:
        raise ComposeError(
            f"{where}: {given!r} is not a DNS label: corral uses the project name as its "
            "namespace (at most 63 lowercase letters, digits and '-'); give another with -p, "
            "a STACK name or `name:`"
        ) from None
    return given


# --- translation ------------------------------------------------------------------------

# Service keys corral translates; the rest of the schema's keys are either refused
# (their loss changes what runs) or listed in the warning.
_SERVICE_KEYS = frozenset(
    {
        "image",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "healthcheck",
        "networks",
        "volumes",
        "ports",
        "expose",
        "stop_signal",
        "stop_grace_period",
        "labels",
        "deploy",
        "restart",
        "mem_limit",
        "mem_reservation",
        "cpus",
        "scale",
        "profiles",
    }
)
_REFUSED_SERVICE_KEYS = {
    "build": "corral runs images, it does not build them: give `image`",
    "network_mode": "a replica always has its own network namespace on corral networks",
    "pid": "replicas never share a PID namespace",
    "ipc": "replicas never share an IPC namespace",
    "uts": "replicas never share a UTS namespace",
    "userns_mode": "replicas run in the engine's default user namespace",
    "volumes_from": "replicas never share another container's volumes",
    "extends": "corral reads one file: merge the service it extends into it",
    "user": "replicas run as the image's user",
    "working_dir": "replicas start in the image's working directory",
    "secrets": "corral has no secrets: the files would be missing",
    "configs": "corral has no configs: the files would be missing",
    "privileged": "replicas never run privileged",
    "devices": "replicas get no host devices",
    "gpus": "replicas get no GPUs",
    "provider": "corral runs containers only",
    "models": "corral runs containers only",
    "use_api_socket": "replicas get no Docker API socket",
}
# Compose's `restart` and Swarm's deploy.restart_policy.condition as the template's
# restartPolicy (the node agent restarts an exited replica on its node by it). Without
# either: Always, as `docker stack deploy` (Swarm's condition `any`).
_RESTARTS = {
    "no": "Never",
    "always": "Always",
    "unless-stopped": "Always",
    "on-failure": "OnFailure",
}
_SWARM_RESTARTS = {"any": "Always", "on-failure": "OnFailure", "none": "Never"}


@dataclass
class _Context:
    source: str
    project: str
    base_dir: Path
    env: Mapping[str, str]
    unsupported: list[str]

    def fail(self, path: str, why: str) -> ComposeError:
        return ComposeError(f"{self.source}: `{path}`: {why}")

    def warn(self, path: str) -> None:
        if path not in self.unsupported:
            self.unsupported.append(path)

    def labels(self, **extra: str) -> dict[str, str]:
        return {PROJECT_LABEL: self.project, **extra}


T = TypeVar("T")


def _flag(ctx: _Context, path: str, parse: Callable[[], T]) -> T:
    """A swarm_flags parser's click.BadParameter as an error naming the Compose key."""
    try:
        return parse()
    except click.BadParameter as error:
        raise ctx.fail(path, error.message) from None


def _pairs(ctx: _Context, value: Any, path: str) -> dict[str, str | None]:
    """Compose's list_or_dict: ["K=V", "K"] or {K: V}; a value-less K is None."""
    found: dict[str, str | None] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found[str(key)] = None if item is None else _text(item)
        return found
    for index, item in enumerate(value or []):
        key, sep, text = str(item).partition("=")
        if not key:
            raise ctx.fail(f"{path}[{index}]", f"{item!r} has no name before '='")
        found[key] = text if sep else None
    return found


def _text(value: Any) -> str:
    """A scalar as Compose turns it into text (YAML's true -> "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _int(ctx: _Context, value: Any, path: str) -> int:
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
    ):
        raise ctx.fail(path, f"{value!r} is not a whole number")
    return int(value)


def _seconds(ctx: _Context, value: Any, path: str, minimum: int = 0) -> int:
    """A Compose duration ("1m30s", "10s", "500ms") in whole seconds, rounded up."""
    seconds = _flag(ctx, path, lambda: parse_duration(_text(value), path))
    return max(minimum, math.ceil(seconds - 1e-9))


def _memory(ctx: _Context, value: Any, path: str) -> str | int:
    return _flag(ctx, path, lambda: parse_memory(_text(value), path))


def _constraint(ctx: _Context, text: str, path: str) -> tuple[str, str]:
    return _flag(ctx, path, lambda: parse_constraint(text, path))


def _args(ctx: _Context, value: Any, path: str) -> list[str]:
    """`command`/`entrypoint`: a list as it is, a string split as a shell would."""
    if isinstance(value, list):
        return [_text(item) for item in value]
    try:
        return shlex.split(str(value))
    except ValueError as error:  # "No closing quotation", "No escaped character"
        raise ctx.fail(path, f"{value!r} does not split as a shell would: {error}") from None


def _warn_keys(ctx: _Context, value: Any, path: str, known: frozenset[str]) -> None:
    if isinstance(value, dict):
        for key in value:
            if key not in known and not str(key).startswith("x-"):
                ctx.warn(_join(path, str(key)))


@dataclass(frozen=True)
class _Network:
    key: str  # the file's name for it
    name: str  # the corral network's name
    created: bool  # made for the project (False: external)


def _networks(ctx: _Context, document: dict[str, Any], used: set[str]) -> dict[str, _Network]:
    declared: dict[str, Any] = dict(document.get("networks") or {})
    if DEFAULT_COMPOSE_NETWORK in used and DEFAULT_COMPOSE_NETWORK not in declared:
        declared[DEFAULT_COMPOSE_NETWORK] = None
    found = {}
    for key, value in declared.items():
        config = value or {}
        path = f"networks.{key}"
        _warn_keys(ctx, config, path, frozenset({"name", "external", "driver", "ipam", "labels"}))
        driver = config.get("driver")
        if driver not in (None, "bridge", "overlay"):
            raise ctx.fail(
                f"{path}.driver",
                f"{driver!r}: corral networks span every node (Compose's bridge, Swarm's "
                "overlay); other drivers are not supported",
            )
        external = config.get("external")
        name = config.get("name") or (str(key) if external else f"{ctx.project}-{key}")
        found[str(key)] = _Network(str(key), str(name), not external)
    return found


def _network_objects(
    ctx: _Context, document: dict[str, Any], networks: dict[str, _Network]
) -> list[tuple[dict[str, Any], str]]:
    objects = []
    for network in networks.values():
        if not network.created:
            continue
        path = f"networks.{network.key}"
        config = (document.get("networks") or {}).get(network.key) or {}
        labels = {str(k): v or "" for k, v in _pairs(ctx, config.get("labels"), path).items()}
        own = {**labels, **ctx.labels(**{NETWORK_LABEL: network.key})}
        metadata: dict[str, Any] = {"name": network.name, "labels": own}
        spec: dict[str, Any] = {}
        ipam = config.get("ipam") or {}
        _warn_keys(ctx, ipam, f"{path}.ipam", frozenset({"config"}))
        for index, item in enumerate(ipam.get("config") or []):
            item_path = f"{path}.ipam.config[{index}]"
            _warn_keys(ctx, item, item_path, frozenset({"subnet"}))
            if index:
                ctx.warn(item_path)
            elif item.get("subnet"):
                spec["subnet"] = item["subnet"]
        document_ = {"apiVersion": API_VERSION, "kind": "Network", "metadata": metadata}
        if spec:
            document_["spec"] = spec
        objects.append((document_, path))
    return objects


def _volume_objects(ctx: _Context, document: dict[str, Any]) -> tuple[list[Any], dict[str, str]]:
    """The claims of the file's named volumes, and each volume's claim name."""
    objects = []
    claims = {}
    for key, value in (document.get("volumes") or {}).items():
        config = value or {}
        path = f"volumes.{key}"
        _warn_keys(
            ctx, config, path, frozenset({"name", "external", "driver", "driver_opts", "labels"})
        )
        if config.get("driver") not in (None, "local"):
            ctx.warn(f"{path}.driver")
        options = dict(config.get("driver_opts") or {})
        size = options.pop("size", None)
        for option in options:
            ctx.warn(f"{path}.driver_opts.{option}")
        name = str(config.get("name") or key)
        claims[str(key)] = name
        if config.get("external"):
            continue
        labels = {str(k): v or "" for k, v in _pairs(ctx, config.get("labels"), path).items()}
        objects.append(
            (
                {
                    "apiVersion": API_VERSION,
                    "kind": "PersistentVolumeClaim",
                    "metadata": {
                        "name": name,
                        "namespace": ctx.project,
                        "labels": {**labels, **ctx.labels(**{VOLUME_LABEL: str(key)})},
                    },
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {
                            "requests": {"storage": _storage(size) or DEFAULT_CLAIM_SIZE}
                        },
                    },
                },
                path,
            )
        )
    return objects, claims


def _storage(size: Any) -> str | None:
    """`driver_opts.size` ("1G", "512m", "64Mi") as a corral quantity."""
    if size is None:
        return None
    text = _text(size).strip()
    match = re.fullmatch(r"([0-9]+)([kKmMgGtT])[bB]?", text)
    if match:
        return f"{match.group(1)}{match.group(2).upper()}i"
    return text


def _service_networks(ctx: _Context, service: dict[str, Any], path: str) -> list[str]:
    value = service.get("networks")
    if value is None:
        return [DEFAULT_COMPOSE_NETWORK]
    if isinstance(value, list):
        return [str(item) for item in value]
    for key, config in value.items():
        _warn_keys(ctx, config or {}, f"{path}.networks.{key}", frozenset())
    return [str(key) for key in value]


@dataclass
class _Ports:
    container: list[dict[str, Any]]  # the template's ports
    service: list[dict[str, Any]]  # the Service's ports
    published: bool


def _short_port(ctx: _Context, text: str, path: str) -> dict[str, Any]:
    """ "[[HOST_IP:]PUBLISHED:]TARGET[/PROTOCOL]" as the long syntax's fields."""
    body, _, protocol = text.partition("/")
    parts = body.rsplit(":", 2) if body.count(":") <= 2 else [body, "", ""]
    if len(parts) == 3:
        raise ctx.fail(
            path,
            f"{text!r} binds a host address: corral's node ports answer on every address of "
            "every node (give PUBLISHED:TARGET)",
        )
    port: dict[str, Any] = {"target": parts[-1]}
    if len(parts) == 2:
        port["published"] = parts[0]
    if protocol:
        port["protocol"] = protocol
    return port


def _ports(ctx: _Context, service: dict[str, Any], path: str) -> _Ports:
    container: list[dict[str, Any]] = []
    ports: list[dict[str, Any]] = []
    published_any = False

    def add(target: int, protocol: str, node_port: int, where: str) -> None:
        nonlocal published_any
        entry = {"containerPort": target, "protocol": protocol}
        if entry not in container:
            container.append(entry)
        same = [p for p in ports if p["port"] == target and p["protocol"] == protocol]
        if same:
            if node_port and same[0].get("nodePort") not in (None, node_port):
                raise ctx.fail(
                    where,
                    f"{target}/{protocol.lower()} is published twice: a Service port has one "
                    "node port",
                )
            if node_port:
                same[0]["nodePort"] = node_port
                published_any = True
            return
        port: dict[str, Any] = {"port": target, "targetPort": target, "protocol": protocol}
        if node_port:
            port["nodePort"] = node_port
            published_any = True
        ports.append(port)

    for index, item in enumerate(service.get("ports") or []):
        where = f"{path}.ports[{index}]"
        long = (
            dict(item)
            if isinstance(item, dict)
            else _short_port(ctx, str(item), where)
            if isinstance(item, str)
            else {"target": item}
        )
        _warn_keys(ctx, long, where, frozenset({"target", "published", "protocol", "mode", "name"}))
        if long.get("host_ip"):
            raise ctx.fail(
                f"{where}.host_ip",
                "corral's node ports answer on every address of every node, not one",
            )
        if long.get("mode", "ingress") != "ingress":
            raise ctx.fail(
                f"{where}.mode",
                f"{long['mode']!r}: corral publishes a port on every node (Swarm's ingress "
                "mode), never only on the node a replica runs on",
            )
        protocol = str(long.get("protocol", "tcp")).lower()
        if protocol not in ("tcp", "udp"):
            raise ctx.fail(where, f"protocol {protocol!r}: corral publishes tcp or udp")
        target_text, published_text = _text(long.get("target", "")), long.get("published")
        if "-" in target_text or (published_text is not None and "-" in _text(published_text)):
            raise ctx.fail(
                where,
                "a range of ports: corral maps one port each (give each port as its own item)",
            )
        target = _port_number(ctx, target_text, where, "target")
        node_port = 0
        if published_text not in (None, ""):
            node_port = _port_number(ctx, _text(published_text), where, "published port")
        add(target, protocol.upper(), node_port, where)
    for index, item in enumerate(service.get("expose") or []):
        where = f"{path}.expose[{index}]"
        number, _, protocol = _text(item).partition("/")
        if "-" in number:
            raise ctx.fail(where, "a range of ports: give each port as its own item")
        protocol = (protocol or "tcp").lower()
        if protocol not in ("tcp", "udp"):
            raise ctx.fail(where, f"protocol {protocol!r}: corral exposes tcp or udp")
        add(_port_number(ctx, number, where, "port"), protocol.upper(), 0, where)
    if len(ports) > 1:
        for port in ports:
            port["name"] = f"{port['protocol'].lower()}-{port['port']}"
    return _Ports(container, ports, published_any)


def _port_number(ctx: _Context, text: str, where: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ctx.fail(where, f"{what} {text!r} is not a port number (1-65535)")
    return int(text)


def _volume_mounts(
    ctx: _Context, service: dict[str, Any], path: str, claims: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, item in enumerate(service.get("volumes") or []):
        where = f"{path}.volumes[{index}]"
        if isinstance(item, str):
            parts = item.split(":")
            long: dict[str, Any] = {}
            if len(parts) == 1:
                long = {"type": "volume", "target": parts[0]}
            else:
                source = parts[0]
                bind = source.startswith(("/", ".", "~")) or "/" in source
                long = {"type": "bind" if bind else "volume", "source": source}
                long["target"] = parts[1]
                if len(parts) > 2:
                    modes = parts[2].split(",")
                    long["read_only"] = "ro" in modes
                    for mode in modes:
                        if mode not in ("ro", "rw"):
                            ctx.warn(f"{where} (mode {mode})")
        else:
            long = dict(item)
        _warn_keys(
            ctx,
            long,
            where,
            frozenset({"type", "source", "target", "read_only", "volume", "tmpfs"}),
        )
        kind = long.get("type")
        target = str(long.get("target", ""))
        if kind == "bind":
            raise ctx.fail(
                where,
                f"a bind mount of {long.get('source')!r}: corral mounts named volumes "
                "(claims), never a host path (a replica may run on any node)",
            )
        if kind not in ("volume", "tmpfs"):
            raise ctx.fail(f"{where}.type", f"{kind!r}: corral mounts named volumes and tmpfs only")
        named: Any = long.get("source")
        volume: dict[str, Any]
        if kind == "volume" and named:
            if named not in claims:
                raise ctx.fail(
                    where,
                    f"volume {named!r} is not declared in the top-level `volumes` "
                    f"(it has {', '.join(sorted(claims)) or 'none'})",
                )
            claim = claims[named]
            volume = {"name": claim, "persistentVolumeClaim": {"claimName": claim}}
        else:
            # An anonymous volume or a tmpfs: a directory living with the replica.
            empty: dict[str, Any] = {}
            if kind == "tmpfs":
                empty["medium"] = "Memory"
                size = (long.get("tmpfs") or {}).get("size")
                if size is not None:
                    empty["sizeLimit"] = _memory(ctx, size, f"{where}.tmpfs.size")
            volume = {"name": f"anon-{index}", "emptyDir": empty}
        options = long.get("volume") or {}
        _warn_keys(ctx, options, f"{where}.volume", frozenset({"subpath"}))
        _warn_keys(ctx, long.get("tmpfs") or {}, f"{where}.tmpfs", frozenset({"size"}))
        if volume["name"] not in [v["name"] for v in volumes]:
            volumes.append(volume)
        mount: dict[str, Any] = {"name": volume["name"], "mountPath": target}
        if long.get("read_only"):
            mount["readOnly"] = True
        if options.get("subpath"):
            mount["subPath"] = str(options["subpath"])
        mounts.append(mount)
    return volumes, mounts


def _probe(ctx: _Context, check: dict[str, Any], path: str) -> dict[str, Any] | None:
    """Compose's healthcheck as an exec probe; None when disabled."""
    _warn_keys(
        ctx,
        check,
        path,
        frozenset({"test", "interval", "timeout", "retries", "start_period", "disable"}),
    )
    test = check.get("test")
    if check.get("disable") or test == ["NONE"]:
        return None
    if test is None:
        # Timings for the image's own HEALTHCHECK, which corral does not run: no probe.
        ctx.warn(path)
        return None
    if isinstance(test, str):
        command = ["/bin/sh", "-c", test]
    elif test and test[0] == "CMD" and len(test) > 1:
        command = [str(item) for item in test[1:]]
    elif test and test[0] == "CMD-SHELL" and len(test) == 2:
        command = ["/bin/sh", "-c", str(test[1])]
    else:
        raise ctx.fail(
            f"{path}.test",
            f"{test!r}: expected a string, [CMD, ...], [CMD-SHELL, command] or [NONE]",
        )
    probe: dict[str, Any] = {
        "exec": {"command": command},
        "periodSeconds": _seconds(
            ctx, check.get("interval", f"{DOCKER_HEALTH_INTERVAL}s"), f"{path}.interval", 1
        ),
        "timeoutSeconds": _seconds(
            ctx, check.get("timeout", f"{DOCKER_HEALTH_TIMEOUT}s"), f"{path}.timeout", 1
        ),
        "failureThreshold": _int(
            ctx, check.get("retries", DOCKER_HEALTH_RETRIES), f"{path}.retries"
        ),
    }
    if check.get("start_period") is not None:
        probe["initialDelaySeconds"] = _seconds(ctx, check["start_period"], f"{path}.start_period")
    return probe


def _resources(ctx: _Context, service: dict[str, Any], path: str) -> dict[str, Any]:
    resources: dict[str, dict[str, Any]] = {}

    def put(group: str, key: str, value: Any, where: str) -> None:
        if value is None:
            return
        if key == "cpu":
            parsed: Any = _flag(ctx, where, lambda: parse_cpu(_text(value), where))
        else:
            parsed = _flag(ctx, where, lambda: parse_memory(_text(value), where))
        resources.setdefault(group, {})[key] = parsed

    put("limits", "cpu", service.get("cpus"), f"{path}.cpus")
    put("limits", "memory", service.get("mem_limit"), f"{path}.mem_limit")
    put("requests", "memory", service.get("mem_reservation"), f"{path}.mem_reservation")
    given = ((service.get("deploy") or {}).get("resources")) or {}
    where = f"{path}.deploy.resources"
    _warn_keys(ctx, given, where, frozenset({"limits", "reservations"}))
    for compose_group, group in (("limits", "limits"), ("reservations", "requests")):
        values = given.get(compose_group) or {}
        _warn_keys(ctx, values, f"{where}.{compose_group}", frozenset({"cpus", "memory"}))
        if "devices" in values:
            raise ctx.fail(f"{where}.{compose_group}.devices", "replicas get no host devices")
        put(group, "cpu", values.get("cpus"), f"{where}.{compose_group}.cpus")
        put(group, "memory", values.get("memory"), f"{where}.{compose_group}.memory")
    return resources


def _deploy(
    ctx: _Context, service: dict[str, Any], path: str, spec: dict[str, Any]
) -> dict[str, str]:
    """deploy.*: into the DeploymentSpec `spec`; returns the Deployment's own labels."""
    deploy = service.get("deploy") or {}
    where = f"{path}.deploy"
    _warn_keys(
        ctx,
        deploy,
        where,
        frozenset(
            {
                "replicas",
                "resources",
                "labels",
                "mode",
                "endpoint_mode",
                "placement",
                "update_config",
                "restart_policy",
            }
        ),
    )
    mode = deploy.get("mode", "replicated")
    if mode != "replicated":
        raise ctx.fail(
            f"{where}.mode",
            f"{mode!r}: corral runs replicated services only (a replica count, placed by "
            "the scheduler)",
        )
    if "replicas" in deploy:
        spec["replicas"] = _int(ctx, deploy["replicas"], f"{where}.replicas")
    elif "scale" in service:
        spec["replicas"] = _int(ctx, service["scale"], f"{path}.scale")
    if "restart_policy" in deploy:  # Swarm's, which wins over `restart` (as Compose)
        policy = deploy["restart_policy"] or {}
        _warn_keys(ctx, policy, f"{where}.restart_policy", frozenset({"condition"}))
        condition = policy.get("condition", "any")
        if condition not in _SWARM_RESTARTS:
            raise ctx.fail(
                f"{where}.restart_policy.condition", f"{condition!r}: any, on-failure or none"
            )
        spec["template"]["restartPolicy"] = _SWARM_RESTARTS[condition]
    placement = deploy.get("placement") or {}
    _warn_keys(ctx, placement, f"{where}.placement", frozenset({"constraints"}))
    selector: dict[str, str] = {}
    for index, item in enumerate(placement.get("constraints") or []):
        item_path = f"{where}.placement.constraints[{index}]"
        key, value = _constraint(ctx, str(item), item_path)
        selector[key] = value
    if selector:
        spec["template"]["nodeSelector"] = selector
    update = deploy.get("update_config") or {}
    _warn_keys(
        ctx,
        update,
        f"{where}.update_config",
        frozenset({"parallelism", "order", "failure_action"}),
    )
    if "parallelism" in update or "order" in update:
        parallelism = _int(ctx, update.get("parallelism", 1), f"{where}.update_config.parallelism")
        spec["strategy"] = update_strategy(parallelism, str(update.get("order", "stop-first")))
    action = update.get("failure_action", "pause")
    if action == "rollback":
        spec["autoRollback"] = {}
    elif action not in ("pause", "continue"):
        raise ctx.fail(f"{where}.update_config.failure_action", f"{action!r}: unknown action")
    return {str(k): v or "" for k, v in _pairs(ctx, deploy.get("labels"), where).items()}


def _environment(ctx: _Context, service: dict[str, Any], path: str) -> dict[str, str]:
    env: dict[str, str] = {}
    files = service.get("env_file")
    items = [files] if isinstance(files, str) else list(files or [])
    for index, item in enumerate(items):
        where = f"{path}.env_file" if isinstance(files, str) else f"{path}.env_file[{index}]"
        entry = {"path": item} if isinstance(item, str) else dict(item)
        _warn_keys(ctx, entry, where, frozenset({"path", "required"}))
        file = ctx.base_dir / str(entry["path"])
        if not file.is_file():
            if entry.get("required", True) is False:
                continue
            raise ctx.fail(where, f"{str(file)!r} does not exist")
        try:
            env.update(read_env_file(file))
        except (OSError, UnicodeDecodeError) as error:
            raise ctx.fail(where, f"cannot read {str(file)!r}: {error}") from None
    for key, value in _pairs(ctx, service.get("environment"), f"{path}.environment").items():
        if value is None:  # a bare name: the value of the environment corral runs in
            if key in ctx.env:
                env[key] = ctx.env[key]
            else:
                env.pop(key, None)
        else:
            env[key] = value
    return env


def _service_objects(
    ctx: _Context,
    name: str,
    service: dict[str, Any],
    networks: dict[str, _Network],
    claims: dict[str, str],
) -> list[tuple[dict[str, Any], str]]:
    path = f"services.{name}"
    try:
        check_dns_label("service", name)
    except ValueError:
        raise ctx.fail(
            path,
            f"{name!r} is not a DNS label: the service's name is its Deployment's and DNS "
            "name (at most 63 lowercase letters, digits and '-')",
        ) from None
    for key in service:
        if key in _REFUSED_SERVICE_KEYS and not (key == "build" and "image" in service):
            raise ctx.fail(f"{path}.{key}", _REFUSED_SERVICE_KEYS[key])
        if key not in _SERVICE_KEYS and not str(key).startswith("x-"):
            ctx.warn(f"{path}.{key}")
    if "image" not in service:
        raise ctx.fail(f"{path}.image", "missing: corral runs an image")
    restart = service.get("restart")
    policy: str | None = None
    if restart is not None:
        word, colon, retries = str(restart).partition(":")
        policy = _RESTARTS.get(word)
        if policy is None or (colon and word != "on-failure"):
            raise ctx.fail(
                f"{path}.restart",
                f"{restart!r}: expected no, always, unless-stopped or on-failure[:N]",
            )
        if retries:
            ctx.warn(f"{path}.restart (on-failure's maximum of {retries} restarts)")
    selector = ctx.labels(**{SERVICE_LABEL: name})
    labels = {str(k): v or "" for k, v in _pairs(ctx, service.get("labels"), path).items()}
    template: dict[str, Any] = {"image": service["image"], "labels": {**labels, **selector}}
    if policy is not None and policy != "Always":
        template["restartPolicy"] = policy
    if "entrypoint" in service:
        template["command"] = _args(ctx, service["entrypoint"], f"{path}.entrypoint")
    if "command" in service:
        template["args"] = _args(ctx, service["command"], f"{path}.command")
    env = _environment(ctx, service, path)
    if env:
        template["env"] = env
    resources = _resources(ctx, service, path)
    if resources:
        template["resources"] = resources
    ports = _ports(ctx, service, path)
    if ports.container:
        template["ports"] = ports.container
    own_networks = _service_networks(ctx, service, path)
    for index, key in enumerate(own_networks):
        if key not in networks:
            raise ctx.fail(
                f"{path}.networks[{index}]"
                if isinstance(service.get("networks"), list)
                else f"{path}.networks.{key}",
                f"network {key!r} is not declared in the top-level `networks`",
            )
    template["networks"] = [networks[key].name for key in own_networks]
    volumes, mounts = _volume_mounts(ctx, service, path, claims)
    if volumes:
        template["volumes"], template["volumeMounts"] = volumes, mounts
    if "healthcheck" in service:
        probe = _probe(ctx, service["healthcheck"] or {}, f"{path}.healthcheck")
        if probe is not None:
            template["readinessProbe"] = probe
            template["livenessProbe"] = probe
    if "stop_signal" in service:
        template["stopSignal"] = _flag(
            ctx, f"{path}.stop_signal", lambda: parse_stop_signal(str(service["stop_signal"]))
        )
    if "stop_grace_period" in service:
        template["terminationGracePeriodSeconds"] = _seconds(
            ctx, service["stop_grace_period"], f"{path}.stop_grace_period"
        )
    spec: dict[str, Any] = {"template": template}
    deploy_labels = _deploy(ctx, service, path, spec)
    deployment = {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ctx.project,
            "labels": {**deploy_labels, **selector},
        },
        "spec": spec,
    }
    endpoint_mode = (service.get("deploy") or {}).get("endpoint_mode", "vip")
    if endpoint_mode not in ("vip", "dnsrr"):
        raise ctx.fail(f"{path}.deploy.endpoint_mode", f"{endpoint_mode!r}: vip or dnsrr")
    service_spec: dict[str, Any] = {
        "selector": selector,
        "network": template["networks"][0],
    }
    if ports.published:
        service_spec["type"] = "NodePort"
        if endpoint_mode == "dnsrr":
            raise ctx.fail(
                f"{path}.deploy.endpoint_mode",
                "dnsrr has no virtual IP, which a published port needs",
            )
    if not ports.service or endpoint_mode == "dnsrr":
        # No port declared: a headless Service, so that the name resolves to the
        # replicas' own addresses and every port answers, as under Compose.
        service_spec["clusterIP"] = "None"
    if ports.service:
        service_spec["ports"] = ports.service
    front = {
        "apiVersion": API_VERSION,
        "kind": "Service",
        "metadata": {"name": name, "namespace": ctx.project, "labels": dict(selector)},
        "spec": service_spec,
    }
    return [(deployment, path), (front, path)]


@dataclass(frozen=True)
class ComposeProject:
    name: str
    manifests: list[Manifest]
    # The key paths corral does not support, in file order (one warning names them all)
    unsupported: tuple[str, ...]
    # Services left out because they have `profiles` (Compose starts them only when
    # one of their profiles is enabled)
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComposeManifest(Manifest):
    """A manifest made from a Compose file; `shown` is how warnings name the file,
    `project` the Compose project it belongs to (`corral apply -f` checks that the
    project owns what it updates, `corral delete -f` removes the project as `corral
    stack rm` does: corral.client.cli.stack_commands)."""

    shown: str = ""
    project: str = ""

    @property
    def label(self) -> str:
        return self.shown or super().label


def translate(
    document: dict[str, Any],
    source: str,
    project: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ComposeProject:
    """The whole file checked and turned into manifests (networks, claims, then each
    service's Deployment and Service), or a ComposeError naming the key."""
    base_dir = Path.cwd() if source == "<stdin>" else Path(source).resolve().parent
    if env is None:
        env = _environment_of(base_dir)
    document = interpolate(document, env)
    if not isinstance(document, dict):  # pragma: no cover - interpolation keeps the shape
        raise ComposeError(f"{source}: not a Compose file")
    validate(document, source)
    name = project_name(project, document, source)
    ctx = _Context(source, name, base_dir, env, [])
    for key in document:
        if key in ("include",):
            raise ctx.fail(key, "corral reads one file: merge the included files into it")
        if key not in ("version", "name", "services", "networks", "volumes") and not str(
            key
        ).startswith("x-"):
            ctx.warn(key)
    if not document["services"]:
        raise ctx.fail("services", "no services: the file deploys nothing")
    services: dict[str, Any] = {}
    skipped = []
    for service_name, service in document["services"].items():
        if (service or {}).get("profiles"):
            skipped.append(str(service_name))
            continue
        services[str(service_name)] = service or {}
    used = set()
    for service in services.values():
        used.update(_service_networks(_Context(source, name, base_dir, env, []), service, ""))
    networks = _networks(ctx, document, used)
    objects = _network_objects(ctx, document, networks)
    claim_objects, claims = _volume_objects(ctx, document)
    objects += claim_objects
    for service_name, service in services.items():
        objects += _service_objects(ctx, service_name, service, networks, claims)
    manifests: list[Manifest] = []
    shown = f"{source} (Compose project {name})"
    for index, (raw, path) in enumerate(objects):
        manifest = parse_document(raw, f"{source}: {path}")
        manifests.append(
            ComposeManifest(
                kind=manifest.kind,
                spec=manifest.spec,
                name=manifest.name,
                where=manifest.where,
                dropped=tuple(ctx.unsupported) if index == 0 else (),
                api_version=manifest.api_version,
                declared_namespace=manifest.declared_namespace,
                shown=shown if index == 0 else "",
                project=name,
            )
        )
    check_unique_objects(manifests)
    return ComposeProject(name, manifests, tuple(ctx.unsupported), tuple(skipped))


def _environment_of(base_dir: Path) -> dict[str, str]:
    """What `${VAR}` reads: the `.env` file beside the Compose file, overridden by the
    environment corral runs in (Compose's precedence)."""
    env: dict[str, str] = {}
    dot_env = base_dir / ".env"
    if dot_env.is_file():
        try:
            env.update(read_env_file(dot_env))
        except (OSError, UnicodeDecodeError) as error:
            raise ComposeError(f"cannot read {str(dot_env)!r}: {error}") from None
    env.update(os.environ)
    return env


def compose_manifests(text: str, source: str, project: str | None = None) -> list[Manifest] | None:
    """`corral apply -f`'s hook: the manifests of a Compose file, or None when `text` is
    not one."""
    document = read_compose(text, source)
    if document is None:
        return None
    return translate(document, source, project).manifests


__all__ = [
    "ComposeError",
    "ComposeManifest",
    "ComposeProject",
    "compose_manifests",
    "is_compose",
    "project_name",
    "read_compose",
    "translate",
]
