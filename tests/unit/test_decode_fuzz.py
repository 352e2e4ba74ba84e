"""Hostile bytes: seeded mutations of the recorded dumps and statistics answers, fed to the dump decoder, the event
decoder and the table-statistics decoder. Each input must come back within a bound, raising nothing but the
decoder's own declared error (StatsError for statistics; the dump and event decoders declare none: they count).

Mutations are the blind ones (bit flips, byte sets, truncations) and the ones a blind fuzzer rarely hits because
they need the structure: length fields set to 0, 1-3, one past the enclosing nest or far past the buffer, an
attribute header inserted with such a length (the enclosing lengths fixed up so that only it lies), attributes
duplicated, nests whose member overruns them but not the message. Each decode runs under a watchdog (SIGALRM),
so a hang fails the test with the input that hung instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import faulthandler
import random
import signal
import struct
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NamedTuple

import pytest

from khan.conntrack.decode import (
    CT_DELETE_TYPE,
    CT_ENTRY_TYPE,
    NLMSG_HDRLEN,
    ChunkResult,
    Flow,
    Template,
    decode_chunk,
)
from khan.conntrack.table import StatsError, split_messages, stats_attributes
from tests.support.netlink_fixtures import hex_buffers, recorded_buffers

SEED = 20261129
CASES = 10_000
PER_INPUT_SECONDS = 1.0  # a decode of these buffers takes well under a millisecond; a loaded CI runner is slower
WHOLE_RUN_SECONDS = 120  # the backstop if a hang were out of SIGALRM's reach (in C): dump the stacks and exit
MAX_FAILURES = 20  # then stop: the report is long enough, and each hang costs PER_INPUT_SECONDS

NLA_F_NESTED = 0x8000
NLA_HDRLEN = 4
NFGENMSG_LEN = 4

SEEDS = [
    *recorded_buffers("lab_dump.bin"),
    *recorded_buffers("inserted_dump.bin"),
    *hex_buffers("table_stats.hex"),
]


class Attribute(NamedTuple):
    """Where one attribute header sits in a buffer, and what encloses it (the headers whose lengths include it)."""

    offset: int
    length: int
    end: int  # of its innermost container: the enclosing nest, or its message
    parents: tuple[int, ...]  # offsets of the enclosing nests' headers, outermost first
    message: int  # offset of its message's header


def messages(buf: bytes | bytearray) -> Iterator[tuple[int, int]]:
    """(offset, length) of each message whose header is sound, up to the first that is not."""
    pos = 0
    while pos + NLMSG_HDRLEN <= len(buf):
        (length,) = struct.unpack_from("=I", buf, pos)
        if length < NLMSG_HDRLEN or pos + length > len(buf):
            return
        yield pos, length
        pos += (length + 3) & ~3


def attributes(buf: bytes) -> list[Attribute]:
    """Every attribute of every message, nests (NLA_F_NESTED, as ctnetlink marks them) walked into."""
    found: list[Attribute] = []

    def walk(pos: int, end: int, parents: tuple[int, ...], message: int) -> None:
        while pos + NLA_HDRLEN <= end:
            length, kind = struct.unpack_from("=HH", buf, pos)
            if length < NLA_HDRLEN or pos + length > end:
                return
            found.append(Attribute(pos, length, end, parents, message))
            if kind & NLA_F_NESTED:
                walk(pos + NLA_HDRLEN, pos + length, (*parents, pos), message)
            pos += (length + 3) & ~3

    for start, length in messages(buf):
        walk(start + NLMSG_HDRLEN + NFGENMSG_LEN, start + length, (), start)
    return found


def insert(buf: bytes, place: Attribute, at: int, data: bytes) -> bytearray | None:
    """`data` inserted at `at` inside `place`'s container; every enclosing length grows to match."""
    out = bytearray(buf[:at] + data + buf[at:])
    for parent in place.parents:
        (length,) = struct.unpack_from("=H", out, parent)
        if length + len(data) > 0xFFFF:
            return None
        struct.pack_into("=H", out, parent, length + len(data))
    (length,) = struct.unpack_from("=I", out, place.message)
    struct.pack_into("=I", out, place.message, length + len(data))
    return out


def aligned(length: int) -> int:
    return (length + 3) & ~3


Mutation = Callable[[random.Random, bytes, list[Attribute]], bytearray | None]


def bit_flip(rng: random.Random, buf: bytes, attrs: list[Attribute]) -> bytearray | None:
    out = bytearray(buf)
    at = rng.randrange(len(out))
    out[at] ^= 1 << rng.randrange(8)
    return out


def byte_set(rng: random.Random, buf: bytes, attrs: list[Attribute]) -> bytearray | None:
    out = bytearray(buf)
    out[rng.randrange(len(out))] = rng.choice((0, 1, 3, 4, 0x7F, 0x80, 0xFF, rng.randrange(256)))
    return out


def truncation(rng: random.Random, buf: bytes, attrs: list[Attribute]) -> bytearray | None:
    return bytearray(buf[: rng.randrange(len(buf))])


