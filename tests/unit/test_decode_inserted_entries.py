"""Protocols the lab cannot make traffic for (no SCTP sockets here), inserted into a namespace's real table with
`conntrack -I` and recorded (inserted_dump.bin): SCTP with a zone and DNAT, GRE, ICMPv6, a TCP TIME_WAIT, a UDP
mark of 0xffffffff. Checked against `conntrack -L -o id` of that table, then through to their labels."""

from __future__ import annotations

import socket

from khan.attribution.connections import attribute, count_flows
from khan.conntrack.decode import NO_TCP_STATE, Flow, decode_chunk
from khan.inventory.index import build_inventory
from tests.support.netlink_fixtures import recorded_buffers


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


A, C, SVC, OUT = ip("10.244.1.10"), ip("10.244.2.10"), ip("10.96.0.30"), ip("192.0.2.50")
BACKEND, G1, G2, V6A, V6B = ip("10.244.2.20"), ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1"), ip("fd00::2")

EXPECTED = [
    Flow(2, 6, A, OUT, 40002, 443, OUT, A, 443, 40002, 10, 7, 2343766331, 0, 0, 0, 0, 0, 0, 99),
    Flow(2, 17, A, C, 40001, 53, C, A, 53, 40001, 8, NO_TCP_STATE, 3563985748, 0, 0xFFFFFFFF, 0, 0, 0, 0, 299),
    Flow(10, 58, V6A, V6B, 0, 0, V6B, V6A, 0, 0, 8, NO_TCP_STATE, 1017367186, 0, 0, 0, 0, 0, 0, 29),
    Flow(2, 132, A, SVC, 40000, 3868, BACKEND, A, 3868, 40000, 14, NO_TCP_STATE, 3090615196, 3, 6, 0, 0, 0, 0, 299),
    Flow(2, 47, G1, G2, 5, 6, G2, G1, 6, 5, 8, NO_TCP_STATE, 1404663725, 0, 0, 0, 0, 0, 0, 299),  # GRE keys as ports
]


def decoded() -> list[Flow]:
    flows: list[Flow] = []
    for buf in recorded_buffers("inserted_dump.bin"):
        decode_chunk(buf, len(buf), flows)
    return flows


def test_inserted_entries_decode_to_what_conntrack_printed() -> None:
    assert decoded() == EXPECTED


def test_their_labels() -> None:
    series = attribute(count_flows([decoded()]), build_inventory(()), "n")
    tails = sorted(labels[6:14] for labels in series)  # dst_type onwards, sources are all external here
    assert tails == sorted(
        [
            ("external", "192.0.2.50", "", "", "", "443", "tcp", "TIME_WAIT"),
            ("external", "10.244.2.10", "", "", "", "53", "udp", "UNREPLIED"),
            ("external", "fd00::2", "", "", "", "", "icmpv6", "UNREPLIED"),
            ("external", "10.96.0.30", "", "", "", "3868", "sctp", "ASSURED"),
            ("external", "10.0.0.2", "", "", "", "", "47", "UNREPLIED"),
        ]
    )
