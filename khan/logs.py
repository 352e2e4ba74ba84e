"""structlog set-up: JSON lines off a TTY, console rendering on one; and a rate limit for repeated warnings."""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Hashable
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
            allowed, held = self._limiter.allow(record_kind(record))
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


def record_kind(record: logging.LogRecord) -> tuple[str, str, str]:
    """What the rate limit counts as "the same line": logger, message format and exception type. aiohttp logs
    a garbage request and a handler's crash with the same message; one must not hide the other."""
    exc_type = record.exc_info[0] if record.exc_info else None
    kind = f"{exc_type.__module__}.{exc_type.__qualname__}" if exc_type is not None else ""
    return record.name, str(record.msg), kind


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
    """Lets an event through at most once per `period` seconds per key; counts what it held back. At most
    `max_keys` keys are remembered (the least recently seen is forgotten first): many distinct keys cost a few
    more lines, never unbounded memory."""

    MAX_KEYS = 1024

    def __init__(self, period: float = 60.0, max_keys: int = MAX_KEYS) -> None:
        self.period = period
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()  # key -> (last logged, held since)

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(whether to log now, how many were held back since the last one logged)."""
        now = time.monotonic()
        last, held = self._keys.pop(key, (None, 0))
        if last is not None and now - last < self.period:
            self._keys[key] = (last, held + 1)
            return False, 0
        self._keys[key] = (now, 0)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return True, held

    def __len__(self) -> int:
        return len(self._keys)