def attribute_length(rng: random.Random, buf: bytes, attrs: list[Attribute]) -> bytearray | None:
    """One attribute's length: below its header, just off, past its container, past everything."""
    if not attrs:
        return None
    place = rng.choice(attrs)
    room = place.end - place.offset
    length = rng.choice(
        (0, 1, 2, 3, 4, place.length - 1, place.length + 1, place.length + 4, room + 1, room + 4, 0xFFFF)
    )
    out = bytearray(buf)
    struct.pack_into("=H", out, place.offset, max(0, min(length, 0xFFFF)))
    return out


def message_length(rng: random.Random, buf: bytes, attrs: list[Attribute]) -> bytearray | None:
    found = list(messages(buf))
    if not found:
        return None
    start, length = rng.choice(found)
    room = len(buf) - start
    out = bytearray(buf)
    new = rng.choice((0, 1, 15, 16, 17, 20, length - 4, length + 4, room + 4, 0xFFFFFFFF, rng.randrange(2**32)))
    struct.pack_into("=I", out, start, max(0, new))
    return out


def inserted_header(rng: random.Random, buf: bytes, attrs: list[Attribute]) -> bytearray | None:
    """A lying header after an attribute (zero, short, or claiming more than its container), all else intact."""
    if not attrs:
        return None
    place = rng.choice(attrs)
    at = min(place.offset + aligned(place.length), place.end)
    room = place.end - at + NLA_HDRLEN
    length = rng.choice((0, 0, 1, 2, 3, room + 4, 0xFFFF))
    kind = rng.randrange(1, 20) | rng.choice((0, NLA_F_NESTED))
    return insert(buf, place, at, struct.pack("=HH", length, kind))


def duplicated(rng: random.Random, buf: bytes, attrs: list[Attribute]) -> bytearray | None:
    if not attrs:
        return None
    place = rng.choice(attrs)
    size = min(aligned(place.length), place.end - place.offset)
    copy = buf[place.offset : place.offset + size] + bytes(-size % 4)
    return insert(buf, place, place.offset + size, copy)


def nest_overrun(rng: random.Random, buf: bytes, attrs: list[Attribute]) -> bytearray | None:
    """A member of a nest that reaches past the nest but not past its message."""
    nested = [attr for attr in attrs if attr.parents]
    if not nested:
        return None
    place = rng.choice(nested)
    out = bytearray(buf)
    length = place.end - place.offset + rng.choice((1, 4, 8))
    struct.pack_into("=H", out, place.offset, min(length, 0xFFFF))
    return out


MUTATIONS: tuple[Mutation, ...] = (
    bit_flip,
    byte_set,
    truncation,
    attribute_length,
    message_length,
    inserted_header,
    inserted_header,
    duplicated,
    nest_overrun,
)


class Case(NamedTuple):
    mutations: str
    data: bytes


def cases(seed: int = SEED, count: int = CASES) -> Iterator[Case]:
    """`count` mutated buffers, the same ones for the same seed: one or two structural or blind mutations each."""
    rng = random.Random(seed)
    layouts = [attributes(buf) for buf in SEEDS]
    made = 0
    while made < count:
        index = rng.randrange(len(SEEDS))
        data: bytes = SEEDS[index]
        attrs = layouts[index]
        names = []
        for _ in range(rng.choice((1, 1, 2))):
            mutation = rng.choice(MUTATIONS)
            mutated = mutation(rng, data, attrs)
            if mutated is None or not mutated:
                continue
            names.append(mutation.__name__)
            data = bytes(mutated)
            attrs = attributes(data)
        if names:
            made += 1
            yield Case("+".join(names), data)


def as_events(data: bytes, rng: random.Random) -> bytearray:
    """The same messages as an event socket would carry them: some entries become DESTROY events."""
    out = bytearray(data)
    for start, _ in messages(out):
        if struct.unpack_from("=H", out, start + 4)[0] == CT_ENTRY_TYPE and rng.random() < 0.5:
            struct.pack_into("=H", out, start + 4, CT_DELETE_TYPE)
    return out


def warm_templates() -> dict[int, list[Template]]:
    templates: dict[int, list[Template]] = {}
    for buf in SEEDS:
        decode_chunk(buf, len(buf), [], templates)
    return templates


WARM = warm_templates()


def decode_dump(data: bytes, templates: dict[int, list[Template]]) -> tuple[list[Flow], ChunkResult]:
    flows: list[Flow] = []
    result = decode_chunk(data, len(data), flows, templates)
    return flows, result


def decode_events(data: bytes | bytearray) -> tuple[list[Flow], list[Flow], ChunkResult]:
    opened: list[Flow] = []
    destroyed: list[Flow] = []
    result = decode_chunk(data, len(data), opened, {}, destroyed)
    return opened, destroyed, result


def decode_stats(data: bytes) -> list[dict[int, int | None]]:
    return [stats_attributes(payload) for _, payload in split_messages(memoryview(data))]


def sound(flows: list[Flow]) -> bool:
    return all(len(flow.src) in (4, 16) and len(flow.dst) == len(flow.src) for flow in flows)


