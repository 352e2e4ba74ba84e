"""The raw keys attribution labels: the few fields of a conntrack entry that a label set is made from.

Counting by raw key first keeps the per-entry work to one tuple and one dict update; attribution then runs once
per distinct key. A raw key is a plain tuple made by one C call (`attrgetter`) from a Flow: a NamedTuple made from
the same tuple cost 65 ns more each, 6 to 15 % of a dump entry's or an event's cost in the tracker. Each key is
declared once below, as the Flow attributes it takes in order and, where a reader picks single fields, the names
of the places they land (a mismatch fails at import); readers unpack a key whole or index it by those names.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Final, get_args

from khan.conntrack.decode import Flow

# Everything a khan_connection label set is made from. The reply's source is the endpoint that answered, which
# says whether this node hosts the far end (seen_from).
RawKey = tuple[int, bytes, bytes, int, int, int, bytes]
RAW_FLOW_FIELDS = ("proto", "src", "dst", "dport", "tcp_state", "status", "reply_src")
raw_key: Callable[[Flow], RawKey] = attrgetter(*RAW_FLOW_FIELDS)


# What a counter series is made from: protocol, original source and destination (as asked for), destination port,
# and the endpoint that answered (the reply's source: the destination itself unless it was translated).
PairKey = tuple[int, bytes, bytes, int, bytes]
PAIR_FLOW_FIELDS = ("proto", "src", "dst", "dport", "reply_src")
pair_key: Callable[[Flow], PairKey] = attrgetter(*PAIR_FLOW_FIELDS)


class PairField:
    """Where each field sits in a PairKey (literal indexes: a read has the field's type)."""

    PROTO: Final = 0
    SOURCE: Final = 1
    DESTINATION: Final = 2
    PORT: Final = 3
    ENDPOINT: Final = 4


# A translated destination: protocol, the address and port asked for (the service), the endpoint and its port.
TransactionKey = tuple[int, bytes, int, bytes, int]
TRANSACTION_FLOW_FIELDS = ("proto", "dst", "dport", "reply_src", "reply_sport")
transaction_key: Callable[[Flow], TransactionKey] = attrgetter(*TRANSACTION_FLOW_FIELDS)


class TransactionField:
    """Where each field sits in a TransactionKey (literal indexes: a read has the field's type)."""

    PROTO: Final = 0
    SERVICE: Final = 1
    SERVICE_PORT: Final = 2
    ENDPOINT: Final = 3
    ENDPOINT_PORT: Final = 4


def _check(key: object, flow_fields: tuple[str, ...], places: type | None = None) -> None:
    """A key's type, its Flow attributes and its named places must agree: a field added to one and not the others
    fails at import."""
    named = sorted(value for name, value in vars(places or object).items() if name.isupper())
    if len(get_args(key)) != len(flow_fields) or (places is not None and named != list(range(len(flow_fields)))):
        raise AssertionError(f"{key}: the key's type, Flow fields and named places disagree")


_check(RawKey, RAW_FLOW_FIELDS)  # unpacked whole by attribute_connections, never read by place
_check(PairKey, PAIR_FLOW_FIELDS, PairField)
_check(TransactionKey, TRANSACTION_FLOW_FIELDS, TransactionField)
