"""What /metrics serves: the registry rendered once per poll into bytes, in both exposition formats, each also
gzip-compressed once. A request only picks one of the four (negotiated as prometheus-client's own handler does),
so a scrape costs no rendering and no compression, whatever the number of series or of scrapers."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST
# Level 6 (zlib's default) compresses the text ~20x in a fraction of the time level 9 takes; done once per poll.
GZIP_LEVEL = 6


@dataclass(frozen=True, slots=True)
class Rendering:
    body: bytes
    gzipped: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Exposition:
    text: Rendering
    openmetrics: Rendering
    rendered_at: float  # unix time: the process_* and python_* samples are as of this moment


@dataclass(frozen=True, slots=True)
class Chosen:
    body: bytes
    content_type: str
    gzipped: bool


class _Collected:
    """The families one collect() produced, handed to both renderers: the collectors run once, not twice."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(registry: Collector, collected_already: Iterable[Metric] = ()) -> Exposition:
    """Every collector once, then both formats and their gzip. CPU-heavy at 10,000 series: run it off the
    event loop. `collected_already`: families collected by the caller (those whose sources only the event loop
    may read), served after the registry's."""
    collected = _Collected([*registry.collect(), *collected_already])
    text = generate_latest(collected)  # any object with collect() will do
    om: bytes = openmetrics.generate_latest(collected)  # type: ignore[no-untyped-call]
    return Exposition(
        Rendering(text, gzip.compress(text, GZIP_LEVEL, mtime=0), TEXT_CONTENT_TYPE),
        Rendering(om, gzip.compress(om, GZIP_LEVEL, mtime=0), OPENMETRICS_CONTENT_TYPE),
        time.time(),
    )


def choose(exposition: Exposition, accept: str, accept_encoding: str) -> Chosen:
    """The rendering the client asked for: OpenMetrics when its Accept names it (prometheus-client's
    choose_encoder decides), else the text format; gzipped when its Accept-Encoding allows gzip."""
    _, content_type = choose_encoder(accept)
    rendering = exposition.openmetrics if content_type.startswith("application/openmetrics-text") else exposition.text
    if gzip_accepted(accept_encoding):
        return Chosen(rendering.gzipped, rendering.content_type, gzipped=True)
    return Chosen(rendering.body, rendering.content_type, gzipped=False)
