"""A dump whose end the decoder cannot see (its NLMSG_DONE behind a message header that lies) must not wait for
ever: the poll thread would hang on recv() and the agent would never poll again. The kernel's bytes are real,
from a private namespace's table; only the header of its NLMSG_DONE is broken on its way to the decoder."""

from __future__ import annotations

import errno
import struct
import time

import pytest

from khan.conntrack import netlink
from khan.conntrack.decode import NLMSG_DONE, ChunkResult, Flow, Template, decode_chunk
from khan.conntrack.namespace import entered
from khan.conntrack.netlink import ConntrackError, DumpStats, dump_flows
from khan.lab import fill_udp_flows, private_prefix, table_namespace
from tests.netlink_fixtures import message_offsets

FLOWS = 40
TIMEOUT_SECONDS = 0.3


def done_hidden(
    buf: bytearray,
    length: int,
    flows: list[Flow],
    templates: dict[int, list[Template]] | None = None,
    destroyed: list[Flow] | None = None,
) -> ChunkResult:
    """decode_chunk, after the NLMSG_DONE's length is made to claim more than the buffer holds."""
    for pos in message_offsets(bytes(buf[:length])):
        if struct.unpack_from("=H", buf, pos + 4)[0] == NLMSG_DONE:
            struct.pack_into("=I", buf, pos, 0xFFFF)
    return decode_chunk(buf, length, flows, templates, destroyed)


@pytest.mark.root
def test_a_dump_whose_end_is_hidden_behind_a_broken_header_fails_within_the_receive_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netlink, "RECEIVE_TIMEOUT_SECONDS", TIMEOUT_SECONDS)
    monkeypatch.setattr(netlink, "decode_chunk", done_hidden)
    stats = DumpStats()
    with table_namespace(f"{private_prefix('khanlostend')}-t") as netns:
        fill_udp_flows(netns, FLOWS)
        with entered(netns):
            started = time.monotonic()
            with pytest.raises(ConntrackError) as failed:
                for _ in dump_flows(stats):
                    pass
            waited = time.monotonic() - started
    assert failed.value.errno == errno.ETIMEDOUT
    assert "0.3 s" in str(failed.value.strerror)
    assert TIMEOUT_SECONDS <= waited < 5
    assert (stats.entries, stats.malformed) == (FLOWS, 1)
