"""Pure: what the counters and the tracker hold is bounded by --max-series and the table's limit, however many
distinct peers come and go, and the bounds never cost a count: sums stay exact and no served series goes down."""

from __future__ import annotations

import random

from khan.counting.folding import OVERFLOW, Folding
from khan.counting.store import CounterStore
from khan.counting.tracker import ConnectionTracker
from tests.unit.test_connection_tracker import dump, entry, opened_count

LABELS = ("node", "src_type", "src_name", "dst_type", "dst_name", "transport")
FOLDING = Folding(LABELS, ("node", "src_type", "dst_type", "transport"))
OVERFLOW_SERIES = ("n", "external", OVERFLOW, "pod", OVERFLOW, "tcp")


def peer(i: int) -> tuple[str, ...]:
    return ("n", "external", f"198.51.{i // 256 % 256}.{i % 256}", "pod", "web", "tcp")


def test_a_scan_of_new_peers_holds_at_most_twice_max_series_with_exact_sums() -> None:
    store = CounterStore(FOLDING, max_series=50, ttl_seconds=1e9)
    rng = random.Random(7)
    total, previous = 0, {}
    for poll in range(40):
        for i in range(poll * 1000, poll * 1000 + 1000):  # 1,000 peers never seen before, every poll
            amount = rng.randint(1, 9)
            store.add(peer(i), amount, now=poll)
            total += amount
            assert len(store) <= 2 * 50 + 1  # newcomers during a poll: at most max_series of them are admitted
        store.maintain(now=poll)
        served = store.snapshot()
        assert len(served) <= 50
        assert store.label_sets <= 2 * 50 + 1
        assert sum(served.values()) == total
        for labels, value in previous.items():
            if labels in served:
                assert served[labels] >= value
        previous = dict(served)
    assert store.folded + len(store) - 1 == 40 * 1000  # every peer is served or folded, forgotten or not
    assert store.forgotten >= store.folded - 50


def test_a_remembered_folded_label_set_keeps_following_its_overflow_series() -> None:
    store = CounterStore(FOLDING, max_series=3, ttl_seconds=1e9)
    for i in range(5):
        store.add(peer(i), 100 + i, now=0)
    store.maintain(now=0)  # peers 0-2 folded, and remembered (up to max_series are)
    assert (store.folded, store.forgotten) == (3, 0)
    folded_before = store.value(OVERFLOW_SERIES)
    store.add(peer(0), 1_000, now=1)  # the smallest, folded: its increment goes to the overflow series
    store.maintain(now=1)
    assert store.value(peer(0)) == 0
    assert store.value(OVERFLOW_SERIES) == folded_before + 1_000


def test_a_forgotten_label_set_that_comes_back_large_starts_a_new_series_and_sums_stay_exact() -> None:
    store = CounterStore(FOLDING, max_series=3, ttl_seconds=1e9, remembered=1)
    for i in range(6):
        store.add(peer(i), 10 + i, now=0)
    store.maintain(now=0)  # peers 0-3 folded, only the last of them remembered
    assert (store.folded, store.forgotten) == (4, 3)
    store.add(peer(0), 5_000, now=1)  # forgotten, and larger than any series kept: a series of its own again
    store.maintain(now=1)
    served = store.snapshot()
    assert served[peer(0)] == 5_000
    assert sum(served.values()) == sum(10 + i for i in range(6)) + 5_000


def test_forgotten_label_sets_stop_counting_as_folded_once_their_ttl_has_run_out() -> None:
    store = CounterStore(FOLDING, max_series=10, ttl_seconds=60)
    for i in range(100):
        store.add(peer(i), 1, now=0)
    store.maintain(now=0)
    assert store.folded == 100 - 9  # nine series and the overflow are served
    store.add(peer(1_000), 1, now=50)  # no bigger than the smallest kept: folded at once, and remembered
    store.maintain(now=50)
    assert store.folded == 100 - 9 + 1
    store.maintain(now=100)  # everything but the newcomer has been idle for longer than the TTL
    assert store.folded == 1
    assert store.label_sets == 2  # it and its overflow series


def test_a_newcomer_to_a_full_family_folds_at_once_unless_it_could_stay() -> None:
    store = CounterStore(FOLDING, max_series=3, ttl_seconds=1e9)
    for i in range(5):
        store.add(peer(i), 100, now=0)
    store.maintain(now=0)  # two series of 100 kept, the overflow holds the rest
    store.add(peer(10), 1, now=1)  # would be the first to fold: straight to the overflow series
    assert store.value(peer(10)) == 0
    store.add(peer(11), 1_000, now=1)  # bigger than what is kept: competes at the next fold, and stays
    assert store.value(peer(11)) == 1_000
    store.maintain(now=1)
    assert store.value(peer(11)) == 1_000
    assert len(store) <= 3


def test_an_interrupted_dump_keeps_what_it_missed_only_up_to_the_tables_limit() -> None:
    tracker = ConnectionTracker()
    tracker.limit = 100
    dump(tracker, *(entry(i, 40000 + i) for i in range(100)))
    for round_ in range(1, 6):  # every dump interrupted, each showing 100 other entries (the old ones left)
        first = round_ * 1000
        deltas = dump(tracker, *(entry(first + i, 40000 + i) for i in range(100)), complete=False)
        assert opened_count(deltas) == 100
        assert len(tracker) <= 100
    assert tracker.totals.dropped == 5 * 100
    assert tracker.totals.vanished == 5 * 100


def test_without_a_known_limit_an_interrupted_dump_keeps_every_record() -> None:
    tracker = ConnectionTracker()
    dump(tracker, *(entry(i, 40000 + i) for i in range(10)))
    dump(tracker, *(entry(100 + i, 40000 + i) for i in range(10)), complete=False)
    assert len(tracker) == 20
    assert tracker.totals.dropped == 0
