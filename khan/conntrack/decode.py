"""Pure decoding: the bytes of a ctnetlink dump -> `Flow` records.

This is the per-entry hot loop. pyroute2's generic decoder costs ~190 us an entry on a full table; this costs
about 2 us. The kernel writes every entry of one kind (family, protocol, accounting on or off) with the same
attribute layout, so the first entry of each shape is walked attribute by attribute (`decode_entry`) and compiled
into a template: one struct that reads the whole message at once and checks every attribute header. Every later
entry of that shape costs one unpack, one comparison and one tuple; anything else falls back to the walk.

No byte is trusted: every walk, over messages or attributes, stops at a length below its header or past its
container and steps forward by 4 bytes or more, so no input can stall it; a bad entry is counted as malformed
(tests/unit/test_decode_fuzz.py feeds it mutations of recorded dumps).

Layout reference: include/uapi/linux/netfilter/nfnetlink_conntrack.h and ctnetlink_fill_info() in the kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any, NamedTuple

# Netlink framing (include/uapi/linux/netlink.h).
NLMSG_HDRLEN = 16
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

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


class ChunkResult(NamedTuple):
    """What one received buffer held besides entries."""

    malformed: int  # entries skipped because their bytes did not parse
    other: int  # messages that were neither entries nor framing (counted, ignored)
    done: bool  # NLMSG_DONE seen: the dump is complete
    interrupted: bool  # NLM_F_DUMP_INTR seen: the table changed under the dump, retry it
    error: int  # errno from an NLMSG_ERROR, 0 if none


class MalformedEntry(ValueError):
    """An entry's attributes overran their container or lacked the original tuple."""


_MSGHDR = struct.Struct("=IHH")
_NLA = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")


def _decode_tuple(buf: bytes | bytearray, off: int, end: int) -> tuple[bytes, bytes, int, int, int]:
    """A CTA_TUPLE_* body -> (src, dst, proto, sport, dport)."""
    src = dst = b""
    proto = sport = dport = 0
    unpack_nla = _NLA.unpack_from
    while off + 4 <= end:
        alen, atype = unpack_nla(buf, off)
        if alen < 4 or off + alen > end:
            raise MalformedEntry("tuple attribute overruns its tuple")
        atype &= NLA_TYPE_MASK
        inner, inner_end = off + 4, off + alen
        while inner + 4 <= inner_end:
            blen, btype = unpack_nla(buf, inner)
            if blen < 4 or inner + blen > inner_end:
                raise MalformedEntry("tuple member overruns its nest")
            btype &= NLA_TYPE_MASK
            value = inner + 4
            if atype == CTA_TUPLE_IP:
                if btype in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = bytes(buf[value : inner + blen])
                elif btype in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = bytes(buf[value : inner + blen])
            elif atype == CTA_TUPLE_PROTO:
                if btype == CTA_PROTO_NUM and blen >= 5:
                    proto = buf[value]
                elif btype == CTA_PROTO_SRC_PORT and blen >= 6:
                    sport = _BE16.unpack_from(buf, value)[0]
                elif btype == CTA_PROTO_DST_PORT and blen >= 6:
                    dport = _BE16.unpack_from(buf, value)[0]
            inner += (blen + 3) & ~3
        off += (alen + 3) & ~3
    if len(src) not in (4, 16) or len(dst) != len(src):
        raise MalformedEntry("tuple without a source and destination address of one family")
    return src, dst, proto, sport, dport


def _decode_nested_u8(buf: bytes | bytearray, off: int, end: int, outer: int, inner: int) -> int:
    """The u8 at nest `outer` -> attribute `inner` (CTA_PROTOINFO -> TCP -> STATE), the first if repeated;
    NO_TCP_STATE if absent. Every header of both levels is checked, also past the value: the template compiler
    walks them all, and must only ever meet headers that passed here."""
    found = NO_TCP_STATE
    unpack_nla = _NLA.unpack_from
    while off + 4 <= end:
        alen, atype = unpack_nla(buf, off)
        if alen < 4 or off + alen > end:
            raise MalformedEntry("nested attribute overruns its nest")
        if atype & NLA_TYPE_MASK == outer:
            pos, stop = off + 4, off + alen
            while pos + 4 <= stop:
                blen, btype = unpack_nla(buf, pos)
                if blen < 4 or pos + blen > stop:
                    raise MalformedEntry("nested attribute overruns its nest")
                if btype & NLA_TYPE_MASK == inner and blen >= 5 and found == NO_TCP_STATE:
                    found = buf[pos + 4]
                pos += (blen + 3) & ~3
        off += (alen + 3) & ~3
    return found


