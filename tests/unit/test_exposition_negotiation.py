"""Pure: the exposition rendered once is the one prometheus-client would render per request, negotiated the way
its own handler negotiates; and a library's log record is one short JSON line, rate-limited."""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Sample

from khan import logs
from khan.metrics import exposition as exposition_module
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


@pytest.mark.parametrize("fork", [True, False], ids=["in-a-child", "here"])
def test_both_formats_are_what_prometheus_client_renders(registry: CollectorRegistry, fork: bool) -> None:
    exposition = render(registry, fork=fork)
    assert exposition.text.body == generate_latest(registry)
    assert exposition.openmetrics.body == openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    assert gzip.decompress(exposition.text.gzipped) == exposition.text.body
    assert gzip.decompress(exposition.openmetrics.gzipped) == exposition.openmetrics.body


def test_a_large_rendering_crosses_the_pipe_whole() -> None:
    registry = CollectorRegistry(auto_describe=False)
    gauge = Gauge("khan_example", "An example.", ["peer", "port"], registry=registry)
    for index in range(20_000):  # ~1.3 MB of text: many pipe buffers' worth
        gauge.labels(f"10.{index // 256 % 256}.{index % 256}.1", str(index)).set(index)
    assert render(registry, fork=True).text.body == render(registry, fork=False).text.body


def test_when_no_child_can_be_forked_the_agent_renders_itself(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")  # what fork says at a pid limit

    monkeypatch.setattr(exposition_module.os, "fork", no_fork)
    assert render(registry).text.body == generate_latest(registry)


def test_a_child_that_dies_leaves_no_zombie_and_the_agent_renders_itself(registry: CollectorRegistry) -> None:
    before = _children()
    exposition = render(registry, collected_already=[_ExitsInChild(os.getpid())])
    assert exposition.text.body.startswith(b"# HELP khan_example")
    assert _children() == before


class _ExitsInChild(Metric):
    """A family that renders normally in the process that made it, and kills any forked child that renders it."""

    def __init__(self, parent: int) -> None:
        super().__init__("khan_child_check", "Renders only in its own process.", "gauge")
        self._parent = parent
        self.add_sample("khan_child_check", {}, 1.0)

    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        if os.getpid() != self._parent:
            os._exit(3)
        return self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        self._samples = value


def _children() -> set[str]:
    return set(Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split())


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
