"""The counter side of a poll: the tracker's deltas, attributed, added to the cumulative families; and what a
scrape or the JSON endpoints read of them, as one immutable view. Runs in the poller thread."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from khan.attribution.connections import attribute_pairs, attribute_transactions
from khan.attribution.labels import Attributor, address_text
from khan.attribution.raw_keys import TransactionField
from khan.attribution.schema import (
    CONNECTION_LABELS,
    FLOW_BYTES_LABELS,
    PAIR_LABELS,
    TRANSACTION_LABELS,
    Labels,
    pair_of,
)
from khan.counting.deltas import Deltas
from khan.counting.folding import Folding
from khan.counting.heaviest import HeavyFlow
from khan.counting.store import CounterStore
from khan.counting.tracker import ConnectionTracker

# What an overflow series keeps of each family (--max-series).
CONNECTION_FOLDING = Folding(CONNECTION_LABELS, ("node", "src_type", "dst_type", "transport", "state", "seen_from"))
OPENED_FOLDING = Folding(PAIR_LABELS, ("node", "src_type", "dst_type", "transport", "seen_from"))
BYTES_FOLDING = Folding(FLOW_BYTES_LABELS, ("node", "src_type", "dst_type", "transport", "seen_from", "direction"))
TRANSACTIONS_FOLDING = Folding(TRANSACTION_LABELS, ("node", "transport"))
_ENDPOINT_FOLDING = Folding(("service_id", "endpoint_ip"), ())
ENDPOINTS_KEPT = 100_000  # /transactions: (service, endpoint) pairs remembered; a cluster has fewer endpoints

# The families a CounterView's per-family numbers are keyed by; the metrics name them.
Family = Literal["connection", "opened", "flow_bytes", "transactions"]
CONNECTION: Family = "connection"
OPENED: Family = "opened"
FLOW_BYTES: Family = "flow_bytes"
TRANSACTIONS: Family = "transactions"


@dataclass(frozen=True)
class CounterView:
    """The counters after one poll, never mutated."""

    opened: Mapping[Labels, int] = field(default_factory=dict)
    flow_bytes: Mapping[Labels, int] | None = None  # None: accounting is off, no byte counters are served
    transactions: Mapping[Labels, int] = field(default_factory=dict)
    endpoints: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # service ns/name -> endpoint ip
    heaviest: tuple[HeavyFlow, ...] = ()
    folded: Mapping[Family, int] = field(default_factory=dict)  # family -> label sets folded
    expired: Mapping[Family, int] = field(default_factory=dict)  # family -> series expired since start
    tracked: int = 0
    vanished: int = 0
    recovered: int = 0
    possibly_missed: int | None = 0  # None: the kernel's count of dropped events is unknown, so is the bound
    label_sets: Mapping[Family, int] = field(default_factory=dict)  # family -> label sets held (memory's bound)
    forgotten: Mapping[Family, int] = field(default_factory=dict)  # family -> folded label sets forgotten
    dropped: int = 0  # tracker records dropped to stay within the table's limit


class Counting:
    """One per agent: the tracker that events and dumps feed, and the cumulative families."""

    def __init__(self, max_series: int, ttl_seconds: float) -> None:
        self.tracker = ConnectionTracker()
        self.opened = CounterStore(OPENED_FOLDING, max_series, ttl_seconds)
        self.flow_bytes = CounterStore(BYTES_FOLDING, max_series, ttl_seconds)
        self.transactions = CounterStore(TRANSACTIONS_FOLDING, max_series, ttl_seconds)
        self._endpoints = CounterStore(_ENDPOINT_FOLDING, ENDPOINTS_KEPT, ttl_seconds)
        self._families = {OPENED: self.opened, FLOW_BYTES: self.flow_bytes, TRANSACTIONS: self.transactions}

    def update(
        self,
        names: Attributor,
        connections: Mapping[Labels, int],
        accounting: bool | None,
        now: float,
        connections_folded: int = 0,
        table_limit: int | None = None,
    ) -> CounterView:
        """Add what the tracker saw since the last update; `connections` (unfolded) says which pairs still exist.
        `table_limit` (nf_conntrack_max) bounds the tracker's records from the next dump on."""
        if table_limit is not None:
            self.tracker.limit = table_limit
        bytes_on = accounting is not False
        self._add(self.tracker.take(), names, bytes_on, now)
        for connection in connections:  # a pair still in the table is alive, however idle
            pair = pair_of(connection)
            self.opened.touch(pair, now)
            self.flow_bytes.touch((*pair, "sent"), now)
            self.flow_bytes.touch((*pair, "received"), now)
        for store in (*self._families.values(), self._endpoints):
            store.maintain(now)
        return self._view(bytes_on, connections_folded)

    def _add(self, deltas: Deltas, names: Attributor, bytes_on: bool, now: float) -> None:
        """The deltas, attributed, into the stores. Each is let go once added: with every peer new, they are as
        many as the table's entries."""
        for labels, amount in attribute_pairs(deltas.opened, names):
            self.opened.add(labels, amount, now)
        deltas.opened.clear()
        if bytes_on:
            for direction, amounts in (("sent", deltas.sent), ("received", deltas.received)):
                for labels, amount in attribute_pairs(amounts, names):
                    self.flow_bytes.add((*labels, direction), amount, now)
                amounts.clear()
        for labels, amount in attribute_transactions(deltas.transactions, names).items():
            self.transactions.add(labels, amount, now)
        for key, amount in deltas.transactions.items():
            owner = names.owner(key[TransactionField.SERVICE])
            if owner.type == "service":
                endpoint = address_text(key[TransactionField.ENDPOINT])
                self._endpoints.add((f"{owner.ns}/{owner.name}", endpoint), amount, now)

    def _view(self, bytes_on: bool, connections_folded: int) -> CounterView:
        endpoints: dict[str, dict[str, int]] = {}
        for (service_id, endpoint_ip), count in self._endpoints.snapshot().items():
            endpoints.setdefault(service_id, {})[endpoint_ip] = count
        families = self._families.items()
        tracker = self.tracker
        return CounterView(
            opened=self.opened.snapshot(),
            flow_bytes=self.flow_bytes.snapshot() if bytes_on else None,
            transactions=self.transactions.snapshot(),
            endpoints=MappingProxyType(endpoints),
            heaviest=tuple(tracker.heaviest),
            folded=MappingProxyType(
                {CONNECTION: connections_folded} | {name: store.folded for name, store in families}
            ),
            expired=MappingProxyType({name: store.expired for name, store in families}),
            tracked=len(tracker),
            vanished=tracker.totals.vanished,
            recovered=tracker.totals.recovered,
            possibly_missed=tracker.totals.possibly_missed,
            label_sets=MappingProxyType({name: store.label_sets for name, store in families}),
            forgotten=MappingProxyType({name: store.forgotten for name, store in families}),
            dropped=tracker.totals.dropped,
        )
