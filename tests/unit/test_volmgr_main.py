"""corral-volmgr's flags: the cluster part by default; `--node` brings the node part's
own flags; `--host-path-allow` is one flag for both parts. What it shares with netmgr:
tests/unit/test_cluster_or_node_entry.py."""

from __future__ import annotations

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
