"""The agent's composition root: inventory, the poll loop in a worker thread, the HTTP server, signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time
from dataclasses import replace

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from khan.conntrack.namespace import NamespaceError
from khan.conntrack.netlink import ConntrackError
from khan.inventory.api_config import ApiConfigError
from khan.inventory.from_file import InventoryError
from khan.inventory.source import InventoryProvider, choose_inventory
from khan.logs import RateLimiter
from khan.metrics.collector import KhanCollector
from khan.metrics.snapshot import Health, PollResult
from khan.metrics.watch_collector import WatchCollector
from khan.poll import poll
from khan.settings import Settings
from khan.web import make_app

log = structlog.get_logger("khan.agent")

SHUTDOWN_GRACE_SECONDS = 4.0  # SIGTERM to exit stays within Kubernetes' expectations (and the issue's 5 s)
FATAL_ERRNOS = frozenset({errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT})  # retrying cannot help


class StartupError(Exception):
    """The agent cannot start; the message is the one line the operator sees."""


class Agent:
    def __init__(self, settings: Settings, inventory: InventoryProvider | None = None) -> None:
        self.settings = settings
        self.inventory: InventoryProvider = inventory or choose_inventory(settings)
        self.health = Health()  # swapped, never mutated: scrapes read it without locks
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(KhanCollector(lambda: self.health))
        watch_stats = self.inventory.watch_stats()
        if watch_stats is not None:  # the API inventory reports on its watches
            self.registry.register(WatchCollector(watch_stats, self.inventory.deleted_pods))
        for extra in (ProcessCollector, PlatformCollector, GCCollector):
            extra(registry=self.registry)
        self._warnings = RateLimiter(period=60.0)

    async def start(self) -> None:
        """What must work before serving: the inventory's file or API configuration. Raises StartupError."""
        try:
            await self.inventory.start()
        except (InventoryError, ApiConfigError) as exc:
            raise StartupError(str(exc)) from exc

    def render_metrics(self) -> bytes:
        return generate_latest(self.registry)

    def not_ready_reason(self) -> str | None:
        inventory = self.inventory.not_ready_reason()
        if inventory is not None:
            return f"inventory not synced: {inventory}"
        return None if self.health.last is not None else "no successful poll yet"

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runner = web.AppRunner(make_app(self.render_metrics, self.not_ready_reason), access_log=None)
        await runner.setup()
        host = self.settings.listen_host or None
        try:
            await web.TCPSite(runner, host, self.settings.listen_port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            await self.inventory.close()
            where = f"{self.settings.listen_host}:{self.settings.listen_port}"
            raise StartupError(f"cannot listen on {where}: {os.strerror(exc.errno) if exc.errno else exc}") from exc
        log.info(
            "agent_started",
            listen=f"{self.settings.listen_host}:{self.settings.listen_port}",
            node=self.settings.node_name,
            inventory=self.settings.inventory or "kubernetes-api",
            netns=self.settings.netns,
            interval_seconds=self.settings.interval_seconds,
        )
        watcher = asyncio.create_task(self.inventory.run(stop), name="inventory")
        poller = asyncio.create_task(self._poll_forever(stop), name="poller")
        stopping = asyncio.create_task(stop.wait(), name="stopping")
        await asyncio.wait({poller, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS  # one budget for everything below
        try:
            # A poll under way finishes (a full table takes ~1-2 s); then the loop sees `stop` and returns.
            await asyncio.wait_for(poller, timeout=SHUTDOWN_GRACE_SECONDS)
        except TimeoutError:
            log.warning("poll_abandoned_at_shutdown")
        finally:
            stopping.cancel()
            try:
                await asyncio.wait_for(watcher, timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("inventory_abandoned_at_shutdown")
            except Exception as exc:  # shutting down anyway: say it, do not mask the poller's outcome
                log.warning("inventory_failed_at_shutdown", error=repr(exc))
            await runner.cleanup()
            log.info("agent_stopped")

    async def _poll_forever(self, stop: asyncio.Event) -> None:
        """Polls never overlap: the next starts `interval` after the previous one started, or at once if late.

        The first poll waits for the inventory: series attributed before the API's first lists would name every
        pod `external`, and Prometheus would keep those wrong series."""
        interval = self.settings.interval_seconds
        synced = asyncio.create_task(self.inventory.wait_synced())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({synced, stopping}, return_when=asyncio.FIRST_COMPLETED)
        synced.cancel()
        stopping.cancel()
        while not stop.is_set():
            started = time.monotonic()
            await self._poll_once()
            delay = max(0.0, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

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
                outside=settings.outside,
            )
        except (ConntrackError, NamespaceError) as exc:
            self.health = replace(health, polls=health.polls + 1, poll_errors=health.poll_errors + 1)
            if (exc.errno in FATAL_ERRNOS or isinstance(exc, NamespaceError)) and health.last is None:
                raise StartupError(str(exc.strerror or exc)) from exc
            self._warn("poll_failed", error=str(exc.strerror or exc), errno=exc.errno)
            return
        except Exception as exc:  # a bug must not stop the loop: count it, say it, keep serving
            self.health = replace(health, polls=health.polls + 1, poll_errors=health.poll_errors + 1)
            log.exception("poll_crashed", error=repr(exc))
            return
        self.health = replace(
            health,
            last=result,
            polls=health.polls + 1,
            entries_read=health.entries_read + result.entries,
            entries_malformed=health.entries_malformed + result.malformed,
            dumps_interrupted=health.dumps_interrupted + (1 if result.interrupted else 0),
        )
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

    def _warn(self, event: str, **context: object) -> None:
        allowed, held = self._warnings.allow(event)
        if allowed:
            log.warning(event, suppressed_since_last=held, **context)


def run_agent(settings: Settings) -> None:
    async def main() -> None:
        agent = Agent(settings)
        await agent.start()
        await agent.run()

    asyncio.run(main())
