"""Pure: the raw keys the tracker counts by are plain tuples in the order consumers unpack, and each place in them
has a name."""

from __future__ import annotations

import socket

from khan.attribution.raw_keys import PairField, TransactionField, pair_key, transaction_key
from khan.conntrack.decode import Flow
from khan.counting.deltas import Deltas

CLIENT = socket.inet_aton("10.244.1.10")
SERVICE = socket.inet_aton("10.96.0.10")
BACKEND = socket.inet_aton("10.244.2.10")


def flow(dst: bytes, reply_src: bytes, reply_sport: int) -> Flow:
    return Flow(2, 17, CLIENT, dst, 40000, 53, reply_src, CLIENT, reply_sport, 40000,
                0, 0, 7, 0, 0, 1, 60, 1, 120)  # fmt: skip


def test_keys_hold_their_fields_in_the_order_their_names_say() -> None:
    translated = flow(SERVICE, BACKEND, 5353)
    pair = pair_key(translated)
    assert pair == (17, CLIENT, SERVICE, 53, BACKEND)
    assert (pair[PairField.SOURCE], pair[PairField.DESTINATION], pair[PairField.ENDPOINT]) == (CLIENT, SERVICE, BACKEND)
    assert (pair[PairField.PROTO], pair[PairField.PORT]) == (17, 53)
    transaction = transaction_key(translated)
    assert transaction == (17, SERVICE, 53, BACKEND, 5353)
    assert transaction[TransactionField.SERVICE] == SERVICE
    assert (transaction[TransactionField.SERVICE_PORT], transaction[TransactionField.ENDPOINT_PORT]) == (53, 5353)
    assert (transaction[TransactionField.PROTO], transaction[TransactionField.ENDPOINT]) == (17, BACKEND)


def test_an_opening_counts_a_transaction_only_when_the_destination_was_translated() -> None:
    deltas = Deltas()
    deltas.count_opened(flow(BACKEND, BACKEND, 53), 0, 0)
    deltas.count_opened(flow(SERVICE, BACKEND, 53), 60, 0)  # the address was translated
    deltas.count_opened(flow(BACKEND, BACKEND, 5353), 0, 9)  # the port was
    assert sum(deltas.opened.values()) == 3
    assert list(deltas.transactions.values()) == [1, 1]
    assert (list(deltas.sent.values()), list(deltas.received.values())) == ([60], [9])
