"""Where `corral up` keeps things: everything lives under one data dir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_DATA_DIR = "CORRAL_DATA_DIR"
DEFAULT_DATA_DIR = ".corral"


def default_data_dir() -> Path:
    """$CORRAL_DATA_DIR, else ./.corral."""
    return Path(os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    @classmethod
    def at(cls, data_dir: Path) -> Layout:
        return cls(data_dir.expanduser().resolve())

    @property
    def nats_store(self) -> Path:
        """JetStream's store: keeping it is what keeps the cluster's state across restarts."""
        return self.data_dir / "nats"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    def log_of(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    @property
    def supervisor_log(self) -> Path:
        """Where a detached supervisor writes its own log."""
        return self.log_of("corral")

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "corral.pid"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "corral.json"

    def create(self) -> None:
        self.nats_store.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
