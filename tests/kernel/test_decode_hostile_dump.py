"""Hostile bytes in a real dump, from a private namespace's table, broken on their way to the decoder: an entry
whose attribute lies is skipped and counted in khan_entries_malformed_total, the rest of the dump counts; a dump
whose end the decoder cannot see (its NLMSG_DONE behind a message header that lies) fails within the receive
timeout instead of waiting for ever (the poll thread would hang on recv(), and the agent never poll again)."""

from __future__ import annotations

import errno
import struct
import time
from pathlib import Path

import pytest

from khan.conntrack import netlink
from khan.conntrack.decode import CT_ENTRY_TYPE, NLMSG_DONE, ChunkResult, Flow, TakeRun, Template, decode_chunk
from khan.conntrack.namespace import entered
from khan.conntrack.netlink import ConntrackError, DumpStats, dump_flows
from khan.demo.namespaces import private_prefix
from khan.settings import Settings
from khan.snapshot_command import run_snapshot
from tests.support.exposition import samples, value
from tests.support.netlink_fixtures import message_offsets
from tests.support.table_fill import fill_udp_flows, table_namespace

FLOWS = 40
TIMEOUT_SECONDS = 0.3


def done_hidden(
    buf: bytearray,
    length: int,
    flows: list[Flow],
    templates: dict[int, list[Template]] | None = None,
    destroyed: list[Flow] | None = None,
    take_run: TakeRun | None = None,
) -> ChunkResult:
    """decode_chunk, after the NLMSG_DONE's length is made to claim more than the buffer holds."""
    for pos in message_offsets(bytes(buf[:length])):
        if struct.unpack_from("=H", buf, pos + 4)[0] == NLMSG_DONE:
            struct.pack_into("=I", buf, pos, 0xFFFF)
    return decode_chunk(buf, length, flows, templates, destroyed, take_run)


class OneEntryBroken:
    """decode_chunk, after the first entry of the dump gets a zero-length first attribute."""

    def __init__(self) -> None:
        self.broken = False

    def __call__(
        self,
        buf: bytearray,
        length: int,
        flows: list[Flow],
        templates: dict[int, list[Template]] | None = None,
        destroyed: list[Flow] | None = None,
        take_run: TakeRun | None = None,
    ) -> ChunkResult:
        if not self.broken and length >= 24 and struct.unpack_from("=H", buf, 4)[0] == CT_ENTRY_TYPE:
            struct.pack_into("=H", buf, 20, 0)
            self.broken = True
        return decode_chunk(buf, length, flows, templates, destroyed, take_run)


def test_the_snapshot_counts_a_broken_entry_as_malformed_and_every_other_one(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    monkeypatch.setattr(netlink, "decode_chunk", OneEntryBroken())
    empty = tmp_path / "inventory.yaml"
    empty.write_text("apiVersion: v1\nitems: []\n")
    with table_namespace(f"{private_prefix('khanbroken')}-t") as netns:
        fill_udp_flows(netns, FLOWS)
        run_snapshot(Settings(inventory=str(empty), node_name="n", netns=netns))
    out, err = capsysbinary.readouterr()
    # structlog, not configured in this process, prints its lines there too
    exposition = "".join(line for line in out.decode().splitlines(True) if line.startswith(("#", "khan_")))
    assert value(exposition, "khan_entries_malformed_total") == 1
    assert sum(samples(exposition, "khan_connection").values()) == FLOWS - 1
    assert b"Traceback" not in err


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
