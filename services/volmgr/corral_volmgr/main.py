"""corral-volmgr: will own PersistentVolume and PersistentVolumeClaim.

Today it only joins the cluster (corral.natsio.service.run_idle): it connects to NATS,
makes sure corral's streams and buckets exist, and serves /metrics and /healthz.
It serves no spec subject yet, so a client gets "no responders" rather than a
fake answer.
"""

from __future__ import annotations

import argparse

from corral.natsio.service import base_parser, run_idle, service_main

DEFAULT_PORT = 9104
run = run_idle


def build_parser() -> argparse.ArgumentParser:
    return base_parser("volmgr", DEFAULT_PORT)


def main() -> None:
    service_main("volmgr", build_parser(), run)


if __name__ == "__main__":
    main()
