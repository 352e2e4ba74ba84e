"""What the API inventory says about itself: per resource, sync state, watch (re)starts, request errors and the
time of the last event. Written by the reflectors, read by the collector, both on the event loop's thread."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# Why a watch (re)started; the values of the `reason` label.
INITIAL = "initial"  # the first watch after start-up
CLOSED = "closed"  # the server ended the stream (its timeout): routine
EXPIRED = "expired"  # 410 Gone: the resourceVersion is too old, so the resource was listed again
INACTIVE = "inactive"  # nothing, not even a bookmark, arrived for too long: the stream was presumed dead
ERROR = "error"  # a request failed (connection, HTTP status, unreadable answer); retried after a backoff

# An attempt that fails with an unexpected exception (a bug, or a library release without an API khan uses) will
# fail the same way every time, unlike an outage: this many in a row make the agent unready, so that it is seen
# (and a rollout of such a build stops) instead of serving a frozen inventory behind a green /readyz.
CRASHES_BEFORE_UNREADY = 3


@dataclass
class ResourceStats:
    synced: bool = False  # the first list has succeeded
    watch_starts: Counter[str] = field(default_factory=Counter)  # by reason
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (verb, code)
    last_event: float | None = None  # monotonic time of the last list, event or bookmark
    last_error: str | None = None  # the last failure, for /readyz while not synced
    crashes_in_a_row: int = 0  # attempts ended by an unexpected exception since the last watch that worked


class WatchStats:
    def __init__(self, resources: tuple[str, ...], clock: Callable[[], float] = time.monotonic) -> None:
        self.resources = {resource: ResourceStats() for resource in resources}
        self._clock = clock

    def __getitem__(self, resource: str) -> ResourceStats:
        return self.resources[resource]

    def heard(self, resource: str) -> None:
        """A list, event or bookmark of `resource` arrived just now."""
        self.resources[resource].last_event = self._clock()

    def unsynced(self) -> list[str]:
        return [resource for resource, stats in self.resources.items() if not stats.synced]

    def crashing(self) -> list[str]:
        """Resources whose list or watch failed with an unexpected exception on each of the last attempts."""
        return [
            resource for resource, stats in self.resources.items() if stats.crashes_in_a_row >= CRASHES_BEFORE_UNREADY
        ]

    def not_ready_reason(self) -> str | None:
        """None once every resource is listed and no watch keeps crashing; else why not, with the last errors."""
        reasons: list[str] = []
        waiting = self.unsynced()
        if waiting:
            errors = [
                f"{resource}: {error}" for resource in waiting if (error := self[resource].last_error) is not None
            ]
            why = f" (last error: {'; '.join(errors)})" if errors else ""
            reasons.append(f"waiting for the first list of {', '.join(waiting)}{why}")
        reasons.extend(
            f"the watch of {resource} fails on every attempt ({self[resource].crashes_in_a_row} in a row, last error: "
            f"{self[resource].last_error})"
            for resource in self.crashing()
        )
        return "; ".join(reasons) or None

    def event_ages(self) -> dict[str, float]:
        """Seconds since each resource last heard from the API; resources that never did are left out."""
        now = self._clock()
        return {
            resource: max(0.0, now - stats.last_event)
            for resource, stats in self.resources.items()
            if stats.last_event is not None
        }
