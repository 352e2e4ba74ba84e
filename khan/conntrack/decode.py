"""Pure decoding: the bytes of a ctnetlink dump -> `Flow` records.

This is the per-entry hot loop. pyroute2's generic decoder costs ~190 us an entry on a full table; this costs
about 2 us. The kernel writes every entry of one kind (family, protocol, accounting on or off) with the same
attribute layout, so the first entry of each shape is walked attribute by attribute (`decode_entry`) and compiled
into a template: one struct that reads the whole message at once and checks every attribute header. Every later
entry of that shape costs one unpack, one comparison and one tuple; anything else falls back to the walk.

No byte is trusted: the walk over messages here and the one over attributes (attributes.py) stop at a length
below its header or past its container and step forward by 4 bytes or more, so no input can stall them; a bad
entry is counted as malformed (tests/unit/test_decode_fuzz.py feeds it mutations of recorded dumps).

Layout reference: include/uapi/linux/netfilter/nfnetlink_conntrack.h and ctnetlink_fill_info() in the kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any, NamedTuple

from khan.conntrack.attributes import NLA_HDRLEN, MalformedAttribute, attributes

# Netlink framing (include/uapi/linux/netlink.h).
NLMSG_HDRLEN = 16
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_DUMP_INTR = 0x10

# nfnetlink: a conntrack entry arrives as subsystem CTNETLINK (1), message IPCTNL_MSG_CT_NEW (0) in a dump and in
# NEW events; a DESTROY event is IPCTNL_MSG_CT_DELETE (2) with the same body, carrying the final counters.
NFGENMSG_LEN = 4
CT_ENTRY_TYPE = 1 << 8
CT_DELETE_TYPE = (1 << 8) | 2

# Top-level conntrack attributes.
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_ZONE = 18

# Inside a tuple.
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3

# Inside CTA_PROTOINFO and CTA_COUNTERS_*.
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2

# Status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_FIXED_TIMEOUT = 1 << 10  # no packet resets the entry's timer
IPS_OFFLOAD = 1 << 14  # a flowtable forwards it: the kernel sends neither its timeout nor its protocol state

AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
NO_TCP_STATE = -1

# TCP conntrack states by their kernel number (enum tcp_conntrack), spelled as `conntrack -L` and the kernel's
# own tcp_conntrack_names print them.
TCP_STATE_NAMES: tuple[str, ...] = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)


class Flow(NamedTuple):
    """One conntrack entry. Addresses are packed (4 or 16 bytes); ports are 0 where the protocol has none."""

    family: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    reply_src: bytes
    reply_dst: bytes
    reply_sport: int
    reply_dport: int
    status: int
    tcp_state: int  # NO_TCP_STATE unless proto is TCP
    id: int
    zone: int
    mark: int
    orig_packets: int  # the four counters stay 0 unless nf_conntrack_acct was on when the flow began
    orig_bytes: int
    reply_packets: int
    reply_bytes: int
    # Seconds left before the entry expires (CTA_TIMEOUT, rounded down); every packet sets it back to its state's
    # timeout. 0 where the message has none: DESTROY events.
    timeout: int = 0


class ChunkResult(NamedTuple):
    """What one received buffer held besides entries."""

    malformed: int  # entries skipped because their bytes did not parse
    other: int  # messages that were neither entries nor framing (counted, ignored)
    done: bool  # NLMSG_DONE seen: the dump is complete
    interrupted: bool  # NLM_F_DUMP_INTR seen: the table changed under the dump, retry it
    error: int  # errno from an NLMSG_ERROR, 0 if none
    counted: int = 0  # entries counted by `take_run` (runs of one shape), not appended as flows


class MalformedEntry(MalformedAttribute):
    """An entry shorter than its nfgenmsg, without an original tuple, or whose tuple lacks its addresses."""


_MSGHDR = struct.Struct("=IHH")
_ERRNO = struct.Struct("=i")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")

Endpoints = tuple[int, bytes, bytes, int, int]  # a tuple's (proto, src, dst, sport, dport), in Flow's order


def _decode_tuple(buf: bytes | bytearray, start: int, end: int) -> Endpoints:
    """A CTA_TUPLE_* body -> (proto, src, dst, sport, dport)."""
    src = dst = b""
    proto = sport = dport = 0
    for nest, nest_start, nest_length in attributes(buf, start, end):
        for kind, value, length in attributes(buf, nest_start, nest_start + nest_length):
            if nest == CTA_TUPLE_IP:
                if kind in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = bytes(buf[value : value + length])
                elif kind in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = bytes(buf[value : value + length])
            elif nest == CTA_TUPLE_PROTO:
                if kind == CTA_PROTO_NUM and length >= 1:
                    proto = buf[value]
                elif kind == CTA_PROTO_SRC_PORT and length >= 2:
                    sport = _BE16.unpack_from(buf, value)[0]
                elif kind == CTA_PROTO_DST_PORT and length >= 2:
                    dport = _BE16.unpack_from(buf, value)[0]
    if len(src) not in (4, 16) or len(dst) != len(src):
        raise MalformedEntry("tuple without a source and destination address of one family")
    return proto, src, dst, sport, dport


def _decode_tcp_state(buf: bytes | bytearray, start: int, end: int) -> int:
    """A CTA_PROTOINFO body -> its TCP state, the first if repeated; NO_TCP_STATE if absent. Every header of both
    levels is walked, also past the value: the template compiler walks them all, and must only ever meet headers
    that passed here."""
    found = NO_TCP_STATE
    for nest, nest_start, nest_length in attributes(buf, start, end):
        if nest == CTA_PROTOINFO_TCP:
            for kind, value, length in attributes(buf, nest_start, nest_start + nest_length):
                if kind == CTA_PROTOINFO_TCP_STATE and length >= 1 and found == NO_TCP_STATE:
                    found = buf[value]
    return found


def _decode_counters(buf: bytes | bytearray, start: int, end: int) -> tuple[int, int]:
    """A CTA_COUNTERS_* body -> (packets, bytes)."""
    packets = octets = 0
    for kind, value, length in attributes(buf, start, end):
        if length >= 8:
            if kind == CTA_COUNTERS_PACKETS:
                packets = _BE64.unpack_from(buf, value)[0]
            elif kind == CTA_COUNTERS_BYTES:
                octets = _BE64.unpack_from(buf, value)[0]
    return packets, octets


def decode_entry(buf: bytes | bytearray, start: int, end: int) -> Flow:
    """One conntrack message's body (after nlmsghdr) -> Flow. Raises MalformedAttribute (MalformedEntry for an
    entry that lacks its tuple) on bad bytes."""
    if end - start < NFGENMSG_LEN:
        raise MalformedEntry("message shorter than its nfgenmsg")
    orig = reply = None
    status = mark = ct_id = zone = timeout = 0
    tcp_state = NO_TCP_STATE
    orig_counters = reply_counters = (0, 0)
    for kind, value, length in attributes(buf, start + NFGENMSG_LEN, end):
        if kind == CTA_TUPLE_ORIG:
            orig = _decode_tuple(buf, value, value + length)
        elif kind == CTA_TUPLE_REPLY:
            reply = _decode_tuple(buf, value, value + length)
        elif kind == CTA_STATUS and length >= 4:
            status = _BE32.unpack_from(buf, value)[0]
        elif kind == CTA_PROTOINFO:
            tcp_state = _decode_tcp_state(buf, value, value + length)
        elif kind == CTA_ID and length >= 4:
            ct_id = _BE32.unpack_from(buf, value)[0]
        elif kind == CTA_TIMEOUT and length >= 4:
            timeout = _BE32.unpack_from(buf, value)[0]
        elif kind == CTA_MARK and length >= 4:
            mark = _BE32.unpack_from(buf, value)[0]
        elif kind == CTA_COUNTERS_ORIG:
            orig_counters = _decode_counters(buf, value, value + length)
        elif kind == CTA_COUNTERS_REPLY:
            reply_counters = _decode_counters(buf, value, value + length)
        elif kind == CTA_ZONE and length >= 2:
            zone = _BE16.unpack_from(buf, value)[0]
    if orig is None:
        raise MalformedEntry("entry without an original tuple")
    proto, src, dst, sport, dport = orig
    if reply is None:  # the kernel always sends one; mirror the original tuple if it did not
        reply = (proto, dst, src, dport, sport)
    family = buf[start]
    if family not in (AF_INET, AF_INET6):
        family = AF_INET if len(src) == 4 else AF_INET6
    if proto != IPPROTO_TCP:
        tcp_state = NO_TCP_STATE
    return Flow(
        family, *orig, *reply[1:], status, tcp_state, ct_id, zone, mark, *orig_counters, *reply_counters, timeout
    )


class TemplateLayout(NamedTuple):
    """Where a template reads: what a reader of many messages at once (runs.py) needs to read them its own way."""

    format: str  # the struct format of the body, as `unpack` reads it
    checked: tuple[int, ...]  # indexes of the fields that must match
    flow_index: tuple[int, ...]  # for each Flow field, its index in (values + defaults)


class Template(NamedTuple):
    """A message shape seen before, compiled into one unpack: every header is checked, every wanted value read."""

    unpack: Callable[[bytes | bytearray, int], tuple[Any, ...]]  # the whole message in one call
    checked: itemgetter[tuple[Any, ...]]  # header and padding runs (and the protocol) that must match `expected`
    expected: tuple[Any, ...]
    flow_fields: itemgetter[tuple[object, ...]]  # (values + defaults) -> Flow's fields, in order
    defaults: tuple[object, ...]
    layout: TemplateLayout

    def flow(self, values: tuple[Any, ...]) -> Flow:
        """The Flow of what `unpack` read (decode_chunk's loop does the same inline)."""
        return tuple.__new__(Flow, self.flow_fields(values + self.defaults))


MAX_TEMPLATES = 64  # distinct entry shapes remembered; a kernel emits a handful (family x protocol x accounting)

# Attributes whose payload the template reads: (nest, attribute type) -> (struct code, Flow field).
_TUPLE_VALUES = {
    (CTA_TUPLE_IP, CTA_IP_V4_SRC): ("4s", "src"),
    (CTA_TUPLE_IP, CTA_IP_V4_DST): ("4s", "dst"),
    (CTA_TUPLE_IP, CTA_IP_V6_SRC): ("16s", "src"),
    (CTA_TUPLE_IP, CTA_IP_V6_DST): ("16s", "dst"),
    (CTA_TUPLE_PROTO, CTA_PROTO_NUM): ("B", "proto"),
    (CTA_TUPLE_PROTO, CTA_PROTO_SRC_PORT): ("H", "sport"),
    (CTA_TUPLE_PROTO, CTA_PROTO_DST_PORT): ("H", "dport"),
}
_TOP_VALUES = {
    CTA_STATUS: ("I", "status"),
    CTA_MARK: ("I", "mark"),
    CTA_ID: ("I", "id"),
    CTA_ZONE: ("H", "zone"),
    CTA_TIMEOUT: ("I", "timeout"),
}
_COUNTER_VALUES = {CTA_COUNTERS_PACKETS: "packets", CTA_COUNTERS_BYTES: "bytes"}
_CODE_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8, "4s": 4, "16s": 16}
# A reply tuple the entry lacks is read from the original one, as decode_entry mirrors it.
_MIRRORED_REPLY = {"reply_src": "dst", "reply_dst": "src", "reply_sport": "dport", "reply_dport": "sport"}
_FLOW_DEFAULTS = Flow(0, 0, b"", b"", 0, 0, b"", b"", 0, 0, 0, NO_TCP_STATE, 0, 0, 0, 0, 0, 0, 0, 0)


