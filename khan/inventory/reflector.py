"""One resource's list-then-watch loop, acting on a transport's typed outcomes (see `khan.inventory.kube_transport`).

A reflector never gives up: a failed request is retried after a backoff (the server's Retry-After is obeyed), a
410 Gone lists the resource again and replaces what was known of it in one step, and a stream on which nothing
arrives for too long is dropped and resumed. Meanwhile the cache keeps the last known state.

Time and chance come in through `Timing` (the real clock, sleep and random by default), so that the state machine
can be driven on virtual time against a scripted transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from khan.inventory import watch_stats as reasons
from khan.inventory.backoff import Backoff
from khan.inventory.objects import NODE, POD, SERVICE, Projection, project
from khan.inventory.watch_cache import WatchCache
from khan.inventory.watch_protocol import (
    GONE,
    ApiStatusError,
    ProtocolError,
    StreamEnd,
    TransportError,
    parse_event,
    parse_list_page,
)
from khan.inventory.watch_stats import WatchStats

log = structlog.get_logger("khan.kube")

RESOURCES: dict[str, str] = {POD: "pods", SERVICE: "services", NODE: "nodes"}  # kind -> resource
PAGE_SIZE = 500  # objects per list page: 50,000 pods arrive in 100 requests of about 1 MB each
# Before Kubernetes 1.27 a quiet resource gets no bookmark until its watch is about to end, so a stream is
# declared dead only when it has been silent past the server-side timeout plus this margin (or plus the timeout
# itself, if that is shorter).
INACTIVITY_MARGIN_SECONDS = 30.0
# A stream that ends sooner than this without delivering anything is treated as a failure (backoff), so that a
# proxy cutting streams at once cannot make the agent spin.
SHORT_STREAM_SECONDS = 1.0

_END_REASONS = {StreamEnd.CLOSED: reasons.CLOSED, StreamEnd.SILENT: reasons.INACTIVE}
ApiFailure = TransportError | ApiStatusError | ProtocolError


class WatchStream(Protocol):
    async def next_line(self) -> bytes | StreamEnd:
        """The next non-blank line, or how the stream ended; TransportError if it broke."""


class Transport(Protocol):
    """What a reflector asks of the API; raises TransportError or ApiStatusError when a request fails."""

    async def list_page(self, resource: str, limit: int, continue_token: str) -> bytes:
        """One page of a list, as the server wrote it."""

    def watch(
        self, resource: str, resource_version: str, timeout_seconds: int, inactivity_seconds: float
    ) -> AbstractAsyncContextManager[WatchStream]:
        """An open watch stream, closed on exit."""


@dataclass(frozen=True)
class Timing:
    """The reflector's clock, sleep and random fraction in [0, 1): the real ones unless a test gives its own."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random: Callable[[], float] = random.random


REAL_TIMING = Timing()


@dataclass(frozen=True, slots=True)
class Restart:
    """Why the watch ended, whether the resource must be listed again, how long to wait, and the error if any."""

    reason: str
    relist: bool = False
    delay: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class _Listed:
    projections: list[Projection] = field(default_factory=list)
    skipped: int = 0
    resource_version: str = ""


def error_code(exc: ApiFailure) -> str:
    """The `code` label of khan_kube_api_errors_total for a failed request."""
    if isinstance(exc, TransportError):
        return exc.code
    if isinstance(exc, ApiStatusError):
        return str(exc.code)
    return "invalid"


