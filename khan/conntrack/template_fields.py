"""pure: where each value of a compiled template lies in its message, for the readers that check and read messages
of one shape without decode.py's per-message code (runs.py: runs of dump entries; event_shapes.py: one event per
read). A template's struct format reads its values in network order, between runs of skipped header bytes."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import NamedTuple

from khan.conntrack.decode import NLMSG_HDRLEN

_FIELD = re.compile(r"(\d*)([xsBHIQ])")
_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8}


class FieldSpan(NamedTuple):
    """One value of a template: where it lies in the message's body (after the netlink header), and how to read it."""

    offset: int
    size: int
    code: str  # its struct code: "B", "H", "I", "Q" or "<size>s"


def field_spans(fmt: str) -> list[FieldSpan] | None:
    """The span of each value a template's struct format reads, in order; None for a format that uses anything
    decode.py does not write."""
    if not fmt.startswith("!"):
        return None
    fields: list[FieldSpan] = []
    offset = 0
    for match in _FIELD.finditer(fmt, 1):
        count, code = int(match[1] or 1), match[2]
        if code == "x":
            offset += count
        elif code == "s":
            fields.append(FieldSpan(offset, count, f"{count}s"))
            offset += count
        elif match[1]:
            return None  # "2H": decode.py never writes repeat counts
        else:
            fields.append(FieldSpan(offset, _SIZES[code], code))
            offset += _SIZES[code]
    if sum(len(match[0]) for match in _FIELD.finditer(fmt, 1)) != len(fmt) - 1:
        return None
    return fields


def reader(spans: list[FieldSpan], indexes: Iterable[int], stride: int, *, as_bytes: bool) -> struct.Struct:
    """A struct over one whole message (`stride` bytes, netlink header included) that reads the values at `indexes`
    in the order they lie, as raw bytes or as numbers; everything else is skipped."""
    codes, at = ["!"], 0
    for index in sorted(indexes):
        offset, size, code = spans[index]
        codes.append(f"{NLMSG_HDRLEN + offset - at}x" if NLMSG_HDRLEN + offset > at else "")
        codes.append(f"{size}s" if as_bytes else code)
        at = NLMSG_HDRLEN + offset + size
    codes.append(f"{stride - at}x" if stride > at else "")
    return struct.Struct("".join(codes))
