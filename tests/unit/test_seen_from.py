"""Pure: from which side a node sees a connection, so that seen_from=~"source|ingress" counts each once; and
workload aggregation naming pods after what runs them."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from khan.attribution.labels import Attributor, LabelPolicy
from khan.inventory.index import build_inventory


def pod(name: str, ip: str, node: str, owner: tuple[str, str] | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "labels": labels}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {"nodeName": node}, "status": {"phase": "Running", "podIP": ip}}  # fmt: skip


def node(name: str, ip: str, cidr: str) -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}, "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}  # fmt: skip


INVENTORY = build_inventory(
    [
        node("node1", "10.250.0.1", "10.244.1.0/24"),
        node("node2", "10.250.0.2", "10.244.2.0/24"),
        pod("web-7d9f8-abcde", "10.244.1.10", "node1", ("ReplicaSet", "web-7d9f8"), **{"pod-template-hash": "7d9f8"}),
        pod("web-7d9f8-fghij", "10.244.2.11", "node2", ("ReplicaSet", "web-7d9f8"), **{"pod-template-hash": "7d9f8"}),
        pod("db-0", "10.244.2.10", "node2", ("StatefulSet", "db")),
        {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "db", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.0.20"}},
    ]
)  # fmt: skip

WEB_1, WEB_2, DB = "10.244.1.10", "10.244.2.11", "10.244.2.10"
NODE1, NODE2, SERVICE, OUTSIDE, GATEWAY1 = "10.250.0.1", "10.250.0.2", "10.96.0.20", "192.0.2.7", "10.244.1.1"


def seen(node_name: str, src: str, dst: str, endpoint: str | None = None) -> str:
    packed = [socket.inet_aton(address) for address in (src, dst, endpoint or dst)]
    return Attributor(INVENTORY, node_name).seen_from(*packed)


# (what, the nodes whose tables hold the connection with the tuple each sees, the seen_from each must say)
PATHS = [
    ("pod to pod on one node", [("node1", WEB_1, GATEWAY1, None)], ["source"]),
    ("pod to pod across nodes", [("node1", WEB_1, DB, None), ("node2", WEB_1, DB, None)], ["source", "destination"]),
    (
        "pod to a service, endpoint on the other node",
        [("node1", WEB_1, SERVICE, DB), ("node2", WEB_1, DB, None)],
        ["source", "destination"],
    ),
    ("outside client straight to a pod", [("node2", OUTSIDE, DB, None)], ["ingress"]),
    (
        "outside client to a service on node1, no SNAT, endpoint on node2",
        [("node1", OUTSIDE, SERVICE, DB), ("node2", OUTSIDE, DB, None)],
        ["transit", "ingress"],
    ),
    (
        "outside client to a NodePort on node1, SNAT to an endpoint on node2",
        [("node1", OUTSIDE, NODE1, DB), ("node2", NODE1, DB, None)],
        ["ingress", "destination"],
    ),
    (
        "node to a pod on the other node",
        [("node2", NODE2, WEB_1, None), ("node1", NODE2, WEB_1, None)],
        ["source", "destination"],
    ),
    ("loopback on a node", [("node1", "127.0.0.1", "127.0.0.1", None)], ["source"]),
]


@pytest.mark.parametrize(("what", "views", "expected"), PATHS, ids=[p[0] for p in PATHS])
def test_each_connection_is_counted_once_across_the_nodes_that_see_it(
    what: str, views: list[tuple[str, str, str, str | None]], expected: list[str]
) -> None:
    sides = [seen(*view) for view in views]
    assert sides == expected, what
    assert sum(side in ("source", "ingress") for side in sides) == 1


def test_workload_aggregation_names_pods_after_their_workload_and_drops_pod_ips() -> None:
    names = Attributor(INVENTORY, "node1", LabelPolicy(aggregate="workload"))
    ends = {names.end(socket.inet_aton(ip)) for ip in (WEB_1, WEB_2)}
    assert ends == {("pod", "", "shop", "", "web")}  # two pods of one Deployment, one name
    assert names.end(socket.inet_aton(DB)) == ("pod", "", "shop", "", "db")
    assert names.end(socket.inet_aton(SERVICE)) == ("service", SERVICE, "shop", "", "db")  # not a pod: unchanged
    assert Attributor(INVENTORY, "node1").end(socket.inet_aton(WEB_1))[1:] == (WEB_1, "shop", "", "web-7d9f8-abcde")
