"""Churn of outside peers: one UDP socket in a namespace where all of 10.0.0.0/8 is local sends one datagram to
each of many distinct addresses, each its own conntrack entry and, with an empty inventory, its own label set.
Shared by tests/e2e/test_memory_bounds.py and benchmarks/peer_churn_memory.py."""

from __future__ import annotations

import socket

from khan.conntrack.namespace import entered

SOURCE = "10.76.0.1"  # the one local client address; every peer is a distinct destination
PEER_PORT = 9


def peer(n: int) -> str:
    """The n-th distinct peer of 10.0.0.0/8 (10.1.0.1 onwards, 62,500 to a /16): 15 million before they repeat."""
    return f"10.{n // 62_500 % 250 + 1}.{n // 250 % 250}.{n % 250 + 1}"


def send_to_peers(netns: str, first: int, count: int) -> None:
    """One datagram from SOURCE to each of `count` new peers: one new conntrack entry each."""
    with entered(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((SOURCE, 0))
        for n in range(first, first + count):
            sock.sendto(b"k", (peer(n), PEER_PORT))
