"""Health (the last poll and the totals) -> Prometheus metric families, built fresh on every scrape."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from khan import __version__
from khan.attribution.idle import state_timeouts
from khan.conntrack.events import EventStats
from khan.counting import counters
from khan.counting.counters import CounterView, Family
from khan.metrics import families as f
from khan.polling.result import Health, IdleView, PollResult

# The family each of the counting's per-family numbers is about.
FAMILY_SPECS: Mapping[Family, f.MetricSpec] = {
    counters.CONNECTION: f.CONNECTION,
    counters.OPENED: f.OPENED,
    counters.FLOW_BYTES: f.FLOW_BYTES,
    counters.TRANSACTIONS: f.TRANSACTIONS,
}


def gauge(spec: f.MetricSpec, value: float | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels or None)
    if value is not None:
        family.add_metric([], value)
    return family


def counter(spec: f.MetricSpec, value: float | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=spec.labels or None)
    if value is not None:
        family.add_metric([], value)
    return family


def families(
    health: Health, events: EventStats | None = None, interval_seconds: float | None = None
) -> Iterator[Metric]:
    """Every family of families.ALL. Values that are not known yet (no poll so far) are left out, not zeroed."""
    last = health.last
    connections = gauge(f.CONNECTION)
    if last is not None:
        for labels, count in last.connections.items():
            connections.add_metric(labels, count)
    yield connections
    if last is not None and last.idle is not None:
        yield from _idle_families(last.idle)
    if last is not None:
        yield from _limit_families(last)
    if interval_seconds is not None:
        yield gauge(f.POLL_INTERVAL, interval_seconds)
    if last is not None and last.counters is not None:
        yield from _counter_families(last.counters)
    if last is not None and (last.counters is not None or last.idle is not None):
        yield _folded_family(last)
    yield from _event_families(events)
    yield from _health_families(health, events)
    if last is not None:
        yield from _last_poll_families(last)
    info = InfoMetricFamily(f.BUILD_INFO.name, f.BUILD_INFO.help)
    info.add_metric([], {"version": __version__, "python_version": platform.python_version()})
    yield info


def _idle_families(idle: IdleView) -> Iterator[Metric]:
    for spec, values in ((f.CONNECTION_IDLE, idle.connections), (f.CONNECTION_IDLE_MAX, idle.longest)):
        family = gauge(spec)
        for labels, value in values.items():
            family.add_metric(labels, value)
        yield family
    yield gauge(f.IDLE_AFTER, idle.after_seconds)
    unknown = gauge(f.IDLE_UNKNOWN)
    for reason, entries in sorted(idle.unknown.items()):
        unknown.add_metric([reason], entries)
    yield unknown
    timeouts = gauge(f.STATE_TIMEOUT)
    for transport, state, seconds in state_timeouts(idle.timeouts):
        timeouts.add_metric([transport, state], seconds)
    yield timeouts


def _limit_families(last: PollResult) -> Iterator[Metric]:
    limits = gauge(f.CONNECTION_LIMIT)
    for labels, value in sorted(last.limits.items()):
        limits.add_metric(labels, value)
    yield limits
    ignored = gauge(f.CONNECTION_LIMITS_IGNORED)
    ignored.add_metric(["invalid"], last.limits_invalid)
    ignored.add_metric(["max_series"], last.limits_dropped)
    yield ignored


def _event_families(events: EventStats | None) -> Iterator[Metric]:
    yield gauge(f.EVENTS_SUBSCRIBED, 0 if events is None else 1)
    if events is not None:
        by_type = counter(f.EVENTS)
        by_type.add_metric(["new"], events.new)
        by_type.add_metric(["destroy"], events.destroy)
        yield by_type
        yield counter(f.EVENT_OVERFLOWS, events.overflows)
        yield counter(f.EVENTS_DROPPED, events.dropped)


def _health_families(health: Health, events: EventStats | None) -> Iterator[Metric]:
    yield counter(f.POLLS, health.polls)
    yield counter(f.POLL_ERRORS, health.poll_errors)
    yield counter(f.ENTRIES_READ, health.entries_read)
    yield counter(f.ENTRIES_MALFORMED, health.entries_malformed + (events.malformed if events is not None else 0))
    yield counter(f.DUMPS_INTERRUPTED, health.dumps_interrupted)


def _last_poll_families(last: PollResult) -> Iterator[Metric]:
    yield gauge(f.POLL_DURATION, last.duration_seconds)
    yield gauge(f.POLL_ENTRIES, last.entries)
    yield gauge(f.LAST_SUCCESS, last.finished_at)
    objects = gauge(f.INVENTORY_OBJECTS)
    for kind, number in sorted(last.inventory_objects.items()):
        objects.add_metric([kind], number)
    yield objects
    yield gauge(f.INVENTORY_ADDRESSES, last.inventory_addresses)
    table = last.table
    if table is not None:
        if table.entries is not None:
            yield gauge(f.TABLE_ENTRIES, table.entries)
        if table.limit is not None:
            yield gauge(f.TABLE_LIMIT, table.limit)
        if table.accounting is not None:
            yield gauge(f.ACCOUNTING, 1 if table.accounting else 0)
        kernel_events = counter(f.TABLE_EVENTS)
        for event, number in sorted(table.events.items()):
            kernel_events.add_metric([event], number)
        yield kernel_events


def _counter_families(counters: CounterView) -> Iterator[Metric]:
    for spec, values in (
        (f.OPENED, counters.opened),
        (f.FLOW_BYTES, counters.flow_bytes),
        (f.TRANSACTIONS, counters.transactions),
    ):
        if values is None:
            continue  # no byte counters while accounting is off
        family = counter(spec)
        for labels, value in values.items():
            family.add_metric(labels, value)
        yield family
    yield _by_family(counter(f.SERIES_EXPIRED), counters.expired)
    yield _by_family(gauge(f.SERIES_LABEL_SETS), counters.label_sets)
    yield _by_family(counter(f.SERIES_FORGOTTEN), counters.forgotten)
    yield gauge(f.TRACKED_ENTRIES, counters.tracked)
    yield counter(f.ENTRIES_VANISHED, counters.vanished)
    yield counter(f.TRACKED_ENTRIES_DROPPED, counters.dropped)
    yield counter(f.CONNECTIONS_RECOVERED, counters.recovered)
    if counters.possibly_missed is not None:
        yield counter(f.CONNECTIONS_POSSIBLY_MISSED, counters.possibly_missed)


class KhanCollector(Collector):
    """Reads whatever Health the poller swapped in last; a scrape never waits for a poll."""

    def __init__(
        self,
        current: Callable[[], Health],
        events: Callable[[], EventStats | None] = lambda: None,
        interval_seconds: float | None = None,
    ) -> None:
        self._current = current
        self._events = events
        self._interval = interval_seconds

    def collect(self) -> Iterator[Metric]:
        return families(self._current(), self._events(), self._interval)


def _folded_family(last: PollResult) -> Metric:
    """khan_series_folded: the counting's families (khan_connection among them) and the idle ones."""
    folded: dict[str, float] = {f.CONNECTION.name: last.connections_folded}
    folded.update(
        (FAMILY_SPECS[family].name, number) for family, number in (last.counters or CounterView()).folded.items()
    )
    if last.idle is not None:
        folded[f.CONNECTION_IDLE.name] = last.idle.folded
        folded[f.CONNECTION_IDLE_MAX.name] = last.idle.longest_folded
    metric = gauge(f.SERIES_FOLDED)
    for name, number in sorted(folded.items()):
        metric.add_metric([name], number)
    return metric


def _by_family(metric: GaugeMetricFamily | CounterMetricFamily, numbers: Mapping[Family, float]) -> Metric:
    """One sample per family (its only label: the family's name), in name order."""
    for name, number in sorted((FAMILY_SPECS[family].name, number) for family, number in numbers.items()):
        metric.add_metric([name], number)
    return metric
