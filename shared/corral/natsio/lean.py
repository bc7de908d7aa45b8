"""A service process loads only what it uses: decided before anything heavy is imported.

nats-py imports aiohttp when it is itself imported, for one purpose only: its
WebSocket transport (`ws://`, `wss://` URLs). aiohttp is nats-py's optional extra
(`nats-py[aiohttp]`; corral has it only because aiodocker needs it), and it costs a
service about 10 MiB of resident memory. A service process whose NATS URLs are all
`nats://` or `tls://`, and that needs aiohttp for nothing else, marks it absent
before nats is imported: `sys.modules["aiohttp"] = None` is the import system's own
way to say "not installed" (an import of it raises ImportError, which nats-py
handles by leaving WebSockets out). The node agent on Docker keeps aiohttp
(aiodocker speaks HTTP through it); every service keeps it for a `ws://` URL.

Each service's entry point (`corral_<service>/__main__.py`, the console script)
calls `prepare_imports(argv)` first and imports its service module after; the
local supervisor (`python -m corral.client.local`), which talks only to the
nats-server it starts, calls `leave_out_websocket_transport()`.
`tests/unit/test_service_imports.py` pins what each service process loads, so a
nats-py that ever needs aiohttp unconditionally fails there, loudly.

This module imports nothing heavy: the standard library and corral.natsio.config.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from corral.natsio.config import nats_servers, resolve_nats_url

WEBSOCKET_SCHEMES = ("ws://", "wss://")
# Imported by nats-py only for its WebSocket transport.
WEBSOCKET_ONLY_MODULES = ("aiohttp",)


def nats_flags(argv: Sequence[str]) -> list[str] | None:
    """The --nats values among a service's arguments (the rest is left to its parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--nats", action="append")
    known, _ = parser.parse_known_args(list(argv))
    flags: list[str] | None = known.nats
    return flags


def wants_websocket(argv: Sequence[str]) -> bool:
    """Whether the NATS URLs this process will use (flag, environment, config file)
    include a WebSocket one. A URL that does not resolve counts as wanting it: the
    service's own parser reports the error, with everything loaded as before."""
    try:
        servers = nats_servers(resolve_nats_url(nats_flags(argv)))
    except (ValueError, OSError):
        return True
    return any(server.startswith(WEBSOCKET_SCHEMES) for server in servers)


def leave_out_websocket_transport() -> bool:
    """Mark aiohttp absent, unless it is loaded already; call before nats is imported.
    Returns whether it was left out."""
    if any(sys.modules.get(name) is not None for name in WEBSOCKET_ONLY_MODULES):
        return False  # already loaded (an embedding process): nothing to save
    for name in WEBSOCKET_ONLY_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]
    return True


def prepare_imports(argv: Sequence[str], *, needs_aiohttp: bool = False) -> bool:
    """Before a service imports nats: leave aiohttp out when nothing will use it.
    Returns whether it was left out."""
    if needs_aiohttp or wants_websocket(argv):
        return False
    return leave_out_websocket_transport()


def run_service_module(module: str, prepare: Callable[[Sequence[str]], object]) -> None:
    """A service's console entry point: decide what the process loads (`prepare`, given
    the command line), then import `module` and run its main()."""
    prepare(sys.argv[1:])
    importlib.import_module(module).main()
