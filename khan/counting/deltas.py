"""What the tracker hands on: openings, bytes and translations since the last take, by raw key (addresses and ports
as the kernel has them). Attribution turns the keys into labels; nothing here knows about labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from khan.conntrack.decode import Flow

# Raw keys are plain tuples, made by one C call from a Flow: the tracker makes one per new or changed entry, where
# a NamedTuple (made from the same attrgetter tuple by tuple.__new__) cost 65 ns more each, 6 to 15 % of a dump
# entry's or an event's cost. Each key is declared once below: the Flow attributes it takes, in order, and the
# names of the places they land (a mismatch fails at import); readers index by name or unpack whole.

# What a counter series is made from: protocol, original source and destination (as asked for), destination port,
# and the endpoint that answered (the reply's source: the destination itself unless it was translated).
PairKey = tuple[int, bytes, bytes, int, bytes]
PAIR_FLOW_FIELDS = ("proto", "src", "dst", "dport", "reply_src")
pair_key: Callable[[Flow], PairKey] = attrgetter(*PAIR_FLOW_FIELDS)


class PairField:
    """Where each field sits in a PairKey."""

    PROTO, SOURCE, DESTINATION, PORT, ENDPOINT = range(len(PAIR_FLOW_FIELDS))


# A translated destination: protocol, the address and port asked for (the service), the endpoint and its port.
TransactionKey = tuple[int, bytes, int, bytes, int]
TRANSACTION_FLOW_FIELDS = ("proto", "dst", "dport", "reply_src", "reply_sport")
transaction_key: Callable[[Flow], TransactionKey] = attrgetter(*TRANSACTION_FLOW_FIELDS)


class TransactionField:
    """Where each field sits in a TransactionKey."""

    PROTO, SERVICE, SERVICE_PORT, ENDPOINT, ENDPOINT_PORT = range(len(TRANSACTION_FLOW_FIELDS))


@dataclass
class Deltas:
    """What happened since the last `take()`, by raw key; attribution turns these into labelled counters."""

    opened: dict[PairKey, int] = field(default_factory=dict)
    sent: dict[PairKey, int] = field(default_factory=dict)  # original direction bytes
    received: dict[PairKey, int] = field(default_factory=dict)  # reply direction bytes
    transactions: dict[TransactionKey, int] = field(default_factory=dict)

    def count_opened(self, flow: Flow, sent: int, received: int) -> None:
        """A new connection, with the bytes it had moved when first seen. One key for its opening and bytes: with
        every peer new, a poll holds one per entry. Runs once per new entry: kept to one call."""
        pair = pair_key(flow)
        opened = self.opened
        opened[pair] = opened.get(pair, 0) + 1
        if flow.reply_src != flow.dst or flow.reply_sport != flow.dport:  # the destination was translated
            key = transaction_key(flow)
            self.transactions[key] = self.transactions.get(key, 0) + 1
        if sent:
            self.sent[pair] = self.sent.get(pair, 0) + sent
        if received:
            self.received[pair] = self.received.get(pair, 0) + received

    def add_bytes(self, pair: PairKey, sent: int, received: int) -> None:
        if sent:
            self.sent[pair] = self.sent.get(pair, 0) + sent
        if received:
            self.received[pair] = self.received.get(pair, 0) + received
