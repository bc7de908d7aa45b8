"""The node part's packet-filter renderer (corral_netmgr.node.rules): golden texts."""

from __future__ import annotations

from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints
from corral_netmgr.node.rules import (
    Desired,
    Jump,
    NetworkRange,
    chains_in,
    in_place,
    jumps,
    move_first,
    removal,
    render,
    rules_in,
    udp_targets,
)

P = "CRL-0badcafe"


def endpoints(
    name: str,
    vip: str,
    ips: list[str],
    *,
    kind: str = "ClusterIP",
    ports: list[EndpointPort] | None = None,
    not_ready: list[str] = (),  # type: ignore[assignment]
) -> Endpoints:
    addresses = [EndpointAddress(ip=ip, replica=f"r{i}", node="n1") for i, ip in enumerate(ips)]
    addresses += [
        EndpointAddress(ip=ip, replica=f"x{i}", node="n1", ready=False)
        for i, ip in enumerate(not_ready)
    ]
    return Endpoints(
        service=name,
        cluster_ip=vip,
        type=kind,
        ports=ports or [EndpointPort(port=80, target_port=8080)],
        addresses=addresses,
    )


NETWORKS = (
    NetworkRange("blue", "10.130.0.0/16", ("10.131.0.7",)),
    NetworkRange("default", "10.128.0.0/16"),
)


def test_isolation_with_no_service_accepts_each_network_and_its_extra_members_and_rejects_across():
    rendered = render(Desired(P, NETWORKS))
    assert rendered.problems == []
    assert rendered.tables["filter"] == (
        "*filter\n"
        f":{P}-FWD - [0:0]\n"
        f":{P}-XNET - [0:0]\n"
        f":{P}-NOEP - [0:0]\n"
        f"-A {P}-FWD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        f"-A {P}-FWD -m mark --mark 0x40000/0x40000 -j ACCEPT\n"
        f"-A {P}-FWD -s 10.130.0.0/16 -d 10.130.0.0/16 -j ACCEPT\n"
        f"-A {P}-FWD -s 10.131.0.7/32 -d 10.130.0.0/16 -j ACCEPT\n"
        f"-A {P}-FWD -s 10.128.0.0/16 -d 10.128.0.0/16 -j ACCEPT\n"
        f"-A {P}-FWD -s 10.130.0.0/16 -j {P}-XNET\n"
        f"-A {P}-FWD -s 10.128.0.0/16 -j {P}-XNET\n"
        f"-A {P}-XNET -d 10.130.0.0/16 -j REJECT --reject-with icmp-admin-prohibited\n"
        f"-A {P}-XNET -d 10.128.0.0/16 -j REJECT --reject-with icmp-admin-prohibited\n"
        "COMMIT\n"
    )
    assert rendered.tables["nat"] == (
        "*nat\n"
        f":{P}-SVC - [0:0]\n"
        f":{P}-POST - [0:0]\n"
        f":{P}-MASQ - [0:0]\n"
        f":{P}-XNET - [0:0]\n"
        f"-A {P}-POST -j {P}-MASQ\n"
        f"-A {P}-POST -s 10.130.0.0/16 -j {P}-XNET\n"
        f"-A {P}-POST -s 10.128.0.0/16 -j {P}-XNET\n"
        f"-A {P}-XNET -d 10.130.0.0/16 -j ACCEPT\n"
        f"-A {P}-XNET -d 10.128.0.0/16 -j ACCEPT\n"
        f"-A {P}-MASQ -m mark --mark 0x40000/0x40000 -j MASQUERADE\n"
        "COMMIT\n"
    )


