"""Pure: decoded flows + inventory -> labelled connections, and the tracker's raw deltas -> counter label sets.

Flows are first counted by the few raw fields a label needs (protocol, addresses, destination port, state
bits), so the per-entry work is one tuple and one dict update; attribution then runs once per distinct key,
not once per entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from khan.attribution.labels import DEFAULT_POLICY, Attributor, LabelPolicy, address_text
from khan.attribution.raw_keys import PairKey, RawKey, TransactionKey, raw_key
from khan.attribution.schema import Labels, TransactionLabels
from khan.conntrack.decode import (
    IPPROTO_TCP,
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    NO_TCP_STATE,
    TCP_STATE_NAMES,
    Flow,
)
from khan.inventory.index import Inventory

TRANSPORT_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PORTED_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # tcp, udp, dccp, sctp, udplite: the tuple has ports


def count_flows(batches: Iterable[Iterable[Flow]], counts: dict[RawKey, int] | None = None) -> dict[RawKey, int]:
    """Count entries by raw key. This runs once per conntrack entry: keep it to one tuple and one dict update.
    See raw_keys.py for why the keys are plain tuples."""
    if counts is None:
        counts = {}
    get = counts.get
    key_of = raw_key
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
    """Raw counts -> khan_connection series. Keys that differ only in what the labels drop are summed."""
    return attribute_connections(counts, Attributor(inventory, node, policy))


def attribute_connections(counts: Mapping[RawKey, int], names: Attributor) -> dict[Labels, int]:
    """Raw counts -> khan_connection series, keyed by label sets in ConnectionLabels' field order (plain tuples:
    see schema.py)."""
    series: dict[Labels, int] = {}
    get = series.get
    node, end, seen_from = names.node, names.end, names.seen_from
    for (proto, src, dst, dport, tcp_state, status, endpoint), count in counts.items():
        # In ConnectionLabels' field order; tests/unit/test_label_records.py reads the result back by name.
        labels = (
            node,
            *end(src),
            *end(dst),
            port_text(proto, dport),
            transport_name(proto),
            state_name(proto, tcp_state, status),
            seen_from(src, dst, endpoint),
        )
        series[labels] = get(labels, 0) + count
    return series


def attribute_pairs(amounts: Mapping[PairKey, int], names: Attributor) -> Iterator[tuple[Labels, int]]:
    """Raw pair deltas -> counter series (PAIR_LABELS): khan_connection's labels without `state`. One item per raw
    key, unsummed (a counter adds them up): with every peer new, a summed copy would hold one label set per table
    entry."""
    node, end, seen_from = names.node, names.end, names.seen_from
    for (proto, src, dst, dport, endpoint), amount in amounts.items():
        # pair_of() of the connection's labels, built directly: this runs once per new connection.
        labels = (
            node,
            *end(src),
            *end(dst),
            port_text(proto, dport),
            transport_name(proto),
            seen_from(src, dst, endpoint),
        )
        yield labels, amount


def attribute_longest(longest: Mapping[PairKey, int], names: Attributor) -> dict[Labels, int]:
    """Raw pairs' longest idle seconds -> khan_connection_idle_seconds_max series (PAIR_LABELS): pairs whose labels
    are the same keep the longest."""
    series: dict[Labels, int] = {}
    for labels, seconds in attribute_pairs(longest, names):
        if seconds > series.get(labels, -1):
            series[labels] = seconds
    return series


def attribute_transactions(amounts: Mapping[TransactionKey, int], names: Attributor) -> dict[Labels, int]:
    """Raw transaction deltas -> khan_service_transactions_total series."""
    series: dict[Labels, int] = {}
    for (proto, service_address, _, endpoint_address, endpoint_port), amount in amounts.items():
        service = names.owner(service_address)
        if service.type == "service":
            service_ns, service_name = service.ns, service.name
        else:  # a translation khan cannot name (a NodePort, a hand-made DNAT): the address asked for
            service_ns, service_name = "", address_text(service_address)
        _, endpoint_ip, endpoint_ns, _, endpoint_name = names.end(endpoint_address)
        named = TransactionLabels(
            node=names.node,
            service_ns=service_ns,
            service_name=service_name,
            endpoint_ip=endpoint_ip,
            endpoint_ns=endpoint_ns,
            endpoint_name=endpoint_name,
            endpoint_port=port_text(proto, endpoint_port),
            transport=transport_name(proto),
        )
        labels = tuple(named)  # kept as a plain tuple: schema.py says why
        series[labels] = series.get(labels, 0) + amount
    return series
