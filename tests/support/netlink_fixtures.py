"""Netlink bytes recorded from real dumps (tests/fixtures/netlink/*.bin, written by record.py there)."""

from __future__ import annotations

import struct

from tests.support import paths

FIXTURES = paths.FIXTURES / "netlink"


def recorded_buffers(name: str) -> list[bytes]:
    """Each buffer one recv() returned, in order."""
    data = (FIXTURES / name).read_bytes()
    buffers, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        buffers.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return buffers


def message_offsets(buf: bytes) -> list[int]:
    """Where each netlink message in `buf` starts."""
    offsets, pos = [], 0
    while pos + 16 <= len(buf):
        offsets.append(pos)
        pos += (struct.unpack_from("=I", buf, pos)[0] + 3) & ~3
    return offsets


def hex_buffers(name: str) -> list[bytes]:
    """Buffers kept as text (tests/fixtures/netlink/*.hex): one buffer a line in hex; # starts a comment line."""
    lines = (FIXTURES / name).read_text().splitlines()
    return [bytes.fromhex(line) for line in lines if line.strip() and not line.startswith("#")]