def test_a_nodeport_service_balances_over_its_ready_endpoints_with_falling_probabilities():
    web = endpoints(
        "web",
        "10.96.0.10",
        ["10.128.0.12", "10.128.0.3", "10.128.1.2"],
        kind="NodePort",
        ports=[EndpointPort(port=80, target_port=8080, node_port=30080)],
        not_ready=["10.128.0.99"],
    )
    nat = render(Desired(P, endpoints=(web,))).tables["nat"]
    lines = nat.splitlines()
    chains = [line[1:].split(" ")[0] for line in lines if line.startswith(":")]
    assert chains[:4] == [f"{P}-SVC", f"{P}-POST", f"{P}-MASQ", f"{P}-XNET"]
    s, e1, e2, e3 = chains[4:]  # the hashes are opaque: read them from the declarations
    assert s.startswith(f"{P}-S-") and all(e.startswith(f"{P}-E-") for e in (e1, e2, e3))
    assert all(len(name) <= 28 for name in chains)
    local = "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -p tcp -m tcp --dport 30080"
    assert lines[9:] == [
        f"-A {P}-SVC -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {s}",
        f"-A {P}-SVC {local} -j MARK --set-xmark 0x40000/0x40000",
        f"-A {P}-SVC {local} -j {s}",
        f"-A {P}-POST -j {P}-MASQ",
        f"-A {P}-MASQ -m mark --mark 0x40000/0x40000 -j MASQUERADE",
        # endpoints in address order (10.128.0.3 before 10.128.0.12), the not-ready one left out
        f"-A {s} -m statistic --mode random --probability 0.3333333333 -j {e1}",
        f"-A {e1} -s 10.128.0.3/32 -j MARK --set-xmark 0x40000/0x40000",
        f"-A {e1} -p tcp -m tcp -j DNAT --to-destination 10.128.0.3:8080",
        f"-A {s} -m statistic --mode random --probability 0.5000000000 -j {e2}",
        f"-A {e2} -s 10.128.0.12/32 -j MARK --set-xmark 0x40000/0x40000",
        f"-A {e2} -p tcp -m tcp -j DNAT --to-destination 10.128.0.12:8080",
        f"-A {s} -j {e3}",
        f"-A {e3} -s 10.128.1.2/32 -j MARK --set-xmark 0x40000/0x40000",
        f"-A {e3} -p tcp -m tcp -j DNAT --to-destination 10.128.1.2:8080",
        "COMMIT",
    ]
    # a Service with endpoints is not rejected, but for the ports it does not serve: a
    # packet still addressed to its VIP in the filter table was not DNAT-ed (it left by
    # the default route, to whatever answered there)
    noep = [
        line
        for line in render(Desired(P, endpoints=(web,))).tables["filter"].splitlines()
        if f"-A {P}-NOEP" in line
    ]
    assert noep == [
        f"-A {P}-NOEP -d {web.cluster_ip}/32 -m conntrack --ctstate INVALID -j DROP",
        f"-A {P}-NOEP -d {web.cluster_ip}/32 -j REJECT --reject-with icmp-port-unreachable",
    ]


def test_a_service_without_ready_endpoints_is_rejected_on_its_vip_and_node_port_and_gets_no_nat():
    dns = endpoints(
        "dns",
        "10.96.0.53",
        [],
        kind="NodePort",
        ports=[EndpointPort(port=53, target_port=5353, protocol="UDP", node_port=30053)],
        not_ready=["10.128.0.4"],
    )
    rendered = render(Desired(P, endpoints=(dns,)))
    noep = [line for line in rendered.tables["filter"].splitlines() if f"-A {P}-NOEP" in line]
    assert noep == [
        f"-A {P}-NOEP -d 10.96.0.53/32 -p udp -m udp --dport 53 "
        "-j REJECT --reject-with icmp-port-unreachable",
        f"-A {P}-NOEP -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -p udp -m udp --dport 30053 "
        "-j REJECT --reject-with icmp-port-unreachable",
        f"-A {P}-NOEP -d 10.96.0.53/32 -m conntrack --ctstate INVALID -j DROP",
        f"-A {P}-NOEP -d 10.96.0.53/32 -j REJECT --reject-with icmp-port-unreachable",
    ]
    assert f"-A {P}-SVC" not in rendered.tables["nat"]
    assert f":{P}-S-" not in rendered.tables["nat"]


