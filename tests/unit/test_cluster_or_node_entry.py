"""What corral-netmgr and corral-volmgr share at start (corral.natsio.lean,
corral.natsio.cluster_service): `--node` brings the node part, imported only then and
said clearly when it cannot be, and only the node part keeps aiohttp (for Docker)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

SERVICES = ["corral_netmgr", "corral_volmgr"]


@pytest.mark.parametrize("package", SERVICES)
def test_a_node_part_that_cannot_be_imported_is_said_clearly(
    package: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build_parser = importlib.import_module(f"{package}.main").build_parser
    monkeypatch.setitem(sys.modules, f"{package}.node", None)
    with pytest.raises(SystemExit):
        build_parser(["--node", "n1"])
    assert f"node part ({package}.node)" in capsys.readouterr().err


def _loads_aiohttp(package: str, argv: list[str]) -> bool:
    code = (
        f"from {package}.__main__ import prepare\n"
        f"prepare({argv!r})\n"
        "try:\n"
        "    import aiohttp\n"
        "except ImportError:\n"
        "    print('absent')\n"
        "else:\n"
        "    print('loaded')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip() == "loaded"


@pytest.mark.parametrize("package", SERVICES)
def test_the_node_part_keeps_aiohttp_for_docker_and_the_cluster_part_leaves_it_out(
    package: str,
) -> None:
    nats = ["--nats", "nats://127.0.0.1:4222"]
    assert _loads_aiohttp(package, [*nats, "--node", "n1"])
    assert not _loads_aiohttp(package, nats)
