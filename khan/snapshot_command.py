"""`khan snapshot`: one poll, printed as the same text exposition the agent serves. The attributed
cousin of `conntrack -L`. Its inventory is a file, or one list of each resource from the Kubernetes API."""

from __future__ import annotations

import asyncio
import sys

from khan.attribution.labels import label_policy
from khan.inventory.index import Inventory
from khan.inventory.source import FileInventory, choose_inventory
from khan.metrics.exposition import render_text
from khan.metrics.registry import build_registry
from khan.polling.poll import poll
from khan.polling.result import Health
from khan.settings import Settings


def run_snapshot(settings: Settings) -> None:
    inventory = load_inventory_once(settings)
    result = poll(
        inventory,
        settings.node_name,
        settings.netns,
        settings.dump_attempts,
        policy=label_policy(settings),
        max_series=settings.max_series,
        idle_after=settings.idle_after_seconds,
    )
    health = Health().after(result)  # the same path as the agent's, for one poll
    sys.stdout.buffer.write(render_text(build_registry(lambda: health)))
    sys.stdout.flush()


def load_inventory_once(settings: Settings) -> Inventory:
    source = choose_inventory(settings)
    if isinstance(source, FileInventory):
        return source.load()

    async def listed() -> Inventory:
        await source.start()
        await source.list_once()
        return source.current()

    return asyncio.run(listed())
