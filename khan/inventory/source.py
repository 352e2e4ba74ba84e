"""Where the agent's inventory comes from now: a file, reloaded when it changes (the API watch comes later)."""

from __future__ import annotations

import os

import structlog

from khan.inventory.from_file import InventoryError, load_inventory
from khan.inventory.index import Inventory, build_inventory

log = structlog.get_logger("khan.inventory")


class InventorySource:
    """The last good inventory. A file that changes is reloaded before the next poll; a broken edit keeps the
    previous inventory (and says so) rather than attributing everything to `external`."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._inventory = build_inventory(())
        self._stamp: tuple[int, int] | None = None

    def load(self) -> Inventory:
        """The first load: errors are the caller's to report."""
        if self.path is None:
            log.warning("inventory_empty", reason="no --inventory given: every address is external")
            return self._inventory
        self._stamp = self._file_stamp()
        self._inventory = load_inventory(self.path)
        log.info("inventory_loaded", path=self.path, addresses=len(self._inventory), **dict(self._inventory.objects))
        return self._inventory

    def current(self) -> Inventory:
        if self.path is None:
            return self._inventory
        try:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp  # a broken file is reported once, not at every poll
                self._inventory = load_inventory(self.path)
                log.info("inventory_reloaded", path=self.path, addresses=len(self._inventory))
        except (OSError, InventoryError) as exc:
            log.warning("inventory_reload_failed", path=self.path, error=str(exc), kept_addresses=len(self._inventory))
        return self._inventory

    def _file_stamp(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size
