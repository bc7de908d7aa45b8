"""Which names the node's DNS server answers and with what (corral_netmgr.node.dns_names):
every name form a resolver sends, headless Services, NXDOMAIN under the cluster domain,
forwarding of the rest, SRV, and the directory kept from Endpoints records."""

from __future__ import annotations

import pytest

from corral.contract.network_state import EndpointAddress, EndpointPort, Endpoints
from corral_netmgr.node.dns_names import (
    Address,
    Outcome,
    Resolution,
    Service,
    ServiceDirectory,
    resolve,
    split_name,
)


def service(
    name: str,
    namespace: str = "default",
    cluster_ip: str = "10.96.0.10",
    addresses: list[EndpointAddress] | None = None,
    ports: list[EndpointPort] | None = None,
) -> Endpoints:
    return Endpoints(
        service=name,
        namespace=namespace,
        cluster_ip=cluster_ip,
        addresses=addresses or [],
        ports=ports or [],
    )


def endpoint(ip: str, replica: str, ready: bool = True) -> EndpointAddress:
    return EndpointAddress(ip=ip, replica=replica, node="n1", ready=ready)


@pytest.fixture
def directory() -> ServiceDirectory:
    return ServiceDirectory(
        [
            service("web", ports=[EndpointPort(port=80, target_port=8080, name="http")]),
            service("api", "shop", "10.96.0.20"),
            service(
                "db",
                cluster_ip="None",
                addresses=[
                    endpoint("10.128.0.5", "db-aaaaa"),
                    endpoint("10.128.0.6", "db-bbbbb"),
                    endpoint("10.128.0.7", "db-ccccc", ready=False),
                ],
                ports=[EndpointPort(port=5432, target_port=15432, name="pg")],
            ),
        ]
    )


def ips(resolution: Resolution) -> list[str]:
    assert resolution.outcome is Outcome.ANSWER, resolution
    return [r.ip for r in resolution.answers if isinstance(r, Address)]


@pytest.mark.parametrize(
    "qname",
    [
        "web.default.svc.cluster.local.",
        "web.default.svc.cluster.local",
        "WEB.Default.SVC.cluster.LOCAL.",
        "web.default.svc.",
        "web.default.",
        "web.",
    ],
)
def test_every_name_form_of_a_service_answers_its_cluster_ip(
    directory: ServiceDirectory, qname: str
) -> None:
    assert ips(resolve(directory, qname, "A")) == ["10.96.0.10"]


def test_an_answer_is_owned_by_the_name_as_the_question_spelled_it(
    directory: ServiceDirectory,
) -> None:
    resolution = resolve(directory, "WeB.default.svc.cluster.local.", "A")
    assert resolution.answers == (Address("WeB.default.svc.cluster.local.", "10.96.0.10"),)


def test_a_service_in_another_namespace_answers_by_its_namespace(
    directory: ServiceDirectory,
) -> None:
    assert ips(resolve(directory, "api.shop.svc.cluster.local.", "A")) == ["10.96.0.20"]
    assert ips(resolve(directory, "api.shop.", "A")) == ["10.96.0.20"]
    assert resolve(directory, "api.default.svc.cluster.local.", "A").outcome is Outcome.NXDOMAIN


def test_a_bare_name_takes_the_default_namespace_first_then_the_only_one(
    directory: ServiceDirectory,
) -> None:
    assert ips(resolve(directory, "api.", "A")) == ["10.96.0.20"]  # only in shop
    directory.put(service("api", "default", "10.96.0.30"))
    assert ips(resolve(directory, "api.", "A")) == ["10.96.0.30"]
    directory.remove("default.api")
    directory.put(service("api", "other", "10.96.0.40"))
    assert resolve(directory, "api.", "A").outcome is Outcome.FORWARD  # shop or other?


def test_a_headless_service_answers_every_ready_endpoint(directory: ServiceDirectory) -> None:
    assert ips(resolve(directory, "db.default.svc.cluster.local.", "A")) == [
        "10.128.0.5",
        "10.128.0.6",
    ]


def test_a_headless_service_answers_each_replica_by_its_name(
    directory: ServiceDirectory,
) -> None:
    assert ips(resolve(directory, "db-bbbbb.db.default.svc.cluster.local.", "A")) == ["10.128.0.6"]
    not_ready = resolve(directory, "db-ccccc.db.default.svc.cluster.local.", "A")
    assert not_ready.outcome is Outcome.NXDOMAIN


def test_a_headless_service_without_ready_endpoints_exists_with_no_address() -> None:
    directory = ServiceDirectory([service("q", cluster_ip="None")])
    assert resolve(directory, "q.default.svc.cluster.local.", "A").outcome is Outcome.NODATA


@pytest.mark.parametrize(
    "qname",
    [
        "nope.default.svc.cluster.local.",
        "web.nons.svc.cluster.local.",
        "web.default.svc.cluster.local.default.svc.cluster.local.",  # searched twice
        "web.other.default.svc.cluster.local.",
        "a.b.c.web.default.svc.cluster.local.",
        "nons.svc.cluster.local.",
        "pod.cluster.local.",
        "_nope._tcp.web.default.svc.cluster.local.",
        "_udp.web.default.svc.cluster.local.",
        "nobody.web.default.svc.cluster.local.",  # not headless: no replica names
    ],
)
def test_names_under_the_cluster_domain_that_do_not_exist_are_nxdomain(
    directory: ServiceDirectory, qname: str
) -> None:
    assert resolve(directory, qname, "A").outcome is Outcome.NXDOMAIN


