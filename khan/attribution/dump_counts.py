"""Pure: what a dump's entries come to, by raw key: every connection, the idle ones (idle.py), the longest idle time
of each pair, and the entries whose idle time cannot be known.

Entries arrive as (raw key, remaining timeout, how many): runs.py counts runs of a shape that way in C-level calls,
and `add_flows` counts decoded flows the same way first, so the judging below runs once per distinct key and
timeout, not once per entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter
from typing import cast

from khan.attribution.connections import count_flows
from khan.attribution.idle import NEVER_JUDGED, NOT_JUDGED, UNKNOWN_REASONS, IdleRules
from khan.attribution.raw_keys import RAW_FLOW_FIELDS, PairKey, RawKey
from khan.conntrack.decode import Flow
from khan.conntrack.runs import RunCounter

# A raw key and the remaining timeout, read in one C call per flow.
_timed_key = attrgetter(*RAW_FLOW_FIELDS, "timeout")
_RAW_LENGTH = len(RAW_FLOW_FIELDS)


class DumpCounts:
    """One poll's entries, counted. Without rules (the timeouts could not be read), connections alone."""

    def __init__(self, rules: IdleRules | None) -> None:
        self.rules = rules
        self.connections: dict[RawKey, int] = {}
        self.idle: dict[RawKey, int] = {}  # entries idle at least rules.idle_after (more, as the kernel rounds)
        self.longest_idle: dict[PairKey, int] = {}  # seconds, over the pair's idle entries only
        self.unknown: dict[str, int] = dict.fromkeys(UNKNOWN_REASONS.values(), 0)  # reason -> entries

    def add_flows(self, flows: Iterable[Flow]) -> None:
        if self.rules is None:
            count_flows((flows,), self.connections)
            return
        timed: dict[tuple[object, ...], int] = {}
        get = timed.get
        for flow in flows:
            key = _timed_key(flow)
            timed[key] = get(key, 0) + 1
        self.add((cast(RawKey, key[:_RAW_LENGTH]), cast(int, key[_RAW_LENGTH]), count) for key, count in timed.items())

    def add_runs(self, runs: RunCounter) -> None:
        """A dump's runs (a timed RunCounter's)."""
        if self.rules is None:
            runs.add_to(self.connections)
        else:
            self.add(runs.items())

    def add(self, entries: Iterable[tuple[RawKey, int, int]]) -> None:
        """(raw key, remaining timeout, entries) items, each key and timeout at most once per call."""
        connections = self.connections
        get = connections.get
        rules = self.rules
        if rules is None:
            for key, _, count in entries:
                connections[key] = get(key, 0) + count
            return
        band_of, every, judge = rules.quiet_bands.get, NEVER_JUDGED, self._judge
        for key, remaining, count in entries:
            connections[key] = get(key, 0) + count
            low, high = band_of(key[0], every)
            if not low < remaining <= high:  # inside, certainly not idle: most entries of a busy table
                judge(key, remaining, count)

    def _judge(self, key: RawKey, remaining: int, count: int) -> None:
        """An entry that may be idle, or whose idle time may be unknown."""
        rules = self.rules
        assert rules is not None
        proto, src, dst, dport, tcp_state, status, endpoint = key
        seconds = rules.verdict(proto, tcp_state, status, remaining)
        if seconds > rules.idle_after:  # at least idle_after seconds of silence: the kernel rounds remaining down
            self.idle[key] = self.idle.get(key, 0) + count
            pair = (proto, src, dst, dport, endpoint)
            if seconds > self.longest_idle.get(pair, -1):
                self.longest_idle[pair] = seconds
        elif seconds < NOT_JUDGED:
            self.unknown[UNKNOWN_REASONS[seconds]] += count