class ValueSlot(NamedTuple):
    """A value Flow needs, where it lies in the message body."""

    offset: int
    code: str  # struct code
    role: str  # the Flow field it fills


class EntryLayout(NamedTuple):
    """One message body's bytes, classified: the values Flow needs, the spans that must match in every message of
    this shape (attribute headers, the family and version, the padding after a value); the rest may vary (payloads
    khan ignores, such as helpers and timestamps). Offsets count from the start of the body."""

    body: int  # where the body starts in the buffer classified
    size: int
    values: list[ValueSlot]
    checked: list[tuple[int, int]]  # (offset, end)


def _compile_template(buf: bytes | bytearray, start: int, end: int, flow: Flow) -> Template | None:
    """Describe the message body at buf[start:end] (already decoded into `flow`) as a reusable template, or None
    for shapes better left to decode_entry."""
    try:
        layout = _classify(buf, start, end, flow.proto)
    except MalformedAttribute:
        return None
    return _build_template(layout, buf, flow)


# Classify: one walk over an entry's attributes records where each value Flow needs lies, and which bytes must match.


def _classify(buf: bytes | bytearray, start: int, end: int, proto: int) -> EntryLayout:
    """What each attribute of the entry at buf[start:end] is. decode_entry has checked every header this meets
    already; one that lies anyway raises MalformedAttribute."""
    layout = EntryLayout(start, end - start, [], [(0, 2)])  # nfgen family and version; res_id may vary
    for kind, value, length in _walk(layout, buf, start + NFGENMSG_LEN, end):
        if kind == CTA_TUPLE_ORIG:
            _classify_tuple(layout, buf, value, value + length, "")
        elif kind == CTA_TUPLE_REPLY:
            _classify_tuple(layout, buf, value, value + length, "reply_")
        elif kind in _TOP_VALUES:
            _add_value(layout, value, length, *_TOP_VALUES[kind])
        elif kind == CTA_PROTOINFO:
            _classify_protoinfo(layout, buf, value, value + length, proto)
        elif kind == CTA_COUNTERS_ORIG:
            _classify_counters(layout, buf, value, value + length, "orig_")
        elif kind == CTA_COUNTERS_REPLY:
            _classify_counters(layout, buf, value, value + length, "reply_")
    return layout


