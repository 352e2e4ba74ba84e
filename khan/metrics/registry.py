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
from khan.metrics.collector import KhanCollector
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
