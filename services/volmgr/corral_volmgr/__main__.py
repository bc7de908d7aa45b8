"""`corral-volmgr` (and `python -m corral_volmgr`): the process's entry point.

It first decides what the process needs to load (corral.natsio.lean: aiohttp only
for a ws:// NATS URL), and only then imports the service and runs it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from corral.natsio.lean import prepare_imports


def prepare(argv: Sequence[str]) -> None:
    prepare_imports(argv)


def main() -> None:
    prepare(sys.argv[1:])
    from corral_volmgr.main import main as run_service  # after prepare(): see corral.natsio.lean

    run_service()


if __name__ == "__main__":
    main()
