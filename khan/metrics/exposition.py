"""What /metrics serves: the registry rendered once per poll into bytes, in both exposition formats, each also
gzip-compressed once. A request only picks one of the four (negotiated as prometheus-client's own handler does),
so a scrape costs no rendering and no compression, whatever the number of series or of scrapers."""

from __future__ import annotations

import gc
import gzip
import os
import select
import signal
import struct
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import structlog
from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from khan.logs import RateLimiter

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST
# Level 6 (zlib's default) compresses the text ~20x in a fraction of the time level 9 takes; done once per poll.
GZIP_LEVEL = 6
# A rendering child that has not handed its bytes over by then is killed, and this process renders instead.
CHILD_DEADLINE_SECONDS = 60.0
_LENGTH = struct.Struct("<Q")

log = structlog.get_logger("khan.exposition")
_warnings = RateLimiter(period=600.0)  # a node whose pid limit refuses every fork would say so every poll

# The child only renders bytes from its copy of already-collected families and exits: it takes no lock another
# thread could have held at the fork. Python 3.12+ warns about any fork in a process with threads.
warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded", category=DeprecationWarning)


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


def render(registry: Collector, collected_already: Iterable[Metric] = (), fork: bool = True) -> Exposition:
    """Every collector once, here, then both formats and their gzip, in a forked child where it can (`fork`).
    Run it off the event loop. `collected_already`: families collected by the caller (those whose sources only
    the event loop may read), served after the registry's.

    Why a child: rendering is pure Python that holds the interpreter lock for ~0.4 s per format at 10,000 series.
    In this process the event loop would then wait for the lock after every system call it makes: with polls
    back to back, /healthz probes took up to 0.8 s under eight scrapers (25 ms without renderings). The child
    renders from its copy-on-write copy of the collected families and hands the bytes back through a pipe; this
    thread only waits and reads, which leaves the lock to the event loop."""
    collected = _Collected([*registry.collect(), *collected_already])
    if fork:
        try:
            return _render_in_child(collected)
        except (OSError, TimeoutError, EOFError) as exc:
            allowed, held = _warnings.allow("render_child_failed")
            if allowed:
                log.warning(
                    "render_child_failed",
                    error=repr(exc),
                    fallback="rendered in the agent's process",
                    suppressed_since_last=held,
                )
    return _render(collected)


def render_text(registry: Collector) -> bytes:
    """The text format alone, in this process: `khan snapshot`'s one rendering."""
    return generate_latest(registry)


def _render(collected: _Collected) -> Exposition:
    text = generate_latest(collected)  # any object with collect() will do
    om: bytes = openmetrics.generate_latest(collected)  # type: ignore[no-untyped-call]
    return Exposition(
        Rendering(text, gzip.compress(text, GZIP_LEVEL, mtime=0), TEXT_CONTENT_TYPE),
        Rendering(om, gzip.compress(om, GZIP_LEVEL, mtime=0), OPENMETRICS_CONTENT_TYPE),
        time.time(),
    )


def _render_in_child(collected: _Collected) -> Exposition:
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:  # the child: render, write, exit; never return into the agent's code
        # A collection would write to every tracked object's header, copying most of the agent's heap into the
        # child's memory; the child lives under a second and frees nothing anyway.
        gc.disable()
        status = 1
        try:
            # Only the pipe stays open: a connection the agent closes meanwhile must close for its peer too.
            os.closerange(3, write_end)
            os.closerange(write_end + 1, os.sysconf("SC_OPEN_MAX"))
            signal.set_wakeup_fd(-1)  # a signal sent to the child must not wake the agent's event loop
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            exposition = _render(collected)
            for blob in (
                exposition.text.body,
                exposition.text.gzipped,
                exposition.openmetrics.body,
                exposition.openmetrics.gzipped,
            ):
                _write_all(write_end, _LENGTH.pack(len(blob)))
                _write_all(write_end, blob)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    deadline = time.monotonic() + CHILD_DEADLINE_SECONDS
    try:
        blobs = [_read_blob(read_end, deadline) for _ in range(4)]
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return Exposition(
        Rendering(blobs[0], blobs[1], TEXT_CONTENT_TYPE),
        Rendering(blobs[2], blobs[3], OPENMETRICS_CONTENT_TYPE),
        time.time(),
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_blob(fd: int, deadline: float) -> bytes:
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size, deadline))
    return _read_exactly(fd, length, deadline)


def _read_exactly(fd: int, length: int, deadline: float) -> bytes:
    buffer = bytearray(length)
    view = memoryview(buffer)
    got = 0
    while got < length:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError(f"the rendering child sent {got} of {length} bytes in {CHILD_DEADLINE_SECONDS:g} s")
        read = os.readv(fd, [view[got:]])
        if read == 0:
            raise EOFError(f"the rendering child ended after {got} of {length} bytes")
        got += read
    return bytes(buffer)


def choose(exposition: Exposition, accept: str, accept_encoding: str) -> Chosen:
    """The rendering the client asked for: OpenMetrics when its Accept names it (prometheus-client's
    choose_encoder decides), else the text format; gzipped when its Accept-Encoding allows gzip."""
    _, content_type = choose_encoder(accept)
    rendering = exposition.openmetrics if content_type.startswith("application/openmetrics-text") else exposition.text
    if gzip_accepted(accept_encoding):
        return Chosen(rendering.gzipped, rendering.content_type, gzipped=True)
    return Chosen(rendering.body, rendering.content_type, gzipped=False)
