"""Tables at both ends of the scale, read by the real `khan snapshot`: empty, and 100,000 entries."""

from __future__ import annotations

import os

from tests.support.exposition import connections, khan, value
from tests.support.table_fill import FILL_DESTINATIONS, FILL_PORTS, FILL_SOURCES, fill_udp_flows, table_namespace


def test_empty_table_gives_no_series_and_zero_entries() -> None:
    with table_namespace(f"khanempty{os.getpid()}") as netns:
        done = khan(["snapshot", "--netns", netns, "--node-name", "n", "--log-level", "error"])
    assert done.returncode == 0, done.stderr
    assert connections(done.stdout, "n") == {}
    assert value(done.stdout, "khan_poll_entries") == 0
    assert value(done.stdout, "khan_conntrack_table_entries") == 0


def test_100000_entries_are_each_counted_once(tmp_path: object) -> None:
    destinations = FILL_DESTINATIONS[:25]
    ports = FILL_PORTS[:4]
    with table_namespace(f"khanfull{os.getpid()}") as netns:
        fill_udp_flows(netns, 100_000, destinations=destinations, ports=ports)
        done = khan(["snapshot", "--netns", netns, "--node-name", "n", "--log-level", "error"])
    assert done.returncode == 0, done.stderr
    found = connections(done.stdout, "n")
    # 1,000 client sockets, a quarter from each source; each sends once to each of 25 x 4 targets.
    expected = {
        ("external", src, "", "", "", "external", dst, "", "", "", str(port), "udp", "UNREPLIED"): 250
        for src in FILL_SOURCES
        for dst in destinations
        for port in ports
    }
    assert found == expected
    assert value(done.stdout, "khan_poll_entries") == 100_000
    assert value(done.stdout, "khan_conntrack_table_entries") == 100_000
