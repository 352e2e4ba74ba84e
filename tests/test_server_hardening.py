"""The HTTP server's limits against what a reviewer found: a scraper that stops reading cannot hold the agent's
exit."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from khan.lab import private_prefix, table_namespace
from tests.serving_load import SERIES, agent, fill_distinct_series, wait_for_series

pytestmark = pytest.mark.root


def test_sigterm_with_a_scraper_that_never_reads_exits_cleanly(tmp_path: Path) -> None:
    """10,000 series (2.5 MB of /metrics) asked for four times on one connection: the answers cannot fit the
    socket buffers, so one stays under way. Before the fix the exit deadline fired (exit 1 after 4.5 s)."""
    with table_namespace(private_prefix("khanstop")) as table:
        fill_distinct_series(table)
        with agent(table, tmp_path) as running:
            wait_for_series(running, SERIES)
            with socket.socket() as stuck:
                stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                stuck.connect(("127.0.0.1", running.port))
                stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 4)  # and never reads
                time.sleep(0.5)
                started = time.monotonic()
                running.process.send_signal(signal.SIGTERM)
                status = running.process.wait(timeout=10)
                took = time.monotonic() - started
            print(f"exit {status} in {took:.2f} s")
            assert status == 0, running.tail()
            assert took < 3.0
            events = [json.loads(line).get("event") for line in running.lines() if line.startswith("{")]
            assert "agent_stopped" in events
            assert "shutdown_abandoned" not in events
