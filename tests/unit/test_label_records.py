"""The label sets are named records: what attribution builds reads back by name, field by field, so a label added
to schema.py and not to a builder (or in another place) fails here; and the counters' pairs are exactly the
connections' label sets without `state`."""

from __future__ import annotations

import socket

from khan.attribution.connections import attribute_connections, attribute_pairs, attribute_transactions, count_flows
from khan.attribution.labels import Attributor
from khan.attribution.raw_keys import PairField, TransactionField, pair_key, transaction_key
from khan.attribution.schema import CONNECTION_LABELS, PAIR_LABELS, ConnectionLabels, TransactionLabels, pair_of
from khan.conntrack.decode import IPS_ASSURED, IPS_SEEN_REPLY, Flow
from khan.inventory.index import build_inventory

INVENTORY = build_inventory(
    [
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node1"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.10"}]},
        },
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": "db-0", "namespace": "data", "labels": {"app": "postgres"}},
            "spec": {"nodeName": "node2"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.2.20"}]},
        },
        {
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": "db", "namespace": "data"},
            "spec": {"clusterIPs": ["10.96.0.20"]},
        },
    ]
)
WEB, DB, SERVICE = (socket.inet_aton(ip) for ip in ("10.244.1.10", "10.244.2.20", "10.96.0.20"))
# web-1 -> the db Service, translated to db-0:5432, as the kernel keeps it (reply from the endpoint)
TO_SERVICE = Flow(
    2, 6, WEB, SERVICE, 40000, 5432, DB, WEB, 5432, 40000, IPS_SEEN_REPLY | IPS_ASSURED, 3, 1, 0, 0, 1, 60, 1, 60
)


def names() -> Attributor:
    return Attributor(INVENTORY, "node1")


def test_a_connection_reads_back_by_name() -> None:
    (labels,) = attribute_connections(count_flows([[TO_SERVICE]]), names())
    connection = ConnectionLabels._make(labels)
    assert type(labels) is tuple  # a plain tuple, which the garbage collector can stop tracking (schema.py)
    assert labels == connection
    assert connection._asdict() == {
        "node": "node1",
        "src_type": "pod",
        "src_ip": "10.244.1.10",
        "src_ns": "shop",
        "src_app": "web",
        "src_name": "web-1",
        "dst_type": "service",
        "dst_ip": "10.96.0.20",
        "dst_ns": "data",
        "dst_app": "",
        "dst_name": "db",
        "dst_port": "5432",
        "transport": "tcp",
        "state": "ESTABLISHED",
        "seen_from": "source",
    }
    assert tuple(connection._fields) == CONNECTION_LABELS


def test_a_pair_is_its_connection_without_state() -> None:
    (connection,) = attribute_connections(count_flows([[TO_SERVICE]]), names())
    ((pair, amount),) = attribute_pairs({pair_key(TO_SERVICE): 3}, names())
    assert amount == 3
    assert pair == pair_of(connection)
    assert dict(zip(PAIR_LABELS, pair, strict=True)) == {
        name: value for name, value in ConnectionLabels._make(connection)._asdict().items() if name != "state"
    }


def test_a_transaction_reads_back_by_name() -> None:
    key = transaction_key(TO_SERVICE)
    assert (key[TransactionField.SERVICE], key[TransactionField.ENDPOINT]) == (SERVICE, DB)
    assert pair_key(TO_SERVICE)[PairField.ENDPOINT] == DB
    ((labels, amount),) = attribute_transactions({key: 2}, names()).items()
    assert amount == 2
    assert labels == TransactionLabels(
        node="node1",
        service_ns="data",
        service_name="db",
        endpoint_ip="10.244.2.20",
        endpoint_ns="data",
        endpoint_name="db-0",
        endpoint_port="5432",
        transport="tcp",
    )
