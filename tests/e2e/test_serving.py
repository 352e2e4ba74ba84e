"""The real agent's HTTP server under the load and the hostile clients of issue 12: scrapers of 10,000 series
never starve /healthz, idle sockets under a 1,024 file limit starve nothing, garbage bytes are at most one JSON
log line, and the answers are negotiated, compressed and capped."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import resource
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from khan.demo.namespaces import private_prefix
from khan.web.routes import MAX_FLOWS_LIMIT
from tests.e2e.test_agent_http import get
from tests.support.exposition import value
from tests.support.serving_load import (
    SERIES,
    Agent,
    agent,
    fill_distinct_series,
    open_idle_connections,
    percentile,
    probe,
    scrapers,
    time_probes,
    wait_for_series,
)
from tests.support.table_fill import table_namespace

SCRAPERS = 8
FLOWS_CLIENTS = 16
HOSTILE_HEADER_TIMEOUT = "2"


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with table_namespace(private_prefix("khansrv")) as name:
        yield name


@pytest.fixture(scope="module")
def loaded(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """The agent at defaults; the table filled after it started, so that the opened-connections counters of
    every series are served too."""
    with agent(netns, tmp_path_factory.mktemp("loaded"), ["--enable-accounting"]) as running:
        fill_distinct_series(netns)
        wait_for_series(running, SERIES)
        yield running


@pytest.fixture(scope="module")
def strict(netns: str, loaded: Agent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """Two answers in flight at most and a 2 s header deadline, on the same table."""
    extra = ["--web-max-requests", "2", "--web-header-timeout", HOSTILE_HEADER_TIMEOUT]
    with agent(netns, tmp_path_factory.mktemp("strict"), extra) as running:
        wait_for_series(running, SERIES)
        yield running


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def head(answer: bytes) -> list[bytes]:
    return answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def assert_json_lines(lines: list[str]) -> None:
    for line in lines:
        json.loads(line)  # raises on anything but one JSON object a line


def test_probes_stay_fast_under_eight_scrapers(loaded: Agent) -> None:
    with scrapers(loaded.port, SCRAPERS, seconds=8) as scrapes:
        time.sleep(1)  # every scraper going
        probes = time_probes(loaded.port, seconds=6)
    assert len(scrapes) >= SCRAPERS, "the scrapers did not scrape"
    assert all(scrape.status == 200 for scrape in scrapes)
    # Rendering on every request (the old way) took ~0.3-0.6 s of the event loop per scrape: every probe then
    # waited over 1 s behind eight scrapes (the kubelet's timeout). Now the worst is up to ~0.6 s on a busy
    # 2-core machine (eight scrapers pulling 7.5 MB each back to back, 1 GB/s, while a rendering holds the
    # interpreter lock), and most answer within tens of ms; the bounds leave room for that.
    assert max(probes) < 0.9, sorted(probes)[-5:]
    assert percentile(probes, 0.9) < 0.25, sorted(probes)[-10:]
    assert statistics.median(probes) < 0.1, statistics.median(probes)


def test_probes_stay_fast_under_flows_at_the_largest_limit(loaded: Agent) -> None:
    """/flows?limit=10000 is 1.6 MB of JSON: encoded on the event loop per request (~22 ms each), 80 clients
    made the probe wait 3.3 s (p90); now it is encoded once per poll, and a request is a slice of bytes."""
    with scrapers(loaded.port, FLOWS_CLIENTS, seconds=8, path=f"/flows?limit={MAX_FLOWS_LIMIT}") as fetched:
        time.sleep(1)  # every client going
        probes = time_probes(loaded.port, seconds=6)
    answered = [one for one in fetched if one.status == 200]
    assert len(answered) >= FLOWS_CLIENTS, "the clients did not fetch"
    assert max(one.size for one in answered) > 1_000_000, "fewer flows than the largest limit shows"
    print(f"{len(fetched)} fetches, probes max {max(probes):.3f} s, p90 {percentile(probes, 0.9):.3f} s")
    # Before: 16 clients, ~210 fetches in 8 s, probes p90 and max ~0.7 s. Now ~4,000 fetches, probes max 0.15-0.3 s
    # (the clients' processes share the machine's two cores with the agent and the probe).
    assert max(probes) < 0.6, sorted(probes)[-5:]
    assert percentile(probes, 0.9) < 0.25, sorted(probes)[-10:]


def test_gzip_is_the_plain_body_compressed(loaded: Agent) -> None:
    for _ in range(5):  # a poll between two requests changes the body: ask again
        plain = raw_exchange(loaded.port, b"GET /metrics HTTP/1.0\r\n\r\n")
        zipped = raw_exchange(loaded.port, b"GET /metrics HTTP/1.0\r\nAccept-Encoding: deflate, gzip\r\n\r\n")
        if gzip.decompress(zipped.split(b"\r\n\r\n", 1)[1]) == plain.split(b"\r\n\r\n", 1)[1]:
            break
    else:
        raise AssertionError("the gzipped body never matched the plain one")
    assert b"Content-Encoding: gzip" in head(zipped)
    assert b"Content-Encoding: gzip" not in head(plain)
    assert len(zipped) * 10 < len(plain)


def test_openmetrics_is_negotiated_from_accept(loaded: Agent) -> None:
    prometheus_accept = (
        b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
        b"text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    answer = raw_exchange(loaded.port, b"GET /metrics HTTP/1.0\r\nAccept: " + prometheus_accept + b"\r\n\r\n")
    assert b"Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8" in head(answer)
    assert answer.endswith(b"# EOF\n")
    plain = raw_exchange(loaded.port, b"GET /metrics HTTP/1.0\r\nAccept: text/plain\r\n\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head(plain)
    assert not plain.endswith(b"# EOF\n")


def test_head_is_headers_alone_and_the_connection_goes_on(loaded: Agent) -> None:
    answer = raw_exchange(
        loaded.port,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    first, second = answer.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200")
    assert int(dict(line.split(b": ", 1) for line in first.split(b"\r\n")[1:])[b"Content-Length"]) > 1_000_000
    assert second.startswith(b"HTTP/1.1 200"), second[:100]  # not the body of the HEAD
    assert second.endswith(b"\r\n\r\nok\n")


def test_flows_limit_of_thousands_of_digits_is_a_400(loaded: Agent) -> None:
    status, body = get(loaded.base + "/flows?limit=" + "9" * 5000)
    assert status == 400
    assert "limit must be a whole number" in body
    assert len(body) < 200  # the client's digits are not echoed back in full


def test_the_server_header_names_no_versions(loaded: Agent) -> None:
    """The app's answers and aiohttp's own (a 400 to bytes that are not HTTP) alike."""
    for request in (b"GET /healthz HTTP/1.0\r\n\r\n", b"GET /nowhere HTTP/1.0\r\n\r\n", b"\x16\x03\x01garbage\r\n\r\n"):
        answer = raw_exchange(loaded.port, request)
        assert answer.startswith(b"HTTP/1."), answer[:100]
        servers = [line for line in head(answer) if line.lower().startswith(b"server:")]
        assert servers == [b"Server: khan"], head(answer)


def test_requests_beyond_the_cap_get_503_and_probes_do_not(strict: Agent) -> None:
    stalled = []
    try:
        for _ in range(2):  # two scrapers that read nothing: their answers stay in flight
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", strict.port))
            # Pipelined: whatever the kernel's buffers hold of the first answers, a later one is left waiting.
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 8)
            stalled.append(sock)
        time.sleep(0.5)
        started = time.perf_counter()
        status, body = get(strict.base + "/metrics")
        assert status == 503, body[:200]
        assert time.perf_counter() - started < 0.5  # at once, not after a queue
        assert get(strict.base + "/healthz")[0] == 200
        assert get(strict.base + "/readyz")[0] == 200
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + 5
    while get(strict.base + "/metrics")[0] != 200:  # the slots come back when the stalled clients go
        assert time.monotonic() < deadline, "the in-flight slots were not given back"
        time.sleep(0.1)


def garbage(port: int) -> bool:
    answer = raw_exchange(port, os.urandom(64) + b"\r\n\r\n")
    return answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")) or answer == b""


def oversized_header(port: int) -> bool:
    answer = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    return answer.startswith((b"HTTP/1.0 4", b"HTTP/1.1 4"))


def tls_client_hello(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            context.wrap_socket(sock, server_hostname="khan")
        except (ssl.SSLError, OSError):
            return True
    return False


def slowloris(port: int) -> bool:
    """A header line a second, never the end of the headers: cut off soon after the header deadline."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(10):
                time.sleep(1)
                sock.sendall(f"X-Slow-{i}: y\r\n".encode())
                sock.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    if sock.recv(1) == b"":
                        break
            else:
                return False
        except OSError:
            pass
        return time.monotonic() - started < float(HOSTILE_HEADER_TIMEOUT) + 3


