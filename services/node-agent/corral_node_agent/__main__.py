"""`corral-node-agent` (and `python -m corral_node_agent`): the process's entry point.

It first decides what the process needs to load (corral.natsio.lean): aiohttp only
for the Docker runtime (aiodocker's transport) or a ws:// NATS URL, and for Docker
imports aiodocker without importlib.metadata (it asks it only for its own version);
then imports the agent and runs it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from corral.natsio.lean import (
    import_without_metadata,
    leave_out_unused,
    prepare_imports,
    run_service_module,
)


def runtime_flag(argv: Sequence[str]) -> str:
    """The --runtime the agent will run (its parser checks the value)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runtime", default="docker")
    known, _ = parser.parse_known_args(list(argv))
    return str(known.runtime)


def prepare(argv: Sequence[str]) -> None:
    leave_out_unused()  # before runtime_flag() parses the command line
    docker = runtime_flag(argv) != "hollow"
    prepare_imports(argv, needs_aiohttp=docker)
    if docker:
        import_without_metadata("aiodocker")


def main() -> None:
    run_service_module("corral_node_agent.main", prepare)  # imports it after prepare()


if __name__ == "__main__":
    main()
