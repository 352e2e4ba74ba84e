"""Pure: decoded flows + inventory -> the aggregated, immutable snapshot that every scrape reads.

Flows are first counted by the few raw fields a label needs (protocol, addresses, destination port, state
bits), so the per-entry work is one tuple and one dict update; attribution then runs once per distinct key,
not once per entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING

from khan.conntrack.decode import (
    IPPROTO_TCP,
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    NO_TCP_STATE,
    TCP_STATE_NAMES,
    Flow,
)
from khan.conntrack.table import TableStats
from khan.counting.tracker import PairKey, TransactionKey

if TYPE_CHECKING:
    from khan.counting.counters import CounterView
from khan.inventory.index import Inventory
from khan.metrics.labels import DEFAULT_POLICY, Attributor, LabelPolicy, address_text

TRANSPORT_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PORTED_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # tcp, udp, dccp, sctp, udplite: the tuple has ports

# (proto, src, dst, dport, tcp_state, status, reply_src): everything a khan_connection label is made from. The
# reply's source is the endpoint that answered, which says whether this node hosts the far end (seen_from).
RawKey = tuple[int, bytes, bytes, int, int, int, bytes]
_raw_key = attrgetter("proto", "src", "dst", "dport", "tcp_state", "status", "reply_src")

Labels = tuple[str, ...]  # values in the family's label order (families.CONNECTION_LABELS, ...)


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


def port_text(proto: int, port: int) -> str:
    return str(port) if proto in PORTED_PROTOCOLS else ""


def attribute(
    counts: Mapping[RawKey, int], inventory: Inventory, node: str, policy: LabelPolicy = DEFAULT_POLICY
) -> dict[Labels, int]:
    """Raw counts -> khan_connection series (families.CONNECTION_LABELS). Keys that differ only in what the labels
    drop are summed."""
    return attribute_connections(counts, Attributor(inventory, node, policy))


def attribute_connections(counts: Mapping[RawKey, int], names: Attributor) -> dict[Labels, int]:
    series: dict[Labels, int] = {}
    node = names.node
    for (proto, src, dst, dport, tcp_state, status, endpoint), count in counts.items():
        labels = (
            node,
            *names.end(src),
            *names.end(dst),
            port_text(proto, dport),
            transport_name(proto),
            state_name(proto, tcp_state, status),
            names.seen_from(src, dst, endpoint),
        )
        series[labels] = series.get(labels, 0) + count
    return series


def attribute_pairs(amounts: Mapping[PairKey, int], names: Attributor) -> Iterator[tuple[Labels, int]]:
    """Raw pair deltas -> counter series (families.PAIR_LABELS): khan_connection's labels without `state`. One
    item per raw key, unsummed (a counter adds them up): with every peer new, a summed copy would hold one label
    set per table entry."""
    node = names.node
    for (proto, src, dst, dport, endpoint), amount in amounts.items():
        labels = (
            node,
            *names.end(src),
            *names.end(dst),
            port_text(proto, dport),
            transport_name(proto),
            names.seen_from(src, dst, endpoint),
        )
        yield labels, amount


def pair_of(connection: Labels) -> Labels:
    """A khan_connection label set -> its counter series' labels (without `state`)."""
    return (*connection[:13], *connection[14:])


def attribute_transactions(amounts: Mapping[TransactionKey, int], names: Attributor) -> dict[Labels, int]:
    """Raw transaction deltas -> khan_service_transactions_total series (families.TRANSACTION_LABELS)."""
    series: dict[Labels, int] = {}
    node = names.node
    for (proto, service, _, endpoint, endpoint_port), amount in amounts.items():
        service_owner = names.owner(service)
        if service_owner.type == "service":
            service_ns, service_name = service_owner.ns, service_owner.name
        else:  # a translation khan cannot name (a NodePort, a hand-made DNAT): the address asked for
            service_ns, service_name = "", address_text(service)
        _, endpoint_ip, endpoint_ns, _, endpoint_name = names.end(endpoint)
        labels = (
            node,
            service_ns,
            service_name,
            endpoint_ip,
            endpoint_ns,
            endpoint_name,
            port_text(proto, endpoint_port),
            transport_name(proto),
        )
        series[labels] = series.get(labels, 0) + amount
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
    counters: CounterView | None = None  # None where nothing is counted (khan snapshot)

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
