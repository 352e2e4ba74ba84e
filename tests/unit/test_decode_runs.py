"""Runs of same-shaped entries counted by key in C-level calls (runs.py) count exactly what decoding each entry
into a Flow and counting those counts: on recorded entries repeated into runs, with the dump's flags and broken
entries inside runs, and on seeded mutations of such buffers (the fuzz tests' own mutations)."""

from __future__ import annotations

import random
import struct
from functools import partial

from khan.attribution.connections import count_flows
from khan.attribution.raw_keys import RAW_FLOW_FIELDS, RawKey
from khan.conntrack.decode import NLM_F_DUMP_INTR, ChunkResult, Flow, decode_chunk, decode_entry
from khan.conntrack.runs import RunCounter, TrackedRun
from khan.counting.tracker import identity
from tests.support.ct_messages import RECORDED, encoded
from tests.support.netlink_fixtures import message_offsets
from tests.unit.test_decode_fuzz import MUTATIONS, attributes

# TCP over IPv4 and IPv6, UDP replied and unreplied, ICMP: five shapes, two of them the same (UDP over IPv4).
ICMP, TCP6, UDP, TCP, UDP_REPLIED = RECORDED
BATCH_BYTES = 32 * 1024


def with_port(message: bytes, port: int) -> bytes:
    """The entry with another source port in its original tuple (a distinct key)."""
    flow = decode_entry(message, 16, struct.unpack_from("=I", message)[0])
    at = message.find(struct.pack("!H", flow.sport))
    return message[:at] + struct.pack("!H", port) + message[at + 2 :]


def batches(messages: list[bytes]) -> list[bytes]:
    """Messages packed into buffers of at most 32 KiB, as the kernel batches a dump."""
    out: list[bytes] = []
    current = b""
    for message in messages:
        if len(current) + len(message) > BATCH_BYTES:
            out.append(current)
            current = b""
        current += message
    return [*out, current]


def counted(buffers: list[bytes], runs: bool) -> tuple[dict[RawKey, int], list[ChunkResult], int, int]:
    """(counts by raw key, each buffer's result without its `counted`, entries, entries counted in runs)."""
    counter = RunCounter(RAW_FLOW_FIELDS) if runs else None
    templates: dict = {}  # type: ignore[type-arg]
    counts: dict[RawKey, int] = {}
    results = []
    entries = 0
    for buf in buffers:
        flows: list[Flow] = []
        result = decode_chunk(buf, len(buf), flows, templates, take_run=counter.take if counter else None)
        count_flows((flows,), counts)
        entries += len(flows) + result.counted
        results.append(result._replace(counted=0))
    if counter is None:
        return counts, results, entries, 0
    return counter.add_to(counts), results, entries, counter.entries


def assert_same(buffers: list[bytes]) -> int:
    """Both ways count the same; returns how many entries the runs counted."""
    plain, plain_results, plain_entries, _ = counted(buffers, runs=False)
    by_runs, run_results, run_entries, in_runs = counted(buffers, runs=True)
    assert by_runs == plain
    assert run_results == plain_results
    assert run_entries == plain_entries == sum(plain.values())
    return in_runs


def test_a_table_of_one_shape_is_counted_in_runs() -> None:
    table = [with_port(UDP, 20000 + i) for i in range(2000)]
    in_runs = assert_same(batches(table))
    assert in_runs >= 1990  # all but the first of the dump, which compiles the template


def test_runs_of_every_length_and_shape_count_alike() -> None:
    rng = random.Random(7)
    table = []
    for block in range(400):
        message = rng.choice(RECORDED)
        table += [
            with_port(message, 1000 + block * 64 + i) if message is not ICMP else message
            for i in range(rng.choice((1, 1, 2, 3, 5, 17, 40)))
        ]
    assert assert_same(batches(table)) > 0


def test_a_flag_inside_a_run_is_seen() -> None:
    table = bytearray(b"".join(with_port(TCP, 30000 + i) for i in range(100)))
    starts = message_offsets(bytes(table))
    flags_at = starts[57] + 6
    (flags,) = struct.unpack_from("=H", table, flags_at)
    struct.pack_into("=H", table, flags_at, flags | NLM_F_DUMP_INTR)
    _, results, _, _ = counted([bytes(table)], runs=True)
    assert results[0].interrupted
    assert_same([bytes(table)])


def test_a_broken_entry_inside_a_run_is_counted_malformed() -> None:
    table = bytearray(b"".join(with_port(TCP6, 30000 + i) for i in range(100)))
    first_attribute = message_offsets(bytes(table))[40] + 16 + 4
    struct.pack_into("=H", table, first_attribute, 0)  # a zero-length attribute: the entry does not parse
    _, results, entries, _ = counted([bytes(table)], runs=True)
    assert (results[0].malformed, entries) == (1, 99)
    assert_same([bytes(table)])


