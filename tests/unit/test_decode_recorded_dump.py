"""The decoder on bytes recorded from a real dump (lab_dump.bin: accounting on, TCP v4 and v6, UDP replied and
unreplied, ICMP echo), checked against what `conntrack -L` printed for the same table."""

from __future__ import annotations

import errno
import random
import socket
import struct

from khan.conntrack.decode import (
    NLM_F_DUMP_INTR,
    NO_TCP_STATE,
    Flow,
    decode_chunk,
    decode_entry,
)
from tests.support.netlink_fixtures import message_offsets, recorded_buffers

V4 = socket.inet_aton("127.0.0.1")
V4_2 = socket.inet_aton("127.0.0.2")
V6 = socket.inet_pton(socket.AF_INET6, "::1")

# conntrack -L -o id on the recorded table, field by field; the remaining timeouts a second after the last packets
# (udp_timeout 30 s, tcp_timeout_established 432,000 s).
EXPECTED = [
    Flow(2, 1, V4, V4, 0, 0, V4, V4, 0, 0, 10, NO_TCP_STATE, 2880091308, 0, 0, 1, 32, 1, 32, 29),
    Flow(10, 6, V6, V6, 52144, 8443, V6, V6, 8443, 52144, 14, 3, 776753645, 0, 0, 2, 152, 1, 80, 431999),
    Flow(2, 17, V4, V4_2, 48070, 9999, V4_2, V4, 9999, 48070, 8, NO_TCP_STATE, 424846569, 0, 0, 1, 29, 0, 0, 29),
    Flow(2, 6, V4, V4, 39356, 8080, V4, V4, 8080, 39356, 14, 3, 2879091330, 0, 0, 3, 169, 2, 112, 431999),
    Flow(2, 17, V4, V4, 34879, 5353, V4, V4, 5353, 34879, 10, NO_TCP_STATE, 2940197693, 0, 0, 1, 29, 1, 29, 29),
]

ENTRIES, DONE = recorded_buffers("lab_dump.bin")


def decode(buf: bytes | bytearray, templates: dict | None = None) -> tuple[list[Flow], object]:  # type: ignore[type-arg]
    flows: list[Flow] = []
    result = decode_chunk(buf, len(buf), flows, templates)
    return flows, result


def test_recorded_dump_decodes_to_what_conntrack_printed() -> None:
    flows, result = decode(ENTRIES)
    assert flows == EXPECTED
    assert (result.malformed, result.other, result.done, result.interrupted, result.error) == (0, 0, False, False, 0)


def test_final_buffer_is_the_done_message() -> None:
    flows, result = decode(DONE)
    assert flows == []
    assert result.done
    assert result.error == 0


def test_templates_give_the_same_flows_as_the_attribute_walk() -> None:
    templates: dict = {}  # type: ignore[type-arg]
    first, _ = decode(ENTRIES, templates)
    assert templates, "every recorded shape should compile into a template"
    second, _ = decode(ENTRIES, templates)  # now every entry goes through a template
    walked = [
        decode_entry(ENTRIES, pos + 16, pos + struct.unpack_from("=I", ENTRIES, pos)[0])
        for pos in message_offsets(ENTRIES)
    ]
    assert first == second == walked == EXPECTED


def test_template_reads_new_values_of_a_known_shape() -> None:
    templates: dict = {}  # type: ignore[type-arg]
    decode(ENTRIES, templates)
    changed = bytearray(ENTRIES)
    tcp_v4 = message_offsets(ENTRIES)[3]
    # Inside the original tuple: destination port 8080 -> 9090 (its bytes appear once in that message).
    at = changed.index(struct.pack("!H", 8080), tcp_v4)
    changed[at : at + 2] = struct.pack("!H", 9090)
    flows, _ = decode(changed, templates)
    assert flows[3] == EXPECTED[3]._replace(dport=9090)


def test_every_truncation_yields_a_prefix_and_never_raises() -> None:
    for cut in range(len(ENTRIES) + 1):
        flows, result = decode(ENTRIES[:cut])
        assert flows == EXPECTED[: len(flows)]
        assert result.malformed <= 1


def test_attribute_overrunning_its_message_skips_only_that_entry() -> None:
    broken = bytearray(ENTRIES)
    second = message_offsets(ENTRIES)[1]
    struct.pack_into("=H", broken, second + 20, 0xFFF0)  # first attribute of entry 2 claims 65,520 bytes
    flows, result = decode(broken)
    assert flows == [EXPECTED[0], *EXPECTED[2:]]
    assert result.malformed == 1


def test_attribute_shorter_than_its_header_skips_the_entry() -> None:
    broken = bytearray(ENTRIES)
    struct.pack_into("=H", broken, message_offsets(ENTRIES)[4] + 20, 2)
    flows, result = decode(broken)
    assert flows == EXPECTED[:4]
    assert result.malformed == 1


def test_message_length_beyond_the_buffer_stops_the_buffer() -> None:
    broken = bytearray(ENTRIES)
    struct.pack_into("=I", broken, message_offsets(ENTRIES)[2], 100_000)
    flows, result = decode(broken)
    assert flows == EXPECTED[:2]
    assert result.malformed == 1


def test_entry_without_original_tuple_is_malformed() -> None:
    broken = bytearray(ENTRIES)
    first = message_offsets(ENTRIES)[0]
    struct.pack_into("=H", broken, first + 22, 0x8000 | 30)  # CTA_TUPLE_ORIG -> an unknown attribute type
    flows, result = decode(broken)
    assert flows == EXPECTED[1:]
    assert result.malformed == 1


def test_dump_interrupted_flag_is_reported() -> None:
    flagged = bytearray(ENTRIES)
    pos = message_offsets(ENTRIES)[1]
    (flags,) = struct.unpack_from("=H", flagged, pos + 6)
    struct.pack_into("=H", flagged, pos + 6, flags | NLM_F_DUMP_INTR)
    flows, result = decode(flagged)
    assert flows == EXPECTED
    assert result.interrupted


def test_netlink_error_message_reports_its_errno() -> None:
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -errno.EPERM) + bytes(16)
    flows, result = decode(error)
    assert flows == []
    assert (result.done, result.error) == (True, errno.EPERM)


def test_unknown_message_types_are_counted_not_decoded() -> None:
    noise = struct.pack("=IHHII", 20, 0x1234, 0, 1, 0) + bytes(4)
    flows, result = decode(noise + ENTRIES)
    assert flows == EXPECTED
    assert result.other == 1


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20261122)
    templates: dict = {}  # type: ignore[type-arg]
    decode(ENTRIES, templates)
    for _ in range(3000):
        mutated = bytearray(ENTRIES)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        flows, result = decode(mutated, templates)
        assert len(flows) + result.malformed <= len(EXPECTED) + 1
        for flow in flows:
            assert len(flow.src) in (4, 16)
            assert len(flow.dst) == len(flow.src)
