"""What a service process loads: only the contract, the NATS layer and its own code.

Each case starts a fresh interpreter that does what the service's console script
does before running (`corral_<service>.__main__.prepare(argv)`, then importing its
service module, and for the node agent on Docker its runtime, as its main does when
it starts) and reports the modules it has loaded. This also pins what
corral.natsio.lean assumes about the libraries (docs/architecture.md, "Idle
memory"): nats-py treats aiohttp as optional and asks importlib.metadata only for
its version, as aiodocker does; prometheus_client's package takes its names from
the modules lean loads; hashlib works without OpenSSL's binding. A library version
that breaks one of these fails here, loudly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import importlib, json, os, sys
package, argv = sys.argv[1], sys.argv[2:]
importlib.import_module(package + ".__main__").prepare(argv)
importlib.import_module(package + ".main")
for extra in filter(None, os.environ.get("PROBE_ALSO", "").split(",")):
    importlib.import_module(extra)
loaded = sorted(name for name, module in sys.modules.items() if module is not None)
answer = {"modules": loaded}
exec(os.environ.get("PROBE_THEN", ""))
print(json.dumps(answer))
"""

NATS = ["--nats", "nats://127.0.0.1:4222"]
SERVICES = [
    ("corral_scheduler", NATS),
    ("corral_netmgr", NATS),
    ("corral_volmgr", NATS),
    ("corral_node_agent", [*NATS, "--runtime", "hollow"]),
]
DOCKER_RUNTIME = "corral_node_agent.docker_runtime"
# Never in a service process: the client side and the CLI's libraries.
NEVER = ("corral.client", "click", "yaml")
# Left out of every service process (corral.natsio.lean): OpenSSL's hashlib binding,
# the bz2 and lzma compressors, importlib.metadata, the TOML parser (no config file),
# prometheus_client's exposition and the HTTP servers and clients it imports.
LEFT_OUT = (
    "_hashlib",
    "_bz2",
    "_lzma",
    "importlib.metadata",
    "tomllib",
    "prometheus_client.exposition",
    "http.server",
    "urllib.request",
    "wsgiref",
)


