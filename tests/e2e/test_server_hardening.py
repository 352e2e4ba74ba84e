"""The HTTP server's limits against what a reviewer found: TLS sockets that never say hello are counted and cut
like any other connection, and a scraper that stops reading cannot hold the agent's exit."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from khan.conntrack.namespace import entered
from khan.demo.namespaces import private_prefix
from tests.support.protected_agent import PORT, private_netns, running_agent
from tests.support.serving_load import SERIES, agent, fill_distinct_series, wait_for_series
from tests.support.table_fill import table_namespace

CAP = 32
SILENT_SOCKETS = 600
ACCEPT_BATCH = 128  # khan.web.server.BACKLOG: sockets accepted in one go, before the cap sees them


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with private_netns(private_prefix("khanhard") + "-ns") as name:
        yield name


def open_descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(netns: str) -> socket.socket:
    with entered(netns):
        return socket.create_connection(("127.0.0.1", PORT), timeout=5)


def test_a_silent_tls_socket_is_cut_at_the_handshake_deadline(netns: str, tmp_path: Path) -> None:
    with running_agent(netns, tmp_path, ["--tls-self-signed", "--web-header-timeout", "2"]) as agent:
        agent.wait_ready()
        with connect(netns) as silent:
            started = time.monotonic()
            silent.settimeout(6)
            assert silent.recv(1) == b""
            assert time.monotonic() - started < 3.5  # the header deadline, 2 s here, bounds the handshake too


def test_silent_tls_sockets_are_counted_by_the_connection_cap(netns: str, tmp_path: Path) -> None:
    extra = ["--tls-self-signed", "--web-max-connections", str(CAP), "--web-header-timeout", "60"]
    with running_agent(netns, tmp_path, extra) as agent:
        agent.wait_ready()
        pid = agent.process.pid  # `ip netns exec` execs the agent
        descriptors_before, rss_before = open_descriptors(pid), rss_bytes(pid)
        most_descriptors, most_rss = descriptors_before, rss_before
        silent: list[socket.socket] = []
        try:
            for _ in range(SILENT_SOCKETS):  # none says hello: every one stays in its handshake
                silent.append(connect(netns))
                if len(silent) % 50 == 0:
                    most_descriptors = max(most_descriptors, open_descriptors(pid))
            for _ in range(10):
                time.sleep(0.1)
                most_descriptors = max(most_descriptors, open_descriptors(pid))
                most_rss = max(most_rss, rss_bytes(pid))
            settled = open_descriptors(pid)
            started = time.monotonic()
            assert agent.status("/healthz") == 200  # over TLS, evicting the longest idle
            assert time.monotonic() - started < 1.0
        finally:
            for sock in silent:
                sock.close()
        print(f"descriptors {descriptors_before} -> {most_descriptors} at most, {settled} settled;", end=" ")
        print(f"RSS {rss_before >> 20} -> {most_rss >> 20} MiB")
        assert settled <= descriptors_before + CAP + 4, settled
        # Transiently, up to two accept batches wait for the cap's verdict.
        assert most_descriptors <= descriptors_before + CAP + 2 * ACCEPT_BATCH, most_descriptors
        assert most_rss - rss_before < 48 << 20, (rss_before, most_rss)
        assert agent.process.poll() is None
        text = agent.log_path.read_text()
        assert "Traceback" not in text
        assert len(text.splitlines()) < 20, text[-3000:]  # evictions are one rate-limited line


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
