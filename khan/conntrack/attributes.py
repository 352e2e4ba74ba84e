"""The one walk over netlink attributes (struct nlattr, include/uapi/linux/netlink.h), for the entry decoder and
the table statistics alike.

No length is trusted: the walk stops with MalformedAttribute at a length below the 4-byte header or past the
container, and every step moves 4 bytes or more, so no input can stall it or read outside [start, end).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

NLA_HDRLEN = 4
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

_NLA = struct.Struct("=HH")


class MalformedAttribute(ValueError):
    """An attribute's length is below its header or runs past its container."""


def attributes(buf: bytes | bytearray | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, value offset, value length) of each attribute in buf[start:end], in order; the type without its
    flags. Raises MalformedAttribute at the first attribute whose length lies (those before it were yielded).
    The header of an attribute lies NLA_HDRLEN bytes before its value."""
    unpack_header = _NLA.unpack_from
    while start + 4 <= end:  # literals rather than NLA_HDRLEN and NLA_TYPE_MASK: this loop is hot
        length, kind = unpack_header(buf, start)
        if length < 4 or start + length > end:
            raise MalformedAttribute(f"attribute of length {length} at offset {start} overruns its container")
        yield kind & 0x3FFF, start + 4, length - 4
        start += (length + 3) & ~3
