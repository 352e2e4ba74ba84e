"""The agent's composition root: inventory, the poll loop in a worker thread, the HTTP server, signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from khan.allocator import return_large_blocks
from khan.attribution.labels import label_policy
from khan.conntrack.events import EventReader, EventStats
from khan.conntrack.namespace import NamespaceError, entered
from khan.conntrack.netlink import ConntrackError
from khan.conntrack.table import ACCT_SYSCTL, enable_accounting
from khan.counting.counters import Counting
from khan.counting.tracker import ConnectionTracker
from khan.inventory.api_config import ApiConfigError
from khan.inventory.from_file import InventoryError
from khan.inventory.source import InventoryProvider, choose_inventory
from khan.logs import LoopExceptionHandler, RateLimiter
from khan.metrics.exposition import Exposition, render
from khan.metrics.registry import build_registry, build_watch_registry
from khan.polling.poll import poll
from khan.polling.result import Health, PollResult
from khan.settings import Settings
from khan.shutdown import ExitDeadline
from khan.web.json_views import JsonViews, render_json_views
from khan.web.protection import Protection, ProtectionError, protection_for
from khan.web.routes import Endpoints, make_app
from khan.web.server import RunningServer, ServerLimits, connection_cap, raise_file_limit, request_cap, start_server

log = structlog.get_logger("khan.agent")

SHUTDOWN_GRACE_SECONDS = 4.0  # SIGTERM to exit stays within Kubernetes' expectations (and the issue's 5 s)
# `khan agent` exits this long after it starts stopping, even if a worker thread never returns (khan.shutdown).
SHUTDOWN_DEADLINE_SECONDS = 4.5
FATAL_ERRNOS = frozenset({errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT})  # retrying cannot help
RESYNC_GAP_SECONDS = 2.0  # after lost events a dump resynchronises, but never more often than this
EVENTS_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_events"


class StartupError(Exception):
    """The agent cannot start; the message is the one line the operator sees."""


class Agent:
    def __init__(self, settings: Settings, inventory: InventoryProvider | None = None) -> None:
        self.settings = settings
        self.label_policy = label_policy(settings)
        self.inventory: InventoryProvider = inventory or choose_inventory(settings)
        self.health = Health()  # swapped, never mutated: scrapes read it without locks
        self.counting = Counting(settings.max_series, settings.counter_ttl_seconds)
        self.events: EventReader | None = None
        self.registry = build_registry(
            lambda: self.health, self._event_stats, settings.interval_seconds, process_metrics=True
        )
        self.loop_registry = build_watch_registry(self.inventory.watch_stats(), self.inventory.deleted_pods)
        # /metrics serves this: rendered after every poll in its own thread (never the poll's, never the loop).
        self.exposition: Exposition | None = None
        # /transactions and /flows, and the poll they show (encoded on demand, see _json_views)
        self._json_views_of: tuple[PollResult | None, asyncio.Future[JsonViews]] | None = None
        self._served = self.health  # the health that exposition shows: ready once it holds a successful poll
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="khan-render")
        self._warnings = RateLimiter(period=60.0)
        self._resync: asyncio.Event | None = None
        self._accounting: bool | None = None
        self.protection = Protection()  # plain HTTP, no auth, until start() reads the settings

    async def start(self) -> None:
        """What must work before serving: the inventory's file or API configuration, accounting if asked for,
        and the event subscription. Raises StartupError, with whatever was opened closed again."""
        try:
            self.protection = await protection_for(self.settings)  # first: a bad web config is the only line
        except ProtectionError as exc:
            raise StartupError(str(exc)) from exc
        try:
            await self._start_after_protection()
        except BaseException:
            await self._close_started()
            raise

    async def _start_after_protection(self) -> None:
        try:
            await self.inventory.start()
        except (InventoryError, ApiConfigError) as exc:
            raise StartupError(str(exc)) from exc
        await asyncio.to_thread(self._prepare_table)
        self._resync = asyncio.Event()
        if self.settings.events != "off":
            reader = EventReader(
                self.counting.tracker.observe_events,
                _Resync(self.counting.tracker, asyncio.get_running_loop(), self._resync),
                self.settings.netns,
                self.settings.event_buffer_bytes,
            )
            try:
                reader.start()
            except (ConntrackError, NamespaceError) as exc:
                if self.settings.events == "on":
                    raise StartupError(str(exc.strerror or exc)) from exc
                log.warning("events_unavailable", reason=str(exc.strerror or exc), counting="dumps only")
            else:
                self.events = reader

    async def _close_started(self) -> None:
        """The start failed, or the server could not listen: what start() opened is closed, each whatever the
        others do."""
        try:
            self._stop_events()
        finally:
            try:
                await self.protection.close()
            finally:
                await self.inventory.close()

    def _prepare_table(self) -> None:
        """Accounting and events sysctls of the table's namespace: read, and changed only when asked."""
        try:
            with entered(self.settings.netns):
                acct = _read_sysctl(str(ACCT_SYSCTL))
                if acct == 0 and self.settings.enable_accounting:
                    enable_accounting()
                    log.warning(
                        "accounting_enabled",
                        sysctl="net.netfilter.nf_conntrack_acct=1",
                        reason="--enable-accounting",
                        note="byte counters cover connections opened from now on",
                    )
                events = _read_sysctl(EVENTS_SYSCTL)
        except (OSError, NamespaceError) as exc:
            log.warning("sysctls_unreadable", error=str(exc))
            return
        if events == 0 and self.settings.events != "off":
            log.warning("events_off_in_kernel", sysctl="net.netfilter.nf_conntrack_events=0", counting="dumps only")

    async def transactions_body(self) -> bytes:
        return (await self._json_views()).transactions

    async def flows_body(self, limit: int) -> bytes:
        return (await self._json_views()).flows.first(limit)

    async def _json_views(self) -> JsonViews:
        """The last poll's /transactions and /flows, encoded in the rendering thread when first asked for after
        that poll (most agents are never asked), once for every request that comes while it is encoded."""
        last = self.health.last
        views = self._json_views_of
        if views is None or views[0] is not last or _failed(views[1]):
            loop = asyncio.get_running_loop()
            views = (last, loop.run_in_executor(self._renderer, render_json_views, last))
            self._json_views_of = views
        return await asyncio.shield(views[1])  # a client that goes does not cancel the others' encoding

    def current_exposition(self) -> Exposition:
        assert self.exposition is not None, "rendered before the server starts"
        return self.exposition

    async def render_metrics(self) -> None:
        """The exposition of the state now, off the event loop; a failure keeps the previous one."""
        health = self.health
        try:
            started = time.perf_counter()
            collected_here = list(self.loop_registry.collect())
            loop = asyncio.get_running_loop()
            self.exposition = await loop.run_in_executor(self._renderer, render, self.registry, collected_here)
            self._served = health
            log.debug(
                "exposition_rendered",
                seconds=round(time.perf_counter() - started, 3),
                text_bytes=len(self.exposition.text.body),
                gzip_bytes=len(self.exposition.text.gzipped),
            )
        except Exception as exc:  # a bug must not stop the polls: the last rendering stays served
            self._warn("exposition_render_failed", error=repr(exc))

    def not_ready_reason(self) -> str | None:
        # Generic on purpose: /readyz is open to anyone; the details are in the log and in /metrics.
        if self.inventory.not_ready_reason() is not None:
            return "inventory not synced"
        return None if self._served.last is not None else "no successful poll yet"

    async def run(self, on_stopping: Callable[[], None] = lambda: None) -> None:
        """Serve and poll until SIGTERM or SIGINT (or the poller ends); `on_stopping` is called when stopping begins."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.set_exception_handler(LoopExceptionHandler())
        await self.render_metrics()  # before the first poll: the health metrics there are
        server = await self._serve()
        watcher = asyncio.create_task(self.inventory.run(stop), name="inventory")
        poller = asyncio.create_task(self._poll_forever(stop), name="poller")
        stopping = asyncio.create_task(stop.wait(), name="stopping")
        await asyncio.wait({poller, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        on_stopping()
        try:
            await self._stop(poller, watcher, server)
        finally:
            stopping.cancel()

    async def _serve(self) -> RunningServer:
        """The HTTP server, listening; StartupError (with what start() opened closed) if it cannot listen."""
        settings = self.settings
        endpoints = Endpoints(self.current_exposition, self.not_ready_reason, self.transactions_body, self.flows_body)
        limits = ServerLimits(
            max_connections=connection_cap(settings.web_max_connections, raise_file_limit()),
            header_timeout_seconds=settings.web_header_timeout_seconds,
        )
        max_requests = request_cap(settings.web_max_requests, limits.max_connections)
        app = make_app(endpoints, max_requests, self.protection.middlewares)
        where = f"{settings.listen_host}:{settings.listen_port}"
        try:
            server = await start_server(
                app, limits, settings.listen_host or None, settings.listen_port, self.protection.ssl_context
            )
        except OSError as exc:
            self._renderer.shutdown(wait=False)
            await self._close_started()
            raise StartupError(f"cannot listen on {where}: {os.strerror(exc.errno) if exc.errno else exc}") from exc
        log.info(
            "agent_started",
            listen=where,
            node=settings.node_name,
            inventory=settings.inventory or "kubernetes-api",
            netns=settings.netns,
            interval_seconds=settings.interval_seconds,
            events=self.events is not None,
            aggregate=settings.aggregate,
            max_series=settings.max_series,
            scheme=self.protection.scheme,
            **self.protection.summary,
            web_max_requests=max_requests,
            web_max_connections=limits.max_connections,
        )
        return server

    async def _stop(self, poller: asyncio.Task[None], watcher: asyncio.Task[None], server: RunningServer) -> None:
        """Within SHUTDOWN_GRACE_SECONDS: the poll under way, the watches, the server, then the rest."""
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS  # one budget for everything below
        try:
            # A poll under way finishes (a full table takes ~1-2 s); then the loop sees `stop` and returns.
            await asyncio.wait_for(poller, timeout=SHUTDOWN_GRACE_SECONDS)
        except TimeoutError:
            log.warning("poll_abandoned_at_shutdown")
        finally:
            try:
                await asyncio.wait_for(watcher, timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("inventory_abandoned_at_shutdown")
            except Exception as exc:  # shutting down anyway: say it, do not mask the poller's outcome
                log.warning("inventory_failed_at_shutdown", error=repr(exc))
            try:
                await server.close()
            finally:  # whatever the server does, the rest is released
                self._renderer.shutdown(wait=False)
                try:
                    await self.protection.close()
                finally:
                    self._stop_events()
            log.info("agent_stopped")

    async def _poll_forever(self, stop: asyncio.Event) -> None:
        """Polls never overlap: the next starts `interval` after the previous one started, or at once if late.

        The first poll waits for the inventory: series attributed before the API's first lists would name every
        pod `external`, and Prometheus would keep those wrong series."""
        interval = self.settings.interval_seconds
        synced = asyncio.create_task(self.inventory.wait_synced())
        stopping = asyncio.create_task(stop.wait())
        while not (synced.done() or stopping.done()):
            await asyncio.wait({synced, stopping}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            await self.render_metrics()  # no poll yet: the watches' errors and progress are still served fresh
        synced.cancel()
        stopping.cancel()
        resync = self._resync or asyncio.Event()
        while not stop.is_set():
            started = time.monotonic()
            resync.clear()  # this poll's dump resynchronises whatever was lost before it
            await self._poll_once()
            await self.render_metrics()
            delay = max(0.0, interval - (time.monotonic() - started))
            woken = asyncio.create_task(_first_of(stop, resync))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken, timeout=delay)
            if resync.is_set() and not stop.is_set():
                log.info("resync_after_event_loss")
                gap = RESYNC_GAP_SECONDS - (time.monotonic() - started)
                if gap > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=gap)

    async def _poll_once(self) -> None:
        settings = self.settings
        inventory = self.inventory.current()
        health = self.health
        try:
            result: PollResult = await asyncio.to_thread(
                poll,
                inventory,
                settings.node_name,
                settings.netns,
                settings.dump_attempts,
                policy=self.label_policy,
                counting=self.counting,
                max_series=settings.max_series,
                idle_after=settings.idle_after_seconds,
                catch_up_events=self.events.catch_up if self.events is not None else None,
            )
        except (ConntrackError, NamespaceError) as exc:
            self.health = health.after_failure()
            if (exc.errno in FATAL_ERRNOS or isinstance(exc, NamespaceError)) and health.last is None:
                raise StartupError(str(exc.strerror or exc)) from exc
            self._warn("poll_failed", error=str(exc.strerror or exc), errno=exc.errno)
            return
        except Exception as exc:  # a bug must not stop the loop: count it, say it, keep serving
            self.health = health.after_failure()
            log.exception("poll_crashed", error=repr(exc))
            return
        self.health = health.after(result)
        if self.events is not None and self.events.may_stop_openings and self.counting.tracker.baseline_done:
            await asyncio.to_thread(self._stop_opening_events, self.events)
        accounting = result.table.accounting if result.table is not None else None
        if accounting is False and self._accounting is not False:
            log.warning(
                "accounting_off",
                sysctl="net.netfilter.nf_conntrack_acct=0",
                effect="no byte counters (khan_flow_bytes_total) are served",
                fix="set the sysctl to 1, or start khan with --enable-accounting",
            )
        self._accounting = accounting
        if result.malformed:
            self._warn("entries_malformed", skipped=result.malformed)
        if result.interrupted:
            self._warn("dump_inconsistent", attempts=settings.dump_attempts)
        log.debug(
            "poll_done",
            entries=result.entries,
            series=len(result.connections),
            duration_seconds=round(result.duration_seconds, 3),
        )

    def _stop_opening_events(self, reader: EventReader) -> None:
        """With the baseline taken, a dump or a DESTROY counts every connection: NEW events are half the events for
        nothing (see events.py)."""
        if self.counting.tracker.stop_openings(reader.stop_openings):
            log.info("events_new_unsubscribed", counting="dumps and DESTROY events")

    def _event_stats(self) -> EventStats | None:
        return self.events.stats if self.events is not None else None

    def _stop_events(self) -> None:
        if self.events is not None:
            self.events.stop()

    def _warn(self, event: str, **context: object) -> None:
        allowed, held = self._warnings.allow(event)
        if allowed:
            log.warning(event, suppressed_since_last=held, **context)


class _Resync:
    """Lost events, heard from the event thread: the tracker is told, and once the kernel delivers again the
    poller dumps at once to find what the lost events would have said."""

    def __init__(self, tracker: ConnectionTracker, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        self._tracker = tracker
        self._loop = loop
        self._wake = wake

    def loss_began(self) -> None:
        self._tracker.loss_began()

    def loss_ended(self, dropped: int | None) -> None:
        self._tracker.loss_ended(dropped)
        self._loop.call_soon_threadsafe(self._wake.set)


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _failed(future: asyncio.Future[JsonViews]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _read_sysctl(path: str) -> int | None:
    try:
        with open(path) as sysctl:
            return int(sysctl.read().strip())
    except (OSError, ValueError):
        return None


def run_agent(settings: Settings) -> None:
    deadline = ExitDeadline(SHUTDOWN_DEADLINE_SECONDS)
    return_large_blocks()  # each poll's big dicts go back to the system when freed (allocator.py)

    async def main() -> None:
        agent = Agent(settings)
        await agent.start()
        await agent.run(on_stopping=deadline.arm)

    asyncio.run(main())
