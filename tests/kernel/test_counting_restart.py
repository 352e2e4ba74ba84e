"""Counters start from zero when the agent starts, as Prometheus expects: connections already open are in
khan_connection but are not new, and a restarted agent counts only what opens after its own start."""

from __future__ import annotations

from pathlib import Path

from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic
from tests.support.lab_agent import file_agent, total

PAIR = {"src_name": "pod-a", "dst_name": "pod-c", "dst_port": "5432"}


def test_a_restarted_agent_counts_from_zero(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    with Lab.create(prefix=private_prefix("khanrestart")) as lab:
        start_demo_traffic(lab)  # one pod-a -> pod-c connection, open before any agent starts
        write_inventory(inventory)
        with file_agent(lab.netns("node1"), inventory, "node1", tmp_path) as first:
            first.wait_ready()
            for _ in range(5):
                lab.connect_tcp("pod-a", "10.244.2.10", 5432)
            first.wait_until(lambda: total(first.metrics(), "khan_connections_opened_total", **PAIR) == 5, 10, "5")
        with file_agent(lab.netns("node1"), inventory, "node1", tmp_path) as second:
            second.wait_ready()
            text = second.metrics()
            assert total(text, "khan_connection", **PAIR) == 6
            assert total(text, "khan_connections_opened_total", **PAIR) == 0
            for _ in range(2):
                lab.connect_tcp("pod-a", "10.244.2.10", 5432)
            second.wait_until(lambda: total(second.metrics(), "khan_connections_opened_total", **PAIR) == 2, 10, "2")
