"""The API inventory's state: the latest projection of every watched object, plus deleted pods for a grace period.

Reflectors feed it one list or one event at a time; the poller asks for an `Inventory`, which is rebuilt only when
something changed since the last one (at most once per poll, however many events arrived).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from cachetools import TTLCache

from khan.inventory.index import Inventory, inventory_from_projections
from khan.inventory.objects import KINDS, POD, ObjectKey, Projection

# Deleted pods remembered at once, at most; beyond it the oldest go first. A node's worth of churn is far below.
MAX_LINGERING = 100_000

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


class WatchCache:
    def __init__(
        self,
        deleted_pod_grace_seconds: float,
        *,
        max_lingering: int = MAX_LINGERING,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        # kind -> namespace -> name -> projection: keyed by strings the projections hold anyway, so that 50,000 pods
        # cost no key record each.
        self._live: dict[str, dict[str, dict[str, Projection]]] = {kind: {} for kind in KINDS}
        # A deleted pod's addresses still name it for a while: its connections outlive it in the kernel's table.
        self._grace = deleted_pod_grace_seconds
        self._lingering: TTLCache[ObjectKey, Projection] = TTLCache(
            maxsize=max_lingering, ttl=max(deleted_pod_grace_seconds, 1e-9), timer=timer
        )
        self._inventory = Inventory()
        self._dirty = False

    def replace(self, kind: str, projections: Iterable[Projection]) -> None:
        """A fresh list of one kind replaces everything known of it in one step (of two projections of one object,
        the later counts). Pods that vanished since the last list (deleted while the watch was down) linger like any
        deleted pod."""
        fresh: dict[str, dict[str, Projection]] = {}
        for projection in projections:
            fresh.setdefault(projection.owner.ns, {})[projection.owner.name] = projection
        if kind == POD:
            for ns, named in self._live[kind].items():
                listed = fresh.get(ns, {})
                for name, projection in named.items():
                    if name not in listed:
                        self._linger(projection)
        if self._lingering:
            for named in fresh.values():
                for projection in named.values():
                    self._lingering.pop(projection.key, None)
        self._live[kind] = fresh
        self._dirty = True

    def apply(self, event_type: str, projection: Projection) -> None:
        """One watch event: ADDED or MODIFIED sets the object's projection, DELETED drops it."""
        owner = projection.owner
        live = self._live[projection.kind]
        if event_type == DELETED:
            named = live.get(owner.ns)
            if named is not None:
                named.pop(owner.name, None)
                if not named:
                    del live[owner.ns]
            if projection.kind == POD:
                self._linger(projection)  # the event carries the pod's last state, IPs included
        else:
            live.setdefault(owner.ns, {})[owner.name] = projection
            if self._lingering:
                self._lingering.pop(projection.key, None)  # a pod recreated under its old name is live again
        self._dirty = True

    def inventory(self) -> Inventory:
        """The current inventory; the same object as last time when nothing changed."""
        self._expire()
        if self._dirty:
            self._dirty = False
            self._inventory = inventory_from_projections(self._projections(), fallback=self._lingering.values())
        return self._inventory

    def count(self, kind: str) -> int:
        return sum(map(len, self._live[kind].values()))

    def _projections(self) -> Iterator[Projection]:
        for by_namespace in self._live.values():
            for named in by_namespace.values():
                yield from named.values()

    @property
    def lingering(self) -> int:
        """Deleted pods whose addresses still resolve to them."""
        self._expire()  # len() of a TTLCache drops expired entries too; the next build must know
        return len(self._lingering)

    def _expire(self) -> None:
        if self._lingering.expire():
            self._dirty = True

    def _linger(self, projection: Projection) -> None:
        if (projection.packed or projection.others) and self._grace > 0:
            self._lingering[projection.key] = projection