def _decode_counters(buf: bytes | bytearray, off: int, end: int) -> tuple[int, int]:
    packets = octets = 0
    unpack_nla = _NLA.unpack_from
    while off + 4 <= end:
        alen, atype = unpack_nla(buf, off)
        if alen < 4 or off + alen > end:
            raise MalformedEntry("counter overruns its nest")
        atype &= NLA_TYPE_MASK
        if alen >= 12:
            if atype == CTA_COUNTERS_PACKETS:
                packets = _BE64.unpack_from(buf, off + 4)[0]
            elif atype == CTA_COUNTERS_BYTES:
                octets = _BE64.unpack_from(buf, off + 4)[0]
        off += (alen + 3) & ~3
    return packets, octets


def decode_entry(buf: bytes | bytearray, start: int, end: int) -> Flow:
    """One conntrack message's body (after nlmsghdr) -> Flow. Raises MalformedEntry on bad bytes."""
    if end - start < NFGENMSG_LEN:
        raise MalformedEntry("message shorter than its nfgenmsg")
    family = buf[start]
    off = start + NFGENMSG_LEN
    orig = reply = None
    status = mark = ct_id = zone = 0
    tcp_state = NO_TCP_STATE
    orig_packets = orig_bytes = reply_packets = reply_bytes = 0
    unpack_nla = _NLA.unpack_from
    unpack_be32 = _BE32.unpack_from
    while off + 4 <= end:
        alen, atype = unpack_nla(buf, off)
        stop = off + alen
        if alen < 4 or stop > end:
            raise MalformedEntry("attribute overruns its message")
        atype &= NLA_TYPE_MASK
        if atype == CTA_TUPLE_ORIG:
            orig = _decode_tuple(buf, off + 4, stop)
        elif atype == CTA_TUPLE_REPLY:
            reply = _decode_tuple(buf, off + 4, stop)
        elif atype == CTA_STATUS and alen >= 8:
            status = unpack_be32(buf, off + 4)[0]
        elif atype == CTA_PROTOINFO:
            tcp_state = _decode_nested_u8(buf, off + 4, stop, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE)
        elif atype == CTA_ID and alen >= 8:
            ct_id = unpack_be32(buf, off + 4)[0]
        elif atype == CTA_MARK and alen >= 8:
            mark = unpack_be32(buf, off + 4)[0]
        elif atype == CTA_COUNTERS_ORIG:
            orig_packets, orig_bytes = _decode_counters(buf, off + 4, stop)
        elif atype == CTA_COUNTERS_REPLY:
            reply_packets, reply_bytes = _decode_counters(buf, off + 4, stop)
        elif atype == CTA_ZONE and alen >= 6:
            zone = _BE16.unpack_from(buf, off + 4)[0]
        off += (alen + 3) & ~3
    if orig is None:
        raise MalformedEntry("entry without an original tuple")
    if reply is None:
        reply = (orig[1], orig[0], orig[2], orig[4], orig[3])
    if family not in (AF_INET, AF_INET6):
        family = AF_INET if len(orig[0]) == 4 else AF_INET6
    return Flow(
        family,
        orig[2],
        orig[0],
        orig[1],
        orig[3],
        orig[4],
        reply[0],
        reply[1],
        reply[3],
        reply[4],
        status,
        tcp_state if orig[2] == IPPROTO_TCP else NO_TCP_STATE,
        ct_id,
        zone,
        mark,
        orig_packets,
        orig_bytes,
        reply_packets,
        reply_bytes,
    )


class Template(NamedTuple):
    """A message shape seen before, compiled into one unpack: every header is checked, every wanted value read."""

    unpack: Callable[[bytes | bytearray, int], tuple[Any, ...]]  # the whole message in one call
    checked: itemgetter[tuple[Any, ...]]  # header and padding runs (and the protocol) that must match `expected`
    expected: tuple[Any, ...]
    flow_fields: itemgetter[tuple[object, ...]]  # (values + defaults) -> Flow's fields, in order
    defaults: tuple[object, ...]


