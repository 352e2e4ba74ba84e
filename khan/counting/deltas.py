"""What the tracker hands on: openings, bytes and translations since the last take, by raw key (addresses and ports
as the kernel has them). Attribution turns the keys into labels; nothing here knows about labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

from khan.conntrack.decode import Flow


class PairKey(NamedTuple):
    """What a counter series is made from."""

    proto: int
    source: bytes  # the original source
    destination: bytes  # the original destination, as asked for
    port: int  # the destination port
    endpoint: bytes  # the reply's source: the destination itself unless it was translated


class TransactionKey(NamedTuple):
    """A translated destination."""

    proto: int
    service: bytes  # the address asked for
    service_port: int
    endpoint: bytes  # the address that answered
    endpoint_port: int


# The Flow field behind each key field, in the keys' order: one C call reads them all, and a key is made from the
# tuple without calling the NamedTuple's Python-level constructor (half the cost, on a path run per new entry).
_PAIR_FIELDS = attrgetter("proto", "src", "dst", "dport", "reply_src")
_TRANSACTION_FIELDS = attrgetter("proto", "dst", "dport", "reply_src", "reply_sport")
_new_key = tuple.__new__


def pair_key(flow: Flow) -> PairKey:
    return _new_key(PairKey, _PAIR_FIELDS(flow))


def transaction_key(flow: Flow) -> TransactionKey:
    return _new_key(TransactionKey, _TRANSACTION_FIELDS(flow))


def translated(flow: Flow) -> bool:
    """The destination was translated (a service, a hand-made DNAT): the answer came from elsewhere."""
    return flow.reply_src != flow.dst or flow.reply_sport != flow.dport


@dataclass
class Deltas:
    """What happened since the last `take()`, by raw key; attribution turns these into labelled counters."""

    opened: dict[PairKey, int] = field(default_factory=dict)
    sent: dict[PairKey, int] = field(default_factory=dict)  # original direction bytes
    received: dict[PairKey, int] = field(default_factory=dict)  # reply direction bytes
    transactions: dict[TransactionKey, int] = field(default_factory=dict)

    def count_opened(self, flow: Flow, sent: int, received: int) -> None:
        """A new connection, with the bytes it had moved when first seen."""
        pair = pair_key(flow)
        opened = self.opened
        opened[pair] = opened.get(pair, 0) + 1
        if translated(flow):
            key = transaction_key(flow)
            self.transactions[key] = self.transactions.get(key, 0) + 1
        if sent or received:
            self.add_bytes(pair, sent, received)

    def add_bytes(self, pair: PairKey, sent: int, received: int) -> None:
        """One key for a pair's opening and bytes: with every peer new, a poll holds one per entry."""
        if sent:
            self.sent[pair] = self.sent.get(pair, 0) + sent
        if received:
            self.received[pair] = self.received.get(pair, 0) + received
