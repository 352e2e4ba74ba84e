"""The heaviest current connections, for /flows: the K largest entries of a dump by total bytes, found without
sorting the whole table. Candidates pile up until there are twice K, then the lightest half goes; only an entry
heavier than the lightest kept (the floor) becomes a candidate."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import NamedTuple

from khan.conntrack.decode import Flow

HEAVIEST_KEPT = 10_000  # the most flows /flows may list, kept from each dump by total bytes


class HeavyFlow(NamedTuple):
    """A current connection, for /flows."""

    flow: Flow
    total_bytes: int
    first_seen: int  # unix seconds: when khan first saw the entry (the kernel's own start time is off by default)


class HeaviestFlows:
    """The heaviest flows of the last complete dump, and the candidates of the dump under way. A dump calls
    `begin`, then `offer` for each entry heavier than `floor` (the caller compares, so that the many lighter
    entries cost no call), then `finish`."""

    def __init__(self, kept: int = HEAVIEST_KEPT) -> None:
        self.kept = kept
        self.floor = -1  # every entry is a candidate until there are twice as many as kept
        self.current: list[HeavyFlow] = []  # heaviest first
        self._candidates: list[tuple[int, Flow]] = []

    def begin(self) -> None:
        self._candidates = []
        self.floor = -1

    def offer(self, total_bytes: int, flow: Flow) -> int:
        """An entry heavier than the floor; returns the floor, raised when the candidates were trimmed."""
        candidates = self._candidates
        candidates.append((total_bytes, flow))
        if len(candidates) >= 2 * self.kept:
            return self._trim()
        return self.floor

    def finish(self, first_seen: Callable[[Flow], int]) -> None:
        """The dump ended (complete or not): its heaviest become the current ones."""
        self._trim()
        self.current = [HeavyFlow(flow, total, first_seen(flow)) for total, flow in self._candidates]
        self._candidates = []

    def _trim(self) -> int:
        """Keep the heaviest candidates; the new floor is the lightest kept (-1 while there is room)."""
        candidates = self._candidates
        candidates.sort(key=itemgetter(0), reverse=True)
        del candidates[self.kept :]
        self.floor = candidates[-1][0] if candidates and len(candidates) >= self.kept else -1
        return self.floor
