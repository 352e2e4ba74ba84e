"""The label sets khan serves, as named records: each family's label names in order, declared once here.

The records declare the order; the label sets attribution builds for the gauge and the counters are plain tuples
in that order, read by name through the record (`ConnectionLabels._make(labels).dst_name`). Why not instances of
the record: CPython's garbage collector stops tracking a plain tuple of strings, but never a tuple subclass, so
~100,000 NamedTuple label sets (every peer new) kept every collection busy and made such a poll 25% slower.
Adding a label is one field here and one value where `attribute_*` builds the set; every other index (the
counters' pairs, folding) is computed from these names.
"""

from __future__ import annotations

from operator import itemgetter
from typing import NamedTuple


class ConnectionLabels(NamedTuple):
    """khan_connection: both ends of a connection (original tuple), its port, transport and state."""

    node: str
    src_type: str
    src_ip: str
    src_ns: str
    src_app: str
    src_name: str
    dst_type: str
    dst_ip: str
    dst_ns: str
    dst_app: str
    dst_name: str
    dst_port: str
    transport: str
    state: str
    seen_from: str


class TransactionLabels(NamedTuple):
    """khan_service_transactions_total: a service and the endpoint that served a new connection to it."""

    node: str
    service_ns: str
    service_name: str
    endpoint_ip: str
    endpoint_ns: str
    endpoint_name: str
    endpoint_port: str
    transport: str


class LimitLabels(NamedTuple):
    """khan_connection_limit: a destination as khan_connection's dst_type, dst_ns and dst_name spell it."""

    dst_type: str
    dst_ns: str
    dst_name: str


Labels = tuple[str, ...]  # a label set of any family, values in that family's label order

CONNECTION_LABELS: tuple[str, ...] = ConnectionLabels._fields
# The counters' pair: khan_connection's labels without `state`, which changes during a connection's life.
PAIR_LABELS = tuple(name for name in CONNECTION_LABELS if name != "state")
FLOW_BYTES_LABELS = (*PAIR_LABELS, "direction")
TRANSACTION_LABELS: tuple[str, ...] = TransactionLabels._fields
LIMIT_LABELS: tuple[str, ...] = LimitLabels._fields

_pair_values = itemgetter(*(CONNECTION_LABELS.index(name) for name in PAIR_LABELS))


def pair_of(connection: Labels) -> Labels:
    """A khan_connection label set -> its counter series' labels (PAIR_LABELS)."""
    values: Labels = _pair_values(connection)
    return values
