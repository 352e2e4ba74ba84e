"""Counting runs of same-shaped dump entries by key in C-level calls: `khan snapshot`'s path through a full table.

A dump often holds long runs of entries of one shape (one family, protocol and accounting setting): the same
length, the same attribute headers. decode.py's template of that shape reads one entry per call. Here a run is
checked WINDOW entries at a time: their bytes become one integer, and one XOR and one AND with the template's
expected bytes and mask (repeated once per entry) say whether every entry matches, or where the first that does
not lies; `struct.iter_unpack` then reads only the key's fields of every entry, and a Counter counts those tuples.
No Python code runs per entry and no Flow is made; each distinct key becomes the caller's key once, at the end.

An entry counted here is one its template matches byte for byte where the template checks them, the netlink
header (length, type and flags: NLM_F_DUMP_INTR ends a run) included. The first entry that differs ends the run,
and decode_chunk carries on with it as usual: malformed entries are found and counted there, as before.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar, cast

from khan.conntrack.decode import NLMSG_HDRLEN, Flow, Template

MIN_RUN = 2  # a shorter run is decoded as usual
WINDOW = 32  # entries checked per integer: ~7 KB for IPv4 UDP, a fifth of a dump's batch
MAX_BACKOFF = 64  # after runs that failed (a mixed table), entries to decode as usual before trying again
_HEADER_CHECKED = 8  # nlmsg_len, nlmsg_type, nlmsg_flags; the sequence number and port id may vary
_FIELD = re.compile(r"(\d*)([xsBHIQ])")
_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8}
_LENGTH = struct.Struct("=I")

Key = tuple[Any, ...]
K = TypeVar("K", bound=Key)


class RunShape(NamedTuple):
    """A template, seen as a run of messages `stride` bytes apart."""

    stride: int  # the message's length, padded to 4 bytes
    header: bytes  # the netlink header's checked bytes, as every message of the run repeats them
    # (messages, their bytes where they must match and zero elsewhere, 0xff where they must match), as
    # little-endian integers, for windows of 4, 8, 16 and WINDOW messages.
    windows: tuple[tuple[int, int, int], ...]
    read: struct.Struct  # one message (stride bytes): the key's fields, in the order they lie
    key: Callable[[tuple[Any, ...]], Key]  # (fields read + defaults) -> the key
    defaults: tuple[object, ...]  # the template's values of fields its messages do not carry


class RunCounter:
    """Counts the entries of runs by key: `take` is decode_chunk's `take_run`; `add_to` once the dump has ended.

    `fields` name the Flow fields that make the key, in order (raw_keys.RAW_FLOW_FIELDS)."""

    def __init__(self, fields: Iterable[str]) -> None:
        self._positions = tuple(Flow._fields.index(name) for name in fields)
        if len(self._positions) < 2:
            raise ValueError("a key of at least two fields")
        self._shapes: dict[int, RunShape | None] = {}  # by id() of the template (kept alive in _templates)
        self._templates: list[Template] = []
        self._counts: dict[int, Counter[tuple[Any, ...]]] = {}  # by id() of the template: the fields read
        self._backoff = self._wait = 0
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
        self._counts[key].update(shape.read.iter_unpack(memoryview(buf)[pos : pos + taken * shape.stride]))
        self.entries += taken
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

    def _compile(self, buf: bytes | bytearray, pos: int, template: Template) -> RunShape | None:
        shape = run_shape(buf, pos, template, self._positions)
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


def run_shape(buf: bytes | bytearray, pos: int, template: Template, positions: tuple[int, ...]) -> RunShape | None:
    """The run shape of `template`, from the message at buf[pos] that it matched; None if its format is not one
    this module reads."""
    (mlen,) = _LENGTH.unpack_from(buf, pos)
    stride = (mlen + 3) & ~3
    fields = _field_spans(template.layout.format)
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
    read = sorted({index for index in wanted if index < len(fields)})
    codes, at = ["!"], 0
    for index in read:
        offset, size, code = fields[index]
        codes.append(f"{NLMSG_HDRLEN + offset - at}x" if NLMSG_HDRLEN + offset > at else "")
        codes.append(code)
        at = NLMSG_HDRLEN + offset + size
    codes.append(f"{stride - at}x" if stride > at else "")
    rank = {index: place for place, index in enumerate(read)}
    key = itemgetter(*(rank[index] if index in rank else len(read) + index - len(fields) for index in wanted))
    return RunShape(
        stride,
        bytes(pattern[:_HEADER_CHECKED]),
        tuple(
            (size, int.from_bytes(bytes(pattern) * size, "little"), int.from_bytes(bytes(mask) * size, "little"))
            for size in (4, 8, 16, WINDOW)
        ),
        struct.Struct("".join(codes)),
        key,
        template.defaults,
    )


def _field_spans(fmt: str) -> list[tuple[int, int, str]] | None:
    """(offset, size, code) of each field a struct format of decode.py's templates reads; None for a format that
    uses anything else."""
    if not fmt.startswith("!"):
        return None
    fields: list[tuple[int, int, str]] = []
    offset = 0
    for match in _FIELD.finditer(fmt, 1):
        count, code = int(match[1] or 1), match[2]
        if code == "x":
            offset += count
        elif code == "s":
            fields.append((offset, count, f"{count}s"))
            offset += count
        elif match[1]:
            return None  # "2H": decode.py never writes repeat counts
        else:
            fields.append((offset, _SIZES[code], code))
            offset += _SIZES[code]
    if sum(len(match[0]) for match in _FIELD.finditer(fmt, 1)) != len(fmt) - 1:
        return None
    return fields
