"""A service process loads only what it uses: decided before anything heavy is imported.

Each service's entry point (`corral_<service>/__main__.py`, the console script)
calls `prepare_imports(argv)` first and imports its service module after; the
local supervisor (`python -m corral.client.local`), which talks only to the
nats-server it starts, calls `leave_out_websocket_transport()`.
`tests/unit/test_service_imports.py` pins what each service process loads, so a
library that starts needing one of these loudly fails there. What a process leaves
out, and what each saves (docs/architecture.md, "Idle memory"):

- aiohttp (about 10 MiB). nats-py imports it when it is itself imported, for one
  purpose only: its WebSocket transport (`ws://`, `wss://` URLs). aiohttp is
  nats-py's optional extra (`nats-py[aiohttp]`; corral has it only because aiodocker
  needs it). A service process whose NATS URLs are all `nats://` or `tls://`, and
  that needs aiohttp for nothing else, marks it absent before nats is imported:
  `sys.modules["aiohttp"] = None` is the import system's own way to say "not
  installed" (an import of it raises ImportError, which nats-py handles by leaving
  WebSockets out). The node agent on Docker keeps aiohttp (aiodocker speaks HTTP
  through it); every service keeps it for a `ws://` URL.
- OpenSSL's digests for hashlib (`_hashlib`, about 0.5 MiB): importing it makes
  OpenSSL fetch every digest it provides. hashlib and hmac are made to work without
  it (CPython builds without OpenSSL do): md5, sha1, the sha2 and sha3 families and
  blake2 then come from CPython's own modules, with the same results; only
  OpenSSL-only extras (`hashlib.scrypt`, `hashlib.new("sm3")`) are missing, and
  corral uses none. TLS is unaffected: the ssl module binds OpenSSL itself.
- the bz2 and lzma compressors (about 0.3 MiB with their C libraries): argparse
  imports shutil (for the terminal's width), which imports them only to know whether
  it may make .tar.bz2 and .tar.xz archives, and handles their absence. No service
  makes or reads such archives.
- importlib.metadata (about 1 MiB: zipfile, csv, email parsing, caches of what is on
  sys.path): nats-py imports it for one string, its own version, which it sends to
  the server when it connects (aiodocker too, for its User-Agent).
  `import_without_metadata("nats")` answers that question from the distribution's
  metadata file while nats is imported, then takes the stand-in away; anything else
  asked of it loads the real module.
- prometheus_client's exposition module (about 1.5 MiB: its HTTP servers and push
  gateway client, with http.server, urllib.request, wsgiref): a service serves
  /metrics itself. `import_prometheus_client_core()` loads the metric types, the
  registry and the default collectors without it; the package completes itself the
  first time anything asks it for another name.

This module imports nothing heavy: the standard library and corral.natsio.config.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path

from corral.natsio.config import nats_servers, resolve_nats_url

WEBSOCKET_SCHEMES = ("ws://", "wss://")
# Imported by nats-py only for its WebSocket transport.
WEBSOCKET_ONLY_MODULES = ("aiohttp",)
# OpenSSL's digests for hashlib and hmac, which fall back to CPython's own.
OPENSSL_HASHES_MODULE = "_hashlib"
# Compression formats no service reads or writes; shutil only asks whether they exist.
UNUSED_COMPRESSION_MODULES = ("_bz2", "_lzma")
METADATA_MODULE = "importlib.metadata"


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


def _mark_absent(names: Sequence[str]) -> bool:
    """Mark modules "not installed" for this process, unless one is loaded already (an
    embedding process: nothing to save). Returns whether they were marked."""
    if any(sys.modules.get(name) is not None for name in names):
        return False
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]
    return True


def leave_out_websocket_transport() -> bool:
    """Mark aiohttp absent, unless it is loaded already; call before nats is imported.
    Returns whether it was left out."""
    return _mark_absent(WEBSOCKET_ONLY_MODULES)


def leave_out_openssl_hashes() -> bool:
    """Mark OpenSSL's hashlib binding absent, unless hashlib has already loaded it;
    call before anything imports hashlib. Returns whether it was left out."""
    return _mark_absent((OPENSSL_HASHES_MODULE,))


def leave_out_unused_compression() -> bool:
    """Mark the bz2 and lzma compressors absent, unless one is loaded already.
    Returns whether they were left out."""
    return _mark_absent(UNUSED_COMPRESSION_MODULES)


def leave_out_unused() -> None:
    """What every service process leaves out whatever its flags: OpenSSL's hashlib
    binding and the bz2 and lzma compressors. Call it first, before anything parses
    the command line: argparse's first help formatter imports shutil, and with it the
    compressors."""
    leave_out_openssl_hashes()
    leave_out_unused_compression()


def _normalized(distribution: str) -> str:
    """A distribution name as metadata directories spell it (PEP 503, `_` for `-`)."""
    return re.sub(r"[-_.]+", "_", distribution).lower()


def _version_field(metadata_file: Path) -> str | None:
    try:
        text = metadata_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if not line.strip():
            return None  # the headers end at the first blank line
        if line.startswith("Version:"):
            return line.partition(":")[2].strip() or None
    return None


def installed_version(distribution: str) -> str | None:
    """The version of an installed distribution, read from the first metadata folder
    for it on sys.path (`<name>-<version>.dist-info/METADATA` or
    `<name>.egg-info/PKG-INFO`), the order importlib.metadata searches; None when
    there is none in a folder (a zipped egg, say: importlib.metadata then answers)."""
    wanted = _normalized(distribution)
    for entry in sys.path:
        folder = Path(entry or ".")
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            stem, _, kind = name.rpartition(".")
            if kind not in ("dist-info", "egg-info") or _normalized(stem.split("-")[0]) != wanted:
                continue
            metadata = folder / name / ("METADATA" if kind == "dist-info" else "PKG-INFO")
            version = _version_field(metadata)
            if version is not None:
                return version
    return None


class MetadataStandIn(types.ModuleType):
    """Stands in for importlib.metadata while a library that asks it only for its own
    version is imported: `version(name)` answers from the metadata file
    (installed_version). Anything else it is asked (another name, another function,
    a distribution whose file it cannot read) loads the real importlib.metadata and
    answers from it, so the answer is always the real one."""

    # The real PackageNotFoundError's base: `except PackageNotFoundError` catches it.
    PackageNotFoundError = ModuleNotFoundError

    def __init__(self) -> None:
        super().__init__(METADATA_MODULE, self.__doc__)

    def version(self, distribution: str) -> str:
        found = installed_version(distribution)
        return found if found is not None else self._real().version(distribution)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):  # the import system's questions (__path__ ...)
            raise AttributeError(name)
        return getattr(self._real(), name)

    def _real(self) -> types.ModuleType:
        if sys.modules.get(METADATA_MODULE) is self:
            del sys.modules[METADATA_MODULE]
        return importlib.import_module(METADATA_MODULE)


def import_without_metadata(module: str) -> None:
    """Import `module` (and what it imports) with importlib.metadata's stand-in in
    place, then take the stand-in away: later imports of importlib.metadata get the
    real module. A process that has loaded importlib.metadata already imports `module`
    as usual (nothing to save)."""
    if module in sys.modules or METADATA_MODULE in sys.modules:
        importlib.import_module(module)
        return
    stand_in = MetadataStandIn()
    sys.modules[METADATA_MODULE] = stand_in
    try:
        importlib.import_module(module)
    finally:
        if sys.modules.get(METADATA_MODULE) is stand_in:
            del sys.modules[METADATA_MODULE]


# prometheus_client's own package module runs `from . import exposition, ...`; these
# are the modules it imports besides exposition, in its order (the default collectors
# register with REGISTRY as they are imported), and the names it takes from them.
PROMETHEUS = "prometheus_client"
PROMETHEUS_PARTS: dict[str, tuple[str, ...]] = {
    "gc_collector": ("GC_COLLECTOR", "GCCollector"),
    "metrics": (
        "Counter",
        "disable_created_metrics",
        "enable_created_metrics",
        "Enum",
        "Gauge",
        "Histogram",
        "Info",
        "Summary",
    ),
    "metrics_core": ("Metric",),
    "platform_collector": ("PLATFORM_COLLECTOR", "PlatformCollector"),
    "process_collector": ("PROCESS_COLLECTOR", "ProcessCollector"),
    "registry": ("CollectorRegistry", "REGISTRY"),
}


def import_prometheus_client_core() -> bool:
    """Import prometheus_client's metrics, registry and default collectors, and leave
    its exposition module (about 1.5 MiB with what it imports: http.server,
    urllib.request, wsgiref, socketserver, html: its own HTTP servers and its push
    gateway client) until something asks the package for a name only it has.

    The package module is made from its spec without running its `__init__`; its
    metric types and REGISTRY are the very objects `from prometheus_client import
    Counter` gives anywhere, and the default collectors are registered as the
    package would register them. The first access to any other name of the package
    (`prometheus_client.start_http_server`, `generate_latest`, `__all__` ...) runs
    the package's own `__init__` then, so nothing is missing; a service never asks
    (corral.natsio.http_endpoint writes the text format itself). Returns whether the
    exposition was left out (False when prometheus_client is loaded already).
    """
    if PROMETHEUS in sys.modules:
        return False
    spec = importlib.util.find_spec(PROMETHEUS)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    package = importlib.util.module_from_spec(spec)
    sys.modules[PROMETHEUS] = package
    try:
        parts = {part: importlib.import_module(f"{PROMETHEUS}.{part}") for part in PROMETHEUS_PARTS}
    except BaseException:
        del sys.modules[PROMETHEUS]
        raise
    ready: dict[str, object] = {
        name: getattr(parts[part], name)
        for part, names in PROMETHEUS_PARTS.items()
        for name in names
    }
    loader = spec.loader

    def __getattr__(name: str) -> object:  # PEP 562: asked only for names not set yet
        if name in ready:
            return ready[name]
        # Anything else is the exposition's (or no name at all): the package's own
        # __init__ runs now, over the modules already loaded, and sets every name.
        del vars(package)["__getattr__"]
        loader.exec_module(package)
        try:
            return vars(package)[name]
        except KeyError:
            raise AttributeError(f"module {PROMETHEUS!r} has no attribute {name!r}") from None

    vars(package)["__getattr__"] = __getattr__
    return True


def use_pure_python_http_stack(*, websocket: bool) -> None:
    """Where aiohttp is kept: its stack's compiled modules that cost more resident
    memory than the work they speed up, replaced by the pure-Python modules the
    packages ship for platforms without a compiler, through their own switches.
    frozenlist's is C++ and brings the C++ runtime (libstdc++, about 1 MiB) for the
    short lists of aiohttp's signals. aiohttp's HTTP and WebSocket parsers (about
    0.5 MiB) read the Docker engine's few replies; they stay compiled when NATS
    itself runs over WebSocket (`websocket`), whose every frame goes through them. A
    switch the user has set is left as it is."""
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
    if not websocket:
        os.environ.setdefault("AIOHTTP_NO_EXTENSIONS", "1")


def prepare_imports(argv: Sequence[str], *, needs_aiohttp: bool = False) -> bool:
    """Before a service imports anything heavy: leave out what nothing will use (above),
    then import nats and prometheus_client's core. Returns whether aiohttp was left
    out."""
    leave_out_unused()  # before nats_flags() parses the command line
    left_out = False
    websocket = wants_websocket(argv)
    if not needs_aiohttp and not websocket:
        left_out = leave_out_websocket_transport()
    if not left_out:
        use_pure_python_http_stack(websocket=websocket)
    import_without_metadata("nats")  # nats-py asks it for its own version only
    import_prometheus_client_core()
    return left_out


def run_service_module(module: str, prepare: Callable[[Sequence[str]], object]) -> None:
    """A service's console entry point: decide what the process loads (`prepare`, given
    the command line), then import `module` and run its main()."""
    prepare(sys.argv[1:])
    importlib.import_module(module).main()


# --- a service with a cluster part and a node part (`--node`) ---------------------------


def node_flag(argv: Sequence[str]) -> str:
    """The --node the process runs the node part of ("": the cluster part)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--node", default="")
    known, _ = parser.parse_known_args(list(argv))
    return str(known.node)


def prepare_cluster_or_node(argv: Sequence[str]) -> None:
    """`prepare` for a service whose node part (`--node`) talks to Docker: aiohttp only
    then (aiodocker's transport, imported without importlib.metadata) or for a ws:// URL."""
    leave_out_unused()  # before node_flag() parses the command line
    node = bool(node_flag(argv))
    prepare_imports(argv, needs_aiohttp=node)
    if node:
        import_without_metadata("aiodocker")