def _classify_tuple(layout: EntryLayout, buf: bytes | bytearray, start: int, end: int, prefix: str) -> None:
    for nest, nest_start, nest_length in _walk(layout, buf, start, end):
        for kind, value, length in _walk(layout, buf, nest_start, nest_start + nest_length):
            wanted = _TUPLE_VALUES.get((nest, kind))
            if wanted and not (prefix and wanted[1] == "proto"):  # one protocol: the original tuple's
                _add_value(layout, value, length, wanted[0], prefix + wanted[1])


def _classify_protoinfo(layout: EntryLayout, buf: bytes | bytearray, start: int, end: int, proto: int) -> None:
    for nest, nest_start, nest_length in _walk(layout, buf, start, end):
        if nest == CTA_PROTOINFO_TCP:
            for kind, value, length in _walk(layout, buf, nest_start, nest_start + nest_length):
                if kind == CTA_PROTOINFO_TCP_STATE and proto == IPPROTO_TCP:
                    _add_value(layout, value, length, "B", "tcp_state")


def _classify_counters(layout: EntryLayout, buf: bytes | bytearray, start: int, end: int, direction: str) -> None:
    for kind, value, length in _walk(layout, buf, start, end):
        if kind in _COUNTER_VALUES:
            _add_value(layout, value, length, "Q", direction + _COUNTER_VALUES[kind])


