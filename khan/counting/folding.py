"""Pure: keeping a family within --max-series. Beyond the limit the smallest series fold into one overflow series
per group (the labels a family keeps when folding: src_type, dst_type, transport, ...), so sums stay exact."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from khan.attribution.schema import Labels

OVERFLOW = "(overflow)"  # parentheses never occur in a Kubernetes name, so no real series can look like this


class Folding:
    """Which labels of a family survive folding. Name labels become OVERFLOW, the rest of the dropped ones ""."""

    def __init__(self, labels: tuple[str, ...], kept: tuple[str, ...]) -> None:
        unknown = set(kept) - set(labels)
        if unknown:
            raise ValueError(f"folding keeps labels the family lacks: {sorted(unknown)}")
        self.labels = labels
        self._spec = tuple(
            (True, "") if name in kept else (False, OVERFLOW if name.endswith("_name") else "") for name in labels
        )

    def overflow_of(self, labels: Labels) -> Labels:
        return tuple(value if keep else filler for value, (keep, filler) in zip(labels, self._spec, strict=True))

    def is_overflow(self, labels: Labels) -> bool:
        return self.overflow_of(labels) == labels and OVERFLOW in labels


def fold_gauge(series: Mapping[Labels, int], max_series: int, folding: Folding) -> tuple[dict[Labels, int], int]:
    """At most `max_series` series: the largest stay, the rest are summed into their overflow series.
    Returns the series and how many were folded."""
    if len(series) <= max_series:
        return dict(series), 0
    groups = {folding.overflow_of(labels) for labels in series}
    room = max(0, max_series - len(groups))
    ranked = sorted(series.items(), key=lambda item: item[1], reverse=True)
    kept = dict(ranked[:room])
    for labels, value in ranked[room:]:
        overflow = folding.overflow_of(labels)
        kept[overflow] = kept.get(overflow, 0) + value
    return kept, len(ranked) - room


def fold_as(
    series: Mapping[Labels, int], kept: Collection[Labels], folding: Folding, combine: Callable[[int, int], int]
) -> tuple[dict[Labels, int], int]:
    """Fold a family the way another was folded: a series whose label set `kept` holds stays, the others are
    combined (summed, or their maximum) into their overflow series. Returns the series and how many were folded."""
    out: dict[Labels, int] = {}
    folded = 0
    for labels, value in series.items():
        if labels not in kept:
            labels = folding.overflow_of(labels)
            folded += 1
        out[labels] = combine(out[labels], value) if labels in out else value
    return out, folded
