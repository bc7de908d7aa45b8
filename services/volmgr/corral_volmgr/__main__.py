"""`corral-volmgr` (and `python -m corral_volmgr`): the entry point. What the process loads
(aiohttp only for `--node` or a ws:// URL) is decided first: corral.natsio.lean."""

from __future__ import annotations

from corral.natsio.lean import prepare_cluster_or_node as prepare
from corral.natsio.lean import run_service_module

__all__ = ["main", "prepare"]


def main() -> None:
    run_service_module("corral_volmgr.main", prepare)  # imports it after prepare()


if __name__ == "__main__":
    main()