def _walk(layout: EntryLayout, buf: bytes | bytearray, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The attributes in buf[start:end], each header recorded as bytes that must match."""
    for kind, value, length in attributes(buf, start, end):
        offset = value - layout.body
        layout.checked.append((offset - NLA_HDRLEN, offset))
        yield kind, value, length


def _add_value(layout: EntryLayout, value: int, length: int, code: str, role: str) -> None:
    """The value at buf[value], if its attribute is wide enough for `code`; the padding after it must match."""
    width = _CODE_SIZES[code]
    if length >= width:
        offset = value - layout.body
        layout.values.append(ValueSlot(offset, code, role))
        padded_end = min(offset + ((length + 3) & ~3), layout.size)
        if padded_end > offset + width:
            layout.checked.append((offset + width, padded_end))


# Build: the classified layout becomes one struct over the whole body, and the map from its fields to Flow's.


def _build_template(layout: EntryLayout, buf: bytes | bytearray, flow: Flow) -> Template | None:
    """The template of a classified entry, if it reads back exactly `flow` (decoded from the same bytes)."""
    shape = _struct_shape(layout)
    if shape is None:
        return None
    fmt, checked, roles = shape
    if "src" not in roles or "dst" not in roles:
        return None
    if "reply_src" not in roles:  # decode_entry mirrors the original tuple
        roles.update({reply: roles[orig] for reply, orig in _MIRRORED_REPLY.items() if orig in roles})
    unpack = struct.Struct(fmt).unpack_from
    values = unpack(buf, layout.body)
    defaults = tuple(_FLOW_DEFAULTS._replace(family=flow.family))
    flow_index = tuple(roles.get(name, len(values) + i) for i, name in enumerate(Flow._fields))
    fields = itemgetter(*flow_index)
    template = Template(
        unpack,
        itemgetter(*checked),
        tuple(values[i] for i in checked),
        fields,
        defaults,
        TemplateLayout(fmt, tuple(checked), flow_index),
    )
    # The template must reproduce the generic decoder's answer exactly, or it is not used.
    if tuple.__new__(Flow, fields(values + defaults)) != flow:
        return None
    return template


def _struct_shape(layout: EntryLayout) -> tuple[str, list[int], dict[str, int]] | None:
    """(struct format, indexes of the fields that must match, index of each Flow field read); None if a Flow field
    is read twice (an attribute twice: decode_entry decides which one counts). Values are read with their struct
    code, each run of checked bytes as one "Ns" field (fewer fields: a faster unpack and compare), each run of
    ignored bytes skipped ("Nx")."""
    pieces: list[tuple[int, int, ValueSlot | None]] = [(offset, end, None) for offset, end in _runs(layout.checked)]
    pieces += [(slot.offset, slot.offset + _CODE_SIZES[slot.code], slot) for slot in layout.values]
    codes: list[str] = ["!"]
    checked: list[int] = []
    roles: dict[str, int] = {}
    position = 0
    for field, (offset, end, slot) in enumerate(sorted(pieces, key=itemgetter(0))):
        if offset > position:
            codes.append(f"{offset - position}x")
        if slot is None:
            codes.append(f"{end - offset}s")
            checked.append(field)
        elif slot.role in roles:
            return None
        else:
            codes.append(slot.code)
            roles[slot.role] = field
            if slot.role == "proto":
                checked.append(field)  # one template per protocol keeps tcp_state's default right
        position = end
    if position < layout.size:
        codes.append(f"{layout.size - position}x")
    return "".join(codes), checked, roles


def _runs(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, end) spans, those that touch merged into one."""
    runs: list[tuple[int, int]] = []
    for offset, end in sorted(spans):
        if runs and offset <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(end, runs[-1][1]))
        else:
            runs.append((offset, end))
    return runs


