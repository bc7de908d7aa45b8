"""`corral-volmgr` (and `python -m corral_volmgr`): the process's entry point.

It first decides what the process needs to load (corral.natsio.lean): aiohttp only for
the node part (`--node`: aiodocker's transport, imported without importlib.metadata)
or a ws:// NATS URL; only then imports the service and runs it.
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


def node_flag(argv: Sequence[str]) -> str:
    """The --node the process runs the node part of ("": the cluster part)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--node", default="")
    known, _ = parser.parse_known_args(list(argv))
    return str(known.node)


def prepare(argv: Sequence[str]) -> None:
    leave_out_unused()  # before node_flag() parses the command line
    node = bool(node_flag(argv))
    prepare_imports(argv, needs_aiohttp=node)
    if node:
        import_without_metadata("aiodocker")


def main() -> None:
    run_service_module("corral_volmgr.main", prepare)  # imports it after prepare()


if __name__ == "__main__":
    main()
