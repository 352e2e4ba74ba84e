"""Counting runs of same-shaped dump entries by key in C-level calls: `khan snapshot`'s path through a full table.

A dump often holds long runs of entries of one shape (one family, protocol and accounting setting): the same
length, the same attribute headers. decode.py's template of that shape reads one entry per call. Here a run is
checked WINDOW entries at a time: their bytes become one integer, and one XOR and one AND with the template's
expected bytes and mask (repeated once per entry) say whether every entry matches, or where the first that does
not lies; `struct.iter_unpack` then reads only the key's fields of every entry, and a Counter counts those tuples.
No Python code runs per entry and no Flow is made; each distinct key becomes the caller's key once, at the end.

A tracker (the agent with counters on) gets each run too, as a TrackedRun: every entry's identity and counters as
integers, read the same C-level way, and the means to decode the few entries it must look at closely.

An entry counted here is one its template matches byte for byte where the template checks them, the netlink
header (length, type and flags: NLM_F_DUMP_INTR ends a run) included. The first entry that differs ends the run,
and decode_chunk carries on with it as usual: malformed entries are found and counted there, as before.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar, cast

from khan.conntrack.decode import NLMSG_HDRLEN, Flow, Template
from khan.conntrack.template_fields import FieldSpan, field_spans, reader

MIN_RUN = 2  # a shorter run is decoded as usual
WINDOW = 32  # entries checked per integer: ~7 KB for IPv4 UDP, a fifth of a dump's batch
MAX_BACKOFF = 64  # after runs that failed (a mixed table), entries to decode as usual before trying again
_HEADER_CHECKED = 8  # nlmsg_len, nlmsg_type, nlmsg_flags; the sequence number and port id may vary
_LENGTH = struct.Struct("=I")

Key = tuple[Any, ...]
K = TypeVar("K", bound=Key)

# The identity and counters of an entry as a tracker keys them: `sport << 48 | dport << 32 | id` and
# `orig_bytes << 64 | reply_bytes`. The kernel writes those fields big-endian in that order, so the integer of
# their bytes joined is the value: one C call each, no arithmetic per entry.
_IDENTITY_FIELDS = ("sport", "dport", "id")
_COUNTER_FIELDS = ("orig_bytes", "reply_bytes")
_TIMEOUT_POSITION = Flow._fields.index("timeout")


class StoredEntry(NamedTuple):
    """One entry's message kept as bytes, decoded only if it is wanted (a heaviest-flow candidate)."""

    message: bytes  # the body, after the netlink header
    template: Template

    def flow(self) -> Flow:
        return self.template.flow(self.template.unpack(self.message, 0))


class TrackedShape(NamedTuple):
    """The structs that read a run's identities and counters: raw bytes to join, and the counters as numbers."""

    identity: struct.Struct
    counters: struct.Struct | None  # None: the shape carries no counters (accounting was off)
    totals: struct.Struct | None  # (orig_bytes, reply_bytes) as integers, to sum


class TrackedRun:
    """The entries of one run, for a tracker: what it needs of all of them, and each one whole on demand."""

    def __init__(
        self, buf: bytes | bytearray, pos: int, count: int, stride: int, template: Template, tracked: TrackedShape
    ) -> None:
        self._buf, self._pos, self._stride, self._template = buf, pos, stride, template
        view = memoryview(buf)[pos : pos + count * stride]
        joined = map(b"".join, tracked.identity.iter_unpack(view))
        self.identities: list[int] = list(map(int.from_bytes, joined))  # big-endian, Python's default since 3.11
        if tracked.counters is None or tracked.totals is None:  # accounting was off when these began
            self.counters: list[int] = [0] * len(self.identities)
            self.totals: list[int] = self.counters
        else:
            self.counters = list(map(int.from_bytes, map(b"".join, tracked.counters.iter_unpack(view))))
            self.totals = list(map(sum, tracked.totals.iter_unpack(view)))

    def __len__(self) -> int:
        return len(self.identities)

    def flow(self, index: int) -> Flow:
        template = self._template
        return template.flow(template.unpack(self._buf, self._pos + index * self._stride + NLMSG_HDRLEN))

    def stored(self, index: int) -> StoredEntry:
        start = self._pos + index * self._stride
        mlen = _LENGTH.unpack_from(self._buf, start)[0]
        return StoredEntry(bytes(self._buf[start + NLMSG_HDRLEN : start + mlen]), self._template)


