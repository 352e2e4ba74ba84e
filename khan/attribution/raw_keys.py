"""The raw keys attribution labels: the few fields of a conntrack entry that a label set is made from.

Counting by raw key first keeps the per-entry work to one tuple and one dict update; attribution then runs once
per distinct key. The per-entry loops build plain tuples in these records' field order (one C-level
`attrgetter` call); attribution reads them through the records' names.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import NamedTuple, cast

from khan.conntrack.decode import Flow


class RawKey(NamedTuple):
    """Everything a khan_connection label set is made from. The reply's source is the endpoint that answered,
    which says whether this node hosts the far end (seen_from)."""

    proto: int
    src: bytes
    dst: bytes
    dport: int
    tcp_state: int
    status: int
    reply_src: bytes


class PairKey(NamedTuple):
    """What a counter series is made from: protocol, original source and destination, destination port, and
    the endpoint that answered (the reply's source: the destination itself unless it was translated)."""

    proto: int
    src: bytes
    dst: bytes
    dport: int
    reply_src: bytes


class TransactionKey(NamedTuple):
    """A translated destination: protocol, the address and port asked for (the service), the endpoint and its
    port."""

    proto: int
    service: bytes
    service_port: int
    endpoint: bytes
    endpoint_port: int


# A flow's RawKey, in one C call: the per-entry loop's whole cost. It is a plain tuple with RawKey's fields in
# order (equal to the record and hashing alike; building the record would double the loop's cost), so the
# counted keys are unpacked, never read by name.
raw_key_of = cast(Callable[[Flow], RawKey], attrgetter(*RawKey._fields))
