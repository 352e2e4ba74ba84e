"""Pure: --max-series folds the smallest series into overflow series with exact totals, counters never go down,
and counter series of gone pairs expire after their TTL."""

from __future__ import annotations

import random

from khan.counting.folding import OVERFLOW, Folding, fold_gauge
from khan.counting.store import CounterStore

LABELS = ("node", "src_type", "src_name", "dst_type", "dst_name", "transport")
FOLDING = Folding(LABELS, ("node", "src_type", "dst_type", "transport"))


def series(i: int, src_type: str = "pod") -> tuple[str, ...]:
    return ("n", src_type, f"client-{i}", "service", f"svc-{i % 7}", "tcp")


def test_gauge_folding_keeps_the_largest_and_the_sum() -> None:
    rng = random.Random(4)
    values = {series(i, rng.choice(["pod", "external"])): rng.randint(1, 1000) for i in range(5000)}
    folded, number = fold_gauge(values, 100, FOLDING)
    assert len(folded) <= 100
    assert sum(folded.values()) == sum(values.values())
    assert number == len(values) - (len(folded) - 2)  # two overflow groups: pod and external clients
    smallest_kept = min(v for k, v in folded.items() if OVERFLOW not in k)
    assert all(values[k] <= smallest_kept for k in values if k not in folded)
    assert folded[("n", "pod", OVERFLOW, "service", OVERFLOW, "tcp")] > 0


def test_under_the_limit_nothing_folds() -> None:
    values = {series(i): i for i in range(10)}
    assert fold_gauge(values, 10, FOLDING) == (values, 0)


def test_counters_fold_monotonically_and_later_increments_follow_the_fold() -> None:
    store = CounterStore(FOLDING, max_series=50, ttl_seconds=1e9)
    totals = 0
    previous: dict[tuple[str, ...], int] = {}
    for round_ in range(5):
        for i in range(200):
            store.add(series(i), i % 13 + round_, now=round_)
            totals += i % 13 + round_
        store.maintain(now=round_)
        values = store.snapshot()
        assert len(values) <= 50
        assert sum(values.values()) == totals
        for labels, value in previous.items():
            if labels in values:
                assert values[labels] >= value  # a served series never goes down
        previous = dict(values)
    assert store.folded > 0


def test_series_of_gone_pairs_expire_after_the_ttl_but_live_pairs_stay() -> None:
    store = CounterStore(FOLDING, max_series=1000, ttl_seconds=60)
    store.add(series(1), 5, now=0)
    store.add(series(2), 5, now=0)
    store.touch(series(2), now=50)  # still in the table
    store.maintain(now=100)
    assert dict(store.snapshot()) == {series(2): 5}
    assert store.expired == 1
    store.add(series(1), 3, now=101)  # back again: a new series, from its new increments
    assert store.value(series(1)) == 3
