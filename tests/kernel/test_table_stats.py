"""Table statistics over raw ctnetlink: what `khan snapshot` reports equals what `conntrack -S` and `conntrack -C`
read from the same kernel, and broken answers raise a clear error instead of garbage numbers."""

from __future__ import annotations

import os
import socket
import struct
import subprocess

import pytest

from khan.conntrack.namespace import entered
from khan.conntrack.table import CPU_STATS, MAX_SYSCTL, StatsError, split_messages, stats_attributes
from tests.support.exposition import khan, samples, value
from tests.support.table_fill import table_namespace

INVALID_PACKETS = 3


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def send_syn_fin(count: int) -> None:
    """TCP segments with SYN and FIN both set, which conntrack refuses to track and counts as invalid."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw:
        for _ in range(count):
            segment = struct.pack("!HHIIBBHHH", 40000, 5000, 1, 0, 5 << 4, 0x03, 1024, 0, 0)
            pseudo = socket.inet_aton("10.76.0.1") * 2 + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
            segment = segment[:16] + struct.pack("!H", checksum(pseudo + segment)) + segment[18:]
            raw.sendto(segment, ("10.76.0.1", 0))


def conntrack_s(netns: str) -> dict[str, int]:
    """`conntrack -S` summed over CPUs, with its spelling of chain_toolong."""
    out = subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-S"], capture_output=True, text=True, check=True)
    totals: dict[str, int] = {}
    for line in out.stdout.splitlines():
        for field in line.split()[1:]:
            name, _, number = field.partition("=")
            name = "chain_toolong" if name == "chaintoolong" else name
            totals[name] = totals.get(name, 0) + int(number)
    return totals


def test_the_snapshot_reports_what_conntrack_reads_from_the_kernel() -> None:
    with table_namespace(f"khanstats{os.getpid()}") as netns:
        with entered(netns):
            send_syn_fin(INVALID_PACKETS)
        expected = conntrack_s(netns)
        count = subprocess.run(
            ["ip", "netns", "exec", netns, "conntrack", "-C"], capture_output=True, text=True, check=True
        )
        done = khan(["snapshot", "--netns", netns, "--node-name", "n", "--log-level", "error"])
    assert done.returncode == 0, done.stderr
    events = {
        dict(labels)["event"]: int(number)
        for labels, number in samples(done.stdout, "khan_conntrack_table_events_total").items()
    }
    assert expected["invalid"] >= INVALID_PACKETS  # each segment is seen going out and coming in on lo
    assert {name: events[name] for name in expected} == expected
    assert value(done.stdout, "khan_conntrack_table_entries") == int(count.stdout)
    limit = int(MAX_SYSCTL.read_text())  # read here, outside: a namespace sees the host's limit
    assert value(done.stdout, "khan_conntrack_table_limit") == limit


def message(kind: int, payload: bytes) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, 0, 1, 0) + payload + b"\0" * (-length % 4)


def attribute(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


NFGENMSG = bytes(4)


def test_attributes_are_read_by_type_in_network_byte_order() -> None:
    payload = NFGENMSG + attribute(10, struct.pack(">I", 7)) + attribute(11 | 0x4000, struct.pack(">I", 2**32 - 1))
    assert stats_attributes(memoryview(payload)) == {10: 7, 11: 2**32 - 1}
    assert (CPU_STATS[10], CPU_STATS[11]) == ("drop", "early_drop")


def test_a_value_of_the_wrong_size_is_none_and_a_truncated_attribute_ends_the_list() -> None:
    payload = NFGENMSG + attribute(2, b"\0\0") + attribute(3, struct.pack(">I", 5)) + struct.pack("=HH", 40, 4)
    assert stats_attributes(memoryview(payload)) == {2: None, 3: 5}


def test_messages_are_split_on_their_aligned_lengths() -> None:
    data = message(0x104, NFGENMSG + attribute(1, struct.pack(">I", 9))) + message(3, b"\0" * 4)
    parts = [(kind, bytes(payload)) for kind, payload in split_messages(memoryview(data))]
    assert [kind for kind, _ in parts] == [0x104, 3]
    assert stats_attributes(memoryview(parts[0][1])) == {1: 9}


@pytest.mark.parametrize("length", [8, 400], ids=["shorter than a header", "longer than the buffer"])
def test_a_broken_message_header_is_a_clear_error(length: int) -> None:
    data = struct.pack("=IHHII", length, 0x104, 0, 1, 0) + bytes(8)
    with pytest.raises(StatsError, match="malformed netlink message"):
        list(split_messages(memoryview(data)))
