"""netmgr's allocations (corral_netmgr.allocator): ranges, slices, cluster IPs, node ports."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral_netmgr.allocator import (
    AllocationError,
    Taken,
    allocate_cluster_ip,
    allocate_node_ports,
    assign_slices,
    check_subnet,
    gateway,
    listening,
    parse_ranges,
    pick_subnet,
)

N = IPv4Network


def test_a_network_without_subnet_gets_the_first_free_16_of_the_pool() -> None:
    assert pick_subnet(Taken()) == N("10.128.0.0/16")
    taken = Taken(networks={"a": N("10.128.0.0/16"), "b": N("10.129.5.0/24")})
    assert pick_subnet(taken) == N("10.130.0.0/16")


def test_a_range_a_node_uses_is_never_picked() -> None:
    taken = Taken(used={"n1": [N("10.128.0.0/12")]})
    assert pick_subnet(taken) == N("10.144.0.0/16")


def test_an_exhausted_pool_is_refused_naming_the_subnet() -> None:
    taken = Taken(networks={"all": N("10.128.0.0/9")})
    with pytest.raises(AllocationError) as refused:
        pick_subnet(taken)
    assert refused.value.field == "spec.subnet"


@pytest.mark.parametrize(
    ("subnet", "taken", "named"),
    [
        ("10.50.0.0/16", Taken(networks={"web": N("10.50.3.0/24")}), "network 'web'"),
        ("10.96.0.0/12", Taken(), "the service range"),
        ("192.168.0.0/16", Taken(used={"n2": [N("192.168.1.0/24")]}), "node 'n2'"),
    ],
)
def test_a_requested_subnet_that_overlaps_is_refused_with_what_it_overlaps(
    subnet: str, taken: Taken, named: str
) -> None:
    with pytest.raises(AllocationError) as refused:
        check_subnet(N(subnet), taken)
    assert refused.value.field == "spec.subnet"
    assert named in refused.value.message


@pytest.mark.parametrize(
    ("subnet", "named"),
    [
        ("127.0.0.0/16", "loopback"),
        ("224.0.0.0/16", "multicast"),
        ("169.254.0.0/16", "link-local"),
        ("0.0.0.0/8", "this network"),
        ("255.255.0.0/16", "broadcast"),
        ("126.0.0.0/8", None),  # beside loopback: fine
    ],
)
def test_a_requested_subnet_in_a_special_range_is_refused(subnet: str, named: str | None) -> None:
    if named is None:
        check_subnet(N(subnet), Taken())
        return
    with pytest.raises(AllocationError) as refused:
        check_subnet(N(subnet), Taken())
    assert refused.value.field == "spec.subnet" and named in refused.value.message


def test_a_free_requested_subnet_is_accepted() -> None:
    check_subnet(N("10.50.0.0/16"), Taken(networks={"a": N("10.51.0.0/16")}))


def test_unreadable_ranges_and_default_routes_are_not_used_ranges() -> None:
    assert parse_ranges(["0.0.0.0/0", "junk", "172.17.0.1/16"]) == [N("172.17.0.0/16")]


def test_each_node_gets_the_lowest_free_slice_and_keeps_its_own() -> None:
    subnet = N("10.128.0.0/16")
    first = assign_slices(subnet, 24, ["b", "a"], {})
    assert first.assigned == {"a": N("10.128.0.0/24"), "b": N("10.128.1.0/24")}
    # a leaves, c joins: c takes the freed lowest slice, b keeps its own
    second = assign_slices(subnet, 24, ["b", "c"], {"b": "10.128.1.0/24"})
    assert second.assigned == {"b": N("10.128.1.0/24"), "c": N("10.128.0.0/24")}
    assert gateway(second.assigned["c"]) == N("10.128.0.0/24").network_address + 1


def test_a_slice_that_is_not_of_this_network_or_shared_is_given_anew() -> None:
    subnet = N("10.128.0.0/16")
    result = assign_slices(subnet, 24, ["a", "b"], {"a": "10.200.0.0/24", "b": "10.128.0.0/25"})
    assert result.assigned == {"a": N("10.128.0.0/24"), "b": N("10.128.1.0/24")}


def test_nodes_beyond_the_networks_room_get_no_slice() -> None:
    result = assign_slices(N("10.1.0.0/23"), 24, ["a", "b", "c"], {})
    assert set(result.assigned) == {"a", "b"} and result.without == ["c"]


@given(
    st.lists(st.sampled_from([f"n{i}" for i in range(40)]), max_size=40),
    st.lists(st.sampled_from([f"n{i}" for i in range(40)]), max_size=40),
    st.integers(min_value=20, max_value=26),
)
def test_slices_never_overlap_and_survive_other_nodes_coming_and_going(
    before: list[str], after: list[str], prefix: int
) -> None:
    subnet = N("10.128.0.0/18")
    first = assign_slices(subnet, prefix, before, {})
    existing = {node: str(range_) for node, range_ in first.assigned.items()}
    second = assign_slices(subnet, prefix, after, existing)
    ranges = list(second.assigned.values())
    assert len(set(ranges)) == len(ranges)
    assert all(r.subnet_of(subnet) and r.prefixlen == prefix for r in ranges)
    for node in set(before) & set(after):
        if node in first.assigned:
            assert second.assigned[node] == first.assigned[node]
    assert set(second.assigned) | set(second.without) == set(after)


def test_cluster_ips_skip_the_network_address_and_dot_one() -> None:
    assert allocate_cluster_ip("", []) == "10.96.0.2"
    assert allocate_cluster_ip("", ["10.96.0.2", "10.96.0.3"]) == "10.96.0.4"


@pytest.mark.parametrize(
    ("requested", "taken", "message"),
    [
        ("10.97.0.5", [], "not in the service range"),
        ("10.96.0.9", ["10.96.0.9"], "taken"),
        ("10.96.0.1", [], "reserved"),
    ],
)
def test_a_requested_cluster_ip_must_be_in_range_and_free(
    requested: str, taken: list[str], message: str
) -> None:
    with pytest.raises(AllocationError) as refused:
        allocate_cluster_ip(requested, taken)
    assert refused.value.field == "spec.clusterIP" and message in refused.value.message


def test_a_free_requested_cluster_ip_is_given() -> None:
    assert allocate_cluster_ip("10.96.7.7", ["10.96.0.2"]) == "10.96.7.7"


def test_node_ports_come_from_the_range_unless_requested() -> None:
    assert allocate_node_ports([("TCP", 0), ("TCP", 0)], [("TCP", 30000)]) == [30001, 30002]
    # any free port may be requested; the same number is free for another protocol
    assert allocate_node_ports([("UDP", 30000), ("TCP", 8080)], [("TCP", 30000)]) == [
        30000,
        8080,
    ]
    # a requested port is not handed out to another port of the same Service
    assert allocate_node_ports([("TCP", 0), ("TCP", 30000)], []) == [30001, 30000]


def test_a_node_port_taken_for_its_protocol_is_refused_naming_the_port() -> None:
    with pytest.raises(AllocationError) as refused:
        allocate_node_ports([("TCP", 0), ("UDP", 31000)], [("UDP", 31000)])
    assert refused.value.field == "spec.ports[1].nodePort"


def test_a_requested_node_port_a_process_listens_on_is_refused_naming_the_node() -> None:
    listened = listening({"n2": ["22/TCP", "bad", "70000/TCP"], "n1": ["22/TCP", "53/UDP"]})
    assert listened == {("TCP", 22): "n1", ("UDP", 53): "n1"}
    with pytest.raises(AllocationError) as refused:
        allocate_node_ports([("TCP", 0), ("TCP", 22)], [], listened=listened)
    assert refused.value.field == "spec.ports[1].nodePort"
    assert "22/TCP is in use on node n1 (a process listens there)" in refused.value.message
    # the same number for the other protocol is free
    assert allocate_node_ports([("UDP", 22)], [], listened=listened) == [22]


def test_ports_a_process_listens_on_are_skipped_when_picking_from_the_range() -> None:
    listened = listening({"n1": ["30000/TCP", "30002/TCP"], "n2": ["30001/UDP"]})
    assert allocate_node_ports(
        [("TCP", 0), ("TCP", 0), ("UDP", 0)], [("TCP", 30001)], listened=listened
    ) == [30003, 30004, 30000]