MAX_TEMPLATES = 64  # distinct entry shapes remembered; a kernel emits a handful (family x protocol x accounting)

# Attributes whose payload the template reads: (nest path, attribute type) -> (struct code, Flow field).
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
}
_COUNTER_VALUES = {CTA_COUNTERS_PACKETS: "packets", CTA_COUNTERS_BYTES: "bytes"}
_CODE_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8, "4s": 4, "16s": 16}


def _compile_template(buf: bytes | bytearray, start: int, end: int, flow: Flow) -> Template | None:
    """Describe the message at buf[start:end] (already decoded into `flow`) as a reusable template.

    Every byte is classed as a value Flow needs, a byte that must match (attribute headers, the family, the
    padding after a value: runs of them are read as one bytes object each) or a byte that may vary (payloads
    khan ignores, such as timeouts). Returns None for shapes better left to decode_entry.
    """
    size = end - start
    check = [False] * size
    check[0] = check[1] = True  # nfgen family and version; res_id may vary
    value_slots: dict[int, tuple[str, str]] = {}  # offset -> (struct code, Flow field)
    unpack_nla = _NLA.unpack_from

    def members(pos: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(offset, length, type) of each attribute in buf[pos:stop], its header marked as checked. decode_entry
        has checked these headers already; one that lies anyway raises, never loops: each step is 4 bytes or more."""
        while pos + 4 <= stop:
            alen, atype = unpack_nla(buf, pos)
            if alen < 4 or pos + alen > stop:
                raise MalformedEntry("attribute overruns its nest")
            check[pos - start : pos - start + 4] = [True] * 4
            yield pos, alen, atype & NLA_TYPE_MASK
            pos += (alen + 3) & ~3

    def value(off: int, alen: int, code: str, role: str) -> None:
        width = _CODE_SIZES[code]
        if alen - 4 >= width:
            rel = off + 4 - start
            value_slots[rel] = (code, role)
            padded = min(off + ((alen + 3) & ~3) - start, size)
            check[rel + width : padded] = [True] * (padded - rel - width)

    try:
        for off, alen, atype in members(start + NFGENMSG_LEN, end):
            if atype in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
                prefix = "" if atype == CTA_TUPLE_ORIG else "reply_"
                for pos, nlen, ntype in members(off + 4, off + alen):
                    for inner, blen, btype in members(pos + 4, pos + nlen):
                        wanted = _TUPLE_VALUES.get((ntype, btype))
                        if wanted and not (prefix and wanted[1] == "proto"):
                            value(inner, blen, wanted[0], prefix + wanted[1])
            elif atype in _TOP_VALUES:
                value(off, alen, *_TOP_VALUES[atype])
            elif atype == CTA_PROTOINFO:
                for pos, nlen, ntype in members(off + 4, off + alen):
                    if ntype == CTA_PROTOINFO_TCP:
                        for inner, blen, btype in members(pos + 4, pos + nlen):
                            if btype == CTA_PROTOINFO_TCP_STATE and flow.proto == IPPROTO_TCP:
                                value(inner, blen, "B", "tcp_state")
            elif atype in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
                direction = "orig_" if atype == CTA_COUNTERS_ORIG else "reply_"
                for pos, nlen, ntype in members(off + 4, off + alen):
                    if ntype in _COUNTER_VALUES:
                        value(pos, nlen, "Q", direction + _COUNTER_VALUES[ntype])
    except MalformedEntry:
        return None

    # One struct over the whole message: values, runs of checked bytes ("Ns"), runs of ignored bytes ("Nx").
    fmt, checked, roles, index, position = ["!"], [], {}, 0, 0
    while position < size:
        if position in value_slots:
            code, role = value_slots[position]
            if role in roles:
                return None  # an attribute twice: decode_entry decides which one counts
            roles[role] = index
            if role == "proto":
                checked.append(index)  # one template per protocol keeps tcp_state's default right
            fmt.append(code)
            position += _CODE_SIZES[code]
            index += 1
            continue
        run = position
        kind = check[position]
        while run < size and check[run] == kind and run not in value_slots:
            run += 1
        if kind:
            fmt.append(f"{run - position}s")
            checked.append(index)
            index += 1
        else:
            fmt.append(f"{run - position}x")
        position = run
    if "src" not in roles or "dst" not in roles:
        return None
    if "reply_src" not in roles:  # decode_entry mirrors the original tuple
        for reply, orig in (
            ("reply_src", "dst"),
            ("reply_dst", "src"),
            ("reply_sport", "dport"),
            ("reply_dport", "sport"),
        ):
            if orig in roles:
                roles[reply] = roles[orig]
    layout = struct.Struct("".join(fmt))
    values = layout.unpack_from(buf, start)
    defaults = (flow.family, 0, b"", b"", 0, 0, b"", b"", 0, 0, 0, NO_TCP_STATE, 0, 0, 0, 0, 0, 0, 0)
    fields = itemgetter(*(roles.get(name, len(values) + i) for i, name in enumerate(Flow._fields)))
    template = Template(layout.unpack_from, itemgetter(*checked), tuple(values[i] for i in checked), fields, defaults)
    # The template must reproduce the generic decoder's answer exactly, or it is not used.
    if tuple.__new__(Flow, fields(values + defaults)) != flow:
        return None
    return template


def decode_chunk(
    buf: bytes | bytearray,
    length: int,
    flows: list[Flow],
    templates: dict[int, list[Template]] | None = None,
    destroyed: list[Flow] | None = None,
) -> ChunkResult:
    """Every netlink message in buf[:length]: entries are appended to `flows`, the rest is summarised.

    `templates` carries compiled message shapes from one buffer to the next (keyed by message length): an entry
    whose shape is known costs one unpack. A message whose header lies ends what can be trusted in this buffer:
    the rest counts as one malformed entry. A message whose attributes are broken is skipped and counted.
    With `destroyed` (an event socket), DESTROY messages are decoded into it; otherwise they count as `other`.
    """
    if templates is None:
        templates = {}
    malformed = other = error = 0
    done = interrupted = False
    keep_entry = flows.append
    events = destroyed is not None
    keep_destroyed = destroyed.append if destroyed is not None else keep_entry
    unpack_hdr = _MSGHDR.unpack_from
    shapes = templates.get
    new = tuple.__new__
    header_len, entry_type, intr_flag = NLMSG_HDRLEN, CT_ENTRY_TYPE, NLM_F_DUMP_INTR  # locals: this loop is hot
    pos = 0
    while pos + header_len <= length:
        mlen, mtype, mflags = unpack_hdr(buf, pos)
        end = pos + mlen
        if mlen < header_len or end > length:
            malformed += 1
            break
        if mflags & intr_flag:
            interrupted = True
        if mtype == entry_type or (mtype == CT_DELETE_TYPE and events):
            append = keep_entry if mtype == entry_type else keep_destroyed
            for unpack, checked, expected, flow_fields, defaults in shapes(mlen, ()):
                values = unpack(buf, pos + header_len)
                if checked(values) == expected:
                    append(new(Flow, flow_fields(values + defaults)))
                    break
            else:
                try:
                    flow = decode_entry(buf, pos + header_len, end)
                except (MalformedEntry, struct.error, IndexError):
                    malformed += 1
                else:
                    append(flow)
                    _remember(templates, mlen, buf, pos + header_len, end, flow)
        elif mtype == NLMSG_DONE:
            done = True
            break
        elif mtype == NLMSG_ERROR:
            if mlen >= NLMSG_HDRLEN + 4:
                error = -_ERRNO.unpack_from(buf, pos + NLMSG_HDRLEN)[0]
            done = True
            break
        elif mtype not in (NLMSG_NOOP, NLMSG_OVERRUN):
            other += 1
        pos += (mlen + 3) & ~3
    return ChunkResult(malformed, other, done, interrupted, error)


def _remember(
    templates: dict[int, list[Template]], mlen: int, buf: bytes | bytearray, start: int, end: int, flow: Flow
) -> None:
    if sum(map(len, templates.values())) >= MAX_TEMPLATES:
        return
    template = _compile_template(buf, start, end, flow)
    if template is not None:
        templates.setdefault(mlen, []).append(template)
