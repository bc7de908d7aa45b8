"""What ports the node part reports its host listening on (corral_netmgr.node.host
.listening_sockets, .listening_ports): never given as node ports. Recorded /proc/net
tables (a host with sshd, a loopback-only NATS, corral's DNS on a gateway, a DHCP
client, mDNS)."""

from __future__ import annotations

from pathlib import Path

from corral_netmgr.node.host import listening_ports, listening_sockets

HEADER4 = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)
HEADER6 = (
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)
TCP = HEADER4 + (
    # 0.0.0.0:22 LISTEN (sshd)
    "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0"
    "        0 21045 1 0000000000000000 100 0 0 10 0\n"
    # 127.0.0.1:4222 LISTEN (NATS on loopback only: no node port reaches it)
    "   1: 0100007F:107E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000"
    "        0 33012 1 0000000000000000 100 0 0 10 0\n"
    # 10.128.0.1:53 LISTEN (corral's DNS on a gateway)
    "   2: 0100800A:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0"
    "        0 40411 1 0000000000000000 100 0 0 10 0\n"
    # 192.0.2.2:22 <- 198.51.100.9:51000 ESTABLISHED: a connection, not a listener
    "   3: 020200C0:0016 096433C6:C738 01 00000000:00000000 02:000A7D2B 00000000     0"
    "        0 51321 4 0000000000000000 20 4 29 10 -1\n"
    # 192.0.2.2:45000 -> 198.51.100.9:443 TIME_WAIT
    "   4: 020200C0:AFC8 096433C6:01BB 06 00000000:00000000 03:00000D72 00000000     0"
    "        0 0 3 0000000000000000\n"
)
TCP6 = HEADER6 + (
    # [::]:80 LISTEN
    "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 22001 1 0000000000000000 100 0 0 10 0\n"
    # [::1]:631 LISTEN (loopback only)
    "   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 22002 1 0000000000000000 100 0 0 10 0\n"
    # [::ffff:127.0.0.1]:9000 LISTEN (loopback only, IPv4-mapped)
    "   2: 0000000000000000FFFF00000100007F:2328 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 22003 1 0000000000000000 100 0 0 10 0\n"
)
UDP = (
    HEADER4.rstrip("\n")
    + " ref pointer drops\n"
    + (
        # 0.0.0.0:68 bound (DHCP client)
        "  10: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 18001 2 0000000000000000 0\n"
        # 127.0.0.53:53 bound (a stub resolver on loopback)
        "  11: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101"
        "        0 18002 2 0000000000000000 0\n"
        # 10.128.0.1:53 bound (corral's DNS)
        "  12: 0100800A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 18003 2 0000000000000000 0\n"
        # 192.0.2.2:40000 connected to 192.0.2.53:53: a client's socket, not a listener
        "  13: 020200C0:9C40 350200C0:0035 01 00000000:00000000 00:00000000 00000000     0"
        "        0 18004 2 0000000000000000 0\n"
    )
)
UDP6 = (
    HEADER6.rstrip("\n")
    + " ref pointer drops\n"
    + (
        # [::]:5353 bound (mDNS)
        "  20: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 "
        "00000000:00000000 00:00000000 00000000   104        0 19001 2 0000000000000000 0\n"
    )
)


def test_tcp_listeners_count_on_any_address_but_loopback_only_and_connections_do_not() -> None:
    assert listening_sockets(TCP) == {22, 53}
    assert listening_sockets(TCP6) == {80}


def test_udp_sockets_bound_without_a_peer_count_and_connected_ones_do_not() -> None:
    assert listening_sockets(UDP) == {68, 53}
    assert listening_sockets(UDP6) == {5353}


def test_garbled_lines_and_an_empty_table_are_skipped() -> None:
    assert listening_sockets("") == set()
    assert listening_sockets(HEADER4 + "   0: zz:0016 00000000:0000 0A\n   1: short\n") == set()


def test_the_hosts_ports_are_reported_by_protocol_and_number_and_a_missing_table_adds_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    (tmp_path / "udp").write_text(UDP)  # no udp6: a host without IPv6
    assert listening_ports(tmp_path) == ["22/TCP", "53/TCP", "80/TCP", "53/UDP", "68/UDP"]
    (tmp_path / "udp6").write_text(UDP6)
    assert listening_ports(tmp_path)[-1] == "5353/UDP"
    assert listening_ports(tmp_path / "missing") == []
