"""Cumulative counters of one family by label set, as Prometheus expects them: they start at zero when khan
starts and never go down. Two things keep the family bounded:

- a series whose pair has neither moved nor been in the table for `ttl` seconds is dropped (it would otherwise
  be served forever after its pods are gone);
- beyond `max_series`, the smallest series fold into their overflow series: the value moves there and later
  increments follow it, so the family's sum stays exact and no series ever decreases.

Used from the poller thread only; `snapshot()` gives the collector an immutable copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from khan.counting.folding import Folding, Labels


class CounterStore:
    def __init__(self, folding: Folding, max_series: int, ttl_seconds: float) -> None:
        self.folding = folding
        self.max_series = max_series
        self.ttl_seconds = ttl_seconds
        self._values: dict[Labels, int] = {}
        self._active: dict[Labels, float] = {}  # every label set ever given, folded or not: last sign of life
        self._folded_into: dict[Labels, Labels] = {}
        self.expired = 0  # series dropped after their TTL, since start

    def __len__(self) -> int:
        return len(self._values)

    @property
    def folded(self) -> int:
        """Label sets currently served through an overflow series."""
        return len(self._folded_into)

    def add(self, labels: Labels, amount: int, now: float) -> None:
        target = self._folded_into.get(labels, labels)
        self._values[target] = self._values.get(target, 0) + amount
        self._active[labels] = now
        if target is not labels:
            self._active[target] = now

    def touch(self, labels: Labels, now: float) -> None:
        """The pair is still in the table: keep its series (if it has one) alive."""
        if labels in self._active:
            self._active[labels] = now
            target = self._folded_into.get(labels)
            if target is not None:
                self._active[target] = now

    def maintain(self, now: float) -> None:
        """Expire series idle for longer than the TTL, then fold down to `max_series`."""
        horizon = now - self.ttl_seconds
        for labels in [labels for labels, seen in self._active.items() if seen < horizon]:
            del self._active[labels]
            self._folded_into.pop(labels, None)
            if self._values.pop(labels, None) is not None:
                self.expired += 1
        if len(self._values) > self.max_series:
            self._fold()

    def _fold(self) -> None:
        overflow_of = self.folding.overflow_of
        regular = [labels for labels in self._values if not self.folding.is_overflow(labels)]
        groups = {overflow_of(labels) for labels in self._values}
        room = max(0, self.max_series - len(groups))
        regular.sort(key=self._values.__getitem__)
        for labels in regular[: max(0, len(regular) - room)]:
            target = overflow_of(labels)
            self._values[target] = self._values.get(target, 0) + self._values.pop(labels)
            self._folded_into[labels] = target
            self._active[target] = max(self._active.get(target, 0.0), self._active.get(labels, 0.0))

    def snapshot(self) -> Mapping[Labels, int]:
        return MappingProxyType(dict(self._values))

    def value(self, labels: Labels) -> int:
        return self._values.get(labels, 0)
