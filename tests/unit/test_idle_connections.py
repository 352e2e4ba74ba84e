"""Idle time from remaining timeouts (attribution/idle.py), its tallies by raw key and pair (dump_counts.py), the
folding of a family of maxima, and the sysctls they are read from (conntrack/timeouts.py)."""

from __future__ import annotations

import operator
import random
import socket
from pathlib import Path

import pytest

from khan.attribution.connections import attribute_connections, attribute_longest
from khan.attribution.dump_counts import DumpCounts
from khan.attribution.idle import (
    ABOVE_STATE_TIMEOUT,
    NOT_JUDGED,
    SHORT_TIMER,
    IdleRules,
    state_timeouts,
)
from khan.attribution.labels import Attributor
from khan.attribution.raw_keys import RawKey
from khan.attribution.schema import pair_of
from khan.conntrack.decode import (
    IPS_ASSURED,
    IPS_FIXED_TIMEOUT,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    NO_TCP_STATE,
    TCP_STATE_NAMES,
    Flow,
)
from khan.conntrack.timeouts import StateTimeouts, read_state_timeouts
from khan.counting.counters import CONNECTION_FOLDING, OPENED_FOLDING
from khan.counting.folding import OVERFLOW, fold_as, fold_gauge
from khan.inventory.index import build_inventory
from khan.polling.poll import fold_idle_as, idle_view

DEFAULTS = StateTimeouts(
    tcp_timeout_established=432_000,
    tcp_timeout_unacknowledged=300,
    tcp_timeout_max_retrans=300,
    tcp_timeout_close=10,
    udp_timeout=30,
    udp_timeout_stream=120,
)
TCP, UDP, UDPLITE, ICMP = 6, 17, 136, 1
ESTABLISHED = TCP_STATE_NAMES.index("ESTABLISHED")
ASSURED = IPS_SEEN_REPLY | IPS_ASSURED
CLIENT, OTHER, SERVER = b"\n\0\0\1", b"\n\0\0\2", b"\n\0\0\x09"


def verdict(proto: int, state: int, status: int, remaining: int, timeouts: StateTimeouts = DEFAULTS) -> int:
    return IdleRules(timeouts, 600).verdict(proto, state, status, remaining)


def test_an_established_connection_has_been_idle_its_timeout_less_what_remains() -> None:
    assert verdict(TCP, ESTABLISHED, ASSURED, 431_999) == 1
    assert verdict(TCP, ESTABLISHED, ASSURED, 300_000) == 132_000
    assert verdict(TCP, ESTABLISHED, ASSURED, 301) == 431_699


@pytest.mark.parametrize("state", [name for name in TCP_STATE_NAMES if name != "ESTABLISHED"])
def test_opening_and_closing_states_are_never_judged(state: str) -> None:
    for remaining in (0, 5, 60, 431_000):
        assert verdict(TCP, TCP_STATE_NAMES.index(state), ASSURED, remaining) == NOT_JUDGED


def test_more_time_left_than_the_state_gives_is_unknown() -> None:
    assert verdict(TCP, ESTABLISHED, ASSURED, 432_001) == ABOVE_STATE_TIMEOUT
    assert verdict(TCP, ESTABLISHED, ASSURED, 432_000) == 0
    assert verdict(UDP, NO_TCP_STATE, IPS_SEEN_REPLY, 31) == ABOVE_STATE_TIMEOUT  # not assured: udp_timeout
    assert verdict(UDP, NO_TCP_STATE, ASSURED, 121) == ABOVE_STATE_TIMEOUT


def test_an_established_timer_no_longer_than_a_short_one_is_unknown() -> None:
    assert verdict(TCP, ESTABLISHED, ASSURED, 300) == SHORT_TIMER
    assert verdict(TCP, ESTABLISHED, ASSURED, 0) == SHORT_TIMER
    longer_unacknowledged = DEFAULTS._replace(tcp_timeout_unacknowledged=900)
    assert verdict(TCP, ESTABLISHED, ASSURED, 900, longer_unacknowledged) == SHORT_TIMER
    assert verdict(TCP, ESTABLISHED, ASSURED, 901, longer_unacknowledged) == 431_099


