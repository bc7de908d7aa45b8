"""Turning the agent's flags into AgentSettings: node name, labels, capacity."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
from pathlib import Path

from corral.contract.quantity import cpu_millis, memory_bytes
from corral_node_agent.agent import (
    DEFAULT_DRAIN_TIMEOUT_SECONDS,
    PLACEMENTS_WATCHES,
    AgentSettings,
)
from corral_node_agent.networks_mode import NetworksMode


def dns_label(text: str) -> str:
    """Lowercase, invalid characters to '-', trimmed to 63: 'My_Host.local' -> 'my-host-local'."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return label or "node"


def default_node_name() -> str:
    return dns_label(socket.gethostname())


def parse_labels(pairs: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--label {pair!r}: expected key=value")
        labels[key] = value
    return labels


ENV_AGENT_ID = "CORRAL_AGENT_ID"
ENV_STATE_DIR = "CORRAL_AGENT_STATE_DIR"


def state_dir_from_args(args: argparse.Namespace, node: str) -> Path:
    """--state-dir, else $CORRAL_AGENT_STATE_DIR, else ~/.local/state/corral/node-agent/<node>."""
    given = getattr(args, "state_dir", None) or os.environ.get(ENV_STATE_DIR)
    if given:
        return Path(given)
    return Path.home() / ".local" / "state" / "corral" / "node-agent" / node


def agent_id_from_args(args: argparse.Namespace, state_dir: Path | None = None) -> str:
    """--agent-id, else $CORRAL_AGENT_ID, else the id kept in the state dir (made and
    kept there on first use), else a random id for this process.

    A restarted agent then recognises the Node record as its own and goes on at
    once, instead of waiting out another agent's silence while its node looks lost."""
    given = (getattr(args, "agent_id", None) or os.environ.get(ENV_AGENT_ID) or "").strip()
    if given:
        return given
    if state_dir is None:
        return secrets.token_hex(8)
    kept = state_dir / "agent-id"
    try:
        stored = kept.read_text().strip()
    except OSError:  # none yet, or an unusable state dir (reported by the agent)
        stored = ""
    if stored:
        return stored
    made = secrets.token_hex(8)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        scratch = kept.with_name(f".agent-id.{os.getpid()}")
        scratch.write_text(f"{made}\n")
        scratch.replace(kept)
    except OSError:
        pass  # the agent reports an unwritable state dir itself (main.check_state_dir)
    return made


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    cpu = cpu_millis(args.cpu) if args.cpu is not None else None
    memory = memory_bytes(args.memory) if args.memory is not None else None
    node = dns_label(args.node_name) if args.node_name else default_node_name()
    state_dir = state_dir_from_args(args, node)
    return AgentSettings(
        node_name=node,
        state_dir=state_dir,
        labels=parse_labels(args.label),
        cpu_millis=cpu,
        memory_bytes=memory,
        pods=args.pods,
        heartbeat_seconds=args.heartbeat_seconds,
        resync_seconds=args.resync_seconds,
        max_parallel=args.max_parallel,
        agent_id=agent_id_from_args(args, state_dir),
        networks=NetworksMode(getattr(args, "networks", None) or NetworksMode.AUTO),
        drain_timeout=drain_timeout_from_args(args),
        placements_watch=getattr(args, "placements_watch", None) or PLACEMENTS_WATCHES[0],
    )


def drain_timeout_from_args(args: argparse.Namespace) -> float:
    """--drain-timeout: seconds, at least 0 (0: stop without waiting for the drain)."""
    seconds = getattr(args, "drain_timeout", None)
    if seconds is None:
        return DEFAULT_DRAIN_TIMEOUT_SECONDS
    if not seconds >= 0:  # also NaN
        raise ValueError(f"--drain-timeout {seconds!r}: expected seconds >= 0")
    return float(seconds)