def probe(
    package: str,
    argv: list[str],
    *,
    also: tuple[str, ...] = (),
    then: str = "",
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    environment = dict(os.environ if env is None else env)
    environment.pop("CORRAL_NATS_URL", None) if env is None else None
    environment["PROBE_ALSO"] = ",".join(also)
    environment["PROBE_THEN"] = then
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, package, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def loaded_modules(
    package: str, argv: list[str], env: dict[str, str] | None = None, also: tuple[str, ...] = ()
) -> set[str]:
    modules = probe(package, argv, env=env, also=also)["modules"]
    assert isinstance(modules, list)
    return set(modules)


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def loads(modules: set[str], name: str) -> bool:
    return any(module == name or module.startswith(name + ".") for module in modules)


def assert_never_loaded(modules: set[str]) -> None:
    for prefix in NEVER:
        assert not loads(modules, prefix), prefix


@pytest.mark.parametrize(("package", "argv"), SERVICES)
def test_a_service_loads_neither_the_client_side_nor_aiohttp(package: str, argv: list[str]) -> None:
    modules = loaded_modules(package, argv)
    assert_never_loaded(modules)
    assert "aiohttp" not in top_level(modules)
    assert "aiodocker" not in top_level(modules)
    assert {"nats", "msgspec", "prometheus_client", "corral"} <= top_level(modules)


@pytest.mark.parametrize(("package", "argv"), SERVICES)
def test_a_service_leaves_out_openssl_hashes_compressors_metadata_and_the_metrics_servers(
    package: str, argv: list[str]
) -> None:
    modules = loaded_modules(package, argv)
    assert [name for name in LEFT_OUT if loads(modules, name)] == []


def test_the_node_agent_on_docker_loads_aiohttp_for_aiodocker_and_nothing_of_the_client() -> None:
    modules = loaded_modules("corral_node_agent", NATS)  # --runtime docker is the default
    assert_never_loaded(modules)
    assert "aiohttp" in top_level(modules)


def test_the_node_agent_on_docker_loads_aiodocker_without_metadata_or_compiled_extras() -> None:
    modules = loaded_modules("corral_node_agent", NATS, also=(DOCKER_RUNTIME,))
    assert {"aiodocker", "aiohttp", "frozenlist"} <= top_level(modules)
    # aiohttp imports urllib.request itself (for proxy settings)
    kept = [name for name in LEFT_OUT if loads(modules, name)]
    assert kept == ["urllib.request"]
    # frozenlist's C++ module (and with it libstdc++), aiohttp's compiled HTTP parser
    assert "frozenlist._frozenlist" not in modules
    assert "aiohttp._http_parser" not in modules


def test_the_libraries_report_the_versions_their_metadata_holds() -> None:
    then = (
        "import aiodocker, nats.aio.client\n"
        "answer['told'] = [nats.aio.client.__version__, aiodocker.__version__]\n"
        "import importlib.metadata as metadata\n"
        "answer['real'] = [metadata.version('nats-py'), metadata.version('aiodocker')]\n"
        "answer['real_module'] = metadata.__file__\n"
    )
    answer = probe("corral_node_agent", NATS, also=(DOCKER_RUNTIME,), then=then)
    assert answer["told"] == answer["real"]
    assert "0.0.0" not in str(answer["told"])
    assert str(answer["real_module"]).endswith("__init__.py")  # the real one, afterwards


def test_a_websocket_nats_url_keeps_aiohttp_for_nats_py() -> None:
    modules = loaded_modules("corral_scheduler", ["--nats", "ws://127.0.0.1:8080"])
    assert "aiohttp" in top_level(modules)
    assert_never_loaded(modules)
    # NATS frames go through aiohttp's reader: its compiled parts stay.
    assert "aiohttp._http_parser" in modules


def test_the_nats_url_from_the_environment_decides_too() -> None:
    env = dict(os.environ, CORRAL_NATS_URL="wss://nats.example:443")
    assert "aiohttp" in top_level(loaded_modules("corral_volmgr", [], env))
    env = dict(os.environ, CORRAL_NATS_URL="nats://10.0.0.1:4222,tls://10.0.0.2:4222")
    assert "aiohttp" not in top_level(loaded_modules("corral_volmgr", [], env))


def test_an_unreadable_url_leaves_everything_loadable_for_the_service_to_report() -> None:
    assert "aiohttp" in top_level(loaded_modules("corral_netmgr", ["--nats", "not-a-url"]))


def test_hashlib_and_hmac_give_the_same_digests_without_openssl() -> None:
    then = (
        "import hashlib, hmac\n"
        "answer['sha256'] = hashlib.sha256(b'corral').hexdigest()\n"
        "answer['hmac'] = hmac.new(b'key', b'corral', 'sha256').hexdigest()\n"
        "answer['openssl'] = '_hashlib' in sys.modules and sys.modules['_hashlib'] is not None\n"
    )
    answer = probe("corral_scheduler", NATS, then=then)
    assert answer["sha256"] == hashlib.sha256(b"corral").hexdigest()
    assert answer["hmac"] == hmac.new(b"key", b"corral", "sha256").hexdigest()
    assert answer["openssl"] is False


def test_prometheus_client_gives_every_name_and_registers_the_default_collectors() -> None:
    then = (
        "import prometheus_client\n"
        "from prometheus_client import Counter, REGISTRY\n"
        "answer['families'] = [m.name for m in REGISTRY.collect()]\n"
        "answer['exposition_before'] = 'prometheus_client.exposition' in sys.modules\n"
        "early = {name: getattr(prometheus_client, name) for name in ('Counter', 'REGISTRY')}\n"
        "names = prometheus_client.__all__\n"  # completes the package
        "answer['missing'] = [n for n in names if not hasattr(prometheus_client, n)]\n"
        "answer['same'] = all(getattr(prometheus_client, n) is o for n, o in early.items())\n"
        "answer['exposition_after'] = 'prometheus_client.exposition' in sys.modules\n"
    )
    answer = probe("corral_netmgr", NATS, then=then)
    plain = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, prometheus_client as p; "
            "print(json.dumps([m.name for m in p.REGISTRY.collect()]))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # the default collectors, in the same order (corral's own metrics come after them)
    defaults = [name for name in answer["families"] if not name.startswith("corral_")]
    assert defaults == json.loads(plain.stdout)
    assert answer["exposition_before"] is False
    assert answer["missing"] == []
    assert answer["same"] is True
    assert answer["exposition_after"] is True
