"""Pure: the exposition rendered once is the one prometheus-client would render per request, negotiated the way
its own handler negotiates; and a library's log record is one short JSON line, rate-limited."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from khan import logs
from khan.metrics.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, choose, render

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    gauge = Gauge("khan_example", "An example.", ["peer"], registry=registry)
    for index in range(50):
        gauge.labels(f"10.0.0.{index}").set(index)
    Counter("khan_example_events", "Examples counted.", registry=registry).inc(3)
    return registry


def test_both_formats_are_what_prometheus_client_renders(registry: CollectorRegistry) -> None:
    exposition = render(registry)
    assert exposition.text.body == generate_latest(registry)
    assert exposition.openmetrics.body == openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    assert gzip.decompress(exposition.text.gzipped) == exposition.text.body
    assert gzip.decompress(exposition.openmetrics.gzipped) == exposition.openmetrics.body


@pytest.mark.parametrize(
    ("accept", "encoding", "content_type", "gzipped"),
    [
        ("", "", TEXT_CONTENT_TYPE, False),
        ("text/plain", "gzip, deflate", TEXT_CONTENT_TYPE, True),
        (PROMETHEUS_ACCEPT, "gzip", OPENMETRICS_CONTENT_TYPE, True),
        ("application/openmetrics-text", "identity", OPENMETRICS_CONTENT_TYPE, False),
        ("*/*", "br", TEXT_CONTENT_TYPE, False),
    ],
)
def test_negotiation(registry: CollectorRegistry, accept: str, encoding: str, content_type: str, gzipped: bool) -> None:
    exposition = render(registry)
    chosen = choose(exposition, accept, encoding)
    assert (chosen.content_type, chosen.gzipped) == (content_type, gzipped)
    rendering = exposition.openmetrics if content_type == OPENMETRICS_CONTENT_TYPE else exposition.text
    assert chosen.body == (rendering.gzipped if gzipped else rendering.body)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


@pytest.mark.usefixtures("restored_logging")
def test_a_library_traceback_is_one_short_json_line_once_a_minute(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "info")  # here, not in a fixture: capsys's stderr of the test's own phase
    server = logging.getLogger("aiohttp.server")
    for _ in range(100):
        try:
            raise ValueError("bad\nrequest " + "x" * 1000)
        except ValueError:
            server.exception("Error handling request from %s", "127.0.0.1")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["event"] == "aiohttp_server"
    assert line["level"] == "error"
    assert line["message"] == "Error handling request from 127.0.0.1"
    assert line["error"].startswith("ValueError: bad request xxx")
    assert len(line["error"]) < 250
    assert "Traceback" not in lines[0]
