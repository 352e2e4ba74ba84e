"""`khan snapshot`: one poll, printed as the same text exposition the agent serves. The attributed
cousin of `conntrack -L`. Its inventory is a file, or one list of each resource from the Kubernetes API."""

from __future__ import annotations

import asyncio
import sys

from prometheus_client import CollectorRegistry, generate_latest

from khan.inventory.index import Inventory
from khan.inventory.source import FileInventory, choose_inventory
from khan.metrics.collector import KhanCollector
from khan.metrics.labels import label_policy
from khan.metrics.snapshot import Health
from khan.poll import poll
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
    )
    health = Health(
        last=result,
        polls=1,
        entries_read=result.entries,
        entries_malformed=result.malformed,
        dumps_interrupted=1 if result.interrupted else 0,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KhanCollector(lambda: health))
    sys.stdout.buffer.write(generate_latest(registry))
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
