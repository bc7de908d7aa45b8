"""The node part's route decisions and host facts (corral_netmgr.node.routes, .host): pure."""

from __future__ import annotations

from pathlib import Path

from corral.contract.network_state import NetworkSlice, NodeNetwork
from corral_netmgr.node.host import default_address, machine_id, used_ranges
from corral_netmgr.node.routes import current_routes, desired_routes, foreign_route, plan


def piece(network: str, node: str, subnet: str) -> NetworkSlice:
    gateway = subnet.split("/")[0].rsplit(".", 1)[0] + ".1"
    return NetworkSlice(network=network, node=node, subnet=subnet, gateway=gateway)


SLICES = [
    piece("default", "n1", "10.128.0.0/24"),
    piece("default", "n2", "10.128.1.0/24"),
    piece("default", "n3", "10.128.2.0/24"),
    piece("blue", "n2", "10.130.1.0/24"),
    piece("blue", "n4", "10.130.4.0/24"),
]


def test_slices_of_nodes_on_other_hosts_are_routed_via_their_address_and_same_host_ones_not():
    nodes = {
        "n1": NodeNetwork(node="n1", address="192.0.2.10", host_id="hostA"),
        "n2": NodeNetwork(node="n2", address="192.0.2.11", host_id="hostB"),
        "n3": NodeNetwork(node="n3", address="192.0.2.10", host_id="hostA"),  # beside n1
    }
    wanted, waiting = desired_routes(SLICES, nodes, "n1", "hostA")
    assert wanted == {"10.128.1.0/24": "192.0.2.11", "10.130.1.0/24": "192.0.2.11"}
    assert waiting == ["blue.n4: node n4 has not reported its address"]


def test_on_one_host_there_are_no_routes():
    nodes = {
        n: NodeNetwork(node=n, address="192.0.2.10", host_id="h") for n in ("n1", "n2", "n3", "n4")
    }
    assert desired_routes(SLICES, nodes, "n1", "h") == ({}, [])


def test_missing_routes_and_those_with_a_new_next_hop_are_replaced_stale_ones_in_corral_ranges_go():
    current = {
        "10.128.1.0/24": "192.0.2.11",  # right
        "10.128.2.0/24": "192.0.2.12",  # node moved to another address
        "10.128.9.0/24": "192.0.2.19",  # its node is gone
        "172.31.0.0/24": "192.0.2.50",  # protocol 182 too, but outside the cluster's ranges
    }
    wanted = {
        "10.128.1.0/24": "192.0.2.11",
        "10.128.2.0/24": "192.0.2.13",
        "10.130.1.0/24": "192.0.2.11",
    }
    result = plan(current, wanted, ["10.128.0.0/16", "10.130.0.0/16"])
    assert result.replace == {"10.128.2.0/24": "192.0.2.13"}  # corral's already: replaced
    assert result.add == {"10.130.1.0/24": "192.0.2.11"}  # not corral's yet: added, never replaced
    assert result.remove == ["10.128.9.0/24"]
    assert plan(wanted, wanted, ["10.128.0.0/16"]).empty


def test_removing_everything_takes_only_routes_inside_the_clusters_ranges():
    current = {"10.128.1.0/24": "192.0.2.11", "10.200.0.0/24": "192.0.2.11"}
    assert plan(current, {}, ["10.128.0.0/16"]).remove == ["10.128.1.0/24"]
    assert plan(current, {}, []).remove == []


def test_current_routes_are_read_from_ip_json():
    listed = [
        {"dst": "10.128.1.0/24", "gateway": "192.0.2.11", "dev": "eth0", "flags": []},
        {"dst": "10.128.7.7", "gateway": "192.0.2.12", "dev": "eth0", "flags": []},
        {"dst": "default", "gateway": "192.0.2.1"},
    ]
    assert current_routes(listed) == {"10.128.1.0/24": "192.0.2.11", "10.128.7.7/32": "192.0.2.12"}


LINKS = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {
        "ifname": "eth0",
        "addr_info": [
            {"family": "inet", "local": "198.51.100.7", "prefixlen": 24},
            {"family": "inet", "local": "192.0.2.2", "prefixlen": 24},
            {"family": "inet6", "local": "fd00::2", "prefixlen": 64},
        ],
    },
    {
        "ifname": "docker0",
        "addr_info": [{"family": "inet", "local": "172.17.0.1", "prefixlen": 16}],
    },
    {
        "ifname": "crlaaaaaaaaaaaa",
        "addr_info": [{"family": "inet", "local": "10.128.0.1", "prefixlen": 24}],
    },
]
ROUTES = [
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "flags": []},
    {"dst": "172.17.0.0/16", "dev": "docker0", "protocol": "kernel", "prefsrc": "172.17.0.1"},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "prefsrc": "192.0.2.2"},
    {"dst": "10.128.0.0/24", "dev": "crlaaaaaaaaaaaa", "protocol": "kernel"},
    {"dst": "10.128.1.0/24", "gateway": "192.0.2.11", "dev": "eth0", "protocol": "182"},
    {"dst": "10.40.0.0/16", "gateway": "192.0.2.1", "dev": "eth0", "protocol": "static"},
]


def test_the_node_address_is_the_default_routes_source_address_on_the_gateways_network():
    assert default_address(ROUTES, LINKS) == "192.0.2.2"
    with_source = [{**ROUTES[0], "prefsrc": "198.51.100.7"}, *ROUTES[1:]]
    assert default_address(with_source, LINKS) == "198.51.100.7"
    assert default_address(ROUTES[1:], LINKS) == ""


def test_used_ranges_are_the_hosts_networks_routes_and_foreign_docker_networks_not_corrals():
    used = used_ranges(ROUTES, LINKS, ["172.18.0.0/16", "fd01::/64"], ["crlaaaaaaaaaaaa"])
    assert used == [
        "10.40.0.0/16",
        "172.17.0.0/16",
        "172.18.0.0/16",
        "192.0.2.0/24",
        "198.51.100.0/24",
    ]


def test_the_host_id_is_the_machine_id_and_empty_when_unreadable(tmp_path: Path):
    (tmp_path / "machine-id").write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    assert machine_id(tmp_path / "machine-id") == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    assert machine_id(tmp_path / "none") == ""


def test_a_route_to_a_slice_that_is_not_corrals_is_found_and_shown_corrals_own_are_not():
    assert (
        foreign_route([{"dst": "10.128.1.0/24", "gateway": "192.0.2.11", "protocol": "182"}]) == ""
    )
    shown = [
        {"dst": "10.128.1.0/24", "gateway": "192.0.2.11", "protocol": "corral"},
        {"dst": "10.128.1.0/24", "dev": "eth0", "protocol": "kernel", "metric": 100},
    ]
    assert foreign_route(shown) == "10.128.1.0/24 dev eth0 proto kernel metric 100"
