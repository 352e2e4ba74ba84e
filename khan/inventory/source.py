"""Where the agent's inventory comes from: a file (reloaded when it changes) or the Kubernetes API (watched).

Both present the same face to the agent (`InventoryProvider`); `choose_inventory` picks one from the settings
and imports the API client library only when the API is really used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Protocol

import structlog

from khan.inventory.api_config import find_api_config
from khan.inventory.from_file import InventoryError, load_inventory
from khan.inventory.index import Inventory, build_inventory
from khan.inventory.watch_stats import WatchStats
from khan.logs import RateLimiter
from khan.settings import Settings

if TYPE_CHECKING:
    from khan.inventory.kube import ApiInventory

log = structlog.get_logger("khan.inventory")

RELOAD_CHECK_SECONDS = 1.0  # how soon an edited --inventory file is picked up; each check is one stat()
# A load still running after this long is stuck (a FIFO without a writer, a dead network mount), not just large:
# YAML of 10,000 pods took 3 to 6 s to parse here, so 50,000 on a busy node can take half a minute.
SLOW_RELOAD_SECONDS = 120.0


class InventoryProvider(Protocol):
    async def start(self) -> None:
        """Load what is needed before serving; raises (InventoryError, ApiConfigError) on a configuration error."""

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the inventory current until `stop` is set."""

    async def wait_synced(self) -> None:
        """Return once the inventory reflects the whole cluster (at once for a file)."""

    async def close(self) -> None:
        """Release connections when `run` never ran (the agent failed to start)."""

    def current(self) -> Inventory:
        """The inventory to attribute the next poll with."""

    def not_ready_reason(self) -> str | None:
        """None once synced, else why not."""

    def watch_stats(self) -> WatchStats | None:
        """The API watches' own health; None for a file."""

    def deleted_pods(self) -> int:
        """Deleted pods still named during their grace period."""


def choose_inventory(settings: Settings) -> FileInventory | ApiInventory:
    """--inventory FILE; else the Kubernetes API if configured (see khan.inventory.api_config); else nothing,
    which attributes every address to `external` and says so."""
    if settings.inventory is not None:
        return FileInventory(settings.inventory)
    config = find_api_config(settings.kubeconfig)
    if config is None:
        return FileInventory(None)
    from khan.inventory.kube import ApiInventory

    return ApiInventory(config, settings.deleted_pod_grace_seconds, settings.watch_timeout_seconds)


class FileInventory:
    """The last good inventory from a file. The file is checked every second and reloaded when it changed, in a
    worker thread (a large cluster's dump takes seconds to parse); a broken edit keeps the previous inventory (and
    says so) rather than attributing everything to `external`."""

    def __init__(
        self, path: str | None, check_seconds: float = RELOAD_CHECK_SECONDS, slow_seconds: float = SLOW_RELOAD_SECONDS
    ) -> None:
        self.path = path
        self._check_seconds = check_seconds
        self._slow_seconds = slow_seconds
        self._inventory = build_inventory(())
        self._stamp: tuple[int, int, int] | None = None
        self._warnings = RateLimiter(period=60.0)  # a file rewritten broken every second is not a log storm

    async def start(self) -> None:
        await asyncio.to_thread(self.load)

    async def run(self, stop: asyncio.Event) -> None:
        if self.path is None:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._check_seconds)
            if stop.is_set():
                return
            reload = asyncio.create_task(asyncio.to_thread(self.reload_if_changed))
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {reload, stopping}, timeout=self._slow_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # said once: until this load returns, no edit is picked up
                log.warning("inventory_reload_stuck", path=self.path, waited_seconds=self._slow_seconds)
                await asyncio.wait({reload, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not reload.done():
                # Stopping while a read hangs (a FIFO without a writer, a dead network mount): the thread cannot be
                # interrupted, so it is left behind; the agent's shutdown deadline ends the process regardless.
                reload.cancel()
                return

    async def wait_synced(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def not_ready_reason(self) -> str | None:
        return None

    def watch_stats(self) -> WatchStats | None:
        return None

    def deleted_pods(self) -> int:
        return 0

    def load(self) -> Inventory:
        """The first load: errors (InventoryError, whatever the parser met) are the caller's to report."""
        if self.path is None:
            log.warning(
                "inventory_empty",
                reason="no --inventory and no Kubernetes API configuration: every address is external",
            )
            return self._inventory
        self._stamp = self._file_stamp()
        self._inventory = load_inventory(self.path)
        log.info("inventory_loaded", path=self.path, addresses=len(self._inventory), **dict(self._inventory.objects))
        return self._inventory

    def reload_if_changed(self) -> None:
        """Reload the file if it changed since the last attempt; on any failure keep the previous inventory.
        Runs in a worker thread: the only writer of `_inventory`, which the event loop reads."""
        assert self.path is not None
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp  # a broken file is reported once, not at every check
        try:
            inventory = load_inventory(self.path)
        except Exception as exc:  # InventoryError, or a bug: either way the agent goes on with what it had
            allowed, held = self._warnings.allow("inventory_reload_failed")
            if allowed:
                log.warning(
                    "inventory_reload_failed",
                    path=self.path,
                    error=str(exc) if isinstance(exc, InventoryError) else repr(exc),
                    kept_addresses=len(self._inventory),
                    suppressed_since_last=held,
                )
            return
        self._inventory = inventory
        self._warnings = RateLimiter(period=60.0)  # the next broken edit is news again
        log.info("inventory_reloaded", path=self.path, addresses=len(inventory), **dict(inventory.objects))

    def current(self) -> Inventory:
        return self._inventory

    def _file_stamp(self) -> tuple[int, int, int] | None:
        """What tells a changed file: a replacement (a new inode, as `kubectl ... > tmp && mv tmp FILE` makes) or
        a rewrite in place (mtime, size)."""
        assert self.path is not None
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size
