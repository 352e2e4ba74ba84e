"""The one netlink attribute walk: what it yields, and that no length makes it read outside its container."""

from __future__ import annotations

import struct

import pytest

from khan.conntrack.attributes import NLA_HDRLEN, MalformedAttribute, attributes

NLA_F_NESTED = 1 << 15


def attribute(kind: int, value: bytes, *, length: int | None = None) -> bytes:
    """One attribute with its padding; `length` overrides the header's length field."""
    header = struct.pack("=HH", NLA_HDRLEN + len(value) if length is None else length, kind)
    return (header + value).ljust((NLA_HDRLEN + len(value) + 3) & ~3, b"\0")


def test_yields_type_value_offset_and_length_stepping_over_padding() -> None:
    buf = b"head" + attribute(1, b"\x05") + attribute(2 | NLA_F_NESTED, b"abcdef") + attribute(3, b"")
    assert list(attributes(buf, 4, len(buf))) == [(1, 8, 1), (2, 16, 6), (3, 28, 0)]


def test_bytes_too_few_for_a_header_end_the_walk_quietly() -> None:
    buf = attribute(1, b"abcd") + b"\x01\x02\x03"
    assert list(attributes(buf, 0, len(buf))) == [(1, 4, 4)]


def test_the_walk_stays_inside_its_container() -> None:
    buf = attribute(1, b"abcd") + attribute(2, b"efgh")
    assert list(attributes(buf, 0, 8)) == [(1, 4, 4)]


@pytest.mark.parametrize("length", [0, 1, 3], ids=["zero", "one", "below-header"])
def test_a_length_below_the_header_raises_after_what_came_before(length: int) -> None:
    buf = attribute(1, b"abcd") + attribute(2, b"efgh", length=length)
    walk = attributes(buf, 0, len(buf))
    assert next(walk) == (1, 4, 4)
    with pytest.raises(MalformedAttribute):
        next(walk)


def test_a_length_past_the_container_raises() -> None:
    buf = attribute(1, b"abcd", length=12) + b"\0" * 8
    with pytest.raises(MalformedAttribute):
        list(attributes(buf, 0, 8))
