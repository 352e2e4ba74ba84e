"""The heaviest current connections, for /flows: the K largest entries of a dump by total bytes, found without
sorting the whole table. Candidates pile up until there are twice K, then the lightest half goes; only an entry
heavier than the lightest kept (the floor) becomes a candidate."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import NamedTuple

from khan.conntrack.decode import Flow
from khan.conntrack.runs import StoredEntry

HEAVIEST_KEPT = 10_000  # the most flows /flows may list, kept from each dump by total bytes


class HeavyFlow(NamedTuple):
    """A current connection, for /flows."""

    flow: Flow
    total_bytes: int
    first_seen: int  # unix seconds: when khan first saw the entry (the kernel's own start time is off by default)


class HeaviestFlows:
    """The heaviest flows of the last dump, and the candidates of the dump under way. A dump calls `begin`; for
    each entry heavier than `floor` it appends (total bytes, flow) to `candidates`, and calls `trim` (which raises
    the floor) once they are `crowded`; then `finish`. The dump loop does this inline: a method call per
    candidate made an idle dump 4 % slower, and one whose counters grew 6 %."""

    def __init__(self, kept: int = HEAVIEST_KEPT) -> None:
        self.kept = kept
        self.floor = -1  # every entry is a candidate until there are twice as many as kept
        self.crowded = 2 * kept  # candidates that make a trim
        self.current: list[HeavyFlow] = []  # heaviest first
        # (total bytes, the entry): a Flow, or the bytes of one read in a run, decoded only if it is kept.
        self.candidates: list[tuple[int, Flow | StoredEntry]] = []

    def begin(self) -> None:
        self.candidates = []
        self.floor = -1

    def finish(self, first_seen: Callable[[Flow], int]) -> None:
        """The dump ended (complete or not): its heaviest become the current ones."""
        self.trim()
        new = tuple.__new__  # a NamedTuple's own constructor is a Python call: 3 times as slow, 10,000 times a dump
        flows = [(total, entry.flow() if isinstance(entry, StoredEntry) else entry) for total, entry in self.candidates]
        self.current = [new(HeavyFlow, (flow, total, first_seen(flow))) for total, flow in flows]
        self.candidates = []

    def trim(self) -> int:
        """Keep the heaviest candidates; the new floor is the lightest kept (-1 while there is room)."""
        candidates = self.candidates
        candidates.sort(key=itemgetter(0), reverse=True)
        del candidates[self.kept :]
        self.floor = candidates[-1][0] if candidates and len(candidates) >= self.kept else -1
        return self.floor
