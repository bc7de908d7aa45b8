"""Parsing the flags of `corral create`: resource lists and environment variables."""

from __future__ import annotations

from collections.abc import Iterable

import click

RESOURCE_NAMES = ("cpu", "memory")


def parse_resource_list(text: str | None, option: str) -> dict[str, str]:
    """'cpu=100m,memory=64Mi' -> {'cpu': '100m', 'memory': '64Mi'}. Values are checked later."""
    if not text:
        return {}
    resources: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise click.BadParameter(
                f"{item!r} is not NAME=QUANTITY (e.g. cpu=100m)", param_hint=option
            )
        if key not in RESOURCE_NAMES:
            raise click.BadParameter(
                f"unknown resource {key!r}: expected one of {', '.join(RESOURCE_NAMES)}",
                param_hint=option,
            )
        if key in resources:
            raise click.BadParameter(f"{key!r} given twice", param_hint=option)
        resources[key] = value
    return resources


def parse_pairs(items: Iterable[str], option: str) -> dict[str, str]:
    """['A=1', 'B=x=y'] -> {'A': '1', 'B': 'x=y'}; an item without '=' or a name is refused."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
        pairs[key] = value
    return pairs


def parse_env(items: Iterable[str]) -> dict[str, str]:
    return parse_pairs(items, "--env")


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    return parse_pairs(items, "--label")


def _port_number(text: str, option: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise click.BadParameter(
            f"{what} {text!r} is not a port number (1-65535)", param_hint=option
        )
    return int(text)


def parse_container_port(text: str) -> dict[str, object]:
    """kubectl's `create deployment --port`: '8080' or '53/udp' -> a template port."""
    number, _, protocol = text.partition("/")
    port: dict[str, object] = {"containerPort": _port_number(number, "--port", "port")}
    if protocol:
        if protocol.upper() not in ("TCP", "UDP"):
            raise click.BadParameter(
                f"protocol {protocol!r} in {text!r}: expected tcp or udp", param_hint="--port"
            )
        port["protocol"] = protocol.upper()
    return port


def parse_service_port(text: str) -> dict[str, object]:
    """`create service --port [NAME=]PORT[:TARGET]`: '80:8080', 'web=80:http', '53'.
    TARGET is the replicas' port, a number or the name of a template port."""
    name, sep, rest = text.rpartition("=")
    port_text, colon, target = rest.partition(":")
    port: dict[str, object] = {"port": _port_number(port_text, "--port", "port")}
    if sep:
        if not name:
            raise click.BadParameter(f"{text!r} has '=' but no NAME before it", param_hint="--port")
        port["name"] = name
    if colon:
        if not target:
            raise click.BadParameter(
                f"{text!r} has ':' but no target port after it", param_hint="--port"
            )
        port["targetPort"] = (
            _port_number(target, "--port", "target port") if target.isdigit() else target
        )
    return port