class RunShape(NamedTuple):
    """A template, seen as a run of messages `stride` bytes apart."""

    stride: int  # the message's length, padded to 4 bytes
    header: bytes  # the netlink header's checked bytes, as every message of the run repeats them
    # (messages, their bytes where they must match and zero elsewhere, 0xff where they must match), as
    # little-endian integers, for windows of 4, 8, 16 and WINDOW messages.
    windows: tuple[tuple[int, int, int], ...]
    read: struct.Struct  # one message (stride bytes): the key's fields (and the timeout), in the order they lie
    key: Callable[[tuple[Any, ...]], Key]  # (fields read + defaults) -> the key
    timeout_at: int | None  # where the remaining timeout lies in what `read` reads; None: not read, or not carried
    defaults: tuple[object, ...]  # the template's values of fields its messages do not carry
    tracked: TrackedShape | None  # with a tracker: how it reads the run


class RunCounter:
    """Counts the entries of runs by key: `take` is decode_chunk's `take_run`; `add_to` once the dump has ended.

    `fields` name the Flow fields that make the key, in order (raw_keys.RAW_FLOW_FIELDS). With `timed`, entries
    are also told apart by their remaining timeout (`items`). With `track`, each run also goes to it, before `take`
    returns; a shape whose identity or counters it cannot read is no run then."""

    def __init__(
        self, fields: Iterable[str], track: Callable[[TrackedRun], None] | None = None, timed: bool = False
    ) -> None:
        self._positions = tuple(Flow._fields.index(name) for name in fields)
        if len(self._positions) < 2:
            raise ValueError("a key of at least two fields")
        self._timed = timed
        self._shapes: dict[int, RunShape | None] = {}  # by id() of the template (kept alive in _templates)
        self._templates: list[Template] = []
        self._counts: dict[int, Counter[tuple[Any, ...]]] = {}  # by id() of the template: the fields read
        self._backoff = self._wait = 0
        self._track = track
        self.entries = 0

    def take(self, buf: bytes | bytearray, pos: int, length: int, template: Template) -> int:
        """How many messages from buf[pos] (whose template matched) are of that one shape, 0 if fewer than
        MIN_RUN; those are counted."""
        if self._wait:
            self._wait -= 1
            return 0
        key = id(template)
        shape = self._shapes[key] if key in self._shapes else self._compile(buf, pos, template)
        if shape is None:
            return 0
        taken = _matching(buf, pos, (length - pos) // shape.stride, shape)
        if taken < MIN_RUN:
            self._backoff = min(MAX_BACKOFF, 2 * self._backoff or 1)
            self._wait = self._backoff
            return 0
        self._backoff = 0
        view = memoryview(buf)[pos : pos + taken * shape.stride]
        self._counts[key].update(shape.read.iter_unpack(view))
        self.entries += taken
        if self._track is not None and shape.tracked is not None:
            self._track(TrackedRun(buf, pos, taken, shape.stride, template, shape.tracked))
        return taken

    def add_to(self, counts: dict[K, int]) -> dict[K, int]:
        """Every run's entries added to `counts` by key: once per distinct key, not per entry."""
        get = counts.get
        for template_id, shape in self._shapes.items():
            if shape is None:
                continue
            key, defaults = shape.key, shape.defaults
            for read, count in self._counts[template_id].items():
                full = cast(K, key(read + defaults))
                counts[full] = get(full, 0) + count
        return counts

    def items(self) -> Iterator[tuple[Key, int, int]]:
        """(key, remaining timeout, entries) of every run, once per distinct pair of the two (a `timed` counter;
        the timeout is 0 otherwise, and where a shape does not carry it)."""
        for template_id, shape in self._shapes.items():
            if shape is None:
                continue
            key, defaults, at = shape.key, shape.defaults, shape.timeout_at
            for read, count in self._counts[template_id].items():
                yield key(read + defaults), 0 if at is None else read[at], count

    def _compile(self, buf: bytes | bytearray, pos: int, template: Template) -> RunShape | None:
        shape = run_shape(buf, pos, template, self._positions, tracked=self._track is not None, timed=self._timed)
        if shape is not None and self._track is not None and shape.tracked is None:
            shape = None  # the tracker must see each of these entries: decoded one by one
        self._shapes[id(template)] = shape
        self._templates.append(template)
        self._counts[id(template)] = Counter()
        return shape


def _matching(buf: bytes | bytearray, pos: int, available: int, shape: RunShape) -> int:
    """How many of the `available` messages from buf[pos] match the shape: windows of 4, 8, 16, then WINDOW
    messages, so that a short run (a mixed table) costs small integers."""
    stride = shape.stride
    if available < MIN_RUN or buf[pos + stride : pos + stride + _HEADER_CHECKED] != shape.header:
        return 0  # the next message differs at a glance
    view = memoryview(buf)
    taken = 0
    for window, pattern, mask in shape.windows:
        while True:
            count = min(window, available - taken)
            start = pos + taken * stride
            data = int.from_bytes(view[start : start + count * stride], "little")
            # Past the data's end the pattern meets zero bytes: a difference there marks the window's end.
            differences = (data ^ pattern) & mask
            if differences:
                first = ((differences & -differences).bit_length() - 1) // 8  # the lowest difference's byte
                return taken + min(count, first // stride)
            taken += count
            if taken == available:
                return taken
            if window != WINDOW:
                break  # a bigger window next
    return taken


def run_shape(
    buf: bytes | bytearray,
    pos: int,
    template: Template,
    positions: tuple[int, ...],
    tracked: bool = False,
    timed: bool = False,
) -> RunShape | None:
    """The run shape of `template`, from the message at buf[pos] that it matched; None if its format is not one
    this module reads. `tracked`: with the structs a tracker reads, where the shape allows. `timed`: the remaining
    timeout is read too."""
    (mlen,) = _LENGTH.unpack_from(buf, pos)
    stride = (mlen + 3) & ~3
    fields = field_spans(template.layout.format)
    if fields is None or NLMSG_HDRLEN + (fields[-1][0] + fields[-1][1] if fields else 0) > mlen:
        return None
    pattern, mask = bytearray(stride), bytearray(stride)
    pattern[:_HEADER_CHECKED] = buf[pos : pos + _HEADER_CHECKED]
    mask[:_HEADER_CHECKED] = b"\xff" * _HEADER_CHECKED
    for index in template.layout.checked:
        offset, size, _ = fields[index]
        start = pos + NLMSG_HDRLEN + offset
        pattern[NLMSG_HDRLEN + offset : NLMSG_HDRLEN + offset + size] = buf[start : start + size]
        mask[NLMSG_HDRLEN + offset : NLMSG_HDRLEN + offset + size] = b"\xff" * size
    # The key's fields: those the message carries are read (each once, in the order they lie); the others are
    # the template's defaults, appended after them.
    wanted = [template.layout.flow_index[position] for position in positions]
    timeout = template.layout.flow_index[_TIMEOUT_POSITION] if timed else len(fields)
    read = sorted({index for index in (*wanted, timeout) if index < len(fields)})
    read_struct = reader(fields, read, stride, as_bytes=False)
    rank = {index: place for place, index in enumerate(read)}
    key = itemgetter(*(rank[index] if index in rank else len(read) + index - len(fields) for index in wanted))
    return RunShape(
        stride,
        bytes(pattern[:_HEADER_CHECKED]),
        tuple(
            (size, int.from_bytes(bytes(pattern) * size, "little"), int.from_bytes(bytes(mask) * size, "little"))
            for size in (4, 8, 16, WINDOW)
        ),
        read_struct,
        key,
        rank.get(timeout),
        template.defaults,
        _tracked_shape(template, fields, stride) if tracked else None,
    )


def _tracked_shape(template: Template, fields: list[FieldSpan], stride: int) -> TrackedShape | None:
    """The tracker's structs, if the messages carry the identity's fields as expected (both ports and the id, or
    the id alone: the ports' default is 0, the integer's leading bytes) and both byte counters or neither."""

    def carried(names: tuple[str, ...]) -> tuple[list[int], str]:
        indexes = [template.layout.flow_index[Flow._fields.index(name)] for name in names]
        present = [index for index in indexes if index < len(fields)]
        in_order = present == sorted(present)  # joined in the order they lie: the integer's order
        return present, "".join(fields[index][2] for index in present) if in_order else "?"

    identity, identity_codes = carried(_IDENTITY_FIELDS)
    counters, counter_codes = carried(_COUNTER_FIELDS)
    if identity_codes not in ("HHI", "I") or counter_codes not in ("QQ", ""):
        return None
    if not counters:
        return TrackedShape(reader(fields, identity, stride, as_bytes=True), None, None)
    return TrackedShape(
        reader(fields, identity, stride, as_bytes=True),
        reader(fields, counters, stride, as_bytes=True),
        reader(fields, counters, stride, as_bytes=False),
    )