def test_the_close_timer_an_rst_may_leave_counts_as_short_too() -> None:
    short_others = DEFAULTS._replace(tcp_timeout_unacknowledged=5, tcp_timeout_max_retrans=5, tcp_timeout_close=10)
    assert verdict(TCP, ESTABLISHED, ASSURED, 10, short_others) == SHORT_TIMER
    assert verdict(TCP, ESTABLISHED, ASSURED, 11, short_others) == 431_989


@pytest.mark.parametrize("untimed", [IPS_FIXED_TIMEOUT, IPS_OFFLOAD])
def test_fixed_timeouts_and_offloaded_entries_are_not_judged(untimed: int) -> None:
    # An offloaded entry comes without its timeout (read as 0): judged, it would look idle for the whole timeout.
    for proto, state in ((TCP, ESTABLISHED), (UDP, NO_TCP_STATE)):
        for remaining in (0, 10, 400_000):
            assert verdict(proto, state, ASSURED | untimed, remaining) == NOT_JUDGED


def test_short_timers_not_shorter_than_the_established_one_are_never_set() -> None:
    short_established = DEFAULTS._replace(tcp_timeout_established=200)
    assert verdict(TCP, ESTABLISHED, ASSURED, 50, short_established) == 150
    assert verdict(TCP, ESTABLISHED, ASSURED, 11, short_established) == 189  # the close timer (10 s) is shorter


def test_udp_is_judged_by_the_stream_timeout_once_assured() -> None:
    assert verdict(UDP, NO_TCP_STATE, 0, 10) == 20  # unreplied
    assert verdict(UDP, NO_TCP_STATE, IPS_SEEN_REPLY, 0) == 30  # replied in its first two seconds
    assert verdict(UDP, NO_TCP_STATE, ASSURED, 100) == 20
    assert verdict(UDPLITE, NO_TCP_STATE, ASSURED, 100) == 20


def test_other_protocols_and_unreadable_timeouts_are_not_judged() -> None:
    assert verdict(ICMP, NO_TCP_STATE, ASSURED, 10) == NOT_JUDGED
    unreadable = StateTimeouts(None, None, None, None, None, None)
    assert verdict(TCP, ESTABLISHED, ASSURED, 10, unreadable) == NOT_JUDGED
    assert verdict(UDP, NO_TCP_STATE, ASSURED, 10, unreadable) == NOT_JUDGED
    assert list(state_timeouts(unreadable)) == []


def test_the_judged_states_are_named_as_khan_connection_names_them() -> None:
    assert list(state_timeouts(DEFAULTS)) == [
        ("tcp", "ESTABLISHED", 432_000),
        ("udp", "UNREPLIED", 30),
        ("udp", "REPLIED", 30),
        ("udp", "ASSURED", 120),
    ]


def key(src: bytes = CLIENT, proto: int = TCP, state: int = ESTABLISHED, status: int = ASSURED) -> RawKey:
    return (proto, src, SERVER, 5432, state, status, SERVER)


