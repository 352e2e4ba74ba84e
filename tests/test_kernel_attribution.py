"""The whole path on the real kernel: the lab's traffic, `khan snapshot --netns` on each node's table, and the
exact khan_connection series that must come out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from khan.lab import Lab
from tests.exposition import Series, connections, khan, lab_with_traffic, value

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


def series(src: tuple[str, ...], dst: tuple[str, ...], port: str, transport: str, state: str) -> Series:
    return (*src, *dst, port, transport, state)


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


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    with lab_with_traffic("khantest", tmp_path_factory.mktemp("lab")) as built:
        yield built


def snapshot(lab: Lab, inventory: Path, node: str) -> str:
    done = khan(["snapshot", "--inventory", str(inventory), "--node-name", node, "--netns", lab.netns(node)])
    assert done.returncode == 0, done.stderr
    return done.stdout


def tcp_and_udp(found: dict[Series, int]) -> dict[Series, int]:
    """Series between lab hosts; the kernel adds others of its own (IGMP, ICMPv6 neighbour discovery)."""
    return {labels: count for labels, count in found.items() if labels[-2] in ("tcp", "udp")}


def test_node1_holds_exactly_the_expected_series(lab: tuple[Lab, Path]) -> None:
    found = connections(snapshot(*lab, "node1"), "node1")
    assert tcp_and_udp(found) == dict.fromkeys(NODE1_SERIES, 1)


def test_node2_holds_exactly_the_expected_series(lab: tuple[Lab, Path]) -> None:
    found = connections(snapshot(*lab, "node2"), "node2")
    assert tcp_and_udp(found) == dict.fromkeys(NODE2_SERIES, 1)


def test_cluster_ip_shows_the_service_not_the_backend(lab: tuple[Lab, Path]) -> None:
    found = connections(snapshot(*lab, "node1"), "node1")
    assert POD_TO_CLUSTER_IP in found
    assert not any(labels[5:10] == POD_B and labels[10] == "80" for labels in found)


def test_finished_pod_never_owns_the_reused_ip(lab: tuple[Lab, Path]) -> None:
    # old-job-x7k2p (Succeeded) still lists 10.244.1.10 in its status; pod-a (Running) owns it now.
    found = connections(snapshot(*lab, "node1"), "node1")
    names = {labels[4] for labels in found if labels[1] == "10.244.1.10"}
    names |= {labels[9] for labels in found if labels[6] == "10.244.1.10"}
    assert names == {"pod-a"}


def test_host_network_pod_does_not_claim_its_node_ip(lab: tuple[Lab, Path]) -> None:
    found = connections(snapshot(*lab, "node2"), "node2")
    assert POD_TO_HOST_NETWORK_POD in found  # dst is node1, not node-exporter-abcde


def test_counted_entries_equal_the_table(lab: tuple[Lab, Path]) -> None:
    text = snapshot(*lab, "node1")
    assert sum(connections(text, "node1").values()) == value(text, "khan_poll_entries")
    assert value(text, "khan_poll_entries") == value(text, "khan_conntrack_table_entries")
    assert value(text, "khan_conntrack_accounting_enabled") == 1.0  # the lab turns it on in its nodes
    assert value(text, "khan_entries_malformed_total") == 0.0
