"""Two agents, one per node namespace, scraped together: summing khan_connection over nodes counts a connection
between two nodes twice, and the documented selector seen_from=~"source|ingress" counts every connection once:
same node, across nodes, through a service (from either node) and from a client outside the cluster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from khan.attribution.labels import COUNT_ONCE
from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.topology import CLUSTER_IP, SERVICE_PORT
from khan.demo.traffic import start_demo_traffic
from tests.support.exposition import samples
from tests.support.kube_agent import RunningAgent
from tests.support.lab_agent import file_agent, total


@pytest.fixture(scope="module")
def two_nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Lab, dict[str, RunningAgent], set[tuple[str, str, str]]]]:
    workdir = tmp_path_factory.mktemp("count-once")
    inventory = workdir / "inventory.yaml"
    with Lab.create(prefix=private_prefix("khanonce")) as lab:
        expected = start_demo_traffic(lab)
        write_inventory(inventory)
        truth = {(e.src_ip, e.dst_ip, str(e.dst_port)) for e in expected if e.transport == "tcp"}
        with (
            file_agent(lab.netns("node1"), inventory, "node1", workdir) as node1,
            file_agent(lab.netns("node2"), inventory, "node2", workdir) as node2,
        ):
            node1.wait_ready()
            node2.wait_ready()
            # Through the service from node2: DNAT on node2 to pod-b on node1. Opened after the baseline.
            lab.connect_tcp("pod-c", CLUSTER_IP, SERVICE_PORT)
            truth.add(("10.244.2.10", CLUSTER_IP, str(SERVICE_PORT)))
            yield lab, {"node1": node1, "node2": node2}, truth


def tcp_series(agent: RunningAgent) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        labels: value
        for labels, value in samples(agent.metrics(), "khan_connection").items()
        if dict(labels)["transport"] == "tcp" and dict(labels)["src_ip"] != "127.0.0.1"
    }


def counted_once(agents: dict[str, RunningAgent]) -> Counter[tuple[str, str, str]]:
    """Connections under the selector, by (src_ip, dst_ip, dst_port), over both nodes."""
    found: Counter[tuple[str, str, str]] = Counter()
    for agent in agents.values():
        for labels, value in tcp_series(agent).items():
            as_dict = dict(labels)
            if as_dict["seen_from"] in COUNT_ONCE:
                found[as_dict["src_ip"], as_dict["dst_ip"], as_dict["dst_port"]] += int(value)
    return found


def test_the_selector_counts_every_connection_once(
    two_nodes: tuple[Lab, dict[str, RunningAgent], set[tuple[str, str, str]]],
) -> None:
    _, agents, truth = two_nodes
    last: list[Counter[tuple[str, str, str]]] = [Counter()]

    def settled() -> bool:
        last[0] = counted_once(agents)
        return set(last[0]) == truth

    agents["node1"].wait_until(settled, 10, f"selector finds {sorted(truth)}, found {last[0]}")
    assert all(count == 1 for count in last[0].values()), last[0]
    assert sum(last[0].values()) == len(truth) == 9
    naive = sum(sum(tcp_series(agent).values()) for agent in agents.values())
    assert naive > len(truth)  # the plain sum over nodes double-counts what crosses them


def test_the_sides_each_node_reports(
    two_nodes: tuple[Lab, dict[str, RunningAgent], set[tuple[str, str, str]]],
) -> None:
    _, agents, _ = two_nodes
    expected = {
        ("node1", "10.244.1.10", "10.244.2.10", "5432"): {"source"},  # pod-a -> pod-c, across nodes
        ("node2", "10.244.1.10", "10.244.2.10", "5432"): {"destination"},
        ("node1", "192.0.2.10", "10.244.1.10", "8080"): {"ingress"},  # the outside client
        ("node2", "10.244.2.10", CLUSTER_IP, "80"): {"source"},  # through the service from node2
        ("node1", "10.244.2.10", "10.244.1.11", "8080"): {"destination"},  # ... as node1 sees it
    }
    found: dict[tuple[str, str, str, str], set[str]] = {}

    def sides() -> bool:
        found.clear()
        for node, agent in agents.items():
            for labels in tcp_series(agent):
                as_dict = dict(labels)
                key = (node, as_dict["src_ip"], as_dict["dst_ip"], as_dict["dst_port"])
                if key in expected:
                    found.setdefault(key, set()).add(as_dict["seen_from"])
        return found == expected

    # Each node polls on its own clock: the connection opened after start reaches each agent at its next poll.
    try:
        agents["node1"].wait_until(sides, 10, "each node reports its side of every connection")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nexpected {expected}\nfound {found}") from None


def test_new_connection_counters_count_once_too(
    two_nodes: tuple[Lab, dict[str, RunningAgent], set[tuple[str, str, str]]],
) -> None:
    _, agents, _ = two_nodes
    name = "khan_connections_opened_total"

    def opened_once() -> float:
        return sum(
            total(agent.metrics(), name, seen_from=side, transport="tcp")
            for agent in agents.values()
            for side in COUNT_ONCE
        )

    agents["node1"].wait_until(lambda: opened_once() >= 1, 10, "the connection opened after start is counted")
    assert opened_once() == 1  # pod-c -> the service: node2 as source, node1 as destination, one connection
    everywhere = sum(total(agent.metrics(), name, transport="tcp") for agent in agents.values())
    assert everywhere == 2
