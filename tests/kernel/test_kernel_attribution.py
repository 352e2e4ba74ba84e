"""The whole path on the real kernel: the lab's traffic, `khan snapshot --netns` on each node's table, and the
exact khan_connection series that must come out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from khan.demo.lab import Lab
from tests.support.exposition import connections, khan, lab_with_traffic, value
from tests.support.lab_series import (
    NODE1_SERIES,
    NODE2_SERIES,
    OUTSIDE,
    OUTSIDE_TO_POD,
    POD_B,
    POD_TO_CLUSTER_IP,
    POD_TO_HOST_NETWORK_POD,
    tcp_and_udp,
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    with lab_with_traffic("khantest", tmp_path_factory.mktemp("lab")) as built:
        yield built


def snapshot(lab: Lab, inventory: Path, node: str, *extra: str) -> str:
    done = khan(["snapshot", "--inventory", str(inventory), "--node-name", node, "--netns", lab.netns(node), *extra])
    assert done.returncode == 0, done.stderr
    return done.stdout


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


def test_outside_client_named_after_its_range_without_its_ip(lab: tuple[Lab, Path]) -> None:
    text = snapshot(*lab, "node1", "--external-cidrs", "docs=192.0.2.0/24", "--external-ips", "drop")
    named = ("external", "", "", "", "docs")
    expected = {named + labels[5:] if labels[0:5] == OUTSIDE else labels for labels in NODE1_SERIES}
    assert OUTSIDE_TO_POD not in expected
    assert tcp_and_udp(connections(text, "node1")) == dict.fromkeys(expected, 1)
