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


def resolve_nats_url(flag: str | None = None) -> str:
    if flag:
        return flag
    from_env = os.environ.get(ENV_NATS_URL)
    if from_env:
        return from_env
    path = config_path()
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
            return url
    return DEFAULT_NATS_URL