# (buffer, position of a message its template matched, end of the buffer's data, template) -> how many messages
# from there, of that one shape, the callee counted itself (0: none, decode the message as usual).
TakeRun = Callable[[bytes | bytearray, int, int, Template], int]


def decode_chunk(
    buf: bytes | bytearray,
    length: int,
    flows: list[Flow],
    templates: dict[int, list[Template]] | None = None,
    destroyed: list[Flow] | None = None,
    take_run: TakeRun | None = None,
) -> ChunkResult:
    """Every netlink message in buf[:length]: entries are appended to `flows`, the rest is summarised.

    `templates` carries compiled message shapes from one buffer to the next (keyed by message length): an entry
    whose shape is known costs one unpack. A message whose header lies ends what can be trusted in this buffer:
    the rest counts as one malformed entry. A message whose attributes are broken is skipped and counted.
    With `destroyed` (an event socket), DESTROY messages are decoded into it; otherwise they count as `other`.
    With `take_run` (a dump counted by key, runs.py), a run of entries of one known shape that starts at an entry
    its template matched is handed to it whole: those entries are counted there, not appended.
    """
    if templates is None:
        templates = {}
    malformed = other = error = counted = 0
    done = interrupted = False
    keep_entry = flows.append
    events = destroyed is not None
    keep_destroyed = destroyed.append if destroyed is not None else keep_entry
    unpack_hdr = _MSGHDR.unpack_from
    shapes = templates.get
    new = tuple.__new__
    header_len, entry_type, intr_flag = NLMSG_HDRLEN, CT_ENTRY_TYPE, NLM_F_DUMP_INTR  # locals: this loop is hot
    pos = taken = 0
    while pos + header_len <= length:
        mlen, mtype, mflags = unpack_hdr(buf, pos)
        if mlen < header_len or pos + mlen > length:
            malformed += 1
            break
        if mflags & intr_flag:
            interrupted = True
        if mtype == entry_type or (mtype == CT_DELETE_TYPE and events):
            append = keep_entry if mtype == entry_type else keep_destroyed
            for template in shapes(mlen, ()):
                unpack, checked, expected, flow_fields, defaults, _ = template
                values = unpack(buf, pos + header_len)
                if checked(values) == expected:
                    if take_run is not None and mtype == entry_type:
                        taken = take_run(buf, pos, length, template)
                        if taken:
                            counted += taken
                            pos += taken * ((mlen + 3) & ~3)
                            break
                    append(new(Flow, flow_fields(values + defaults)))
                    break
            else:
                if not _decode_new_shape(buf, pos + header_len, pos + mlen, append, templates):
                    malformed += 1
            if taken:
                taken = 0
                continue
        elif mtype in (NLMSG_DONE, NLMSG_ERROR):
            done = True
            error = _errno(buf, pos, mlen) if mtype == NLMSG_ERROR else 0
            break
        elif mtype not in (NLMSG_NOOP, NLMSG_OVERRUN):
            other += 1
        pos += (mlen + 3) & ~3
    return ChunkResult(malformed, other, done, interrupted, error, counted)


def _decode_new_shape(
    buf: bytes | bytearray, start: int, end: int, append: Callable[[Flow], None], templates: dict[int, list[Template]]
) -> bool:
    """An entry no template fits: walk it, and remember its shape. False if its bytes do not parse."""
    try:
        flow = decode_entry(buf, start, end)
    except (MalformedAttribute, struct.error, IndexError):
        return False
    append(flow)
    mlen = end - start + NLMSG_HDRLEN
    if sum(map(len, templates.values())) < MAX_TEMPLATES:
        template = _compile_template(buf, start, end, flow)
        if template is not None:
            templates.setdefault(mlen, []).append(template)
    return True


def _errno(buf: bytes | bytearray, pos: int, mlen: int) -> int:
    """The error an NLMSG_ERROR message at `pos` carries; 0 for an acknowledgement or a message too short."""
    return -_ERRNO.unpack_from(buf, pos + NLMSG_HDRLEN)[0] if mlen >= NLMSG_HDRLEN + 4 else 0
