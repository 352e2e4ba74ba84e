"""Pure: decoded flows + inventory -> the aggregated, immutable snapshot that every scrape reads.

Flows are first counted by the few raw fields a label needs (protocol, addresses, destination port, state
bits), so the per-entry work is one tuple and one dict update; attribution then runs once per distinct key,
not once per entry.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType

from khan.conntrack.decode import (
    IPPROTO_TCP,
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    NO_TCP_STATE,
    TCP_STATE_NAMES,
    Flow,
)
from khan.conntrack.table import TableStats
from khan.inventory.index import Inventory, Owner
from khan.metrics.outside import OutsidePolicy

KEEP_OUTSIDE = OutsidePolicy()

TRANSPORT_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PORTED_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # tcp, udp, dccp, sctp, udplite: the tuple has ports

# (proto, src, dst, dport, tcp_state, status): everything a khan_connection label is made from.
RawKey = tuple[int, bytes, bytes, int, int, int]
_raw_key = attrgetter("proto", "src", "dst", "dport", "tcp_state", "status")

Labels = tuple[str, ...]  # values in families.CONNECTION_LABELS order


def count_flows(batches: Iterable[Iterable[Flow]], counts: dict[RawKey, int] | None = None) -> dict[RawKey, int]:
    """Count entries by raw key. This runs once per conntrack entry: keep it to one tuple and one dict update."""
    if counts is None:
        counts = {}
    get = counts.get
    key_of = _raw_key
    for batch in batches:
        for flow in batch:
            key = key_of(flow)
            counts[key] = get(key, 0) + 1
    return counts


def state_name(proto: int, tcp_state: int, status: int) -> str:
    """TCP: the conntrack state as `conntrack -L` prints it. Others: whether a reply was seen, and assurance."""
    if proto == IPPROTO_TCP:
        if 0 <= tcp_state < len(TCP_STATE_NAMES):
            return TCP_STATE_NAMES[tcp_state]
        return "NONE" if tcp_state == NO_TCP_STATE else str(tcp_state)
    if not status & IPS_SEEN_REPLY:
        return "UNREPLIED"
    return "ASSURED" if status & IPS_ASSURED else "REPLIED"


def transport_name(proto: int) -> str:
    return TRANSPORT_NAMES.get(proto) or str(proto)


def address_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def attribute(
    counts: Mapping[RawKey, int], inventory: Inventory, node: str, outside: OutsidePolicy = KEEP_OUTSIDE
) -> dict[Labels, int]:
    """Raw counts -> khan_connection series. Keys that differ only in what labels drop are summed."""
    series: dict[Labels, int] = {}
    texts: dict[bytes, str] = {}
    owners: dict[bytes, Owner] = {}
    for (proto, src, dst, dport, tcp_state, status), count in counts.items():
        for packed in (src, dst):
            if packed not in texts:
                owner = inventory.owner(packed)
                if owner.type == "external":
                    owner = outside.owner(packed)
                owners[packed] = owner
                texts[packed] = address_text(packed) if owner.type != "external" or outside.keep_ips else ""
        s, d = owners[src], owners[dst]
        labels = (
            node,
            s.type,
            texts[src],
            s.ns,
            s.app,
            s.name,
            d.type,
            texts[dst],
            d.ns,
            d.app,
            d.name,
            str(dport) if proto in PORTED_PROTOCOLS else "",
            transport_name(proto),
            state_name(proto, tcp_state, status),
        )
        series[labels] = series.get(labels, 0) + count
    return series


@dataclass(frozen=True)
class PollResult:
    """One successful poll, as the collector reads it. Never mutated: each poll swaps in a new one."""

    node: str
    connections: Mapping[Labels, int]
    entries: int  # entries read and counted; equals the sum of `connections`
    malformed: int
    interrupted: bool  # the kernel flagged every attempt's dump as inconsistent; this one was kept anyway
    duration_seconds: float
    finished_at: float  # unix time
    table: TableStats | None
    inventory_objects: Mapping[str, int] = field(default_factory=dict)
    inventory_addresses: int = 0

    @staticmethod
    def freeze(connections: dict[Labels, int]) -> Mapping[Labels, int]:
        return MappingProxyType(connections)


@dataclass(frozen=True)
class Health:
    """Totals since start-up and the last good poll; replaced, never mutated, after every poll."""

    last: PollResult | None = None
    polls: int = 0
    poll_errors: int = 0
    entries_read: int = 0
    entries_malformed: int = 0
    dumps_interrupted: int = 0