def test_headless_and_unallocated_services_get_no_rule_at_all():
    headless = endpoints("db", "None", ["10.128.0.5"])
    pending = endpoints("new", "", [])
    rendered = render(Desired(P, endpoints=(headless, pending)))
    assert rendered == render(Desired(P))
    assert rendered.problems == []


def test_a_clusterip_port_has_no_node_port_rule_even_when_the_record_carries_one():
    svc = endpoints(
        "api",
        "10.96.0.11",
        ["10.128.0.5"],
        ports=[EndpointPort(port=80, target_port=80, node_port=30001)],
    )
    assert "--dport 30001" not in render(Desired(P, endpoints=(svc,))).tables["nat"]


def test_chains_of_this_node_no_longer_wanted_are_emptied_and_deleted_and_no_one_elses():
    existing = {
        "nat": {f"{P}-S-OLDOLDOLD0", f"{P}-SVC", "CRL-11111111-S-AAAAAAAAAA", "DOCKER"},
        "filter": {"DOCKER-USER", f"{P}-FWD"},
    }
    rendered = render(Desired(P), existing)
    nat = rendered.tables["nat"].splitlines()
    assert f":{P}-S-OLDOLDOLD0 - [0:0]" in nat
    assert nat[-2:] == [f"-X {P}-S-OLDOLDOLD0", "COMMIT"]
    everything = rendered.tables["nat"] + rendered.tables["filter"]
    assert "CRL-11111111" not in everything
    assert "DOCKER" not in everything
    assert "\n-X " not in rendered.tables["filter"]


def test_bad_records_are_skipped_with_a_problem_naming_the_field():
    bad_vip = endpoints("a", "10.96.0.300", ["10.128.0.5"])
    bad_ip = endpoints("b", "10.96.0.12", ["10.128.0"])
    bad_port = endpoints(
        "c", "10.96.0.13", ["10.128.0.5"], ports=[EndpointPort(port=80, target_port=0)]
    )
    rendered = render(
        Desired(P, (NetworkRange("x", "10.0.0.0/33"),), endpoints=(bad_vip, bad_ip, bad_port))
    )
    assert rendered.problems[1:] == [
        "default.a: `clusterIP` '10.96.0.300' is not an IPv4 address",
        "default.b: `addresses[0].ip` '10.128.0' is not an IPv4 address",
        "default.c: `ports[0].targetPort` 0 is out of range",
    ]
    assert rendered.problems[0].startswith("network x: ") and "10.0.0.0/33" in rendered.problems[0]
    assert rendered.tables == render(Desired(P)).tables


def test_rendering_is_deterministic_whatever_the_order_of_records():
    a = endpoints("a", "10.96.0.1", ["10.128.0.2", "10.128.0.3"])
    b = endpoints("b", "10.96.0.2", ["10.128.0.4"])
    one = render(Desired(P, NETWORKS, (a, b)))
    two = render(Desired(P, tuple(reversed(NETWORKS)), (b, a)))
    assert one.tables == two.tables


def test_the_jumps_come_first_from_docker_user_or_from_forward_without_it():
    with_docker = {(j.table, j.chain, j.target) for j in jumps(P)}
    assert with_docker == {
        ("filter", "DOCKER-USER", f"{P}-FWD"),
        ("filter", "INPUT", f"{P}-NOEP"),
        ("filter", "FORWARD", f"{P}-NOEP"),
        ("filter", "OUTPUT", f"{P}-NOEP"),
        ("nat", "PREROUTING", f"{P}-SVC"),
        ("nat", "OUTPUT", f"{P}-SVC"),
        ("nat", "POSTROUTING", f"{P}-POST"),
    }
    assert all(j.first for j in jumps(P))
    assert ("filter", "FORWARD", f"{P}-FWD") in {
        (j.table, j.chain, j.target) for j in jumps(P, docker_user=False)
    }