def test_idle_entries_are_tallied_by_key_and_the_longest_by_pair() -> None:
    counts = DumpCounts(IdleRules(DEFAULTS, 600))
    time_wait = TCP_STATE_NAMES.index("TIME_WAIT")
    counts.add(
        [
            (key(), 431_999, 4),  # busy
            (key(), 431_000, 2),  # idle 1,000 s
            (key(), 400_000, 1),  # idle 32,000 s
            (key(status=ASSURED | 0x100), 431_300, 1),  # another raw key of the same pair, idle 700 s
            (key(OTHER), 431_500, 3),  # 500 s: not yet idle
            (key(OTHER, state=time_wait), 10, 5),  # closing: never idle
            (key(OTHER), 200, 1),  # short timer
            (key(OTHER), 500_000, 2),  # above the state's timeout
        ]
    )
    assert counts.connections == {
        key(): 7,
        key(status=ASSURED | 0x100): 1,
        key(OTHER): 6,
        key(OTHER, state=time_wait): 5,
    }
    assert counts.idle == {key(): 3, key(status=ASSURED | 0x100): 1}
    assert counts.longest_idle == {(TCP, CLIENT, SERVER, 5432, SERVER): 32_000}
    assert counts.unknown == {"above_state_timeout": 2, "short_timer": 1}


def test_an_entry_counts_idle_only_once_surely_silent_for_idle_after() -> None:
    # The kernel rounds the remaining seconds down: 600 s "idle" may be 599.5 s of silence.
    counts = DumpCounts(IdleRules(DEFAULTS, 600))
    counts.add([(key(), 432_000 - 600, 1), (key(OTHER), 432_000 - 601, 1)])
    assert counts.idle == {key(OTHER): 1}


def test_skipping_the_quiet_band_judges_exactly_as_judging_every_entry() -> None:
    """The fast path (IdleRules.quiet_bands) against verdict() on every entry, over random sysctls (some unreadable,
    established shorter than the short timers), thresholds, states, status bits and remaining timeouts."""
    rng = random.Random(16)

    def some(low: int, high: int) -> int | None:
        return None if rng.random() < 0.1 else rng.randrange(low, high)

    for _ in range(300):
        timeouts = StateTimeouts(some(1, 1_000), some(0, 600), some(0, 600), some(0, 60), some(1, 200), some(1, 300))
        rules = IdleRules(timeouts, rng.randrange(1, 1_200))
        entries = []
        for port in range(40):
            proto = rng.choice((TCP, UDP, UDPLITE, ICMP))
            state = rng.randrange(len(TCP_STATE_NAMES)) if proto == TCP else NO_TCP_STATE
            status = rng.choice((0, IPS_SEEN_REPLY, ASSURED, ASSURED | IPS_OFFLOAD))
            entries.append(((proto, CLIENT, SERVER, port, state, status, SERVER), rng.randrange(0, 1_300), 1))
        fast = DumpCounts(rules)
        fast.add(entries)
        idle, longest, unknown = {}, {}, dict.fromkeys(("above_state_timeout", "short_timer"), 0)
        for raw, remaining, count in entries:
            seconds = rules.verdict(raw[0], raw[4], raw[5], remaining)
            if seconds > rules.idle_after:
                idle[raw] = count
                pair = (raw[0], raw[1], raw[2], raw[3], raw[6])
                longest[pair] = max(longest.get(pair, 0), seconds)
            elif seconds in (ABOVE_STATE_TIMEOUT, SHORT_TIMER):
                unknown[{ABOVE_STATE_TIMEOUT: "above_state_timeout", SHORT_TIMER: "short_timer"}[seconds]] += count
        assert (fast.idle, fast.longest_idle, fast.unknown) == (idle, longest, unknown)


def test_decoded_flows_are_tallied_as_runs_are() -> None:
    def flow(src: bytes, remaining: int) -> Flow:
        return Flow(2, TCP, src, SERVER, 40000, 5432, SERVER, src, 5432, 40000, ASSURED, ESTABLISHED, 1, 0, 0,
                    0, 0, 0, 0, remaining)  # fmt: skip

    remaining = [431_999, 431_000, 431_000, 400_000, 100, 431_999]
    rules = IdleRules(DEFAULTS, 600)
    by_flows = DumpCounts(rules)
    by_flows.add_flows([flow(CLIENT, seconds) for seconds in remaining])
    by_items = DumpCounts(rules)
    by_items.add([(key(), 431_999, 2), (key(), 431_000, 2), (key(), 400_000, 1), (key(), 100, 1)])
    assert vars(by_flows) == vars(by_items)
    assert by_flows.idle == {key(): 3}

    untimed = DumpCounts(None)
    untimed.add_flows([flow(CLIENT, seconds) for seconds in remaining])
    assert untimed.connections == {key(): 6}
    assert untimed.idle == {}
    assert untimed.longest_idle == {}


