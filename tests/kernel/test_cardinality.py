"""Cardinality control on a real table: 20,000 distinct pairs under --max-series 1000 stay within 1,000 series
per family with exact totals; --aggregate workload folds the pods of one Deployment into one name."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from khan.demo.inventory import inventory_objects
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic
from tests.support.exposition import samples
from tests.support.kube_agent import RunningAgent
from tests.support.lab_agent import file_agent, total
from tests.support.table_fill import fill_udp_flows, table_namespace

PAIRS = 20_000
DESTINATIONS = tuple(f"10.77.{i // 250}.{i % 250 + 1}" for i in range(100))
PORTS = tuple(range(10_000, 10_200))
UDP_IP_HEADERS = 28  # 20 bytes of IPv4 header and 8 of UDP around each one-byte datagram
FAMILIES = ("khan_connection", "khan_connections_opened_total", "khan_flow_bytes_total")


def write_list(path: Path, items: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))


@pytest.fixture
def busy_table(tmp_path: Path) -> Iterator[tuple[str, RunningAgent]]:
    inventory = tmp_path / "empty.yaml"
    write_list(inventory, [])
    with table_namespace(f"khancard{id(tmp_path) % 10_000}") as netns:
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"], check=True)
        extra = ["--max-series", "1000"]
        with file_agent(netns, inventory, "node1", tmp_path, extra=extra) as agent:
            agent.wait_ready()
            yield netns, agent


def udp_series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for labels, value in samples(text, name).items() if dict(labels)["transport"] == "udp"}


def test_20000_pairs_fold_into_1000_series_per_family_with_exact_totals(busy_table: tuple[str, RunningAgent]) -> None:
    netns, agent = busy_table
    fill_udp_flows(netns, PAIRS, sources=("10.76.0.1",), destinations=DESTINATIONS, ports=PORTS)

    def all_counted() -> bool:
        text = agent.metrics()
        return all(sum(udp_series(text, name).values()) >= PAIRS for name in FAMILIES[:2])

    agent.wait_until(all_counted, 20, f"{PAIRS} pairs counted")
    text = agent.metrics()
    for name in FAMILIES:
        series = samples(text, name)
        assert len(series) <= 1000, (name, len(series))
    assert sum(udp_series(text, "khan_connection").values()) == PAIRS
    assert sum(udp_series(text, "khan_connections_opened_total").values()) == PAIRS
    assert sum(udp_series(text, "khan_flow_bytes_total").values()) == PAIRS * (1 + UDP_IP_HEADERS)
    overflow = [dict(labels) for labels in udp_series(text, "khan_connection") if "(overflow)" in dict(labels).values()]
    assert overflow, "the smallest series fold into an overflow series"
    assert {(o["src_type"], o["dst_type"], o["transport"], o["dst_ip"]) for o in overflow} == {
        ("external", "external", "udp", "")
    }
    for name in FAMILIES:
        assert total(text, "khan_series_folded", family=name) > PAIRS - 1000


@pytest.fixture
def deployment_lab(tmp_path: Path) -> Iterator[tuple[Lab, RunningAgent]]:
    objects = inventory_objects()
    for item in objects:
        if item["kind"] == "Pod" and item["metadata"]["name"] in ("pod-a", "pod-b"):
            item["metadata"]["labels"] = {"app": "web", "pod-template-hash": "5d8f7"}
            item["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "web-5d8f7", "controller": True}]
    inventory = tmp_path / "inventory.yaml"
    write_list(inventory, objects)
    with Lab.create(prefix=private_prefix("khanwl")) as lab:
        start_demo_traffic(lab)
        extra = ["--aggregate", "workload"]
        with file_agent(lab.netns("node1"), inventory, "node1", tmp_path, extra=extra) as agent:
            agent.wait_ready()
            yield lab, agent


def test_workload_aggregation_folds_the_pods_of_one_deployment(deployment_lab: tuple[Lab, RunningAgent]) -> None:
    lab, agent = deployment_lab
    lab.connect_tcp("pod-b", "10.244.2.10", 5432)  # pod-a already has one to pod-c: two pods of `web`, one series
    wanted = {"src_type": "pod", "src_name": "web", "dst_name": "pod-c", "dst_port": "5432", "state": "ESTABLISHED"}
    agent.wait_until(lambda: total(agent.metrics(), "khan_connection", **wanted) == 2, 10, "both pods in one series")
    text = agent.metrics()
    matching = [dict(labels) for labels in samples(text, "khan_connection") if wanted.items() <= dict(labels).items()]
    assert len(matching) == 1
    assert (matching[0]["src_ip"], matching[0]["dst_ip"]) == ("", "")  # pod IPs leave the labels
    names = {dict(labels)["src_name"] for labels in samples(text, "khan_connection")}
    assert not names & {"pod-a", "pod-b"}
