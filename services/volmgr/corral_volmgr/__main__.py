"""`corral-volmgr` (and `python -m corral_volmgr`): the process's entry point.

It first decides what the process needs to load (corral.natsio.lean: aiohttp only
for a ws:// NATS URL), and only then imports the service and runs it.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.natsio.lean import prepare_imports, run_service_module


def prepare(argv: Sequence[str]) -> None:
    prepare_imports(argv)


def main() -> None:
    run_service_module("corral_volmgr.main", prepare)  # imports it after prepare()


if __name__ == "__main__":
    main()
