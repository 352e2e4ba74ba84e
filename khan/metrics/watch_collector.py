"""The API inventory's own health -> metric families, built fresh on every scrape (API inventory only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from khan.inventory.watch_stats import WatchStats
from khan.metrics import families as f
from khan.metrics.collector import counter, gauge


def watch_families(stats: WatchStats, deleted_pods: int) -> Iterator[Metric]:
    synced = gauge(f.INVENTORY_SYNCED)
    starts = counter(f.WATCH_STARTS)
    errors = counter(f.API_ERRORS)
    for resource, resource_stats in stats.resources.items():
        synced.add_metric([resource], 1 if resource_stats.synced else 0)
        for reason, number in sorted(resource_stats.watch_starts.items()):
            starts.add_metric([resource, reason], number)
        for (verb, code), number in sorted(resource_stats.errors.items()):
            errors.add_metric([resource, verb, code], number)
    ages = gauge(f.LAST_EVENT_AGE)
    for resource, age in stats.event_ages().items():
        ages.add_metric([resource], age)
    yield from (synced, starts, errors, ages)
    yield gauge(f.LINGERING_PODS, deleted_pods)


class WatchCollector(Collector):
    def __init__(self, stats: WatchStats, deleted_pods: Callable[[], int]) -> None:
        self._stats = stats
        self._deleted_pods = deleted_pods

    def collect(self) -> Iterator[Metric]:
        return watch_families(self._stats, self._deleted_pods())