def test_mutated_runs_count_alike() -> None:
    rng = random.Random(20261129)
    seeds = [b"".join(with_port(message, 40000 + i) for i in range(60)) for message in (TCP, TCP6, UDP, UDP_REPLIED)]
    seeds.append(b"".join(RECORDED[i % 5] if i % 7 else with_port(UDP, i) for i in range(80)))
    for _ in range(600):
        data = rng.choice(seeds)
        for _ in range(rng.choice((1, 1, 2))):
            mutated = rng.choice(MUTATIONS)(rng, data, attributes(data))
            if mutated:
                data = bytes(mutated)
        assert_same([data])


def check_run(checked: list[Flow], run: TrackedRun) -> None:
    """A run as the tracker gets it, against its entries' Flows."""
    flows = [run.flow(index) for index in range(len(run))]
    assert run.identities == [identity(flow) for flow in flows]
    assert run.counters == [flow.orig_bytes << 64 | flow.reply_bytes for flow in flows]
    assert run.totals == [flow.orig_bytes + flow.reply_bytes for flow in flows]
    assert [run.stored(index).flow() for index in range(len(run))] == flows
    checked.extend(flows)


def test_a_tracker_reads_each_entry_of_a_run_as_its_flow() -> None:
    """For every recorded shape (ICMP without ports, TCP and UDP over IPv4 and IPv6): a run's identities and
    counters are the integers the tracker makes of each entry's Flow, and each entry decodes to its Flow."""
    for message in RECORDED:
        shape = decode_entry(message, 16, struct.unpack_from("=I", message)[0])
        rng = random.Random(len(message))
        table = [
            encoded(
                shape._replace(
                    id=rng.randrange(1 << 32),
                    sport=rng.randrange(1 << 16) if shape.sport else 0,
                    orig_bytes=rng.randrange(1 << 64),
                    reply_bytes=rng.randrange(1 << 40),
                ),
                like=message,
            )
            for _ in range(500)
        ]
        checked: list[Flow] = []
        counter = RunCounter(RAW_FLOW_FIELDS, track=partial(check_run, checked))
        templates: dict = {}  # type: ignore[type-arg]
        flows: list[Flow] = []
        for buf in batches(table):
            decode_chunk(buf, len(buf), flows, templates, take_run=counter.take)
        decoded = [decode_entry(entry, 16, len(entry)) for entry in table]
        assert len(checked) >= len(table) - len(batches(table)) * 2  # runs took (nearly) every entry
        assert sorted(checked + flows) == sorted(decoded)


def with_timeout(message: bytes, seconds: int) -> bytes:
    """The entry with another remaining timeout (CTA_TIMEOUT, a top-level attribute)."""
    pos = 16 + 4  # netlink header, nfgenmsg
    while pos < len(message):
        length, kind = struct.unpack_from("=HH", message, pos)
        if kind == 7:
            return message[: pos + 4] + struct.pack("!I", seconds) + message[pos + 8 :]
        pos += (length + 3) & ~3
    raise AssertionError("no CTA_TIMEOUT")


def test_timed_runs_tell_entries_apart_by_their_remaining_timeout() -> None:
    """A timed counter's items are what counting each decoded flow by raw key and timeout gives."""
    rng = random.Random(11)
    table = [
        with_timeout(with_port(shape, 20000 + rng.randrange(3)), rng.randrange(5))
        for shape in (UDP, TCP, UDP_REPLIED, TCP6) * 5
        for _ in range(150)
    ]
    buffers = batches(table)
    expected: dict[tuple[object, ...], int] = {}
    for buf in buffers:
        flows: list[Flow] = []
        decode_chunk(buf, len(buf), flows)
        for flow in flows:
            key = (*(getattr(flow, name) for name in RAW_FLOW_FIELDS), flow.timeout)
            expected[key] = expected.get(key, 0) + 1
    assert len({key[-1] for key in expected}) == 5

    counter = RunCounter(RAW_FLOW_FIELDS, timed=True)
    templates: dict = {}  # type: ignore[type-arg]
    found: dict[tuple[object, ...], int] = {}
    for buf in buffers:
        flows = []
        decode_chunk(buf, len(buf), flows, templates, take_run=counter.take)
        for flow in flows:
            key = (*(getattr(flow, name) for name in RAW_FLOW_FIELDS), flow.timeout)
            found[key] = found.get(key, 0) + 1
    assert counter.entries > 2000
    for key, remaining, count in counter.items():
        found[(*key, remaining)] = found.get((*key, remaining), 0) + count
    assert found == expected


def test_an_untimed_counter_leaves_the_timeout_out() -> None:
    table = [with_timeout(with_port(UDP, 20000), seconds) for seconds in range(50)]
    counter = RunCounter(RAW_FLOW_FIELDS)
    decode_chunk(batches(table)[0], len(batches(table)[0]), [], {}, take_run=counter.take)
    assert [(remaining, count) for _, remaining, count in counter.items()] == [(0, 49)]
