"""corral-netmgr's flags: the cluster part by default; `--node` brings the node part's
own flags (tests/unit/test_cluster_or_node_entry.py: what both services share)."""

from __future__ import annotations

from corral_netmgr.main import build_parser


def test_the_cluster_part_needs_no_node_flags() -> None:
    args = build_parser([]).parse_args([])
    assert args.node == "" and not hasattr(args, "node_address")


def test_node_adds_the_node_parts_flags() -> None:
    argv = ["--node", "n1", "--node-address", "192.0.2.7"]
    args = build_parser(argv).parse_args(argv)
    assert (args.node, args.node_address) == ("n1", "192.0.2.7")
