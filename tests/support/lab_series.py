"""The khan_connection series the lab's demo traffic must produce, as label tuples without `node`."""

from __future__ import annotations

from tests.support.exposition import Series


def series(src: tuple[str, ...], dst: tuple[str, ...], port: str, transport: str, state: str) -> Series:
    return (*src, *dst, port, transport, state)


POD_A = ("pod", "10.244.1.10", "shop", "web", "pod-a")
POD_B = ("pod", "10.244.1.11", "shop", "api", "pod-b")
POD_C = ("pod", "10.244.2.10", "shop", "db", "pod-c")
POD_A6 = ("pod", "fd00:10:244:1::10", "shop", "web", "pod-a")
POD_B6 = ("pod", "fd00:10:244:1::11", "shop", "api", "pod-b")
SERVICE = ("service", "10.96.0.10", "shop", "web-svc", "web-svc")
GATEWAY1 = ("gateway", "10.244.1.1", "", "", "node1")
NODE1 = ("node", "10.250.0.1", "", "", "node1")
NODE2 = ("node", "10.250.0.2", "", "", "node2")
OUTSIDE = ("external", "192.0.2.10", "", "", "")


POD_TO_POD_SAME_NODE = series(POD_A, POD_B, "8080", "tcp", "ESTABLISHED")
POD_TO_POD_ACROSS_NODES = series(POD_A, POD_C, "5432", "tcp", "ESTABLISHED")
POD_TO_CLUSTER_IP = series(POD_A, SERVICE, "80", "tcp", "ESTABLISHED")
GATEWAY_TO_POD = series(GATEWAY1, POD_A, "8080", "tcp", "ESTABLISHED")
NODE_TO_POD = series(NODE2, POD_A, "8080", "tcp", "ESTABLISHED")
OUTSIDE_TO_POD = series(OUTSIDE, POD_A, "8080", "tcp", "ESTABLISHED")
POD_TO_HOST_NETWORK_POD = series(POD_C, NODE1, "9100", "tcp", "ESTABLISHED")
POD_TO_POD_IPV6 = series(POD_A6, POD_B6, "8080", "tcp", "ESTABLISHED")
UDP_WITH_REPLY = series(POD_A, POD_C, "53", "udp", "REPLIED")

NODE1_SERIES = {
    POD_TO_POD_SAME_NODE,
    POD_TO_POD_ACROSS_NODES,
    POD_TO_CLUSTER_IP,
    GATEWAY_TO_POD,
    NODE_TO_POD,
    OUTSIDE_TO_POD,
    POD_TO_HOST_NETWORK_POD,
    POD_TO_POD_IPV6,
    UDP_WITH_REPLY,
}
NODE2_SERIES = {POD_TO_POD_ACROSS_NODES, NODE_TO_POD, POD_TO_HOST_NETWORK_POD, UDP_WITH_REPLY}


def tcp_and_udp(found: dict[Series, int]) -> dict[Series, int]:
    """Series between lab hosts; the kernel adds others of its own (IGMP, ICMPv6 neighbour discovery)."""
    return {labels: count for labels, count in found.items() if labels[-2] in ("tcp", "udp")}