def test_pairs_whose_labels_meet_keep_the_longest() -> None:
    names = Attributor(build_inventory(()), "node1")
    longest = attribute_longest(
        {(TCP, CLIENT, SERVER, 5432, SERVER): 700, (TCP, CLIENT, SERVER, 5432, OTHER): 9_000}, names
    )
    assert list(longest.values()) == [9_000]  # the endpoint is no label: one pair


def test_a_family_folds_as_another_was_folded() -> None:
    def pair(name: str) -> tuple[str, ...]:
        return ("n", "pod", "", "ns", "app", name, "pod", "", "ns", "db", "db-0", "5432", "tcp", "source")

    longest = {pair("kept"): 100, pair("a"): 7_000, pair("b"): 9_000}
    folded, count = fold_as(longest, {pair("kept")}, OPENED_FOLDING, max)
    overflow = OPENED_FOLDING.overflow_of(pair("a"))
    assert folded == {pair("kept"): 100, overflow: 9_000}  # the largest folded, not their sum
    assert count == 2
    summed, _ = fold_as(longest, {pair("kept")}, OPENED_FOLDING, operator.add)
    assert summed[overflow] == 16_000


def test_timeouts_are_read_from_the_sysctls_and_missing_ones_are_none(tmp_path: Path) -> None:
    for name, text in (
        ("tcp_timeout_established", "7200\n"),
        ("tcp_timeout_unacknowledged", "300\n"),
        ("udp_timeout", "garbage\n"),
        ("udp_timeout_stream", "-1\n"),
    ):
        (tmp_path / f"nf_conntrack_{name}").write_text(text)
    assert read_state_timeouts(tmp_path) == StateTimeouts(7200, 300, None, None, None, None)


def test_the_idle_families_fold_as_khan_connection_does() -> None:
    """300 outside clients to one server, each with 3 connections (2 of them idle 1,000 s + i): under
    --max-series 100 the idle series and the longest idle times keep their own series exactly where
    khan_connection does, so idle / total is right for every series, the overflow series included."""
    counts = DumpCounts(IdleRules(DEFAULTS, 600))
    clients = [bytes((192, 0, 2 + i // 250, i % 250 + 1)) for i in range(300)]
    counts.add((key(client), 431_000 - i, 2) for i, client in enumerate(clients))
    counts.add((key(client), 431_999, 1) for client in clients)
    names = Attributor(build_inventory(()), "node1")
    served, folded = fold_gauge(attribute_connections(counts.connections, names), 100, CONNECTION_FOLDING)
    view = idle_view(counts, names)
    assert view is not None
    view = fold_idle_as(view, served)
    assert set(view.connections) == set(served)
    assert view.folded == folded == 201  # 99 kept by name, the rest in their group's overflow series
    assert sum(view.connections.values()) == 600  # folding sums: none lost
    (overflow,) = [labels for labels in served if OVERFLOW in labels]
    assert view.connections[overflow] / served[overflow] == 2 / 3
    assert {pair_of(labels) for labels in served} == set(view.longest)
    assert view.longest_folded == 201
    kept_ips = {labels[2] for labels in served}  # src_ip
    folded_seconds = [1_000 + i for i, client in enumerate(clients) if socket.inet_ntoa(client) not in kept_ips]
    assert len(folded_seconds) == 201
    assert view.longest[pair_of(overflow)] == max(folded_seconds)  # the longest of those folded


def test_no_idle_view_without_timeouts() -> None:
    assert idle_view(DumpCounts(None), Attributor(build_inventory(()), "node1")) is None