class Hung(Exception):
    """Raised by the watchdog inside a decode that ran past PER_INPUT_SECONDS."""


def _fire(signum: int, frame: FrameType | None) -> None:
    raise Hung


@contextlib.contextmanager
def watchdogs() -> Iterator[Callable[[], contextlib.AbstractContextManager[None]]]:
    """A per-input alarm (SIGALRM: it interrupts a Python loop and raises Hung in it), and a whole-run backstop."""
    previous = signal.signal(signal.SIGALRM, _fire)
    faulthandler.dump_traceback_later(WHOLE_RUN_SECONDS, exit=True)

    @contextlib.contextmanager
    def bounded() -> Iterator[None]:
        signal.setitimer(signal.ITIMER_REAL, PER_INPUT_SECONDS)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    try:
        yield bounded
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


class Failure(NamedTuple):
    decoder: str
    problem: str
    case: Case


def check(case: Case, rng: random.Random, bounded: Callable[[], contextlib.AbstractContextManager[None]]) -> list[str]:
    """The problems one input causes in the three decoders, as (decoder, problem) strings."""
    problems = []
    try:
        with bounded():
            fresh = decode_dump(case.data, {})
        with bounded():
            warm = decode_dump(case.data, {shape: list(known) for shape, known in WARM.items()})
        if fresh != warm:
            problems.append("dump: templates and the attribute walk disagree")
        if not sound(fresh[0]):
            problems.append("dump: a flow without a sound address pair")
    except Hung:
        problems.append("dump: hung")
    except Exception as exc:
        problems.append(f"dump: raised {exc!r}")
    try:
        with bounded():
            opened, destroyed, _ = decode_events(as_events(case.data, rng))
        if not sound(opened) or not sound(destroyed):
            problems.append("events: a flow without a sound address pair")
    except Hung:
        problems.append("events: hung")
    except Exception as exc:
        problems.append(f"events: raised {exc!r}")
    try:
        with bounded():
            decode_stats(case.data)
    except StatsError:
        pass
    except Hung:
        problems.append("stats: hung")
    except Exception as exc:
        problems.append(f"stats: raised {exc!r}")
    return problems


def run(seed: int = SEED, count: int = CASES, limit: int = MAX_FAILURES) -> tuple[int, list[Failure]]:
    """Decode every case; returns (inputs decoded, failures up to `limit`)."""
    rng = random.Random(seed ^ 0xE7E7)
    failures: list[Failure] = []
    decoded = 0
    with watchdogs() as bounded:
        for case in cases(seed, count):
            decoded += 1
            for problem in check(case, rng, bounded):
                decoder, _, what = problem.partition(": ")
                failures.append(Failure(decoder, what, case))
            if len(failures) >= limit:
                break
    return decoded, failures


def test_no_mutation_of_the_recorded_bytes_hangs_or_breaks_a_decoder() -> None:
    started = time.monotonic()
    decoded, failures = run()
    elapsed = time.monotonic() - started
    if failures:
        first = failures[0]
        kinds = sorted({f"{failure.decoder}: {failure.problem}" for failure in failures})
        pytest.fail(
            f"{len(failures)} failures in {decoded} inputs ({elapsed:.1f} s): {kinds}; the first, after"
            f" {first.case.mutations}:\n{first.case.data.hex()}",
            pytrace=False,
        )
    assert decoded == CASES


# Inputs that once hung the decoder (the template compiler walked past a zero-length header that the attribute
# walk, stopping at the TCP state, never looked at), minimized; each file says where it came from.
HOSTILE = (
    "tcp_state_then_zero_length.hex",
    "tcp_nest_then_zero_length.hex",
    "fuzzed_zero_length_minimal_v4.hex",
    "fuzzed_zero_length_mid_nest_v6.hex",
)


def hostile(name: str) -> bytes:
    (message,) = hex_buffers(f"hostile/{name}")
    return message


def bounded_decode(data: bytes | bytearray, events: bool = False) -> tuple[list[Flow], ChunkResult]:
    flows: list[Flow] = []
    with watchdogs() as bounded, bounded():
        result = decode_chunk(data, len(data), flows, {}, [] if events else None)
    return flows, result


def test_the_reported_zero_length_attribute_after_the_tcp_state_is_one_malformed_entry() -> None:
    flows, result = bounded_decode(hostile("tcp_state_then_zero_length.hex"))
    assert (flows, result.malformed) == ([], 1)


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("events", [False, True], ids=["dump", "destroy event"])
def test_an_input_that_once_hung_skips_only_its_own_entry(name: str, events: bool) -> None:
    batch = recorded_buffers("lab_dump.bin")[0]
    expected, _ = bounded_decode(batch)
    message = bytearray(hostile(name))
    if events:
        struct.pack_into("=H", message, 4, CT_DELETE_TYPE)
    second = (struct.unpack_from("=I", batch, 0)[0] + 3) & ~3
    flows, result = bounded_decode(batch[:second] + message + bytes(-len(message) % 4) + batch[second:], events)
    assert (flows, result.malformed, result.other) == (expected, 1, 0)