@pytest.mark.parametrize("client", [garbage, oversized_header, tls_client_hello, slowloris])
def test_a_hostile_client_is_one_json_line_at_most(strict: Agent, client: Callable[[int], bool]) -> None:
    before = len(strict.lines())
    assert client(strict.port), "the server neither answered nor cut the client off"
    time.sleep(0.3)  # whatever the server logs about it is out
    added = strict.lines()[before:]
    assert len(added) <= 1, added
    assert probe(strict.port) < 0.5, "the server stopped answering"
    lines = strict.lines()
    assert_json_lines(lines)
    assert not any("Traceback" in line for line in lines)


@pytest.mark.usefixtures("loaded")  # the table full
def test_idle_connections_beyond_a_1024_file_limit_starve_nothing(netns: str, tmp_path: Path) -> None:
    def low_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))  # soft = hard: raising cannot help

    idle: list[socket.socket] = []
    extra = ["--web-header-timeout", "60"]  # the connection cap, not the deadline, has to save the agent
    with agent(netns, tmp_path, extra, preexec_fn=low_file_limit) as running:
        wait_for_series(running, SERIES)
        polls_before = value(get(running.base + "/metrics")[1], "khan_polls_total")
        errors_before = value(get(running.base + "/metrics")[1], "khan_poll_errors_total")
        try:
            idle = open_idle_connections(running.port, 1100)
            assert probe(running.port) < 0.5
            deadline = time.monotonic() + 10
            while True:  # polls go on, and succeed
                status, text = get(running.base + "/metrics")
                assert status == 200
                if value(text, "khan_polls_total") >= polls_before + 2:
                    break
                assert time.monotonic() < deadline, running.tail()
                time.sleep(0.3)
            assert value(text, "khan_poll_errors_total") == errors_before
            assert get(running.base + "/readyz")[0] == 200
        finally:
            for sock in idle:
                sock.close()
        lines = running.lines()
        assert_json_lines(lines)
        assert len(lines) < 30, running.tail()
        assert sum(len(line) for line in lines) < 20_000
        assert any('"file_limit"' in line for line in lines)


def test_running_out_of_descriptors_on_accept_is_one_line(netns: str, tmp_path: Path) -> None:
    """A file limit too small for the connection cap's reserve (64): accepting fails with EMFILE while the
    connections last, which is said once, and the agent serves again as soon as they go."""

    def tiny_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    idle: list[socket.socket] = []
    with agent(netns, tmp_path, ["--web-header-timeout", "60"], preexec_fn=tiny_file_limit) as running:
        try:
            for _ in range(200):
                try:
                    idle.append(socket.create_connection(("127.0.0.1", running.port), timeout=0.5))
                except OSError:  # the backlog is full while accepting is paused
                    break
            time.sleep(2)
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 5
        while probe(running.port) >= 0.5:
            assert time.monotonic() < deadline, running.tail()
        lines = running.lines()
        assert_json_lines(lines)
        exhausted = [line for line in lines if '"file_descriptors_exhausted"' in line]
        assert len(exhausted) == 1, running.tail()
        assert len(lines) < 20, running.tail()
