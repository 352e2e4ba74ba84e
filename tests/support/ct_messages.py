"""Conntrack entries as the kernel writes them in a dump: a recorded message of the right shape with the values
of a given Flow written into it, so that tests can feed the decoder (and its runs) any table they model."""

from __future__ import annotations

import functools
import struct

from khan.conntrack.decode import NLMSG_HDRLEN, Flow, ValueSlot, _classify, decode_entry
from tests.support.netlink_fixtures import message_offsets, recorded_buffers

_ENTRIES = recorded_buffers("lab_dump.bin")[0]
# The lab's recorded dump: ICMP, TCP over IPv6, UDP, TCP over IPv4, UDP replied (with counters: accounting on).
RECORDED = [
    _ENTRIES[start : start + ((struct.unpack_from("=I", _ENTRIES, start)[0] + 3) & ~3)]
    for start in message_offsets(_ENTRIES)
]
TCP4_MESSAGE = RECORDED[3]


def encoded(flow: Flow, like: bytes = TCP4_MESSAGE) -> bytes:
    """The message `like` (one recorded entry of the flow's family and protocol) carrying `flow`'s values."""
    shape, slots = _slots(like)
    if (flow.family, flow.proto) != (shape.family, shape.proto):
        raise ValueError(f"a message of {shape.family}/{shape.proto} cannot carry {flow}")
    message = bytearray(like)
    for slot in slots:
        struct.pack_into("!" + slot.code, message, NLMSG_HDRLEN + slot.offset, getattr(flow, slot.role))
    return bytes(message)


@functools.cache
def _slots(like: bytes) -> tuple[Flow, list[ValueSlot]]:
    """The recorded message's flow, and where each value lies; checked once: writing the values it holds back into
    it, and a flow of other values, must decode to those values."""
    length = struct.unpack_from("=I", like)[0]
    shape = decode_entry(like, NLMSG_HDRLEN, length)
    slots = _classify(like, NLMSG_HDRLEN, length, shape.proto).values
    probe = shape._replace(id=shape.id ^ 0x5A5A5A5A, orig_bytes=shape.orig_bytes + 7, reply_bytes=shape.reply_bytes + 9)
    message = bytearray(like)
    for slot in slots:
        struct.pack_into("!" + slot.code, message, NLMSG_HDRLEN + slot.offset, getattr(probe, slot.role))
    if decode_entry(message, NLMSG_HDRLEN, length) != probe:
        raise ValueError("the recorded message does not carry its values where its layout says")
    return shape, slots