@pytest.mark.parametrize(
    "qname",
    [
        "cluster.local.",
        "svc.cluster.local.",
        "default.svc.cluster.local.",
        "_tcp.web.default.svc.cluster.local.",
    ],
)
def test_names_with_names_below_them_exist_without_records(
    directory: ServiceDirectory, qname: str
) -> None:
    assert resolve(directory, qname, "A").outcome is Outcome.NODATA


@pytest.mark.parametrize(
    "qname",
    ["example.com.", "www.example.com.", "nope.", "nope.default.", "web.nope.", ".", ""],
)
def test_names_that_are_not_the_clusters_are_forwarded(
    directory: ServiceDirectory, qname: str
) -> None:
    assert resolve(directory, qname, "A").outcome is Outcome.FORWARD


def test_aaaa_and_other_types_of_a_known_service_are_noerror_without_answers(
    directory: ServiceDirectory,
) -> None:
    for qtype in ("AAAA", "MX", "TXT", "SRV"):
        resolution = resolve(directory, "web.default.svc.cluster.local.", qtype)
        assert resolution == Resolution(Outcome.NODATA), qtype
    assert resolve(directory, "web.", "AAAA").outcome is Outcome.NODATA


def test_any_answers_the_addresses(directory: ServiceDirectory) -> None:
    assert ips(resolve(directory, "web.default.svc.cluster.local.", "ANY")) == ["10.96.0.10"]


def test_srv_of_a_named_port_points_at_the_service_with_its_port(
    directory: ServiceDirectory,
) -> None:
    resolution = resolve(directory, "_http._tcp.web.default.svc.cluster.local.", "SRV")
    assert resolution.outcome is Outcome.ANSWER
    assert resolution.answers == (
        Service(
            "_http._tcp.web.default.svc.cluster.local.",
            0,
            100,
            80,
            "web.default.svc.cluster.local.",
        ),
    )
    assert resolution.additional == (Address("web.default.svc.cluster.local.", "10.96.0.10"),)


def test_srv_of_a_headless_service_lists_every_ready_endpoint_at_its_target_port(
    directory: ServiceDirectory,
) -> None:
    resolution = resolve(directory, "_pg._tcp.db.default.svc.cluster.local.", "SRV")
    assert [(r.port, r.target) for r in resolution.answers if isinstance(r, Service)] == [
        (15432, "db-aaaaa.db.default.svc.cluster.local."),
        (15432, "db-bbbbb.db.default.svc.cluster.local."),
    ]
    assert [r.ip for r in resolution.additional if isinstance(r, Address)] == [
        "10.128.0.5",
        "10.128.0.6",
    ]


def test_srv_with_the_wrong_protocol_is_nxdomain(directory: ServiceDirectory) -> None:
    resolution = resolve(directory, "_http._udp.web.default.svc.cluster.local.", "SRV")
    assert resolution.outcome is Outcome.NXDOMAIN


def test_another_cluster_domain_is_honoured(directory: ServiceDirectory) -> None:
    assert ips(resolve(directory, "web.default.svc.corp.example.", "A", "corp.example")) == [
        "10.96.0.10"
    ]
    # cluster.local is then no longer ours: forwarded, not NXDOMAIN
    outcome = resolve(directory, "nope.default.svc.cluster.local.", "A", "corp.example").outcome
    assert outcome is Outcome.FORWARD


def test_put_replaces_a_service_and_remove_forgets_it(directory: ServiceDirectory) -> None:
    directory.put(service("web", cluster_ip="10.96.0.99"))
    assert ips(resolve(directory, "web.default.svc.cluster.local.", "A")) == ["10.96.0.99"]
    assert len(directory) == 3
    directory.remove("default.web")
    assert resolve(directory, "web.default.svc.cluster.local.", "A").outcome is Outcome.NXDOMAIN
    assert resolve(directory, "web.", "A").outcome is Outcome.FORWARD
    directory.remove("default.web")  # twice: nothing happens
    assert len(directory) == 2


def test_a_namespace_exists_only_while_it_has_a_service(directory: ServiceDirectory) -> None:
    assert resolve(directory, "shop.svc.cluster.local.", "A").outcome is Outcome.NODATA
    directory.remove("shop.api")
    assert resolve(directory, "shop.svc.cluster.local.", "A").outcome is Outcome.NXDOMAIN


def test_a_service_whose_cluster_ip_is_not_yet_allocated_has_no_address() -> None:
    directory = ServiceDirectory([service("new", cluster_ip="")])
    assert resolve(directory, "new.default.svc.cluster.local.", "A").outcome is Outcome.NODATA


def test_split_name_lowercases_and_refuses_non_ascii() -> None:
    assert split_name("Web.Default.") == ["web", "default"]
    assert split_name(".") == []
    assert split_name("wéb.default.") is None
