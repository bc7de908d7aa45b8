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
