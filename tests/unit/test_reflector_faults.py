"""The pod reflector's state machine, on virtual time against a scripted transport: 410s relist with a growing
backoff instead of spinning, failed, silent and broken streams are counted and resumed where they stopped,
Retry-After and 5xx answers are obeyed, the normal paged list, events and bookmarks keep the cache and the resume
point right, and a watch that crashes every time turns readiness red. Each test asserts the exact requests, their
(virtual) times, the delays slept and the restarts logged. What the transport makes of a real HTTP server is
tests/test_kube_transport.py's business; the real API server's is tests/test_kube_inventory.py's."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from khan.inventory import watch_stats as reasons
from khan.inventory.objects import EXTERNAL, POD, Owner
from khan.inventory.reflector import PAGE_SIZE, RESOURCES, Reflector, Timing
from khan.inventory.watch_cache import WatchCache
from khan.inventory.watch_protocol import ApiStatusError, ProtocolError, StreamEnd, TransportError
from khan.inventory.watch_stats import ResourceStats, WatchStats
from tests.support.kube_wire import (
    ERROR_EVENT,
    LIST_A,
    LIST_RV,
    POD_A,
    POD_B,
    bookmark,
    event,
    owner_of,
    pod,
    pod_list,
)

GONE = ApiStatusError(410, "too old resource version")


# The script: what each list and watch request gets, in order.


@dataclass
class Stream:
    """A watch answer: these lines, then `end` (a StreamEnd, or an error the stream raises) once `lasting`
    seconds have passed since it opened."""

    lines: Sequence[bytes] = ()
    end: StreamEnd | Exception = StreamEnd.CLOSED
    lasting: float = 45.0


class Played(BaseException):
    """A request found the script played out: ends Reflector.run (which retries every Exception)."""


@dataclass
class VirtualTime:
    """A clock that only sleeps move, and a random fraction that is always `fraction`."""

    fraction: float = 0.5
    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def timing(self) -> Timing:
        return Timing(clock=lambda: self.now, sleep=self.sleep, random=lambda: self.fraction)


@dataclass
class ScriptedApi:
    """A reflector Transport answering from `lists` and `watches`; each request is recorded in `calls` as
    ("list", at, continue token) or ("watch", at, resourceVersion, timeoutSeconds, inactivity limit)."""

    lists: list[bytes | Exception]
    watches: list[Stream | Exception] = field(default_factory=list)
    time: VirtualTime = field(default_factory=VirtualTime)
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    async def list_page(self, resource: str, limit: int, continue_token: str) -> bytes:
        assert (resource, limit) == ("pods", PAGE_SIZE)
        self.calls.append(("list", self.time.now, continue_token))
        answer = _next(self.lists)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @contextlib.asynccontextmanager
    async def watch(
        self, resource: str, resource_version: str, timeout_seconds: int, inactivity_seconds: float
    ) -> AsyncIterator[ScriptedStream]:
        assert resource == "pods"
        self.calls.append(("watch", self.time.now, resource_version, timeout_seconds, inactivity_seconds))
        answer = _next(self.watches)
        if isinstance(answer, Exception):
            raise answer
        yield ScriptedStream(answer, self.time)

    def times(self, verb: str) -> list[float]:
        return [call[1] for call in self.calls if call[0] == verb]

    def verbs(self) -> list[str]:
        return [call[0] for call in self.calls]


def _next(answers: list[Any]) -> Any:
    if not answers:
        raise Played
    return answers.pop(0)


@dataclass
class ScriptedStream:
    stream: Stream
    time: VirtualTime
    read: int = 0

    async def next_line(self) -> bytes | StreamEnd:
        if self.read < len(self.stream.lines):
            self.read += 1
            return self.stream.lines[self.read - 1]
        self.time.now += self.stream.lasting
        if isinstance(self.stream.end, Exception):
            raise self.stream.end
        return self.stream.end


@dataclass
class Reflected:
    api: ScriptedApi
    cache: WatchCache
    all_stats: WatchStats
    logs: list[dict[str, Any]]

    @property
    def stats(self) -> ResourceStats:
        return self.all_stats["pods"]

    @property
    def slept(self) -> list[float]:
        return self.api.time.slept

    def restarts(self) -> list[tuple[str, float, bool]]:
        """(reason, retry_in_seconds, relist) of each watch_restart logged."""
        found = [line for line in self.logs if line["event"] == "watch_restart"]
        return [(line["reason"], line["retry_in_seconds"], line.get("relist", False)) for line in found]

    def owner(self, ip: str) -> Owner:
        return self.cache.inventory().owner(socket.inet_aton(ip))


def reflect(api: ScriptedApi, watch_timeout_seconds: float = 60.0) -> Reflected:
    """The pod reflector run against `api` until the script is played out."""
    cache = WatchCache(deleted_pod_grace_seconds=60)
    stats = WatchStats(tuple(RESOURCES.values()), clock=lambda: api.time.now)
    reflector = Reflector(POD, api, cache, stats, watch_timeout_seconds, timing=api.time.timing())
    with capture_logs() as logs, pytest.raises(Played):
        asyncio.run(reflector.run())
    return Reflected(api, cache, stats, logs)


# 410 Gone: relist, but never in a tight loop.


@pytest.mark.parametrize("expired", [Stream([ERROR_EVENT]), GONE], ids=["410-error-event", "410-on-the-watch-request"])
def test_410_relists_with_a_growing_backoff_that_a_successful_list_does_not_reset(expired: Stream | Exception) -> None:
    api = ScriptedApi(lists=[LIST_A] * 5, watches=[expired] * 5)
    reflected = reflect(api)
    # The first relist goes at once; after that 0.5, 1 and 2 s steps, each at three quarters (fraction 0.5).
    assert api.verbs() == ["list", "watch"] * 5 + ["list"]
    assert api.times("list") == [0.0, 0.0, 0.75, 2.25, 5.25, 11.25]
    assert reflected.slept == [0.75, 1.5, 3.0, 6.0]
    assert reflected.restarts() == [
        (reasons.EXPIRED, 0.0, True),
        (reasons.EXPIRED, 0.75, True),
        (reasons.EXPIRED, 1.5, True),
        (reasons.EXPIRED, 3.0, True),
        (reasons.EXPIRED, 6.0, True),
    ]
    stats = reflected.stats
    assert stats.watch_starts == {reasons.INITIAL: 1, reasons.EXPIRED: 4}
    assert stats.errors == {("watch", "410"): 5}
    assert all(call[2] == LIST_RV for call in api.calls if call[0] == "watch")
    assert stats.synced
    assert stats.last_error == "410 too old resource version"
    assert reflected.owner("10.244.1.5") == owner_of("pod-a")  # each relist replaced the cache with the same pod


def test_a_410_after_a_watch_that_delivered_relists_at_once_again() -> None:
    delivered_then_gone = Stream([event("ADDED", POD_B), ERROR_EVENT])
    api = ScriptedApi(lists=[LIST_A] * 3, watches=[GONE, Stream([bookmark("12")]), delivered_then_gone])
    reflected = reflect(api)
    # The bookmark's watch worked: the backoff starts over, so the next 410 is a first one again.
    assert reflected.restarts() == [
        (reasons.EXPIRED, 0.0, True),
        (reasons.CLOSED, 0.0, False),
        (reasons.EXPIRED, 0.0, True),
    ]
    assert reflected.slept == []
    assert [call[2] for call in api.calls if call[0] == "watch"] == [LIST_RV, LIST_RV, "12", LIST_RV]


# Watches that fail, go silent, break or say nonsense.


def test_a_watch_request_that_fails_is_retried_after_a_backoff_from_where_it_was() -> None:
    timed_out = TransportError("timeout", "watch pods: Timeout on reading data from socket")
    api = ScriptedApi(lists=[LIST_A], watches=[timed_out])
    reflected = reflect(api, watch_timeout_seconds=1)
    # --watch-timeout 1: timeoutSeconds 1, and the inactivity limit (aiohttp's sock_read) 1 + 1 s.
    assert api.calls == [("list", 0.0, ""), ("watch", 0.0, LIST_RV, 1, 2.0), ("watch", 0.375, LIST_RV, 1, 2.0)]
    assert reflected.restarts() == [(reasons.ERROR, 0.38, False)]
    stats = reflected.stats
    assert stats.errors == {("watch", "timeout"): 1}
    assert stats.watch_starts == {reasons.INITIAL: 1, reasons.ERROR: 1}
    assert stats.last_error == "watch pods: Timeout on reading data from socket"


def test_a_silent_stream_is_presumed_dead_and_resumed_after_a_backoff() -> None:
    api = ScriptedApi(lists=[LIST_A], watches=[Stream(end=StreamEnd.SILENT, lasting=75.0)])
    reflected = reflect(api)
    assert api.calls == [("list", 0.0, ""), ("watch", 0.0, LIST_RV, 45, 75.0), ("watch", 75.375, LIST_RV, 45, 75.0)]
    assert reflected.restarts() == [(reasons.INACTIVE, 0.38, False)]
    assert reflected.stats.watch_starts == {reasons.INITIAL: 1, reasons.INACTIVE: 1}
    assert not reflected.stats.errors


@pytest.mark.parametrize(
    ("breaking", "code", "error"),
    [
        (Stream([event("ADDED", POD_B)], end=TransportError("connection", "watch stream broke: Line is too long")),
         "connection", "watch stream broke: Line is too long"),
        (Stream([event("ADDED", POD_B), b"<html>502 Bad Gateway</html>\n"]), "invalid", "not JSON"),
        (Stream([event("ADDED", POD_B), b'{"type": "RENAMED", "object": {}}\n']), "invalid", "watch event of unknown"),
    ],
    ids=["stream-broke", "not-json", "unknown-event"],
)  # fmt: skip
def test_a_broken_stream_is_counted_and_resumed_after_its_last_good_event(
    breaking: Stream, code: str, error: str
) -> None:
    api = ScriptedApi(lists=[LIST_A], watches=[breaking])
    reflected = reflect(api)
    assert api.calls[2] == ("watch", 45.375 if code == "connection" else 0.375, "11", 45, 75.0)  # after pod-b
    assert api.verbs() == ["list", "watch", "watch"]  # no relist
    assert reflected.restarts() == [(reasons.ERROR, 0.38, False)]
    stats = reflected.stats
    assert stats.errors == {("watch", code): 1}
    assert stats.watch_starts == {reasons.INITIAL: 1, reasons.ERROR: 1}
    assert stats.last_error is not None
    assert stats.last_error.startswith(error)
    assert reflected.owner("10.244.1.6") == owner_of("pod-b")  # the good event stays applied
    assert reflected.owner("10.244.1.5") == owner_of("pod-a")


def test_a_stream_that_ends_at_once_with_nothing_backs_off_and_one_that_worked_resets_the_backoff() -> None:
    at_once = Stream(lasting=0.5)
    api = ScriptedApi(
        lists=[LIST_A],
        watches=[at_once, at_once, Stream(lasting=1.0), Stream([bookmark("12")]), at_once],
    )
    reflected = reflect(api)
    # A proxy cutting streams at once cannot make the agent spin; a quiet stream that ran its course is routine.
    assert reflected.restarts() == [
        (reasons.CLOSED, 0.38, False),
        (reasons.CLOSED, 0.75, False),
        (reasons.CLOSED, 0.0, False),
        (reasons.CLOSED, 0.0, False),
        (reasons.CLOSED, 0.38, False),  # the bookmark's stream delivered: the backoff started over
    ]
    assert reflected.slept == [0.375, 0.75, 0.375]
    assert all(line["log_level"] == "debug" for line in reflected.logs if line["event"] == "watch_restart")
    assert reflected.stats.watch_starts == {reasons.INITIAL: 1, reasons.CLOSED: 5}


@pytest.mark.parametrize(
    ("fraction", "watch_timeout", "timeout_seconds", "inactivity"),
    [(0.0, 60, 30, 60.0), (0.5, 60, 45, 75.0), (1.0, 60, 60, 90.0), (1.0, 300, 300, 330.0), (0.0, 0.2, 1, 2.0)],
)
def test_the_watch_timeout_is_jittered_between_half_and_all_of_the_flag_and_the_stream_may_idle_a_margin_longer(
    fraction: float, watch_timeout: float, timeout_seconds: int, inactivity: float
) -> None:
    api = ScriptedApi(lists=[LIST_A], time=VirtualTime(fraction))
    reflect(api, watch_timeout_seconds=watch_timeout)
    assert api.calls[1] == ("watch", 0.0, LIST_RV, timeout_seconds, inactivity)


# Lists refused: Retry-After is obeyed, 5xx backs off.


def test_a_429_list_waits_for_retry_after_then_syncs() -> None:
    throttled = ApiStatusError(429, "too many requests, please try again later", retry_after=2.0)
    api = ScriptedApi(lists=[throttled, LIST_A])
    reflected = reflect(api)
    # max(a backoff of 0.375 s, Retry-After 2 s)
    assert api.calls == [("list", 0.0, ""), ("list", 2.0, ""), ("watch", 2.0, LIST_RV, 45, 75.0)]
    assert reflected.restarts() == [(reasons.ERROR, 2.0, True)]
    stats = reflected.stats
    assert stats.errors == {("list", "429"): 1}
    assert stats.last_error == "429 too many requests, please try again later"
    assert stats.watch_starts == {reasons.INITIAL: 1}
    assert reflected.owner("10.244.1.5") == owner_of("pod-a")


def test_500_lists_back_off_with_growing_delays_then_sync() -> None:
    failing = ApiStatusError(500, "etcdserver: request timed out")
    api = ScriptedApi(lists=[failing, failing, failing, LIST_A])
    reflected = reflect(api)
    assert api.times("list") == [0.0, 0.375, 1.125, 2.625]
    assert reflected.slept == [0.375, 0.75, 1.5]
    assert reflected.restarts() == [
        (reasons.ERROR, 0.38, True),
        (reasons.ERROR, 0.75, True),
        (reasons.ERROR, 1.5, True),
    ]
    stats = reflected.stats
    assert stats.errors == {("list", "500"): 3}
    assert stats.watch_starts == {reasons.INITIAL: 1}  # the first watch, however many lists failed
    assert stats.synced
    assert reflected.owner("10.244.1.5") == owner_of("pod-a")


def test_an_unreadable_list_is_counted_invalid_and_listed_again() -> None:
    api = ScriptedApi(lists=[b'{"items": []}', LIST_A])
    reflected = reflect(api)
    assert api.times("list") == [0.0, 0.375]
    assert reflected.stats.errors == {("list", "invalid"): 1}
    assert reflected.restarts() == [(reasons.ERROR, 0.38, True)]


# The normal path.


def test_paged_list_events_and_bookmark_then_resume_from_the_bookmark() -> None:
    pages: list[bytes | Exception] = [
        pod_list([POD_A], continue_token="abc"),
        pod_list([pod("pod-b", "10.244.1.6", "7"), {"metadata": {}}]),  # the nameless item is skipped
    ]
    events = [
        event("ADDED", pod("pod-c", "10.244.1.7", "11")),
        event("MODIFIED", pod("pod-a", "10.244.1.5", "12", app="api")),
        event("DELETED", pod("pod-b", "10.244.1.6", "13")),
        bookmark("20"),
    ]
    api = ScriptedApi(lists=pages, watches=[Stream(events)])
    reflected = reflect(api)
    assert api.calls == [
        ("list", 0.0, ""),
        ("list", 0.0, "abc"),
        ("watch", 0.0, LIST_RV, 45, 75.0),
        ("watch", 45.0, "20", 45, 75.0),  # the server ended the stream: resumed at once from the bookmark
    ]
    assert reflected.restarts() == [(reasons.CLOSED, 0.0, False)]
    assert [line["skipped"] for line in reflected.logs if line["event"] == "objects_skipped"] == [1]
    cache = reflected.cache
    assert cache.count(POD) == 2
    assert reflected.owner("10.244.1.7") == owner_of("pod-c")
    assert reflected.owner("10.244.1.5") == owner_of("pod-a", app="api")
    assert cache.lingering == 1
    assert reflected.owner("10.244.1.6") == owner_of("pod-b")  # lingers for its grace period
    assert reflected.owner("10.244.1.9") == EXTERNAL
    stats = reflected.stats
    assert stats.watch_starts == {reasons.INITIAL: 1, reasons.CLOSED: 1}
    assert not stats.errors
    assert stats.last_error is None
    assert stats.synced
    assert reflected.all_stats.event_ages() == {"pods": 45.0}  # the bookmark, heard at 0 s, then 45 s passed


# A watch that fails the same way every time: not an outage, so readiness says so.


def test_a_watch_crashing_on_every_attempt_turns_readiness_red() -> None:
    crash = TypeError("StreamReader.readline() got an unexpected keyword argument 'max_line_length'")
    api = ScriptedApi(lists=[LIST_A], watches=[crash] * reasons.CRASHES_BEFORE_UNREADY)
    reflected = reflect(api)
    assert api.verbs() == ["list", "watch", "watch", "watch", "watch"]  # the watch is retried, not the list
    assert reflected.slept == [0.375, 0.75, 1.5]
    stats = reflected.stats
    assert stats.crashes_in_a_row == reasons.CRASHES_BEFORE_UNREADY
    assert stats.errors == {("watch", "internal"): 3}  # khan_kube_api_errors_total
    assert stats.synced  # the list worked: what it said is still served
    assert [line["event"] for line in reflected.logs if line["log_level"] == "error"] == ["watch_crashed"] * 3
    reason = reflected.all_stats.not_ready_reason()
    assert reason is not None
    assert "the watch of pods fails on every attempt (3 in a row" in reason
    assert "TypeError" in reason
    assert "max_line_length" in reason


def test_a_watch_that_works_again_clears_the_crash_count() -> None:
    crash = RuntimeError("a library surprise")
    api = ScriptedApi(lists=[LIST_A], watches=[crash, crash, Stream()])
    reflected = reflect(api)
    assert reflected.stats.crashes_in_a_row == 0
    assert reflected.all_stats.crashing() == []


def test_a_protocol_error_is_not_a_crash() -> None:
    api = ScriptedApi(lists=[LIST_A], watches=[ProtocolError("not a JSON object")])
    reflected = reflect(api)
    assert reflected.stats.errors == {("watch", "invalid"): 1}
    assert reflected.stats.crashes_in_a_row == 0


# The layer below.


def test_the_reflector_needs_neither_kubernetes_asyncio_nor_aiohttp() -> None:
    """Only khan.inventory.kube_transport talks to the client library: the state machine loads without it."""
    code = (
        "import sys, khan.inventory.reflector; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes_asyncio', 'aiohttp')))"
    )
    root = Path(__file__).resolve().parent.parent  # this khan, whatever the working directory
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert found.strip() == "[]"
