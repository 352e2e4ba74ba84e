"""What the tracker hands on: openings, bytes and translations since the last take, by raw key (addresses and ports
as the kernel has them; attribution/raw_keys.py declares them). Attribution turns the keys into labels; nothing here
knows about labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from khan.attribution.raw_keys import PairKey, TransactionKey, pair_key, transaction_key
from khan.conntrack.decode import Flow


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
