"""Where corral finds NATS: a flag, else $CORRAL_NATS_URL, else the config file
($CORRAL_CONFIG, default ~/.config/corral/config.toml, key `nats_url`), else the
local default that `corral up` starts.

A cluster is several addresses: comma-separated in the flag, the variable and a
TOML string, a repeated flag, or a TOML list. They travel as one comma-joined
string (`resolve_nats_url`) and reach nats-py as a list (`nats_servers`): nats-py
takes `servers=[...]`, never one comma-joined URL.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
ENV_NATS_URL = "CORRAL_NATS_URL"
ENV_CONFIG = "CORRAL_CONFIG"


def config_path() -> Path:
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit)
    return Path.home() / ".config" / "corral" / "config.toml"


_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def nats_servers(urls: str | Sequence[str], where: str = "NATS URL") -> list[str]:
    """Every address in `urls` (one string with commas, or several such strings), each
    checked; raises ValueError naming `where` and the address that is wrong."""
    items = [urls] if isinstance(urls, str) else list(urls)
    servers: list[str] = []
    for item in items:
        for part in item.split(","):
            address = part.strip()
            if not address.startswith(_SCHEMES):
                raise ValueError(
                    f"{where}: {address!r} is not a NATS URL (expected nats://host:port, "
                    "or tls://, ws://, wss://; several separated by commas)"
                )
            try:
                parsed = urlsplit(address)
                _ = parsed.port  # raises ValueError for a port that is not a number
            except ValueError as error:
                raise ValueError(f"{where}: {address!r} is not a NATS URL: {error}") from None
            if not parsed.hostname:
                raise ValueError(f"{where}: {address!r} names no host")
            if address not in servers:
                servers.append(address)
    if not servers:
        raise ValueError(f"{where}: no NATS URL given")
    return servers


def checked_url(url: str | Sequence[str], where: str) -> str:
    """One NATS URL, or several (a cluster), as one comma-joined string; raises
    ValueError naming `where`."""
    return ",".join(nats_servers(url, where))


def resolve_nats_url(flag: str | Sequence[str] | None = None) -> str:
    """The NATS addresses to use, comma-joined. `flag` is the --nats value, or the
    values of a repeated --nats."""
    if flag:
        return checked_url(flag, "--nats")
    from_env = os.environ.get(ENV_NATS_URL)
    if from_env:
        return checked_url(from_env, f"${ENV_NATS_URL}")
    path = config_path()
    if os.environ.get(ENV_CONFIG) and not path.is_file():
        raise ValueError(f"${ENV_CONFIG} names {path}, which is not a file")
    if path.is_file():
        import tomllib  # only with a config file: a service started with --nats never needs it

        with path.open("rb") as handle:
            try:
                settings = tomllib.load(handle)
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"{path}: not valid TOML: {error}") from None
        url = settings.get("nats_url")
        if url is not None:
            where = f"{path}: `nats_url`"
            if isinstance(url, list):
                if not url or not all(isinstance(item, str) and item for item in url):
                    raise ValueError(f"{where} must be a non-empty list of URL strings")
                return checked_url(url, where)
            if not isinstance(url, str) or not url:
                raise ValueError(
                    f"{where} must be a non-empty string (several URLs: comma-separated, "
                    "or a list of strings)"
                )
            return checked_url(url, where)
    return DEFAULT_NATS_URL
