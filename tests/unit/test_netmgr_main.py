"""corral-netmgr's flags: the cluster part by default; `--node` brings the node part's
own flags, imported only then, and says clearly when it cannot be."""

from __future__ import annotations

import subprocess
import sys

import pytest

from corral_netmgr.main import build_parser


def test_the_cluster_part_needs_no_node_flags() -> None:
    args = build_parser([]).parse_args([])
    assert args.node == "" and not hasattr(args, "node_address")


def test_node_adds_the_node_parts_flags() -> None:
    argv = ["--node", "n1", "--node-address", "192.0.2.7"]
    args = build_parser(argv).parse_args(argv)
    assert (args.node, args.node_address) == ("n1", "192.0.2.7")


def test_a_node_part_that_cannot_be_imported_is_said_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "corral_netmgr.node", None)
    with pytest.raises(SystemExit):
        build_parser(["--node", "n1"])
    assert "node part (corral_netmgr.node)" in capsys.readouterr().err


def _loads_aiohttp(argv: list[str]) -> bool:
    code = (
        "import sys\n"
        "from corral_netmgr.__main__ import prepare\n"
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


def test_the_node_part_keeps_aiohttp_for_docker_and_the_cluster_part_leaves_it_out() -> None:
    nats = ["--nats", "nats://127.0.0.1:4222"]
    assert _loads_aiohttp([*nats, "--node", "n1"])
    assert not _loads_aiohttp(nats)
