"""Pure: flows + inventory -> khan_connection label sets and counts."""

from __future__ import annotations

import socket

from khan.attribution.connections import attribute, count_flows, state_name, transport_name
from khan.conntrack.decode import IPS_ASSURED, IPS_SEEN_REPLY, NO_TCP_STATE, Flow
from khan.inventory.index import build_inventory

INVENTORY = build_inventory(
    [
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.10"}]},
        },
        {
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": "db", "namespace": "shop", "labels": {"app.kubernetes.io/name": "postgres"}},
            "spec": {"clusterIPs": ["10.96.0.20"]},
        },
    ]
)
POD = socket.inet_aton("10.244.1.10")
SERVICE = socket.inet_aton("10.96.0.20")
OUTSIDE = socket.inet_aton("192.0.2.7")
ESTABLISHED, TIME_WAIT = 3, 7


def flow(proto: int, src: bytes, dst: bytes, sport: int, dport: int, status: int, tcp_state: int) -> Flow:
    return Flow(2, proto, src, dst, sport, dport, dst, src, dport, sport, status, tcp_state, 1, 0, 0, 0, 0, 0, 0)


def test_source_ports_never_split_series_and_counts_add_up() -> None:
    flows = [
        flow(6, POD, SERVICE, port, 5432, IPS_SEEN_REPLY | IPS_ASSURED, ESTABLISHED) for port in range(40000, 40005)
    ]
    flows.append(flow(6, POD, SERVICE, 40009, 5432, IPS_SEEN_REPLY, ESTABLISHED))  # not yet assured: same series
    series = attribute(count_flows([flows]), INVENTORY, "node1")
    assert series == {
        (
            "node1", "pod", "10.244.1.10", "shop", "web", "web-1",
            "service", "10.96.0.20", "shop", "postgres", "db", "5432", "tcp", "ESTABLISHED", "transit",
        ): 6
    }  # fmt: skip


def test_icmp_has_no_port_and_unknown_addresses_are_external() -> None:
    series = attribute(count_flows([[flow(1, OUTSIDE, POD, 0, 0, 0, NO_TCP_STATE)]]), INVENTORY, "n")
    outside = ("external", "192.0.2.7", "", "", "")
    pod = ("pod", "10.244.1.10", "shop", "web", "web-1")
    assert series == {("n", *outside, *pod, "", "icmp", "UNREPLIED", "transit"): 1}


def test_states() -> None:
    assert state_name(6, ESTABLISHED, 0) == "ESTABLISHED"
    assert state_name(6, TIME_WAIT, IPS_SEEN_REPLY | IPS_ASSURED) == "TIME_WAIT"
    assert state_name(6, 9, 0) == "SYN_SENT2"
    assert state_name(6, NO_TCP_STATE, 0) == "NONE"
    assert state_name(17, NO_TCP_STATE, 0) == "UNREPLIED"
    assert state_name(17, NO_TCP_STATE, IPS_SEEN_REPLY) == "REPLIED"
    assert state_name(132, NO_TCP_STATE, IPS_SEEN_REPLY | IPS_ASSURED) == "ASSURED"


def test_transport_names() -> None:
    names = [transport_name(p) for p in (6, 17, 132, 1, 58, 47, 2)]
    assert names == ["tcp", "udp", "sctp", "icmp", "icmpv6", "47", "2"]


def test_ipv6_addresses_are_printed_compressed() -> None:
    v6 = socket.inet_pton(socket.AF_INET6, "fd00:10:244:1::10")
    f = Flow(10, 17, v6, v6, 1, 53, v6, v6, 53, 1, 0, NO_TCP_STATE, 1, 0, 0, 0, 0, 0, 0)
    (labels,) = attribute(count_flows([[f]]), INVENTORY, "n")
    assert labels[2] == labels[7] == "fd00:10:244:1::10"
    assert labels[11:] == ("53", "udp", "UNREPLIED", "transit")
