"""Where corral finds NATS: a flag, else $CORRAL_NATS_URL, else the config file
($CORRAL_CONFIG, default ~/.config/corral/config.toml, key `nats_url`), else the
local default that `corral up` starts."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
ENV_NATS_URL = "CORRAL_NATS_URL"
ENV_CONFIG = "CORRAL_CONFIG"


def config_path() -> Path:
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit)
    return Path.home() / ".config" / "corral" / "config.toml"


_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def checked_url(url: str, where: str) -> str:
    """A NATS URL, or several comma-separated (a cluster); raises ValueError naming `where`."""
    for part in url.split(","):
        if not part.strip().startswith(_SCHEMES):
            raise ValueError(
                f"{where}: {part.strip()!r} is not a NATS URL (expected nats://host:port, "
                "or tls://, ws://, wss://; several separated by commas)"
            )
    return url


def resolve_nats_url(flag: str | None = None) -> str:
    if flag:
        return checked_url(flag, "--nats")
    from_env = os.environ.get(ENV_NATS_URL)
    if from_env:
        return checked_url(from_env, f"${ENV_NATS_URL}")
    path = config_path()
    if os.environ.get(ENV_CONFIG) and not path.is_file():
        raise ValueError(f"${ENV_CONFIG} names {path}, which is not a file")
    if path.is_file():
        with path.open("rb") as handle:
            try:
                settings = tomllib.load(handle)
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"{path}: not valid TOML: {error}") from None
        url = settings.get("nats_url")
        if url is not None:
            if not isinstance(url, str) or not url:
                raise ValueError(f"{path}: `nats_url` must be a non-empty string")
            return checked_url(url, f"{path}: `nats_url`")
    return DEFAULT_NATS_URL
