"""corral-volmgr's flags: the cluster part by default; `--node` brings the node part's
own flags, imported only then, and says clearly when it cannot be; `--host-path-allow`
is one flag for both parts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from corral_volmgr.main import build_parser


def test_the_cluster_part_needs_no_node_flags_and_takes_host_path_allow_repeated() -> None:
    argv = ["--host-path-allow", "/srv/a", "--host-path-allow", "/srv/b"]
    args = build_parser([]).parse_args(argv)
    assert args.node == "" and not hasattr(args, "volumes_dir")
    assert args.host_path_allow == ["/srv/a", "/srv/b"]


def test_node_adds_the_node_parts_flags_beside_the_shared_host_path_allow() -> None:
    argv = ["--node", "n1", "--volumes-dir", "/tmp/v", "--host-path-allow", "/srv"]
    args = build_parser(argv).parse_args(argv)
    assert (args.node, args.volumes_dir, args.host_path_allow) == ("n1", "/tmp/v", ["/srv"])


def test_a_node_part_that_cannot_be_imported_is_said_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "corral_volmgr.node", None)
    with pytest.raises(SystemExit):
        build_parser(["--node", "n1"])
    assert "node part (corral_volmgr.node)" in capsys.readouterr().err


def _loads_aiohttp(argv: list[str]) -> bool:
    code = (
        "from corral_volmgr.__main__ import prepare\n"
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