def test_removal_names_only_this_nodes_chains_and_parses_iptables_save():
    saved = (
        "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n"
        f":{P}-FWD - [0:0]\n:CRL-22222222-FWD - [0:0]\n-A INPUT -j {P}-NOEP\nCOMMIT\n"
        f"*nat\n:PREROUTING ACCEPT [0:0]\n:{P}-SVC - [0:0]\nCOMMIT\n"
    )
    existing = chains_in(saved)
    assert existing == {
        "filter": {"INPUT", f"{P}-FWD", "CRL-22222222-FWD"},
        "nat": {"PREROUTING", f"{P}-SVC"},
    }
    assert removal(P, existing) == {
        "filter": f"*filter\n:{P}-FWD - [0:0]\n-X {P}-FWD\nCOMMIT\n",
        "nat": f"*nat\n:{P}-SVC - [0:0]\n-X {P}-SVC\nCOMMIT\n",
    }
    assert removal(P, {"filter": {"CRL-22222222-FWD"}}) == {}


def test_udp_targets_change_when_the_ready_endpoints_do():
    udp = [EndpointPort(port=53, target_port=53, protocol="UDP", node_port=30053)]
    one = endpoints("d", "10.96.0.9", ["10.128.0.2"], kind="NodePort", ports=udp)
    two = endpoints("d", "10.96.0.9", ["10.128.0.2", "10.128.0.3"], kind="NodePort", ports=udp)
    assert udp_targets(one) == ("10.96.0.9", (30053,), frozenset({"10.128.0.2"}))
    assert udp_targets(one) != udp_targets(two)
    assert udp_targets(endpoints("t", "10.96.0.8", ["10.128.0.2"])) is None  # TCP only
    assert udp_targets(endpoints("h", "None", ["10.128.0.2"], ports=udp)) is None


def test_a_jump_is_in_place_when_only_corral_jumps_come_before_it():
    saved = (
        "*nat\n:POSTROUTING ACCEPT [0:0]\n"
        "-A POSTROUTING -j CRL-11111111-POST\n"
        f"-A POSTROUTING -j {P}-POST\n"
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n"
        "COMMIT\n"
    )
    rules = rules_in(saved)
    post = Jump("nat", "POSTROUTING", f"{P}-POST")
    assert in_place(post, rules[("nat", "POSTROUTING")])
    docker_first = [
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        *rules[("nat", "POSTROUTING")],
    ]
    assert not in_place(post, docker_first)
    assert in_place(Jump("nat", "POSTROUTING", f"{P}-POST", first=False), docker_first)
    assert not in_place(Jump("nat", "OUTPUT", f"{P}-SVC"), rules.get(("nat", "OUTPUT"), []))


def test_moving_a_jump_first_deletes_it_by_rule_text_and_inserts_it_in_one_transaction():
    jump = Jump("nat", "POSTROUTING", f"{P}-POST")
    text = move_first(jump, 2)
    assert text.splitlines() == [
        "*nat",
        f"-D POSTROUTING -j {P}-POST",
        f"-D POSTROUTING -j {P}-POST",
        f"-I POSTROUTING 1 -j {P}-POST",
        "COMMIT",
    ]
    assert not any(line.split()[2:3] and line.split()[2].isdigit() for line in text.splitlines()
                   if line.startswith("-D "))  # fmt: skip


def test_a_named_target_port_not_resolved_yet_is_refused_as_having_no_endpoint():
    """Its targetPort is 0 until a ready endpoint names the port (a typo: never): the
    Service was skipped as out of range, with no rule, and its VIP left by the host's
    default route; it is refused at once as any Service with no endpoint."""
    typo = endpoints(
        "typo", "10.96.0.77", [], ports=[EndpointPort(port=80, target_port=0, name="web")]
    )
    rendered = render(Desired(P, endpoints=(typo,)))
    assert rendered.problems == []
    assert (
        f"-A {P}-NOEP -d 10.96.0.77/32 -p tcp -m tcp --dport 80 -j REJECT"
        in (rendered.tables["filter"])
    )
    ready = endpoints(
        "typo", "10.96.0.77", ["10.128.0.3"], ports=[EndpointPort(port=80, target_port=0)]
    )
    assert "out of range" in render(Desired(P, endpoints=(ready,))).problems[0]
