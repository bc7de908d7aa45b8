"""What a service process loads: only the contract, the NATS layer and its own code.

Each case starts a fresh interpreter that does what the service's console script
does before running (`corral_<service>.__main__.prepare(argv)`, then importing its
service module) and reports the modules it has loaded. This also pins the one
assumption corral.natsio.lean makes about nats-py (aiohttp is optional to it): a
nats-py that needs aiohttp unconditionally fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import importlib, json, sys
package, argv = sys.argv[1], sys.argv[2:]
importlib.import_module(package + ".__main__").prepare(argv)
importlib.import_module(package + ".main")
import nats
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""

NATS = ["--nats", "nats://127.0.0.1:4222"]
# Never in a service process: the client side and the CLI's libraries.
NEVER = ("corral.client", "click", "yaml")


def loaded_modules(package: str, argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, package, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout)
    return set(modules)


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def assert_never_loaded(modules: set[str]) -> None:
    for prefix in NEVER:
        assert not [m for m in modules if m == prefix or m.startswith(prefix + ".")], prefix


@pytest.mark.parametrize(
    ("package", "argv"),
    [
        ("corral_scheduler", NATS),
        ("corral_netmgr", NATS),
        ("corral_volmgr", NATS),
        ("corral_node_agent", [*NATS, "--runtime", "hollow"]),
    ],
)
def test_a_service_loads_neither_the_client_side_nor_aiohttp(package: str, argv: list[str]) -> None:
    modules = loaded_modules(package, argv)
    assert_never_loaded(modules)
    assert "aiohttp" not in top_level(modules)
    assert "aiodocker" not in top_level(modules)
    assert {"nats", "msgspec", "prometheus_client", "corral"} <= top_level(modules)


def test_the_node_agent_on_docker_loads_aiohttp_for_aiodocker_and_nothing_of_the_client() -> None:
    modules = loaded_modules("corral_node_agent", NATS)  # --runtime docker is the default
    assert_never_loaded(modules)
    assert "aiohttp" in top_level(modules)


def test_a_websocket_nats_url_keeps_aiohttp_for_nats_py() -> None:
    modules = loaded_modules("corral_scheduler", ["--nats", "ws://127.0.0.1:8080"])
    assert "aiohttp" in top_level(modules)
    assert_never_loaded(modules)


def test_the_nats_url_from_the_environment_decides_too() -> None:
    env = dict(os.environ, CORRAL_NATS_URL="wss://nats.example:443")
    assert "aiohttp" in top_level(loaded_modules("corral_volmgr", [], env))
    env = dict(os.environ, CORRAL_NATS_URL="nats://10.0.0.1:4222,tls://10.0.0.2:4222")
    assert "aiohttp" not in top_level(loaded_modules("corral_volmgr", [], env))


def test_an_unreadable_url_leaves_everything_loadable_for_the_service_to_report() -> None:
    assert "aiohttp" in top_level(loaded_modules("corral_netmgr", ["--nats", "not-a-url"]))
