"""The demo's traffic: one flow of each kind the exporter must attribute, and the entries they leave in each table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from khan.demo.lab import Lab
from khan.demo.topology import CLUSTER_IP, HOST_NETWORK_PORT, NODES, OUTSIDE_IP, PODS, SERVICE_PORT


@dataclass(frozen=True)
class Expected:
    """A conntrack entry a node's table should hold after `start_demo_traffic()` (original direction)."""

    node: str
    src_ip: str
    dst_ip: str
    dst_port: int | None
    transport: str  # "tcp" or "udp"
    state: str  # TCP state as conntrack prints it; for UDP "UNREPLIED", "REPLIED" (neither flag) or "ASSURED"
    kind: str = field(default="", compare=False)  # what the flow stands for, for people reading a demo


def start_demo_traffic(lab: Lab) -> list[Expected]:
    """Open one flow of each kind the exporter must attribute; returns the entries each node then holds."""
    node1, node2 = NODES
    pod_a, pod_b, pod_c = PODS
    lab.listen_tcp("pod-a", pod_a.ipv4, 8080)
    lab.listen_tcp("pod-b", pod_b.ipv4, 8080)
    lab.listen_tcp("pod-b", pod_b.ipv6, 8080)
    lab.listen_tcp("pod-c", pod_c.ipv4, 5432)
    lab.listen_tcp("node1", node1.ipv4, HOST_NETWORK_PORT)
    lab.listen_udp("pod-c", pod_c.ipv4, 53)
    expected: list[Expected] = []

    def tcp(client: str, src: str, dst: str, port: int, nodes: Sequence[str], kind: str) -> None:
        lab.connect_tcp(client, dst, port)
        expected.extend(Expected(node, src, dst, port, "tcp", "ESTABLISHED", kind) for node in nodes)

    tcp("pod-a", pod_a.ipv4, pod_b.ipv4, 8080, ["node1"], "pod to pod, same node")
    tcp("pod-a", pod_a.ipv4, pod_c.ipv4, 5432, ["node1", "node2"], "pod to pod, across nodes")
    tcp("pod-a", pod_a.ipv4, CLUSTER_IP, SERVICE_PORT, ["node1"], "pod to ClusterIP, DNAT to pod-b")
    tcp("node1", node1.gateway4, pod_a.ipv4, 8080, ["node1"], "node's bridge gateway to pod")
    tcp("node2", node2.ipv4, pod_a.ipv4, 8080, ["node2", "node1"], "node to pod on another node")
    tcp("outside", OUTSIDE_IP, pod_a.ipv4, 8080, ["node1"], "client outside the cluster to pod")
    tcp("pod-c", pod_c.ipv4, node1.ipv4, HOST_NETWORK_PORT, ["node2", "node1"], "pod to hostNetwork pod")
    tcp("pod-a", pod_a.ipv6, pod_b.ipv6, 8080, ["node1"], "pod to pod over IPv6")
    lab.udp_exchange("pod-a", pod_c.ipv4, 53, reply=True)
    # One request and one answer: the kernel clears UNREPLIED but sets ASSURED only for a packet seen
    # more than 2 s after the first (nf_conntrack_proto_udp's stream check), so conntrack prints no flag.
    expected.extend(
        Expected(node, pod_a.ipv4, pod_c.ipv4, 53, "udp", "REPLIED", "UDP pod to pod with a reply")
        for node in ("node1", "node2")
    )
    return expected
