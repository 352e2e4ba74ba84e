"""khan/logs.py's rate limit: a hard bound on the keys it remembers, and library records told apart by logger,
message format and exception type (a garbage request once a minute must not hide a handler's crash)."""

from __future__ import annotations

import logging
import sys
import time

import structlog
from aiohttp.http_exceptions import BadStatusLine

from khan.logs import RateLimiter, StructlogHandler


def test_the_key_table_is_hard_bounded_and_forgets_the_least_recently_seen() -> None:
    limiter = RateLimiter(period=3600.0, max_keys=1024)
    assert limiter.allow("real problem") == (True, 0)
    for index in range(20_000):  # all recent: the old limiter kept every one of them
        assert limiter.allow(f"distinct {index}")[0]
        if index % 500 == 0:
            assert limiter.allow("real problem") == (False, 0)  # seen again: stays the most recent
    assert len(limiter) == 1024
    assert limiter.allow("real problem") == (False, 0)
    assert limiter.allow("distinct 0") == (True, 0)  # forgotten: logged again, which is the price of the bound


def test_held_back_events_are_counted_in_the_next_line() -> None:
    limiter = RateLimiter(period=0.2)
    assert limiter.allow(("a", 1)) == (True, 0)
    assert limiter.allow(("a", 1)) == (False, 0)
    assert limiter.allow(("a", 1)) == (False, 0)
    assert limiter.allow(("b", 1)) == (True, 0)
    time.sleep(0.25)
    assert limiter.allow(("a", 1)) == (True, 2)
    assert limiter.allow(("a", 1)) == (False, 0)


def record(message: str, error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, message, None, exc_info)


def test_a_garbage_request_does_not_hide_a_handler_crash() -> None:
    handler = StructlogHandler()
    with structlog.testing.capture_logs() as lines:
        handler.emit(record("Error handling request", BadStatusLine(b"\x16\x03\x01")))
        handler.emit(record("Error handling request", BadStatusLine(b"GARBAGE")))  # the same kind: held back
        handler.emit(record("Error handling request", KeyError("flows")))  # a crash: its own kind
        handler.emit(record("Error handling request", KeyError("other")))
        handler.emit(record("Error handling request", None))
        handler.emit(record("Error in handler for %s", KeyError("x")))
    errors = [line.get("error", "") for line in lines]
    assert len(lines) == 4, lines
    assert errors[0].startswith("BadStatusLine")
    assert errors[1].startswith("KeyError")
    assert "error" not in lines[2]
    assert all(line["event"] == "aiohttp_server" for line in lines)


def test_a_record_with_the_current_exception_is_keyed_on_its_type() -> None:
    handler = StructlogHandler()
    with structlog.testing.capture_logs() as lines:
        for error in (ValueError("a"), ValueError("b"), OSError("c")):
            try:
                raise error
            except Exception:
                handler.emit(
                    logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception", None, sys.exc_info())
                )
    assert [line["error"].split(":")[0] for line in lines] == ["ValueError", "OSError"]
