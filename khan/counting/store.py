"""Cumulative counters of one family by label set, as Prometheus expects them: they start at zero when khan
starts and never go down. Two things keep the family bounded:

- a series whose pair has neither moved nor been in the table for `ttl` seconds is dropped (it would otherwise
  be served forever after its pods are gone);
- beyond `max_series`, the smallest series fold into their overflow series: the value moves there and later
  increments follow it, so the family's sum stays exact and no series ever decreases.

Memory follows the limits, not the traffic (a scan brings a new label set per address):
- in a full family a new label set becomes a series only if it could stay (it is above the smallest series kept
  at the last fold), and only up to `max_series` more between two `maintain()` calls; the others go straight to
  their overflow series;
- at most `remembered` folded label sets are remembered, the least recently moved forgotten first. One that
  comes back is new again: small, it folds at once; large, it starts a new series, as an expired one does. Its old
  value stays in the overflow series either way.
So a store holds at most 2 * max_series series and `remembered` folded label sets, plus one overflow per group.

Used from the poller thread only; `snapshot()` gives the collector an immutable copy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType

from khan.attribution.schema import Labels
from khan.counting.folding import Folding


class CounterStore:
    def __init__(self, folding: Folding, max_series: int, ttl_seconds: float, remembered: int | None = None) -> None:
        self.folding = folding
        self.max_series = max_series
        self.ttl_seconds = ttl_seconds
        # Folded label sets whose increments keep following their overflow series: as many as are served.
        self.remembered = max_series if remembered is None else remembered
        self._values: dict[Labels, int] = {}
        self._active: dict[Labels, float] = {}  # every label set served or remembered: last sign of life
        self._folded_into: OrderedDict[Labels, Labels] = OrderedDict()  # least recently moved first
        self._floor = -1  # the smallest series kept at the last fold; -1: none yet, every new label set may stay
        self.expired = 0  # series dropped after their TTL, since start
        self.forgotten = 0  # folded label sets forgotten beyond `remembered`, since start
        # Forgotten folded label sets by their last sign of life, until their TTL would have run out: still folded,
        # as far as the served series go. One key a poll, so at most ttl / --interval of them.
        self._forgotten_seen: dict[float, int] = {}
        self._forgotten_folded = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def folded(self) -> int:
        """Label sets currently served through an overflow series: those remembered, and those forgotten within
        the TTL (one that came back since and folded again counts twice until then)."""
        return len(self._folded_into) + self._forgotten_folded

    @property
    def label_sets(self) -> int:
        """Label sets held: served series and remembered folded ones."""
        return len(self._active)

    def add(self, labels: Labels, amount: int, now: float) -> None:
        values, active = self._values, self._active
        target = self._folded_into.get(labels)
        if target is not None:
            self._folded_into.move_to_end(labels)
            active[labels] = now
        elif labels in values or self._admit(amount):
            target = labels
        else:  # a full family, and a newcomer that would be among the first to fold
            target = self.folding.overflow_of(labels)
            active[labels] = now
            self._remember_folded(labels, target, now)
        values[target] = values.get(target, 0) + amount
        active[target] = now

    def _admit(self, amount: int) -> bool:
        """Whether a new label set becomes a series of its own (until the next fold decides): while there is room,
        or up to `max_series` more if it is above the smallest series the last fold kept."""
        size = len(self._values)
        return size < self.max_series or (amount > self._floor and size < 2 * self.max_series)

    def touch(self, labels: Labels, now: float) -> None:
        """The pair is still in the table: keep its series (if it has one) alive."""
        if labels in self._active:
            self._active[labels] = now
            target = self._folded_into.get(labels)
            if target is not None:
                self._folded_into.move_to_end(labels)
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
            self._fold(now)
        forgotten_seen = self._forgotten_seen
        for seen in [seen for seen in forgotten_seen if seen < horizon]:
            self._forgotten_folded -= forgotten_seen.pop(seen)

    def _fold(self, now: float) -> None:
        overflow_of = self.folding.overflow_of
        regular = [labels for labels in self._values if not self.folding.is_overflow(labels)]
        groups = {overflow_of(labels) for labels in self._values}
        room = max(0, self.max_series - len(groups))
        regular.sort(key=self._values.__getitem__)
        cut = max(0, len(regular) - room)
        for labels in regular[:cut]:
            target = overflow_of(labels)
            self._values[target] = self._values.get(target, 0) + self._values.pop(labels)
            self._active[target] = max(self._active.get(target, 0.0), self._active.get(labels, 0.0))
            self._remember_folded(labels, target, now)
        self._floor = self._values[regular[cut]] if cut < len(regular) else -1

    def _remember_folded(self, labels: Labels, target: Labels, now: float) -> None:
        """Its increments follow `target` from now on, while it is among the `remembered` last to move."""
        folded_into = self._folded_into
        folded_into[labels] = target
        if len(folded_into) > self.remembered:
            oldest, _ = folded_into.popitem(last=False)
            seen = self._active.pop(oldest, now)
            self.forgotten += 1
            self._forgotten_folded += 1
            self._forgotten_seen[seen] = self._forgotten_seen.get(seen, 0) + 1

    def snapshot(self) -> Mapping[Labels, int]:
        return MappingProxyType(dict(self._values))

    def value(self, labels: Labels) -> int:
        return self._values.get(labels, 0)
