"""structlog set-up: JSON lines off a TTY, console rendering on one; and a rate limit for repeated warnings."""

from __future__ import annotations

import errno
import logging
import sys
import time
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure(log_format: str = "auto", level: str = "info") -> None:
    """One call at start-up. `log_format` is json, console or auto (console only when stderr is a TTY)."""
    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    route_stdlib_logging(level)


# What a library says through the standard logging module (aiohttp on a garbage request, asyncio on a failed
# accept) becomes one structlog line, at most once a minute per message, its exception cut to one line.
LIBRARY_LOG_PERIOD_SECONDS = 60.0
MAX_TEXT = 200  # a message may quote a client's bytes: a hostile client chooses them


class StructlogHandler(logging.Handler):
    """A logging.Handler that emits one structlog event per record (rate-limited), never a traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._limiter = RateLimiter(period=LIBRARY_LOG_PERIOD_SECONDS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            allowed, held = self._limiter.allow(f"{record.name}:{record.msg}")
            if not allowed:
                return
            context: dict[str, object] = {"logger": record.name, "message": one_line(record.getMessage())}
            if record.exc_info and record.exc_info[1] is not None:
                context["error"] = describe(record.exc_info[1])
            if held:
                context["suppressed_since_last"] = held
            logger = structlog.get_logger(record.name)
            level = record.levelname.lower() if record.levelname.lower() in LEVELS else "error"
            getattr(logger, level)(record.name.replace(".", "_"), **context)
        except Exception:  # a log line must never take the server down
            self.handleError(record)


def route_stdlib_logging(level: str) -> None:
    """Every stdlib logger (aiohttp.server, aiohttp.access, aiohttp.web, asyncio, ...) through structlog."""
    root = logging.getLogger()
    root.handlers[:] = [StructlogHandler()]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.captureWarnings(True)
    logging.raiseExceptions = False  # a failing handler stays quiet instead of printing a traceback


def one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_TEXT else flat[:MAX_TEXT] + "..."


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and message, no traceback."""
    return one_line(f"{type(exc).__name__}: {exc}")


class LoopExceptionHandler:
    """asyncio's exception handler, one rate-limited line per kind instead of a traceback. Running out of file
    descriptors on accept (EMFILE, ENFILE) gets its own event: the operator's fix is the file limit."""

    def __init__(self, period: float = LIBRARY_LOG_PERIOD_SECONDS) -> None:
        self._limiter = RateLimiter(period=period)
        self._log = structlog.get_logger("khan.loop")

    def __call__(self, _: object, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            event, key = "file_descriptors_exhausted", "fds"
        else:
            event, key = "event_loop_error", message
        allowed, held = self._limiter.allow(key)
        if not allowed:
            return
        details: dict[str, object] = {"message": one_line(message), "suppressed_since_last": held}
        if isinstance(exc, BaseException):
            details["error"] = describe(exc)
        self._log.error(event, **details)


class RateLimiter:
    """Lets an event through at most once per `period` seconds per key; counts what it held back."""

    MAX_KEYS = 256  # keys come from code, not clients; still, a bound

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(whether to log now, how many were held back since the last one logged)."""
        now = time.monotonic()
        if key not in self._last and len(self._last) >= self.MAX_KEYS:
            self._forget_older_than(now - self.period)
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)

    def _forget_older_than(self, moment: float) -> None:
        for stale in [key for key, last in self._last.items() if last < moment]:
            del self._last[stale]
            self._held.pop(stale, None)
