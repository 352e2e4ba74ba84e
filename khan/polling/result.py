"""What one poll produced, and the totals since start-up: the records the metrics and the JSON views read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from khan.attribution.schema import Labels
from khan.conntrack.table import TableStats
from khan.conntrack.timeouts import StateTimeouts
from khan.counting.counters import CounterView


@dataclass(frozen=True)
class IdleView:
    """The idle connections one poll found (--idle-after), as served."""

    after_seconds: int
    timeouts: StateTimeouts  # the namespace's state timeouts the poll judged by
    connections: Mapping[Labels, int]  # khan_connection_idle: ConnectionLabels, and overflow series
    longest: Mapping[Labels, int]  # khan_connection_idle_seconds_max: PAIR_LABELS, and overflow series
    unknown: Mapping[str, int]  # reason -> entries whose idle time could not be known
    folded: int = 0  # label sets of `connections` folded by --max-series
    longest_folded: int = 0


@dataclass(frozen=True)
class PollResult:
    """One successful poll, as the collector reads it. Never mutated: each poll swaps in a new one."""

    node: str
    connections: Mapping[Labels, int]  # ConnectionLabels, and tuples for the overflow series
    entries: int  # entries read and counted; equals the sum of `connections`
    malformed: int
    interrupted: bool  # the kernel flagged every attempt's dump as inconsistent; this one was kept anyway
    duration_seconds: float
    finished_at: float  # unix time
    table: TableStats | None
    inventory_objects: Mapping[str, int] = field(default_factory=dict)
    inventory_addresses: int = 0
    counters: CounterView | None = None  # None where nothing is counted (khan snapshot)
    limits: Mapping[Labels, int] = field(default_factory=dict)  # declared connection limits, LimitLabels
    limits_invalid: int = 0  # objects whose limit annotation is not a limit
    limits_dropped: int = 0  # destinations beyond --max-series whose limit is not served
    idle: IdleView | None = None  # None: idle connections were not judged
    connections_folded: int = 0  # label sets of khan_connection folded by --max-series

    @staticmethod
    def freeze(connections: dict[Labels, int]) -> Mapping[Labels, int]:
        return MappingProxyType(connections)


@dataclass(frozen=True)
class Health:
    """Totals since start-up and the last good poll; replaced, never mutated, after every poll."""

    last: PollResult | None = None
    polls: int = 0
    poll_errors: int = 0
    entries_read: int = 0
    entries_malformed: int = 0
    dumps_interrupted: int = 0

    def after(self, result: PollResult) -> Health:
        """The health once `result` is in: it becomes the last poll, and its numbers join the totals."""
        return replace(
            self,
            last=result,
            polls=self.polls + 1,
            entries_read=self.entries_read + result.entries,
            entries_malformed=self.entries_malformed + result.malformed,
            dumps_interrupted=self.dumps_interrupted + (1 if result.interrupted else 0),
        )

    def after_failure(self) -> Health:
        """The health once a poll failed: the last good poll stays served."""
        return replace(self, polls=self.polls + 1, poll_errors=self.poll_errors + 1)