class Reflector:
    """Lists one resource, then watches it from the list's resourceVersion, for ever."""

    def __init__(
        self,
        kind: str,
        transport: Transport,
        cache: WatchCache,
        stats: WatchStats,
        watch_timeout_seconds: float,
        on_synced: Callable[[], None] = lambda: None,
        timing: Timing = REAL_TIMING,
    ) -> None:
        self.kind = kind
        self.resource = RESOURCES[kind]
        self._transport = transport
        self._cache = cache
        self._all_stats = stats
        self._stats = stats[self.resource]
        self._watch_timeout = max(1.0, watch_timeout_seconds)
        self._on_synced = on_synced
        self._timing = timing
        self._resource_version = ""
        self._backoff = Backoff(random_fraction=timing.random)

    async def list_once(self) -> None:
        """Every object, page by page, replacing what the cache knew of this kind in one step."""
        with self._counting_errors("list"):
            listed = await self._list_pages()
        self._cache.replace(self.kind, listed.projections)
        self._resource_version = listed.resource_version
        self._heard()
        if listed.skipped:
            log.warning(
                "objects_skipped", resource=self.resource, skipped=listed.skipped, reason="no name or wrong shape"
            )
        if not self._stats.synced:
            self._stats.synced = True
            log.info("inventory_listed", resource=self.resource, objects=self._cache.count(self.kind))
            self._on_synced()

    async def run(self) -> None:
        """List and watch until cancelled; every failure is counted, logged once and retried."""
        reason = reasons.INITIAL
        must_list = True
        watched = False  # until a first watch starts, failures of the first lists do not change its reason
        while True:
            try:
                if must_list:
                    await self.list_once()
                    must_list = False
                self._stats.watch_starts[reason if watched else reasons.INITIAL] += 1
                watched = True
                restart = await self._watch_once()
            except Exception as exc:  # a bug or a library surprise must not end the watch for good: retry it
                restart = self._after_failure(exc)
            reason = restart.reason
            must_list = must_list or restart.relist
            self._log_restart(restart, must_list)
            if restart.delay:
                await self._timing.sleep(restart.delay)

    async def _list_pages(self) -> _Listed:
        listed = _Listed()
        continue_token = ""
        while True:
            page = parse_list_page(await self._transport.list_page(self.resource, PAGE_SIZE, continue_token))
            for item in page.items:
                projection = project(item, default_kind=self.kind)
                if projection is None:
                    listed.skipped += 1
                else:
                    listed.projections.append(projection)
            listed.resource_version = page.resource_version
            continue_token = page.continue_token
            del page  # this page's parsed objects go before the next one arrives, not after
            if not continue_token:
                return listed

    async def _watch_once(self) -> Restart:
        """One watch stream, to its end; the restart it calls for."""
        with self._counting_errors("watch"):
            reason, delivered, lasted = await self._watch()
        self._stats.crashes_in_a_row = 0
        # Only a watch that worked clears the backoff: a list that succeeds before every 410 does not.
        if delivered:
            self._backoff.reset()
        if reason != reasons.CLOSED or (not delivered and lasted < SHORT_STREAM_SECONDS):
            return Restart(reason, delay=self._backoff.next_delay())
        return Restart(reason)

    async def _watch(self) -> tuple[str, bool, float]:
        """(why the stream ended, whether it delivered anything, how long it lasted)."""
        started = self._timing.clock()
        # Between half and all of --watch-timeout, so that agents started together do not reconnect together.
        timeout = max(1, round(self._watch_timeout * (0.5 + self._timing.random() / 2)))
        inactivity = timeout + min(INACTIVITY_MARGIN_SECONDS, timeout)
        delivered = False
        async with self._transport.watch(self.resource, self._resource_version, timeout, inactivity) as stream:
            while True:
                line = await stream.next_line()
                if isinstance(line, StreamEnd):
                    return _END_REASONS[line], delivered, self._timing.clock() - started
                self._handle(line)
                delivered = True

    def _after_failure(self, exc: Exception) -> Restart:
        """The restart a failed list or watch calls for; called inside its `except`, for the traceback."""
        if isinstance(exc, ApiStatusError):
            self._stats.last_error = error = f"{exc.code} {exc.message}"
            if exc.code == GONE:
                # Counted as a failure either way; only the first relist in a row goes at once.
                first = self._backoff.failures == 0
                delay = self._backoff.next_delay()
                return Restart(reasons.EXPIRED, relist=True, delay=0.0 if first else delay, error=error)
            return Restart(reasons.ERROR, delay=self._backoff.next_delay(exc.retry_after), error=error)
        if isinstance(exc, TransportError | ProtocolError):
            self._stats.last_error = str(exc)
            return Restart(reasons.ERROR, delay=self._backoff.next_delay(), error=self._stats.last_error)
        log.exception("watch_crashed", resource=self.resource, error=repr(exc))
        self._stats.errors["watch", "internal"] += 1
        self._stats.crashes_in_a_row += 1  # past CRASHES_BEFORE_UNREADY, /readyz says so
        self._stats.last_error = repr(exc)
        return Restart(reasons.ERROR, delay=self._backoff.next_delay(), error=self._stats.last_error)

    @contextlib.contextmanager
    def _counting_errors(self, verb: str) -> Iterator[None]:
        """Each failed request is counted under its verb and code (khan_kube_api_errors_total), then raised."""
        try:
            yield
        except (TransportError, ApiStatusError, ProtocolError) as exc:
            self._stats.errors[verb, error_code(exc)] += 1
            raise

    def _handle(self, line: bytes) -> None:
        event = parse_event(line)
        if event.resource_version:
            self._resource_version = event.resource_version
        self._heard()
        if event.type == "BOOKMARK":
            return
        projection = project(event.object, default_kind=self.kind)
        if projection is None:
            log.debug("event_skipped", resource=self.resource, type=event.type)
            return
        self._cache.apply(event.type, projection)

    def _heard(self) -> None:
        self._all_stats.heard(self.resource)

    def _log_restart(self, restart: Restart, relist: bool) -> None:
        context: dict[str, object] = {
            "resource": self.resource,
            "reason": restart.reason,
            "retry_in_seconds": round(restart.delay, 2),
        }
        if relist:
            context["relist"] = True
        if restart.error:
            context["error"] = restart.error
        if restart.reason == reasons.CLOSED:
            log.debug("watch_restart", **context)  # routine: the server ends every stream after its timeout
        else:
            log.warning("watch_restart", **context)
