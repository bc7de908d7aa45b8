"""The node part's applier and routes against the real kernel, inside a network
namespace each test makes itself (its own packet filter and routing table: the host's
are never touched)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints
from corral_netmgr.node import routes
from corral_netmgr.node.iptables import Iptables
from corral_netmgr.node.rules import Desired, Jump, NetworkRange, render

A = "CRL-aaaaaaaa"
B = "CRL-bbbbbbbb"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """A network namespace with Docker's DOCKER-USER chain (as Docker makes it) and a
    veth pair 192.0.2.1/24 <-> 192.0.2.2/24; the command prefix to run in it."""
    name = f"crl-test-{uuid.uuid4().hex[:8]}"
    try:
        sh("ip", "netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot make a network namespace: {error}")
    wrapper = ["ip", "netns", "exec", name]
    try:
        sh(*wrapper, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh(*wrapper, "ip", "link", "set", "v0", "up")
        sh(*wrapper, "ip", "link", "set", "v1", "up")
        sh(*wrapper, "ip", "addr", "add", "192.0.2.1/24", "dev", "v0")
        sh(*wrapper, "iptables", "-N", "DOCKER-USER")
        sh(*wrapper, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
        sh(*wrapper, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
        yield wrapper
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def web(ips: list[str], vip: str = "10.96.0.10") -> Endpoints:
    return Endpoints(
        service="web",
        cluster_ip=vip,
        type="NodePort",
        ports=[EndpointPort(port=80, target_port=8080, node_port=30080)],
        addresses=[EndpointAddress(ip=ip, replica=f"r{i}", node="n") for i, ip in enumerate(ips)],
    )


NETS = (NetworkRange("default", "10.128.0.0/16"), NetworkRange("blue", "10.130.0.0/16"))


async def test_rules_and_jumps_are_applied_once_and_reapplying_changes_nothing(netns: list[str]):
    ipt = Iptables(A, wrapper=netns)
    rendered = render(Desired(A, NETS, (web(["10.128.0.2", "10.128.0.3"]),)), await ipt.chains())
    assert await ipt.apply(rendered.tables) == 7  # every jump added
    first = sh(*netns, "iptables-save")
    assert f"-A DOCKER-USER -j {A}-FWD" in first
    assert "-A POSTROUTING -j CRL-aaaaaaaa-POST" in first
    assert "--to-destination 10.128.0.3:8080" in first
    rendered = render(Desired(A, NETS, (web(["10.128.0.2", "10.128.0.3"]),)), await ipt.chains())
    assert await ipt.apply(rendered.tables) == 0
    assert await ipt.apply(rendered.tables, await ipt.save()) == 0
    assert sh(*netns, "iptables-save", "-t", "nat").count(f"-j {A}-SVC") == 2
    docker_user = sh(*netns, "iptables", "-S", "DOCKER-USER").splitlines()
    assert docker_user[1:] == [f"-A DOCKER-USER -j {A}-FWD", "-A DOCKER-USER -j RETURN"]


async def test_an_endpoint_gone_takes_its_chain_with_it(netns: list[str]):
    ipt = Iptables(A, wrapper=netns)
    await ipt.apply(render(Desired(A, NETS, (web(["10.128.0.2", "10.128.0.3"]),))).tables)
    two = {c for c in (await ipt.chains())["nat"] if c.startswith(f"{A}-E-")}
    await ipt.apply(render(Desired(A, NETS, (web(["10.128.0.2"]),)), await ipt.chains()).tables)
    one = {c for c in (await ipt.chains())["nat"] if c.startswith(f"{A}-E-")}
    assert len(two) == 2 and len(one) == 1 and one < two
    await ipt.apply(render(Desired(A, NETS), await ipt.chains()).tables)
    nat = (await ipt.chains())["nat"]
    assert not {c for c in nat if c.startswith((f"{A}-E-", f"{A}-S-"))}


async def test_a_rule_docker_put_before_a_jump_moves_the_jump_first_again(netns: list[str]):
    ipt = Iptables(A, wrapper=netns)
    tables = render(Desired(A, NETS)).tables
    await ipt.apply(tables)
    # Docker re-inserting its own masquerade first (as on a restart)
    sh(*netns, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "172.17.0.0/16",
       "-j", "MASQUERADE")  # fmt: skip
    assert await ipt.apply(tables, await ipt.save()) == 1
    post = sh(*netns, "iptables", "-t", "nat", "-S", "POSTROUTING").splitlines()
    assert post[1:] == [
        f"-A POSTROUTING -j {A}-POST",
        "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE",
    ]


async def test_two_nodes_on_one_host_keep_their_own_chains_and_never_fight(netns: list[str]):
    a, b = Iptables(A, wrapper=netns), Iptables(B, wrapper=netns)
    await a.apply(render(Desired(A, NETS)).tables)
    await b.apply(render(Desired(B, NETS)).tables)
    # b's jumps are first now; a's come after only corral jumps: nobody moves anything
    assert await a.apply(render(Desired(A, NETS), await a.chains()).tables) == 0
    assert await b.apply(render(Desired(B, NETS), await b.chains()).tables) == 0
    await a.remove_all()
    saved = sh(*netns, "iptables-save")
    assert A not in saved
    assert f"-A DOCKER-USER -j {B}-FWD" in saved and f":{B}-SVC" in saved
    await b.remove_all()
    saved = sh(*netns, "iptables-save")
    assert "CRL-" not in saved
    assert "-A DOCKER-USER -j RETURN" in saved  # Docker's own rule stays


async def test_routes_are_replaced_and_removed_only_with_corral_protocol_inside_its_ranges(
    netns: list[str],
):
    sh(*netns, "ip", "route", "add", "10.128.9.0/24", "via", "192.0.2.9")  # someone else's
    sh(*netns, "ip", "route", "add", "10.140.0.0/24", "via", "192.0.2.8", "proto", "182")
    wanted = {"10.128.1.0/24": "192.0.2.11", "10.128.2.0/24": "192.0.2.12"}
    ranges = ["10.128.0.0/16"]
    plan = routes.plan(await routes.read_current(netns), wanted, ranges)
    assert await routes.apply_plan(plan, netns) == []
    assert await routes.read_current(netns) == {**wanted, "10.140.0.0/24": "192.0.2.8"}
    plan = routes.plan(await routes.read_current(netns), {}, ranges)
    assert plan.remove == ["10.128.1.0/24", "10.128.2.0/24"]
    assert await routes.apply_plan(plan, netns) == []
    table = sh(*netns, "ip", "route")
    assert "10.128.9.0/24 via 192.0.2.9" in table  # not corral's: kept
    assert "10.140.0.0/24" in table  # corral's protocol, outside the cluster's ranges: kept
    assert "10.128.1.0" not in table


async def test_a_route_whose_next_hop_is_unreachable_is_reported_not_raised(netns: list[str]):
    plan = routes.plan({}, {"10.128.1.0/24": "198.51.100.1"}, ["10.128.0.0/16"])
    errors = await routes.apply_plan(plan, netns)
    assert len(errors) == 1 and "10.128.1.0/24" in errors[0]


async def test_forgetting_a_udp_services_flows_deletes_its_conntrack_entries_only(
    netns: list[str],
):
    if shutil.which("conntrack") is None:
        pytest.skip("conntrack is not installed (scripts/ensure-docker installs it)")
    ipt = Iptables(A, wrapper=netns)
    await ipt.apply(render(Desired(A, NETS)).tables)  # conntrack is on once rules use it
    send = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    for address in ("192.0.2.9", "192.0.2.8"):
        sh(*netns, "python3", "-c", send + f"s.sendto(b'x', ('{address}', 53))")
    listed = sh(*netns, "conntrack", "-L", "-p", "udp")
    assert "dst=192.0.2.9" in listed and "dst=192.0.2.8" in listed
    await ipt.forget_flows("192.0.2.9", ())
    listed = sh(*netns, "conntrack", "-L", "-p", "udp")
    assert "dst=192.0.2.9" not in listed and "dst=192.0.2.8" in listed
    await ipt.forget_flows("192.0.2.9", ())  # nothing left to delete: no error


class _ForeignInserter(Iptables):
    """Lists a chain, then (as Docker restarting would) inserts a rule of its own at
    the top before the caller acts on the listing."""

    def __init__(self, prefix: str, wrapper: list[str]) -> None:
        super().__init__(prefix, wrapper=wrapper)
        self.inserted = 0

    async def _rules(self, jump: Jump) -> list[str]:
        listed = await super()._rules(jump)
        self.inserted += 1
        sh(*self.wrapper, "iptables", "-t", jump.table, "-I", jump.chain, "1",
           "-s", f"172.31.{self.inserted}.0/24", "-j", "RETURN")  # fmt: skip
        return listed


async def test_moving_a_jump_first_never_deletes_a_rule_inserted_after_the_listing(
    netns: list[str],
):
    ipt = Iptables(A, wrapper=netns)
    tables = render(Desired(A, NETS)).tables
    await ipt.apply(tables)
    sh(*netns, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "172.17.0.0/16",
       "-j", "MASQUERADE")  # fmt: skip
    racing = _ForeignInserter(A, netns)
    assert await racing.ensure_jump(Jump("nat", "POSTROUTING", f"{A}-POST")) is True
    post = sh(*netns, "iptables", "-t", "nat", "-S", "POSTROUTING").splitlines()[1:]
    assert post[0] == f"-A POSTROUTING -j {A}-POST"
    assert post.count(f"-A POSTROUTING -j {A}-POST") == 1
    assert "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE" in post  # Docker's rule stays
    for n in range(1, racing.inserted + 1):  # every rule inserted meanwhile stays
        assert f"-A POSTROUTING -s 172.31.{n}.0/24 -j RETURN" in post


async def test_a_slice_the_host_already_routes_itself_is_reported_and_its_route_left_untouched(
    netns: list[str],
):
    sh(*netns, "ip", "addr", "add", "10.128.1.5/24", "dev", "v1")  # the host's own LAN
    sh(*netns, "ip", "route", "add", "10.128.2.0/24", "via", "192.0.2.9")  # static
    sh(*netns, "ip", "route", "add", "10.128.3.0/24", "via", "192.0.2.7", "metric", "100")  # VPN
    before = sh(*netns, "ip", "route")
    wanted = {
        "10.128.1.0/24": "192.0.2.11",
        "10.128.2.0/24": "192.0.2.12",
        "10.128.3.0/24": "192.0.2.13",
        "10.128.4.0/24": "192.0.2.14",
    }
    plan = routes.plan(await routes.read_current(netns), wanted, ["10.128.0.0/16"])
    result = await routes.apply(plan, netns)
    assert result.errors == []
    assert [c.subnet for c in result.conflicts] == [
        "10.128.1.0/24",
        "10.128.2.0/24",
        "10.128.3.0/24",
    ]
    assert "proto kernel" in result.conflicts[0].theirs
    assert await routes.read_current(netns) == {"10.128.4.0/24": "192.0.2.14"}
    after = sh(*netns, "ip", "route")
    assert after.replace("10.128.4.0/24 via 192.0.2.14 dev v0 proto 182 \n", "") == before
    messages = await routes.apply_plan(routes.plan(await routes.read_current(netns), wanted,
                                                   ["10.128.0.0/16"]), netns)  # fmt: skip
    assert len(messages) == 3 and all("not added" in m for m in messages)
    assert sh(*netns, "ip", "route") == after


async def test_forgetting_node_port_flows_deletes_only_those_sent_to_a_removed_endpoint(
    netns: list[str],
):
    if shutil.which("conntrack") is None:
        pytest.skip("conntrack is not installed (scripts/ensure-docker installs it)")
    ipt = Iptables(A, wrapper=netns)
    await ipt.apply(render(Desired(A, NETS)).tables)  # conntrack is on once rules use it
    for node_address, endpoint in (("192.0.2.9", "192.0.2.5"), ("192.0.2.10", "192.0.2.6")):
        sh(*netns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-d", node_address,
           "--dport", "30053", "-j", "DNAT", "--to-destination", f"{endpoint}:53")  # fmt: skip
    send = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    for address in ("192.0.2.9", "192.0.2.10", "192.0.2.8"):  # .8: the host's own service
        sh(*netns, "python3", "-c", send + f"s.sendto(b'x', ('{address}', 30053))")
    listed = sh(*netns, "conntrack", "-L", "-p", "udp")
    assert "src=192.0.2.5" in listed and "src=192.0.2.6" in listed and "dst=192.0.2.8" in listed
    await ipt.forget_flows("10.96.0.99", (30053,), removed=["192.0.2.5"])
    listed = sh(*netns, "conntrack", "-L", "-p", "udp")
    assert "src=192.0.2.5" not in listed  # sent to the removed endpoint: gone
    assert "src=192.0.2.6" in listed  # an endpoint that stays: kept
    assert "dst=192.0.2.8 sport" in listed  # the same port, not the Service's: kept
