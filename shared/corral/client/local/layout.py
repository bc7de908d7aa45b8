"""Where `corral up` keeps things: everything lives under one data dir."""

from __future__ import annotations

import os
import secrets
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

    @property
    def lock_file(self) -> Path:
        """flock()ed by the supervisor for its whole life: one supervisor per data dir."""
        return self.data_dir / "corral.lock"

    @property
    def failure_file(self) -> Path:
        """Why the last supervisor failed to start (its pid, then the message): `up -d` shows it."""
        return self.data_dir / "corral.failed"

    @property
    def agent_id_file(self) -> Path:
        """The local node agent's id, kept so a restarted agent recognises its own record."""
        return self.data_dir / "agent-id"

    @property
    def agent_state_dir(self) -> Path:
        """Where the local node agent records the cluster its node belongs to."""
        return self.data_dir / "node-agent"

    @property
    def volumes_dir(self) -> Path:
        """Where volmgr's node part keeps provisioned volumes (image files, their mounts):
        kept across `corral down`, deleted by `corral down --delete-volumes`."""
        return self.data_dir / "volumes"

    @property
    def delete_volumes_file(self) -> Path:
        """Present when `corral down --delete-volumes` asked the supervisor to delete the
        volumes' data as it stops."""
        return self.data_dir / "corral.delete-volumes"

    @property
    def remove_replicas_file(self) -> Path:
        """Present when `corral down --remove-replicas` asked the supervisor to stop and
        remove this node's replica containers as it stops."""
        return self.data_dir / "corral.remove-replicas"

    def create(self) -> None:
        self.nats_store.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def agent_id(self) -> str:
        """The node agent's id for this data dir: read, or made and stored on first use."""
        try:
            stored = self.agent_id_file.read_text().strip()
        except FileNotFoundError:
            stored = ""
        if stored:
            return stored
        made = secrets.token_hex(8)
        scratch = self.agent_id_file.with_name(f".agent-id.{os.getpid()}")
        scratch.write_text(f"{made}\n")
        scratch.replace(self.agent_id_file)
        return made
