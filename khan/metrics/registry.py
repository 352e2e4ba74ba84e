"""The one registry both commands expose: khan's families from the latest Health, and in the agent the process's
own (process_*, python_*). `khan agent` renders it after every poll (exposition.render); `khan snapshot` renders
its text once (exposition.render_text)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from khan.conntrack.events import EventStats
from khan.inventory.watch_stats import WatchStats
from khan.metrics.collector import KhanCollector
from khan.metrics.watch_collector import WatchCollector
from khan.polling.result import Health


def build_registry(
    health: Callable[[], Health],
    events: Callable[[], EventStats | None] = lambda: None,
    interval_seconds: float | None = None,
    process_metrics: bool = False,
) -> CollectorRegistry:
    """`health` is read on every collection: the caller swaps in a new Health after each poll."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KhanCollector(health, events, interval_seconds))
    if process_metrics:  # a long-lived process: its memory, CPU and garbage collections are worth serving
        for extra in (ProcessCollector, PlatformCollector, GCCollector):
            extra(registry=registry)
    return registry


def build_watch_registry(watch_stats: WatchStats | None, deleted_pods: Callable[[], int]) -> CollectorRegistry:
    """The API watches' own health (none for a file inventory). Their statistics change on the event loop, so the
    agent collects this registry there (a few families), not in the rendering thread."""
    registry = CollectorRegistry(auto_describe=False)
    if watch_stats is not None:
        registry.register(WatchCollector(watch_stats, deleted_pods))
    return registry
